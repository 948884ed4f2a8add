"""Key release: a data key sealed to a lab with RFC 9180 HPKE.

When a lab fetches an item under a lease, the server seals the item's 32-byte data key to the
lab's X25519 key (:meth:`coalition.keys.SigningKey.encryption_public_key_raw`) and the lab
opens it with its private key (:meth:`coalition.keys.SigningKey.encryption_private_key`).

Suite: mode base, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM (RFC 9180 ids 0x0020,
0x0001, 0x0002), single-shot, through the ``cryptography`` package's HPKE.

The release is bound to its agreement, lease and item through the HPKE ``info`` (see
:func:`release_info`): a sealed key opens only for the exact triple it was released under, so
it cannot be replayed to another lease or item.

Base mode authenticates no sender: anyone can seal *some* key to a lab's public key. A
release is trusted because the server's signed, logged response carries it, and the content
it decrypts is checked against the item's commitment; HPKE provides confidentiality and the
binding to agreement, lease and item.

Wire form, chosen for being exactly what is stored and sent: plain bytes, ``enc`` (the 32-byte
ephemeral public key) followed by the AES-256-GCM ciphertext and tag of the data key, 80 bytes
in all (:data:`SEALED_SIZE`).
"""

from __future__ import annotations

from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

from coalition.errors import KeyFormatError, VerificationError

__all__ = [
    "DATA_KEY_SIZE",
    "ENC_SIZE",
    "HPKE_AEAD_ID",
    "HPKE_KDF_ID",
    "HPKE_KEM_ID",
    "RELEASE_INFO_LABEL",
    "SEALED_SIZE",
    "KeyReleaseError",
    "open_data_key",
    "release_info",
    "seal_data_key",
]

HPKE_KEM_ID: Final = 0x0020
"""RFC 9180 KEM id: DHKEM(X25519, HKDF-SHA256)."""
HPKE_KDF_ID: Final = 0x0001
"""RFC 9180 KDF id: HKDF-SHA256."""
HPKE_AEAD_ID: Final = 0x0002
"""RFC 9180 AEAD id: AES-256-GCM."""

DATA_KEY_SIZE: Final = 32
"""Bytes in a data key."""
ENC_SIZE: Final = 32
"""Bytes in the encapsulated key (an X25519 public key)."""
SEALED_SIZE: Final = ENC_SIZE + DATA_KEY_SIZE + 16
"""Bytes in a sealed data key: enc, ciphertext, 16-byte tag."""
RELEASE_INFO_LABEL: Final = b"coalition-key-release-v1"
"""Domain separation prefix of :func:`release_info`."""

_X25519_KEY_SIZE: Final = 32
_SUITE: Final = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)


class KeyReleaseError(VerificationError):
    """A sealed data key does not open: wrong recipient, other binding, or altered."""


def release_info(agreement_id: str, lease_id: str, item_id: str) -> bytes:
    """The HPKE ``info`` binding a release to its agreement, lease and item.

    ``RELEASE_INFO_LABEL`` followed by each id as a 4-byte big-endian length and its UTF-8
    bytes: no two different triples give the same info.
    """
    return (
        RELEASE_INFO_LABEL
        + _length_prefixed(agreement_id, "agreement id")
        + _length_prefixed(lease_id, "lease id")
        + _length_prefixed(item_id, "item id")
    )


def seal_data_key(recipient_public_key: bytes, data_key: bytes, info: bytes) -> bytes:
    """Seal ``data_key`` to the raw 32-byte X25519 ``recipient_public_key``, bound to ``info``.

    Returns ``enc || ciphertext`` (:data:`SEALED_SIZE` bytes); each call uses a fresh
    ephemeral key, so sealing the same key twice gives unrelated outputs. Raises
    KeyFormatError on a malformed public key or data key.
    """
    if not isinstance(recipient_public_key, bytes) or len(recipient_public_key) != _X25519_KEY_SIZE:
        raise KeyFormatError(f"an X25519 public key is {_X25519_KEY_SIZE} bytes")
    if not isinstance(data_key, bytes) or len(data_key) != DATA_KEY_SIZE:
        raise KeyFormatError(f"a data key is {DATA_KEY_SIZE} bytes")
    if not isinstance(info, bytes):
        raise TypeError("info must be bytes")
    public_key = X25519PublicKey.from_public_bytes(recipient_public_key)
    try:
        sealed = _SUITE.encrypt(data_key, public_key, info=info)
    except ValueError:
        # A small-order point gives an all-zero shared secret, which X25519 refuses.
        raise KeyFormatError("the recipient's X25519 public key is unusable") from None
    return sealed


def open_data_key(recipient_private_key: X25519PrivateKey, sealed: bytes, info: bytes) -> bytes:
    """The data key inside ``sealed``, which must have been sealed to this key with ``info``.

    Raises KeyReleaseError if it was sealed to another key or under another info (another
    agreement, lease or item), or was altered.
    """
    if not isinstance(recipient_private_key, X25519PrivateKey):
        raise KeyFormatError("the recipient's key must be an X25519 private key")
    if not isinstance(info, bytes):
        raise TypeError("info must be bytes")
    if not isinstance(sealed, bytes) or len(sealed) != SEALED_SIZE:
        raise KeyReleaseError(f"a sealed data key is {SEALED_SIZE} bytes")
    try:
        data_key = _SUITE.decrypt(sealed, recipient_private_key, info=info)
    except (InvalidTag, ValueError):
        # One message for every cause: which check failed is no business of a forger.
        raise KeyReleaseError(
            "sealed data key does not open: other recipient, other agreement, lease or item, "
            "or altered"
        ) from None
    if len(data_key) != DATA_KEY_SIZE:
        raise KeyReleaseError("sealed data key holds no data key")
    return data_key


def _length_prefixed(value: str, what: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise ValueError(f"the {what} is a non-empty string")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"the {what} is not valid Unicode") from None
    if len(raw) >= 1 << 32:
        raise ValueError(f"the {what} is too long")
    return len(raw).to_bytes(4, "big") + raw
