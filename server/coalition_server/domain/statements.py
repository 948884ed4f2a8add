"""Checks shared by every statement a party submits (pure)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import TypeVar

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from coalition import dsse
from coalition.errors import CoalitionError
from coalition.keys import PublicKey
from coalition.statements import parse_payload, payload_type
from coalition_server.domain.errors import InvalidArgumentError, UnauthenticatedError

M = TypeVar("M", bound=Message)

# A statement must have been signed recently: an old one found somewhere is not a request.
MAX_CLOCK_SKEW = timedelta(minutes=10)
MIN_NONCE_BYTES = 16
MAX_NONCE_BYTES = 64
HEX_ID = re.compile(r"^[0-9a-f]{32}$")
KEY_ID = re.compile(r"^[0-9a-f]{64}$")
TAG = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def open_statement(envelope: dsse.Envelope, cls: type[M], signer: PublicKey) -> M:
    """Decode a statement of type ``cls`` signed by ``signer``, or refuse it."""
    if envelope.payload_type != payload_type(cls):
        raise InvalidArgumentError(
            "WRONG_STATEMENT_TYPE", f"expected a {cls.DESCRIPTOR.name} statement"
        )
    try:
        statement = parse_payload(cls, envelope.payload)
    except CoalitionError as exc:
        raise InvalidArgumentError("MALFORMED_STATEMENT", str(exc)) from None
    require_sole_signer(envelope, signer)
    return statement


def require_sole_signer(envelope: dsse.Envelope, signer: PublicKey) -> None:
    """The envelope carries exactly one signature, by ``signer``, and it verifies.

    The ledger keeps envelopes byte for byte, so a signature the server did not check (an
    extra one, by anyone) would sit in the log unverifiable: refuse it instead.
    """
    if len(envelope.signatures) != 1:
        raise InvalidArgumentError(
            "UNEXPECTED_SIGNATURES", "a statement here carries exactly one signature, its author's"
        )
    try:
        dsse.verify(envelope, signer)
    except CoalitionError:
        raise UnauthenticatedError(
            "BAD_STATEMENT_SIGNATURE", "the statement is not signed by the calling key"
        ) from None


def timestamp(value: Timestamp, field: str) -> datetime:
    """A protobuf timestamp as an aware datetime, or INVALID_ARGUMENT naming the field."""
    from datetime import UTC

    try:
        return value.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgumentError("BAD_TIMESTAMP", f"{field} is out of range") from None


def check_fresh(created_time: Timestamp, has_created_time: bool, now: datetime) -> None:
    """created_time must be set and within the allowed skew of the server's clock."""
    if not has_created_time:
        raise InvalidArgumentError("MISSING_CREATED_TIME", "created_time is required")
    if abs(timestamp(created_time, "created_time") - now) > MAX_CLOCK_SKEW:
        raise InvalidArgumentError(
            "STALE_STATEMENT", "created_time is more than 10 minutes from the server's clock"
        )


def check_nonce(nonce: bytes) -> None:
    """A nonce of 16 to 64 bytes."""
    if not MIN_NONCE_BYTES <= len(nonce) <= MAX_NONCE_BYTES:
        raise InvalidArgumentError("BAD_NONCE", "nonce must be 16 to 64 random bytes")


def check_item_id(item_id: str) -> None:
    """An item id: 32 lowercase hex characters."""
    if not HEX_ID.match(item_id):
        raise InvalidArgumentError("BAD_ITEM_ID", "item ids are 32 lowercase hex characters")


def check_key_id(key_id: str, field: str) -> None:
    """A key id: 64 lowercase hex characters."""
    if not KEY_ID.match(key_id):
        raise InvalidArgumentError("BAD_KEY_ID", f"{field}: key ids are 64 lowercase hex")


def check_tag(tag: str) -> None:
    """A tag: 1..64 of [a-z0-9._-], starting with a letter or digit."""
    if not TAG.match(tag):
        raise InvalidArgumentError("BAD_TAG", f"bad tag {tag[:70]!r}: use 1-64 of [a-z0-9._-]")
