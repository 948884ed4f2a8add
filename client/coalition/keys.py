"""Ed25519 identities: a party *is* its public key.

A party holds one Ed25519 key. It signs statements (DSSE envelopes) and notes with it, and its
key id, the lowercase hex SHA-256 of the raw public key, names it everywhere. The party's
X25519 encryption key, used to receive wrapped data keys, is derived from the same seed, so
one key file holds a party's whole identity and there is no second secret to lose or to keep
in sync.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from coalition.errors import KeyFormatError, SignatureError

__all__ = [
    "PUBLIC_KEY_SIZE",
    "SEED_SIZE",
    "SIGNATURE_SIZE",
    "X25519_INFO",
    "PublicKey",
    "SigningKey",
    "key_id",
]

PUBLIC_KEY_SIZE: Final = 32
SEED_SIZE: Final = 32
SIGNATURE_SIZE: Final = 64
# HKDF "info" for the encryption key: domain separation from the Ed25519 use of the seed.
X25519_INFO: Final = b"coalition x25519 v1"


def key_id(public_key: bytes) -> str:
    """Key id of a raw 32-byte Ed25519 public key: lowercase hex SHA-256 (64 characters)."""
    if not isinstance(public_key, bytes) or len(public_key) != PUBLIC_KEY_SIZE:
        raise KeyFormatError(f"an Ed25519 public key is {PUBLIC_KEY_SIZE} bytes")
    return hashlib.sha256(public_key).hexdigest()


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key, held as its raw 32 bytes (RFC 8032 encoding)."""

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != PUBLIC_KEY_SIZE:
            raise KeyFormatError(f"an Ed25519 public key is {PUBLIC_KEY_SIZE} bytes")
        self._load()

    def _load(self) -> Ed25519PublicKey:
        # Loaded on use rather than stored, so the dataclass holds plain bytes only (it
        # copies, pickles and compares as a value), from a cache of loaded keys.
        try:
            return _loaded_public_key(self.raw)
        except ValueError as e:
            raise KeyFormatError(f"not an Ed25519 public key: {e}") from e

    @classmethod
    def from_raw(cls, raw: bytes | bytearray | memoryview) -> PublicKey:
        """The public key whose raw encoding is ``raw``; KeyFormatError if invalid."""
        return cls(bytes(raw))

    @cached_property
    def key_id(self) -> str:
        """Lowercase hex SHA-256 of the raw key (computed once: a server asks for it several
        times per call, and once per token of a batch when checking whose signature it is)."""
        return key_id(self.raw)

    def verify(self, signature: bytes, message: bytes) -> None:
        """Raise SignatureError unless ``signature`` is this key's signature of ``message``."""
        if not isinstance(signature, bytes) or len(signature) != SIGNATURE_SIZE:
            raise SignatureError(f"an Ed25519 signature is {SIGNATURE_SIZE} bytes")
        try:
            self._load().verify(signature, message)
        except InvalidSignature:
            raise SignatureError(f"signature by key {self.key_id} does not verify") from None


@lru_cache(maxsize=4096)
def _loaded_public_key(raw: bytes) -> Ed25519PublicKey:
    """``cryptography``'s key for ``raw``, loaded once: a server checks two signatures per
    call, mostly by the same few thousand parties, and loading keys was 2% of the event
    loop in the negotiation benchmark (py-spy). Loaded keys are immutable; a key that does
    not load raises ValueError each time (exceptions are not cached)."""
    return Ed25519PublicKey.from_public_bytes(raw)


class SigningKey:
    """An Ed25519 private key: signs, and derives the party's X25519 encryption key.

    The repr shows the key id only; the key material is never printed.
    """

    __slots__ = ("_key", "_public")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        if not isinstance(private_key, Ed25519PrivateKey):
            raise KeyFormatError("a signing key must be an Ed25519 private key")
        self._key = private_key
        self._public = PublicKey(private_key.public_key().public_bytes_raw())

    @classmethod
    def generate(cls) -> SigningKey:
        """A fresh random key."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        """The key whose 32-byte RFC 8032 seed is ``seed``."""
        if not isinstance(seed, bytes) or len(seed) != SEED_SIZE:
            raise KeyFormatError(f"an Ed25519 seed is {SEED_SIZE} bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def public_key(self) -> PublicKey:
        """The matching public key."""
        return self._public

    @property
    def key_id(self) -> str:
        """Key id of the public key."""
        return self._public.key_id

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message``."""
        return self._key.sign(message)

    def private_bytes_raw(self) -> bytes:
        """The 32-byte seed. Handle with care: it is the whole identity."""
        return self._key.private_bytes_raw()

    def encryption_private_key(self) -> X25519PrivateKey:
        """The X25519 key derived from the seed with HKDF-SHA256 (info ``X25519_INFO``).

        Deriving it, rather than generating a second key, keeps a party's identity in one key
        file; HKDF with a distinct info string keeps the two uses of the seed independent.
        """
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=X25519_INFO)
        return X25519PrivateKey.from_private_bytes(hkdf.derive(self.private_bytes_raw()))

    def encryption_public_key_raw(self) -> bytes:
        """The raw 32-byte X25519 public key others encrypt to."""
        return self.encryption_private_key().public_key().public_bytes_raw()

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the key as unencrypted PKCS#8 PEM to a new file readable by the owner only.

        Raises FileExistsError rather than overwrite an existing file (that could destroy an
        identity).
        """
        pem = self._key.private_bytes(
            encoding=serialization.Encoding.PEM,
            format=serialization.PrivateFormat.PKCS8,
            encryption_algorithm=serialization.NoEncryption(),
        )
        # O_EXCL refuses existing files (and symlinks); mode 0o600 at creation means the
        # file is never readable by others, not even between create and chmod.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            # Never leave a truncated key file behind.
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SigningKey:
        """Read a key written by :meth:`save` (PKCS#8 PEM, unencrypted, Ed25519)."""
        with open(path, "rb") as f:
            data = f.read()
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as e:
            raise KeyFormatError(f"{os.fspath(path)!r} is not an unencrypted PEM key") from e
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFormatError(f"{os.fspath(path)!r} does not hold an Ed25519 key")
        return cls(key)

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id!r})"
