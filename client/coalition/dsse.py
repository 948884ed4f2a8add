"""DSSE v1 envelopes (https://github.com/secure-systems-lab/dsse/blob/master/protocol.md).

Every statement a party makes is a payload signed inside an envelope. Signatures cover
PAE(payload_type, payload), so the type is authenticated along with the bytes and a payload
can never be re-interpreted as another type. Payloads are kept byte for byte as signed:
verification checks the bytes, never a re-serialisation.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Final

from coalition.errors import EnvelopeError, SignatureError
from coalition.keys import SIGNATURE_SIZE, PublicKey, SigningKey
from coalition.v1 import envelope_pb2

__all__ = [
    "MAX_PAYLOAD_TYPE_LENGTH",
    "Envelope",
    "Signature",
    "pae",
    "sign",
    "verify",
]

MAX_PAYLOAD_TYPE_LENGTH: Final = 256
_KEYID_RE: Final = re.compile(r"[0-9a-f]{64}")


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 Pre-Authentication Encoding: the exact bytes that are signed.

    ``"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body``, lengths in ASCII decimal bytes.
    """
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(type_bytes), type_bytes, len(payload), payload)


@dataclass(frozen=True)
class Signature:
    """One signature of an envelope: the signer's key id and the Ed25519 signature."""

    keyid: str
    sig: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.keyid, str) or not _KEYID_RE.fullmatch(self.keyid):
            raise EnvelopeError("signature keyid must be 64 lowercase hex characters")
        if not isinstance(self.sig, bytes) or len(self.sig) != SIGNATURE_SIZE:
            raise EnvelopeError(f"signature must be {SIGNATURE_SIZE} bytes (Ed25519)")


@dataclass(frozen=True)
class Envelope:
    """A DSSE envelope with at least one signature, each key signing at most once."""

    payload_type: str
    payload: bytes
    signatures: tuple[Signature, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.payload_type, str) or not self.payload_type:
            raise EnvelopeError("payload_type must be a non-empty string")
        if len(self.payload_type) > MAX_PAYLOAD_TYPE_LENGTH:
            raise EnvelopeError(f"payload_type longer than {MAX_PAYLOAD_TYPE_LENGTH} characters")
        try:
            self.payload_type.encode("utf-8")
        except UnicodeEncodeError:
            raise EnvelopeError("payload_type is not valid Unicode") from None
        if not isinstance(self.payload, bytes):
            raise EnvelopeError("payload must be bytes")
        if not isinstance(self.signatures, tuple):
            # Accept any iterable but store a tuple, so the envelope stays immutable.
            object.__setattr__(self, "signatures", tuple(self.signatures))
        if not self.signatures:
            raise EnvelopeError("an envelope needs at least one signature")
        if not all(isinstance(s, Signature) for s in self.signatures):
            raise EnvelopeError("signatures must be Signature objects")
        keyids = [s.keyid for s in self.signatures]
        if len(set(keyids)) != len(keyids):
            # One key signing twice is never needed and makes "which one counts" ambiguous.
            raise EnvelopeError("two signatures by the same keyid")

    def pae(self) -> bytes:
        """The bytes the signatures cover."""
        return self._signed_bytes

    @cached_property
    def _signed_bytes(self) -> bytes:
        # Encoded once: a server verifies the signature and hashes the same bytes for the
        # statement's id and its ledger entry.
        return pae(self.payload_type, self.payload)

    def to_proto(self) -> envelope_pb2.Envelope:
        """The protobuf form (``coalition.v1.Envelope``)."""
        return envelope_pb2.Envelope(
            payload_type=self.payload_type,
            payload=self.payload,
            signatures=[envelope_pb2.Signature(keyid=s.keyid, sig=s.sig) for s in self.signatures],
        )

    @classmethod
    def from_proto(cls, msg: envelope_pb2.Envelope) -> Envelope:
        """The envelope in ``msg``; EnvelopeError if its content is invalid."""
        if not isinstance(msg, envelope_pb2.Envelope):
            raise EnvelopeError("not a coalition.v1.Envelope message")
        return cls(
            payload_type=msg.payload_type,
            payload=bytes(msg.payload),
            signatures=tuple(Signature(keyid=s.keyid, sig=bytes(s.sig)) for s in msg.signatures),
        )

    def to_json(self) -> str:
        """The standard DSSE JSON form (base64 payload and signatures)."""
        return json.dumps(
            {
                "payload": _b64encode(self.payload),
                "payloadType": self.payload_type,
                "signatures": [
                    {"keyid": s.keyid, "sig": _b64encode(s.sig)} for s in self.signatures
                ],
            }
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Envelope:
        """Parse the standard DSSE JSON form; EnvelopeError if malformed.

        Base64 may be standard or URL-safe, as the DSSE spec allows. Unknown fields are
        ignored: they are not covered by any signature.
        """
        try:
            obj: Any = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise EnvelopeError(f"envelope is not valid JSON: {e}") from None
        if not isinstance(obj, dict):
            raise EnvelopeError("envelope JSON must be an object")
        payload_type = obj.get("payloadType")
        if not isinstance(payload_type, str):
            raise EnvelopeError("envelope JSON needs a string payloadType")
        sigs = obj.get("signatures")
        if not isinstance(sigs, list):
            raise EnvelopeError("envelope JSON needs a signatures list")
        signatures: list[Signature] = []
        for s in sigs:
            if not isinstance(s, dict):
                raise EnvelopeError("each signature must be a JSON object")
            keyid = s.get("keyid")
            if not isinstance(keyid, str):
                raise EnvelopeError("each signature needs a string keyid")
            signatures.append(Signature(keyid=keyid, sig=_b64decode(s.get("sig"), "sig")))
        return cls(
            payload_type=payload_type,
            payload=_b64decode(obj.get("payload"), "payload"),
            signatures=tuple(signatures),
        )


def sign(payload_type: str, payload: bytes, key: SigningKey) -> Envelope:
    """An envelope holding ``payload``, signed by ``key`` over PAE(payload_type, payload)."""
    if not isinstance(payload_type, str) or not payload_type:
        # Checked before signing so that we never sign something Envelope would reject.
        raise EnvelopeError("payload_type must be a non-empty string")
    if not isinstance(payload, bytes):
        raise EnvelopeError("payload must be bytes")
    sig = Signature(keyid=key.key_id, sig=key.sign(pae(payload_type, payload)))
    return Envelope(payload_type=payload_type, payload=payload, signatures=(sig,))


def verify(envelope: Envelope, public_key: PublicKey) -> bytes:
    """Return the payload if ``public_key`` signed the envelope; raise SignatureError if not.

    Signatures by other keys are ignored; the caller decides whose signature it needs.
    """
    for s in envelope.signatures:
        if s.keyid == public_key.key_id:
            public_key.verify(s.sig, envelope.pae())
            return envelope.payload
    raise SignatureError(f"envelope has no signature by key {public_key.key_id}")


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise EnvelopeError(f"{what} must be a base64 string")
    s = value
    if "-" in s or "_" in s:
        if "+" in s or "/" in s:
            raise EnvelopeError(f"{what} mixes standard and URL-safe base64")
        s = s.replace("-", "+").replace("_", "/")
    s += "=" * (-len(s) % 4)
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise EnvelopeError(f"{what} is not valid base64") from None
