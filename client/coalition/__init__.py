"""Coalition: collective bargaining for data contributors.

The client package holds everything a member, lab or auditor needs to verify the ledger:
keys, DSSE envelopes, RFC 6962 Merkle proofs and C2SP signed-note checkpoints.
"""

__version__ = "0.1.0"
