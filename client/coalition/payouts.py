"""Payout statements: how an agreement's revenue is split, and a member's proof of their line.

On finalisation the coalition publishes a signed ``PayoutStatement`` on the ledger. Its lines
(one per covered member, ordered by member key id) are committed by ``lines_root``: the
RFC 6962 Merkle root over the lines in statement order, each leaf the line's deterministic
protobuf serialisation. A member's ``Earning`` carries their line, its position and its audit
path, so the member can check, with nothing but this module and the coalition's public key,
that the line they are told about is the line the coalition signed and logged.

Everything here is pure: no I/O, no clocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from coalition import dsse, merkle, statements
from coalition.errors import EnvelopeError, ProofError, VerificationError
from coalition.keys import PublicKey
from coalition.v1 import envelope_pb2, negotiation_pb2, terms_pb2

PAYOUT_STATEMENT_TYPE: Final = (
    f"{statements.PAYLOAD_TYPE_PREFIX}"
    f"{negotiation_pb2.PayoutStatement.DESCRIPTOR.name}"
    f"{statements.PAYLOAD_TYPE_SUFFIX}"
)
"""The DSSE payload type of a PayoutStatement."""


class PayoutError(VerificationError):
    """A payout statement or a member's line in it does not verify."""


@dataclass(frozen=True)
class VerifiedEarning:
    """A member's payout line, proven to be in a statement signed by the coalition."""

    agreement_id: str
    """The agreement whose revenue the statement splits."""
    line: negotiation_pb2.PayoutLine
    """The member's line."""
    line_index: int
    """Its position in the statement."""
    statement: negotiation_pb2.PayoutStatement
    """The whole statement, as signed."""
    statement_index: int
    """Ledger index of the statement's entry."""


def line_leaf(line: negotiation_pb2.PayoutLine) -> bytes:
    """A line's Merkle leaf: its deterministic protobuf serialisation."""
    return line.SerializeToString(deterministic=True)


def lines_root(lines: Sequence[negotiation_pb2.PayoutLine]) -> bytes:
    """The RFC 6962 root over the lines, in order (SHA-256 of nothing for no lines)."""
    return merkle.InMemoryTree(line_leaf(line) for line in lines).root()


def line_proof(lines: Sequence[negotiation_pb2.PayoutLine], index: int) -> list[bytes]:
    """The audit path of line ``index`` to :func:`lines_root` of ``lines``."""
    return merkle.InMemoryTree(line_leaf(line) for line in lines).inclusion_proof(index)


def build_statement(
    agreement_id: str,
    total: terms_pb2.Money,
    lines: Sequence[negotiation_pb2.PayoutLine],
    *,
    rule: str = "pro-rata-items",
    payment_model: terms_pb2.PaymentModel.ValueType = terms_pb2.PAYMENT_MODEL_PURCHASE,
) -> negotiation_pb2.PayoutStatement:
    """A PayoutStatement over ``lines`` (sorted by member key id), with its lines_root."""
    ordered = sorted(lines, key=lambda line: line.member_key_id)
    return negotiation_pb2.PayoutStatement(
        agreement_id=agreement_id,
        total=total,
        rule=rule,
        lines_root=lines_root(ordered),
        lines=ordered,
        payment_model=payment_model,
    )


def earning_of(
    statement: negotiation_pb2.PayoutStatement, index: int, statement_index: int = 0
) -> negotiation_pb2.Earning:
    """The Earning of line ``index`` of ``statement``, with its proof."""
    lines = list(statement.lines)
    if not 0 <= index < len(lines):
        raise ValueError(f"the statement has no line {index}")
    return negotiation_pb2.Earning(
        agreement_id=statement.agreement_id,
        line=lines[index],
        line_index=index,
        line_proof=line_proof(lines, index),
        statement_index=statement_index,
    )


def open_statement(
    envelope: dsse.Envelope | envelope_pb2.Envelope, coalition_key: PublicKey
) -> negotiation_pb2.PayoutStatement:
    """The PayoutStatement in ``envelope``, checked: the coalition signed it, it is
    canonically encoded, its lines are in member order and ``lines_root`` commits to them.

    Raises PayoutError (a VerificationError) otherwise.
    """
    try:
        if isinstance(envelope, envelope_pb2.Envelope):
            envelope = dsse.Envelope.from_proto(envelope)
        if envelope.payload_type != PAYOUT_STATEMENT_TYPE:
            raise PayoutError(f"not a payout statement: {envelope.payload_type}")
        dsse.verify(envelope, coalition_key)
        statement = statements.parse_payload(negotiation_pb2.PayoutStatement, envelope.payload)
    except PayoutError:
        raise
    except (EnvelopeError, VerificationError) as exc:
        raise PayoutError(f"the payout statement does not verify: {exc}") from None
    check_statement(statement)
    return statement


def check_statement(statement: negotiation_pb2.PayoutStatement) -> None:
    """Raise PayoutError unless the lines are ordered by member and match ``lines_root``."""
    members = [line.member_key_id for line in statement.lines]
    if members != sorted(members):
        raise PayoutError("the statement's lines are not ordered by member key id")
    if lines_root(list(statement.lines)) != bytes(statement.lines_root):
        raise PayoutError("the statement's lines do not match its lines_root")


def verify_earning(
    earning: negotiation_pb2.Earning,
    statement_envelope: dsse.Envelope | envelope_pb2.Envelope,
    coalition_key: PublicKey,
    *,
    member_key_id: str | None = None,
) -> VerifiedEarning:
    """Check a member's Earning against the signed statement it claims to be part of.

    The statement must be signed by ``coalition_key`` and self-consistent
    (:func:`open_statement`); it must be for the earning's agreement; the line's leaf hash
    with the earning's audit path must lead to the statement's ``lines_root`` at the
    earning's position, and be the very line the statement lists there. With
    ``member_key_id``, the line must be that member's. Raises PayoutError otherwise.
    """
    statement = open_statement(statement_envelope, coalition_key)
    if statement.agreement_id != earning.agreement_id:
        raise PayoutError(
            f"the statement is for agreement {statement.agreement_id}, not {earning.agreement_id}"
        )
    if member_key_id is not None and earning.line.member_key_id != member_key_id:
        raise PayoutError(f"the line is {earning.line.member_key_id}'s, not {member_key_id}'s")
    size = len(statement.lines)
    index = earning.line_index
    leaf = line_leaf(earning.line)
    try:
        merkle.verify_inclusion(
            merkle.leaf_hash(leaf),
            index,
            size,
            [bytes(h) for h in earning.line_proof],
            bytes(statement.lines_root),
        )
    except ProofError as exc:
        raise PayoutError(f"the line's proof does not verify: {exc}") from None
    if line_leaf(statement.lines[index]) != leaf:
        raise PayoutError("the line differs from the statement's line at its position")
    return VerifiedEarning(
        agreement_id=earning.agreement_id,
        line=earning.line,
        line_index=index,
        statement=statement,
        statement_index=earning.statement_index,
    )
