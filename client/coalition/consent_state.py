"""Offline verification of a consent token's public state (``GetConsentState``).

Anyone may ask the server for a token's state; the answer carries the token's ledger entry,
the withdrawal's entry when there is one, their inclusion proofs and the signed checkpoint
both proofs lead to. :func:`verify_consent_state` checks all of it with nothing but the log's
verifier key:

* the checkpoint is signed by the log (and, if given, is for the expected origin);
* each entry's leaf hashes into the checkpoint's tree at its index (RFC 6962 inclusion);
* the token entry holds a ``ConsentToken`` statement whose id is the one asked about;
* a withdrawal entry holds a ``Withdrawal`` signed by the same member, later in the log,
  that names this token, everything, or (for a token naming explicit items) some of its items;
* the claimed state agrees with the evidence: WITHDRAWN or INVALIDATED need a withdrawal;
  GIVEN and LAPSED need none and agree with the token's ``not_after`` at ``now`` (allowing
  :data:`CLOCK_SKEW`).

What a proof of inclusion cannot show is an *absence*: a server could hide a withdrawal and
claim GIVEN. Only a full replay of the log (``coalition audit verify``) rules that out; this
check proves that the token exists as signed, and that any withdrawal shown is genuine.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, TypeVar

from google.protobuf.message import DecodeError

from coalition import dsse, merkle, statements
from coalition.checkpoint import Checkpoint, verify_checkpoint
from coalition.errors import EnvelopeError, VerificationError
from coalition.keys import PublicKey
from coalition.note import NoteVerifier
from coalition.v1 import consent_pb2, ledger_pb2

__all__ = [
    "CLOCK_SKEW",
    "ConsentEvidenceError",
    "ConsentStateMismatchError",
    "VerifiedConsentState",
    "state_name",
    "verify_consent_state",
]

CLOCK_SKEW: Final = timedelta(minutes=5)
"""Tolerance between the verifier's clock and the server's when judging GIVEN vs LAPSED."""

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
M = TypeVar("M", consent_pb2.ConsentToken, consent_pb2.Withdrawal)


class ConsentEvidenceError(VerificationError):
    """An entry of the evidence is malformed, or is not the statement it should be."""


class ConsentStateMismatchError(VerificationError):
    """The claimed state does not follow from the evidence."""


@dataclass(frozen=True)
class VerifiedConsentState:
    """A consent token's state, as established by verified evidence."""

    consent_id: str
    state: consent_pb2.ConsentState.ValueType
    """The state the server claimed, checked against the evidence."""
    member_key_id: str
    """Key id of the member who signed the token."""
    token: consent_pb2.ConsentToken
    token_index: int
    token_integrated_time: datetime
    withdrawal: consent_pb2.Withdrawal | None
    withdrawal_index: int | None
    withdrawal_integrated_time: datetime | None
    checkpoint: Checkpoint
    """The verified checkpoint both proofs lead to."""

    @property
    def state_name(self) -> str:
        """``given``, ``withdrawn``, ``lapsed`` or ``invalidated``."""
        return state_name(self.state)


def state_name(state: consent_pb2.ConsentState.ValueType) -> str:
    """``given`` for CONSENT_STATE_GIVEN, and so on; the number if unknown."""
    try:
        return consent_pb2.ConsentState.Name(state).removeprefix("CONSENT_STATE_").lower()
    except ValueError:
        return str(int(state))


def verify_consent_state(
    response: consent_pb2.GetConsentStateResponse,
    verifier: NoteVerifier,
    consent_id: str,
    *,
    origin: str | None = None,
    member_key: PublicKey | None = None,
    now: datetime | None = None,
) -> VerifiedConsentState:
    """Check ``response`` (see the module docstring); return what it establishes.

    ``member_key``: the member's public key, if known (e.g. from their registration), to
    also check the token's and the withdrawal's signatures; without it, the log's inclusion
    is what vouches for them. ``now`` (default: the current time) judges lapse.

    Raises a :class:`~coalition.errors.VerificationError`: NoteError or CheckpointError for
    the checkpoint, ProofError for an inclusion proof, :class:`ConsentEvidenceError` for an
    entry that is not what it should be, :class:`ConsentStateMismatchError` for a state
    that does not follow from the evidence.
    """
    checkpoint = verify_checkpoint(response.checkpoint, verifier, origin)
    if not response.HasField("token_entry"):
        raise ConsentEvidenceError("the response has no token entry")
    token_leaf = _included(response.token_entry, checkpoint, "token")
    token_envelope = _envelope(token_leaf, "token")
    token = _statement(token_envelope, consent_pb2.ConsentToken, "token")
    if statements.statement_id(token_envelope) != consent_id:
        raise ConsentEvidenceError(
            f"the token entry holds consent {statements.statement_id(token_envelope)}, "
            f"not {consent_id}"
        )
    member = _signer(token_envelope, member_key, "token")
    token_time = _time(token_leaf)

    withdrawal: consent_pb2.Withdrawal | None = None
    withdrawal_index: int | None = None
    withdrawal_time: datetime | None = None
    if response.HasField("withdrawal_entry"):
        evidence = response.withdrawal_entry
        withdrawal_leaf = _included(evidence, checkpoint, "withdrawal")
        withdrawal_envelope = _envelope(withdrawal_leaf, "withdrawal")
        withdrawal = _statement(withdrawal_envelope, consent_pb2.Withdrawal, "withdrawal")
        if _signer(withdrawal_envelope, member_key, "withdrawal") != member:
            raise ConsentEvidenceError("the withdrawal is signed by another key than the token")
        if evidence.index <= response.token_entry.index:
            raise ConsentEvidenceError("the withdrawal comes before the token in the log")
        _check_scope(withdrawal, token, consent_id)
        withdrawal_index = evidence.index
        withdrawal_time = _time(withdrawal_leaf)

    _check_state(response.state, token, withdrawal, now or datetime.now(UTC))
    return VerifiedConsentState(
        consent_id=consent_id,
        state=response.state,
        member_key_id=member,
        token=token,
        token_index=response.token_entry.index,
        token_integrated_time=token_time,
        withdrawal=withdrawal,
        withdrawal_index=withdrawal_index,
        withdrawal_integrated_time=withdrawal_time,
        checkpoint=checkpoint,
    )


def _included(
    evidence: consent_pb2.InclusionEvidence, checkpoint: Checkpoint, what: str
) -> ledger_pb2.LedgerLeaf:
    """The entry's leaf, after checking it is in the checkpoint's tree at its index."""
    if evidence.index >= checkpoint.size:
        raise ConsentEvidenceError(
            f"the {what} entry {evidence.index} is beyond the checkpoint's size {checkpoint.size}"
        )
    leaf = bytes(evidence.leaf)
    merkle.verify_inclusion(
        merkle.leaf_hash(leaf),
        evidence.index,
        checkpoint.size,
        list(evidence.proof),
        checkpoint.root_hash,
    )
    try:
        record = ledger_pb2.LedgerLeaf.FromString(leaf)
    except DecodeError:
        raise ConsentEvidenceError(f"the {what} entry is not a ledger leaf") from None
    if not record.HasField("envelope") or not record.HasField("integrated_time"):
        raise ConsentEvidenceError(f"the {what} entry lacks its envelope or integrated time")
    return record


def _envelope(leaf: ledger_pb2.LedgerLeaf, what: str) -> dsse.Envelope:
    try:
        return dsse.Envelope.from_proto(leaf.envelope)
    except EnvelopeError as exc:
        raise ConsentEvidenceError(f"the {what} entry's envelope is malformed: {exc}") from None


def _statement(envelope: dsse.Envelope, cls: type[M], what: str) -> M:
    if envelope.payload_type != statements.payload_type(cls):
        raise ConsentEvidenceError(
            f"the {what} entry is a {statements.kind(envelope.payload_type)}, "
            f"not a {cls.DESCRIPTOR.name}"
        )
    try:
        return statements.parse_payload(cls, envelope.payload)
    except EnvelopeError as exc:
        raise ConsentEvidenceError(f"the {what} entry's statement is malformed: {exc}") from None


def _signer(envelope: dsse.Envelope, member_key: PublicKey | None, what: str) -> str:
    """The member's key id: the envelope's single signer (checked if the key is known)."""
    if len(envelope.signatures) != 1:
        raise ConsentEvidenceError(f"the {what} must carry exactly one signature (the member's)")
    keyid = envelope.signatures[0].keyid
    if member_key is not None:
        if keyid != member_key.key_id:
            raise ConsentEvidenceError(f"the {what} is not signed by the member's key")
        dsse.verify(envelope, member_key)
    return keyid


def _check_scope(
    withdrawal: consent_pb2.Withdrawal, token: consent_pb2.ConsentToken, consent_id: str
) -> None:
    scope = withdrawal.WhichOneof("scope")
    if scope == "consent_id":
        if withdrawal.consent_id != consent_id:
            raise ConsentEvidenceError(
                f"the withdrawal withdraws consent {withdrawal.consent_id}, not {consent_id}"
            )
        return
    if scope == "everything" and withdrawal.everything:
        return
    if scope == "items" and token.items.WhichOneof("selector") == "item_ids":
        named = set(token.items.item_ids.item_ids)
        if named & set(withdrawal.items.item_ids):
            return
    raise ConsentEvidenceError("the withdrawal does not name this consent")


def _check_state(
    state: consent_pb2.ConsentState.ValueType,
    token: consent_pb2.ConsentToken,
    withdrawal: consent_pb2.Withdrawal | None,
    now: datetime,
) -> None:
    name = state_name(state)
    if state in (consent_pb2.CONSENT_STATE_WITHDRAWN, consent_pb2.CONSENT_STATE_INVALIDATED):
        if withdrawal is None:
            raise ConsentStateMismatchError(f"the state is {name} but no withdrawal is shown")
        return
    if withdrawal is not None:
        raise ConsentStateMismatchError(f"the state is {name} but a withdrawal is shown")
    not_after = _to_datetime(token.not_after.seconds, token.not_after.nanos)
    if state == consent_pb2.CONSENT_STATE_GIVEN:
        if now >= not_after + CLOCK_SKEW:
            raise ConsentStateMismatchError(
                f"the state is given but the token lapsed at {not_after.isoformat()}"
            )
        return
    if state == consent_pb2.CONSENT_STATE_LAPSED:
        if now < not_after - CLOCK_SKEW:
            raise ConsentStateMismatchError(
                f"the state is lapsed but the token is valid until {not_after.isoformat()}"
            )
        return
    raise ConsentStateMismatchError(f"unknown consent state {name}")


def _time(leaf: ledger_pb2.LedgerLeaf) -> datetime:
    return _to_datetime(leaf.integrated_time.seconds, leaf.integrated_time.nanos)


def _to_datetime(seconds: int, nanos: int) -> datetime:
    try:
        return _EPOCH + timedelta(seconds=seconds, microseconds=nanos // 1000)
    except OverflowError:
        raise ConsentEvidenceError("a timestamp is out of range") from None
