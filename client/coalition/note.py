"""C2SP signed notes (https://c2sp.org/signed-note), Ed25519 signatures only.

A note is UTF-8 text ending in a newline, a blank line, then signature lines
``— <key name> <base64(key hash || signature)>``. It is the format of the log's checkpoints,
so that generic transparency tooling (Go's ``golang.org/x/mod/sumdb/note``, witnesses) can
verify them. Parsing follows the spec and that reference implementation.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from coalition.errors import KeyFormatError, NoteError, SignatureError
from coalition.keys import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, PublicKey, SigningKey

__all__ = [
    "ALG_ED25519",
    "MAX_NOTE_SIZE",
    "MAX_SIGNATURES",
    "NoteSigner",
    "NoteVerifier",
    "key_hash",
    "make_verifier_key",
    "verify_note",
]

ALG_ED25519: Final = 0x01
MAX_NOTE_SIZE: Final = 1 << 20
# The spec requires accepting at least 16; Go's reference implementation stops at 100.
MAX_SIGNATURES: Final = 100
KEY_HASH_SIZE: Final = 4

_SIG_PREFIX: Final = "— "  # em dash (U+2014), space
_HEX: Final = frozenset(string.hexdigits)


def key_hash(name: str, public_key_raw: bytes) -> bytes:
    """The 4-byte key hash (key ID): SHA-256(name || 0x0A || 0x01 || public key)[:4]."""
    _check_name(name)
    if not isinstance(public_key_raw, bytes) or len(public_key_raw) != PUBLIC_KEY_SIZE:
        raise NoteError(f"an Ed25519 public key is {PUBLIC_KEY_SIZE} bytes")
    data = name.encode("utf-8") + b"\n" + bytes([ALG_ED25519]) + public_key_raw
    return hashlib.sha256(data).digest()[:KEY_HASH_SIZE]


def make_verifier_key(name: str, public_key: PublicKey) -> str:
    """The verifier key string ``<name>+<hex key hash>+<base64(0x01 || key)>``."""
    return NoteVerifier(name, public_key).verifier_key


@dataclass(frozen=True)
class NoteVerifier:
    """A named Ed25519 public key that verifies note signatures."""

    name: str
    public_key: PublicKey

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not isinstance(self.public_key, PublicKey):
            raise NoteError("public_key must be a PublicKey")

    @property
    def key_hash(self) -> bytes:
        """The 4-byte key hash that signature lines carry."""
        return key_hash(self.name, self.public_key.raw)

    @property
    def verifier_key(self) -> str:
        """The verifier key string, as ``note.NewVerifier`` in Go parses it."""
        encoded = base64.b64encode(bytes([ALG_ED25519]) + self.public_key.raw).decode("ascii")
        return f"{self.name}+{self.key_hash.hex()}+{encoded}"

    @classmethod
    def parse(cls, vkey: str) -> NoteVerifier:
        """Parse a verifier key string; NoteError if malformed, not Ed25519 or inconsistent."""
        if not isinstance(vkey, str):
            raise NoteError("verifier key must be a string")
        # The name cannot contain "+", the base64 key can: split at the first two only.
        parts = vkey.split("+", 2)
        if len(parts) != 3:
            raise NoteError("verifier key must be <name>+<hash>+<key>")
        name, hash_hex, key_b64 = parts
        _check_name(name)
        if len(hash_hex) != 2 * KEY_HASH_SIZE or not set(hash_hex) <= _HEX:
            raise NoteError("verifier key hash must be 8 hex digits")
        key = _b64decode(key_b64, "verifier key")
        if len(key) != 1 + PUBLIC_KEY_SIZE:
            raise NoteError("verifier key must be 33 bytes (algorithm byte and key)")
        if key[0] != ALG_ED25519:
            raise NoteError(f"unsupported verifier algorithm {key[0]:#04x}, only Ed25519")
        try:
            public_key = PublicKey(key[1:])
        except KeyFormatError as e:
            raise NoteError(f"verifier key: {e}") from e
        verifier = cls(name, public_key)
        if verifier.key_hash != bytes.fromhex(hash_hex):
            raise NoteError("verifier key hash does not match its name and key")
        return verifier


@dataclass(frozen=True)
class NoteSigner:
    """A named Ed25519 signing key that signs notes."""

    name: str
    key: SigningKey

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not isinstance(self.key, SigningKey):
            raise NoteError("key must be a SigningKey")

    @property
    def verifier(self) -> NoteVerifier:
        """The verifier for this signer's signatures."""
        return NoteVerifier(self.name, self.key.public_key)

    def sign(self, text: str) -> str:
        """The signed note: ``text``, a blank line and this signer's signature line.

        ``text`` must end in a newline and contain no control characters other than newline.
        """
        raw = _check_text(text)
        sig = self.key.sign(raw)
        encoded = base64.b64encode(self.verifier.key_hash + sig).decode("ascii")
        note = f"{text}\n{_SIG_PREFIX}{self.name} {encoded}\n"
        if len(note.encode("utf-8")) > MAX_NOTE_SIZE:
            raise NoteError(f"signed note would exceed {MAX_NOTE_SIZE} bytes")
        return note


def verify_note(note: str | bytes, verifiers: Sequence[NoteVerifier]) -> str:
    """Return the text of ``note`` if a known verifier's signature on it verifies.

    As the spec requires: signatures from unknown keys (name and key hash not both matching
    a verifier) are ignored; a failing signature from a known key rejects the whole note;
    a note with no verified signature is rejected. Malformed notes, notes over 1 MiB and
    notes with more than 100 signatures are rejected. Raises NoteError.
    """
    raw = note.encode("utf-8", "surrogatepass") if isinstance(note, str) else note
    if not isinstance(raw, bytes):
        raise NoteError("note must be str or bytes")
    if len(raw) > MAX_NOTE_SIZE:
        raise NoteError(f"note exceeds {MAX_NOTE_SIZE} bytes")
    try:
        msg = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise NoteError("note is not valid UTF-8") from None
    _check_chars(msg, "note")

    known: dict[tuple[str, bytes], NoteVerifier] = {}
    for v in verifiers:
        if not isinstance(v, NoteVerifier):
            raise NoteError("verifiers must be NoteVerifier objects")
        k = (v.name, v.key_hash)
        if k in known and known[k] != v:
            raise NoteError(f"two verifiers share name and key hash {v.name}+{v.key_hash.hex()}")
        known[k] = v

    # The text ends at the last blank line; it keeps its final newline.
    split = msg.rfind("\n\n")
    if split < 0:
        raise NoteError("note has no blank line before its signatures")
    text, sigs = msg[: split + 1], msg[split + 2 :]
    if not sigs or not sigs.endswith("\n"):
        raise NoteError("note signatures must be non-empty and end in a newline")
    text_bytes = text.encode("utf-8")

    verified: set[tuple[str, bytes]] = set()
    lines = sigs[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"note has more than {MAX_SIGNATURES} signatures")
    for line in lines:
        if not line.startswith(_SIG_PREFIX):
            raise NoteError("malformed signature line: must start with an em dash and space")
        name, sep, sig_b64 = line[len(_SIG_PREFIX) :].partition(" ")
        if not sep or not sig_b64:
            raise NoteError("malformed signature line: no signature")
        try:
            _check_name(name)
        except NoteError as e:
            raise NoteError(f"malformed signature line: {e}") from None
        blob = _b64decode(sig_b64, "signature")
        if len(blob) <= KEY_HASH_SIZE:
            raise NoteError("malformed signature line: signature too short")
        hash_, sig = blob[:KEY_HASH_SIZE], blob[KEY_HASH_SIZE:]
        verifier = known.get((name, hash_))
        if verifier is None:
            continue  # unknown key: the spec says to ignore it
        if (name, hash_) in verified:
            continue
        if len(sig) != SIGNATURE_SIZE:
            raise NoteError(f"signature by known key {name} is not an Ed25519 signature")
        try:
            verifier.public_key.verify(sig, text_bytes)
        except SignatureError:
            raise NoteError(f"signature by known key {name} does not verify") from None
        verified.add((name, hash_))
    if not verified:
        raise NoteError("note has no signature from a known key")
    return text


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name:
        raise NoteError("key name must be a non-empty string")
    if "+" in name:
        raise NoteError(f"key name {name!r} contains '+'")
    if any(c.isspace() for c in name):
        raise NoteError(f"key name {name!r} contains a space")
    _check_chars(name, "key name")


def _check_chars(s: str, what: str) -> None:
    # Valid UTF-8 (no lone surrogates) and no ASCII control characters other than newline.
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise NoteError(f"{what} is not valid Unicode") from None
    if any(c < " " and c != "\n" for c in s):
        raise NoteError(f"{what} contains a control character")


def _check_text(text: object) -> bytes:
    if not isinstance(text, str) or not text.endswith("\n"):
        raise NoteError("note text must be a string ending in a newline")
    _check_chars(text, "note text")
    return text.encode("utf-8")


def _b64decode(value: str, what: str) -> bytes:
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise NoteError(f"{what} is not valid base64") from None
    # Non-canonical padding bits are tolerated, as Go's reference implementation does:
    # rejecting them would let a stray unknown signature line break a note Go accepts.
    return decoded
