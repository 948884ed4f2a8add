"""Coalition server: the ledger, the gRPC API and (later) consent, negotiation and access."""

__version__ = "0.1.0"
