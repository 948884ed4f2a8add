"""Signed statements: protobuf payloads inside DSSE envelopes.

Every statement type has a payload type of the form
``application/vnd.coalition.v1.<MessageName>+proto``; the payload is the serialised message,
kept byte for byte as signed. An auditor decodes entries with nothing but this module.
"""

from __future__ import annotations

import hashlib
from typing import Final, TypeVar

from google.protobuf.message import DecodeError, Message

from coalition import dsse
from coalition.errors import EnvelopeError
from coalition.keys import SigningKey
from coalition.v1 import (
    access_pb2,
    consent_pb2,
    disputes_pb2,
    items_pb2,
    negotiation_pb2,
    party_pb2,
    strike_pb2,
)

PAYLOAD_TYPE_PREFIX: Final = "application/vnd.coalition.v1."
PAYLOAD_TYPE_SUFFIX: Final = "+proto"

# The closed set of statement types this version understands.
STATEMENT_TYPES: Final[dict[str, type[Message]]] = {
    f"{PAYLOAD_TYPE_PREFIX}{cls.DESCRIPTOR.name}{PAYLOAD_TYPE_SUFFIX}": cls
    for cls in (
        party_pb2.PartyRegistration,
        items_pb2.ItemRegistration,
        consent_pb2.ConsentToken,
        consent_pb2.Withdrawal,
        access_pb2.Agreement,
        access_pb2.LeaseRequest,
        access_pb2.KeyRelease,
        access_pb2.WithdrawalNotice,
        access_pb2.DeletionReceipt,
        access_pb2.ShreddingRecord,
        negotiation_pb2.NegotiationRequest,
        negotiation_pb2.NegotiationMove,
        negotiation_pb2.RatificationCall,
        negotiation_pb2.Ballot,
        negotiation_pb2.RatificationResult,
        negotiation_pb2.PayoutStatement,
        strike_pb2.StrikePledge,
        strike_pb2.PledgeRetraction,
        strike_pb2.StrikeExecution,
        disputes_pb2.Dispute,
        disputes_pb2.DisputeResponse,
    )
}

M = TypeVar("M", bound=Message)


def payload_type(message_class: type[Message]) -> str:
    """The DSSE payload type of a statement message class."""
    name = f"{PAYLOAD_TYPE_PREFIX}{message_class.DESCRIPTOR.name}{PAYLOAD_TYPE_SUFFIX}"
    if name not in STATEMENT_TYPES:
        raise EnvelopeError(f"{message_class.DESCRIPTOR.full_name} is not a statement type")
    return name


def kind(payload_type_: str) -> str:
    """Short kind of a statement (the message name), e.g. ``PartyRegistration``."""
    if payload_type_.startswith(PAYLOAD_TYPE_PREFIX) and payload_type_.endswith(
        PAYLOAD_TYPE_SUFFIX
    ):
        return payload_type_[len(PAYLOAD_TYPE_PREFIX) : -len(PAYLOAD_TYPE_SUFFIX)]
    return payload_type_


def statement_id(envelope: dsse.Envelope) -> str:
    """A statement's public id: 32 hex characters of SHA-256(PAE(type, payload)).

    Signatures are not part of it, so a statement countersigned later keeps its id.
    """
    return hashlib.sha256(envelope.pae()).hexdigest()[:32]


def sign_statement(statement: Message, key: SigningKey) -> dsse.Envelope:
    """Serialise ``statement`` once and sign those exact bytes."""
    return dsse.sign(payload_type(type(statement)), statement.SerializeToString(), key)


def decode_statement(envelope: dsse.Envelope) -> Message:
    """Decode an envelope's payload into its statement message (signatures not checked)."""
    cls = STATEMENT_TYPES.get(envelope.payload_type)
    if cls is None:
        raise EnvelopeError(f"unknown statement type {envelope.payload_type!r}")
    return parse_payload(cls, envelope.payload)


def parse_payload(cls: type[M], payload: bytes) -> M:
    """Parse ``payload`` as ``cls``, raising EnvelopeError on malformed bytes."""
    try:
        message = cls.FromString(payload)
    except DecodeError as exc:
        raise EnvelopeError(f"malformed {cls.DESCRIPTOR.name} payload: {exc}") from None
    # Reject payloads that are not the canonical encoding of what they decode to: unknown
    # fields would be invisible to every verifier and could smuggle meaning past them.
    canonical = cls()
    canonical.CopyFrom(message)
    canonical.DiscardUnknownFields()
    if canonical.SerializeToString(deterministic=True) != payload:
        raise EnvelopeError(f"{cls.DESCRIPTOR.name} payload is not canonically encoded")
    return message
