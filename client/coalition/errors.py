"""The closed hierarchy of errors raised by the coalition package.

Every error this package raises on purpose derives from :class:`CoalitionError`, so a caller
can catch one base class; everything that failed to *verify* derives from
:class:`VerificationError`, which a caller must treat as "do not trust this input".
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "CoalitionError",
    "EnvelopeError",
    "KeyFormatError",
    "NoteError",
    "ProofError",
    "SignatureError",
    "VerificationError",
]


class CoalitionError(Exception):
    """Base of every error this package raises."""


class VerificationError(CoalitionError):
    """Something signed or proven did not verify."""


class SignatureError(VerificationError):
    """A signature is missing, malformed or does not verify."""


class ProofError(VerificationError):
    """A Merkle inclusion or consistency proof failed or is malformed."""


class NoteError(VerificationError):
    """A signed note is malformed, or has no valid signature from a known key."""


class CheckpointError(VerificationError):
    """A checkpoint body is malformed or names an unexpected origin."""


class EnvelopeError(VerificationError):
    """A DSSE envelope is malformed."""


class KeyFormatError(CoalitionError):
    """Key bytes or a key file are not a valid key of the expected kind."""
