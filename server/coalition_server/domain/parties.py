"""Validation of party registrations (pure)."""

from __future__ import annotations

import unicodedata
from datetime import datetime, timedelta

from coalition import dsse
from coalition.errors import CoalitionError
from coalition.keys import PublicKey
from coalition.statements import parse_payload, payload_type
from coalition.v1 import party_pb2
from coalition_server.domain.errors import (
    InvalidArgumentError,
    PermissionDeniedError,
)
from coalition_server.domain.statements import require_sole_signer

# Roles a party may register itself with; ROLE_COALITION is the server's own, registered once.
PARTY_ROLES = frozenset((party_pb2.ROLE_CONTRIBUTOR, party_pb2.ROLE_LAB, party_pb2.ROLE_AUDITOR))
MAX_NAME_LENGTH = 128
MIN_NONCE_BYTES = 16
# A registration must have been signed recently: an old one found somewhere is not a request.
MAX_CLOCK_SKEW = timedelta(minutes=10)


def validate_name(name: str) -> str:
    """A display name: 1..128 characters, no control characters, NFC-normalised."""
    normalised = unicodedata.normalize("NFC", name).strip()
    if not 1 <= len(normalised) <= MAX_NAME_LENGTH:
        raise InvalidArgumentError("BAD_NAME", f"name must be 1 to {MAX_NAME_LENGTH} characters")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") for ch in normalised):
        raise InvalidArgumentError("BAD_NAME", "name contains control or unassigned characters")
    return normalised


def check_registration(
    envelope: dsse.Envelope, caller_key_id: str, now: datetime
) -> party_pb2.PartyRegistration:
    """Decode and check a self-signed registration made by the calling key."""
    if envelope.payload_type != payload_type(party_pb2.PartyRegistration):
        raise InvalidArgumentError("WRONG_STATEMENT_TYPE", "expected a PartyRegistration statement")
    try:
        registration = parse_payload(party_pb2.PartyRegistration, envelope.payload)
        key = PublicKey(registration.signing_key)
    except CoalitionError as exc:
        raise InvalidArgumentError("MALFORMED_STATEMENT", str(exc)) from None
    if key.key_id != caller_key_id:
        raise PermissionDeniedError(
            "NOT_YOUR_KEY", "a party registers its own key: sign the call with it"
        )
    require_sole_signer(envelope, key)
    if registration.role not in PARTY_ROLES:
        raise InvalidArgumentError("BAD_ROLE", "role must be contributor, lab or auditor")
    if validate_name(registration.name) != registration.name:
        raise InvalidArgumentError(
            "BAD_NAME", "name must be NFC-normalised without surrounding spaces"
        )
    if len(registration.encryption_key) != 32:
        raise InvalidArgumentError("BAD_ENCRYPTION_KEY", "encryption_key must be 32 bytes")
    if len(registration.nonce) < MIN_NONCE_BYTES or len(registration.nonce) > 64:
        raise InvalidArgumentError("BAD_NONCE", "nonce must be 16 to 64 random bytes")
    if not registration.HasField("created_time"):
        raise InvalidArgumentError("MISSING_CREATED_TIME", "created_time is required")
    try:
        created = registration.created_time.ToDatetime(tzinfo=now.tzinfo)
    except ValueError:
        raise InvalidArgumentError("BAD_CREATED_TIME", "created_time is out of range") from None
    if abs(created - now) > MAX_CLOCK_SKEW:
        raise InvalidArgumentError(
            "STALE_STATEMENT", "created_time is more than 10 minutes from the server's clock"
        )
    return registration
