"""C2SP transparency log checkpoints (https://c2sp.org/tlog-checkpoint).

A checkpoint is a signed note whose text is the log's origin, its tree size and its RFC 6962
root hash, one per line, optionally followed by extension lines. The log signs one for every
tree head it publishes; anyone holding the log's verifier key can check it.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Final

from coalition.errors import CheckpointError
from coalition.merkle import HASH_SIZE, MAX_TREE_SIZE
from coalition.note import NoteSigner, NoteVerifier, verify_note

__all__ = ["Checkpoint", "sign_checkpoint", "verify_checkpoint"]

# ASCII decimal, no leading zeros (a bare "0" is the empty tree). str.isdigit and int()
# accept other Unicode digits and underscores, so parse with an explicit pattern.
_SIZE_RE: Final = re.compile(r"0|[1-9][0-9]*")
_MAX_SIZE_DIGITS: Final = len(str(MAX_TREE_SIZE))


@dataclass(frozen=True)
class Checkpoint:
    """A log's tree head: origin, tree size, root hash, and optional extension lines."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line(self.origin, "origin")
        if not isinstance(self.size, int) or isinstance(self.size, bool):
            raise CheckpointError("checkpoint size must be an int")
        if not 0 <= self.size <= MAX_TREE_SIZE:
            raise CheckpointError(f"checkpoint size {self.size} is outside [0, 2**64-1]")
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != HASH_SIZE:
            raise CheckpointError(f"checkpoint root hash must be {HASH_SIZE} bytes")
        if not isinstance(self.extensions, tuple):
            object.__setattr__(self, "extensions", tuple(self.extensions))
        for ext in self.extensions:
            _check_line(ext, "extension line")

    def body(self) -> str:
        """The note text: origin, size, base64 root hash and extensions, each ending in \\n."""
        root = base64.b64encode(self.root_hash).decode("ascii")
        lines = [self.origin, str(self.size), root, *self.extensions]
        return "".join(f"{line}\n" for line in lines)

    @classmethod
    def parse_body(cls, text: str) -> Checkpoint:
        """Parse a checkpoint note text strictly; CheckpointError if malformed."""
        if not isinstance(text, str) or not text.endswith("\n"):
            raise CheckpointError("checkpoint text must end in a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise CheckpointError("checkpoint needs origin, size and root hash lines")
        origin, size_line, root_line, *extensions = lines
        # Bounded before int(): a size has at most 20 digits (2**64-1), and int() refuses
        # over 4300 digits with a ValueError, which must not escape as anything else.
        if len(size_line) > _MAX_SIZE_DIGITS or not _SIZE_RE.fullmatch(size_line):
            raise CheckpointError(
                f"checkpoint size {size_line[:32]!r} is not a canonical decimal below 2**64"
            )
        try:
            root_hash = base64.b64decode(root_line, validate=True)
        except (binascii.Error, ValueError):
            raise CheckpointError("checkpoint root hash is not valid base64") from None
        if base64.b64encode(root_hash).decode("ascii") != root_line:
            raise CheckpointError("checkpoint root hash is not canonical base64")
        return cls(origin, int(size_line), root_hash, tuple(extensions))


def sign_checkpoint(cp: Checkpoint, signer: NoteSigner) -> str:
    """The checkpoint as a signed note.

    The spec recommends that the key name match the origin; that is the caller's choice.
    """
    return signer.sign(cp.body())


def verify_checkpoint(note: str, verifier: NoteVerifier, origin: str | None = None) -> Checkpoint:
    """Verify ``note`` is signed by ``verifier`` and return the checkpoint it carries.

    If ``origin`` is given, the checkpoint must be for that log. Raises NoteError for a bad
    or missing signature, CheckpointError for a bad body or unexpected origin.
    """
    text = verify_note(note, [verifier])
    cp = Checkpoint.parse_body(text)
    if origin is not None and cp.origin != origin:
        raise CheckpointError(f"checkpoint is for origin {cp.origin!r}, expected {origin!r}")
    return cp


def _check_line(value: object, what: str) -> None:
    if not isinstance(value, str) or not value:
        raise CheckpointError(f"checkpoint {what} must be a non-empty string")
    if "\n" in value:
        raise CheckpointError(f"checkpoint {what} must be a single line")
    if any(c < " " for c in value):
        raise CheckpointError(f"checkpoint {what} contains a control character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise CheckpointError(f"checkpoint {what} is not valid Unicode") from None
