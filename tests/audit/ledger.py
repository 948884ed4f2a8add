"""Ledgers built in memory for the replay tests: parties, statements, leaves, checkpoints.

:func:`honest_ledger` is a small but complete log, every statement type signed as the
protocol says; a test swaps one entry for a violating one with :meth:`Ledger.replace`.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from coalition import dsse, merkle, statements
from coalition.audit import AuditError, ExpectedKey, LedgerReplay, ReplayResult
from coalition.checkpoint import Checkpoint
from coalition.client import item_id
from coalition.keys import SigningKey
from coalition.v1 import (
    access_pb2,
    consent_pb2,
    disputes_pb2,
    items_pb2,
    ledger_pb2,
    negotiation_pb2,
    party_pb2,
    terms_pb2,
)

ORIGIN: Final = "coalition.test/audit"
T0: Final = 1_750_000_000
ITEM_ID: Final = "0123456789abcdef0123456789abcdef"
ITEM_COMMITMENT: Final = bytes(range(32))
"""The commitment of the member's item in the honest ledger (so its id is known)."""


@dataclass(frozen=True)
class Parties:
    """Everyone in the honest ledger (and an outsider who never registers)."""

    coalition: SigningKey
    member: SigningKey
    other_member: SigningKey
    lab: SigningKey
    other_lab: SigningKey
    auditor: SigningKey
    outsider: SigningKey

    @classmethod
    def generate(cls) -> Parties:
        return cls(*(SigningKey.generate() for _ in range(7)))


def registration(
    key: SigningKey, role: party_pb2.Role.ValueType, name: str = "party"
) -> party_pb2.PartyRegistration:
    """A well-formed registration of ``key`` with ``role``."""
    return party_pb2.PartyRegistration(
        role=role,
        name=name,
        signing_key=key.public_key.raw,
        encryption_key=key.encryption_public_key_raw(),
        created_time=Timestamp(seconds=T0),
        nonce=os.urandom(16),
    )


def signed(statement: Message, *signers: SigningKey) -> dsse.Envelope:
    """``statement`` signed by each of ``signers``, in order (one: sign_statement itself)."""
    if len(signers) == 1:
        return statements.sign_statement(statement, signers[0])
    payload_type = statements.payload_type(type(statement))
    payload = statement.SerializeToString()
    message = dsse.pae(payload_type, payload)
    return dsse.Envelope(
        payload_type, payload, tuple(dsse.Signature(k.key_id, k.sign(message)) for k in signers)
    )


def leaf(envelope: dsse.Envelope, seconds: int) -> bytes:
    """A LedgerLeaf exactly as the server serialises it."""
    return ledger_pb2.LedgerLeaf(
        integrated_time=Timestamp(seconds=seconds), envelope=envelope.to_proto()
    ).SerializeToString(deterministic=True)


def item_registration(commitment: bytes | None = None) -> items_pb2.ItemRegistration:
    return items_pb2.ItemRegistration(
        commitment=os.urandom(32) if commitment is None else commitment,
        size_bytes=3,
        media_type="text/plain",
        created_time=Timestamp(seconds=T0),
        nonce=os.urandom(16),
    )


def consent_token() -> consent_pb2.ConsentToken:
    return consent_pb2.ConsentToken(
        items=terms_pb2.ItemSelector(all_items=True),
        purposes=[terms_pb2.PURPOSE_TRAIN_AI],
        created_time=Timestamp(seconds=T0),
        nonce=os.urandom(16),
    )


def withdrawal() -> consent_pb2.Withdrawal:
    return consent_pb2.Withdrawal(
        everything=True, created_time=Timestamp(seconds=T0), nonce=os.urandom(16)
    )


def agreement(
    lab_key_id: str, item_ids: tuple[str, ...] = (ITEM_ID,), nonce: bytes | None = None
) -> access_pb2.Agreement:
    return access_pb2.Agreement(
        lab_key_id=lab_key_id,
        terms=terms_pb2.LicenceTerms(
            purposes=[terms_pb2.PURPOSE_TRAIN_AI],
            deletion_deadline=Duration(seconds=86_400),
            lease_duration=Duration(seconds=3_600),
        ),
        covered_items_root=merkle.leaf_hash(item_ids[0].encode()),
        covered_item_count=len(item_ids),
        covered_item_ids=list(item_ids),
        created_time=Timestamp(seconds=T0),
        nonce=os.urandom(16) if nonce is None else nonce,
    )


def statement_id_of(statement: Message) -> str:
    """A statement's id, known before anyone signs it (signatures are not part of it)."""
    payload_type = statements.payload_type(type(statement))
    return hashlib.sha256(dsse.pae(payload_type, statement.SerializeToString())).hexdigest()[:32]


def member_item_id(p: Parties) -> str:
    """The id of the member's item in the honest ledger."""
    return item_id(p.member.key_id, ITEM_COMMITMENT)


def honest_agreement(p: Parties) -> access_pb2.Agreement:
    """The honest ledger's agreement: the lab's, covering the member's item."""
    return agreement(p.lab.key_id, (member_item_id(p),), nonce=b"agreement-000001")


def dispute(agreement_id: str, nonce: bytes = b"dispute-00000001") -> disputes_pb2.Dispute:
    """A member's dispute about ``agreement_id``."""
    return disputes_pb2.Dispute(
        agreement_id=agreement_id,
        norm_ids=["prohibited-use"],
        declaration_fields=["application_domains"],
        text="The model is marketed for surveillance.",
        created_time=Timestamp(seconds=T0),
        nonce=nonce,
    )


def honest_dispute(p: Parties) -> disputes_pb2.Dispute:
    """The honest ledger's dispute: the member's, about the honest agreement."""
    return dispute(statement_id_of(honest_agreement(p)))


def dispute_response(dispute_id: str) -> disputes_pb2.DisputeResponse:
    """A lab's answer to ``dispute_id``."""
    return disputes_pb2.DisputeResponse(
        dispute_id=dispute_id,
        text="We do not sell to surveillance customers.",
        created_time=Timestamp(seconds=T0),
        nonce=os.urandom(16),
    )


def negotiation_request(nonce: bytes = b"negotiation-0001") -> negotiation_pb2.NegotiationRequest:
    """A lab's opening request; fixed by its nonce, so its id is known in advance."""
    return negotiation_pb2.NegotiationRequest(
        terms=terms_pb2.LicenceTerms(purposes=[terms_pb2.PURPOSE_TRAIN_AI]),
        created_time=Timestamp(seconds=T0),
        nonce=nonce,
    )


def negotiation_id(request: negotiation_pb2.NegotiationRequest) -> str:
    """The id of the negotiation ``request`` opens: its statement id (signers aside)."""
    payload_type = statements.payload_type(negotiation_pb2.NegotiationRequest)
    return hashlib.sha256(dsse.pae(payload_type, request.SerializeToString())).hexdigest()[:32]


NEGOTIATION_ID: Final = negotiation_id(negotiation_request())
"""The honest ledger's one negotiation."""


def negotiation_move(
    negotiation: str = NEGOTIATION_ID, round_: int = 1
) -> negotiation_pb2.NegotiationMove:
    return negotiation_pb2.NegotiationMove(
        negotiation_id=negotiation,
        round=round_,
        kind=negotiation_pb2.MOVE_KIND_OFFER,
        created_time=Timestamp(seconds=T0),
        nonce=os.urandom(16),
    )


def ratification_call(negotiation: str = NEGOTIATION_ID) -> negotiation_pb2.RatificationCall:
    return negotiation_pb2.RatificationCall(
        negotiation_id=negotiation, covered_items=1, covered_members=1
    )


def ballot(negotiation: str = NEGOTIATION_ID) -> negotiation_pb2.Ballot:
    return negotiation_pb2.Ballot(
        negotiation_id=negotiation,
        approve=True,
        created_time=Timestamp(seconds=T0),
        nonce=os.urandom(16),
    )


def ratification_result(negotiation: str = NEGOTIATION_ID) -> negotiation_pb2.RatificationResult:
    return negotiation_pb2.RatificationResult(negotiation_id=negotiation, approved=True)


def lease_request() -> access_pb2.LeaseRequest:
    return access_pb2.LeaseRequest(
        agreement_id="a" * 32, created_time=Timestamp(seconds=T0), nonce=os.urandom(16)
    )


def key_release(lab_key_id: str) -> access_pb2.KeyRelease:
    return access_pb2.KeyRelease(
        lease_id="b" * 32,
        agreement_id="a" * 32,
        lab_key_id=lab_key_id,
        item_ids=[ITEM_ID],
        nonce=os.urandom(16),
    )


def withdrawal_notice(lab_key_id: str) -> access_pb2.WithdrawalNotice:
    return access_pb2.WithdrawalNotice(
        withdrawal_id="c" * 32,
        lab_key_id=lab_key_id,
        agreement_id="a" * 32,
        item_ids=[ITEM_ID],
        respond_by=Timestamp(seconds=T0 + 86_400),
    )


def shredding_record() -> access_pb2.ShreddingRecord:
    return access_pb2.ShreddingRecord(withdrawal_id="c" * 32, item_ids=[ITEM_ID])


def deletion_receipt() -> access_pb2.DeletionReceipt:
    return access_pb2.DeletionReceipt(
        notice_id="d" * 32,
        item_ids=[ITEM_ID],
        deleted_time=Timestamp(seconds=T0 + 60),
        nonce=os.urandom(16),
    )


# Statement kinds signed by exactly one party, by who that is (see coalition.audit).
CONTRIBUTOR_SIGNED: Final = (
    "ItemRegistration",
    "ConsentToken",
    "Withdrawal",
    "Ballot",
    "StrikePledge",
    "PledgeRetraction",
    "Dispute",
)
LAB_SIGNED: Final = ("LeaseRequest", "DeletionReceipt", "NegotiationRequest", "DisputeResponse")
COALITION_SIGNED: Final = (
    "KeyRelease",
    "WithdrawalNotice",
    "ShreddingRecord",
    "RatificationCall",
    "RatificationResult",
    "PayoutStatement",
    "StrikeExecution",
)
LAB_OR_COALITION_SIGNED: Final = ("NegotiationMove",)


def statement(kind: str, p: Parties) -> Message:
    """A statement of ``kind``: filled in for the core types, else an empty one."""
    made: dict[str, Callable[[], Message]] = {
        "ItemRegistration": item_registration,
        "ConsentToken": consent_token,
        "Withdrawal": withdrawal,
        "Agreement": lambda: honest_agreement(p),
        "LeaseRequest": lease_request,
        "KeyRelease": lambda: key_release(p.lab.key_id),
        "WithdrawalNotice": lambda: withdrawal_notice(p.lab.key_id),
        "ShreddingRecord": shredding_record,
        "DeletionReceipt": deletion_receipt,
        # Negotiation statements are about the honest ledger's negotiation.
        "NegotiationRequest": negotiation_request,
        "NegotiationMove": negotiation_move,
        "RatificationCall": ratification_call,
        "Ballot": ballot,
        "RatificationResult": ratification_result,
        # Disputes are about the honest ledger's agreement.
        "Dispute": lambda: honest_dispute(p),
        "DisputeResponse": lambda: dispute_response(statement_id_of(honest_dispute(p))),
    }
    if kind in made:
        return made[kind]()
    # Strike statements and payouts: the signer rules do not look inside them.
    return statements.STATEMENT_TYPES[statements.PAYLOAD_TYPE_PREFIX + kind + "+proto"]()


@dataclass
class Ledger:
    """Envelopes in log order, with names for the interesting entries."""

    envelopes: list[dsse.Envelope] = field(default_factory=list)
    names: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, envelope: dsse.Envelope) -> None:
        self.names[name] = len(self.envelopes)
        self.envelopes.append(envelope)

    def index(self, name: str) -> int:
        return self.names[name]

    def replace(self, name: str, envelope: dsse.Envelope) -> Ledger:
        """A copy with the named entry swapped for ``envelope``."""
        envelopes = list(self.envelopes)
        envelopes[self.names[name]] = envelope
        return Ledger(envelopes, dict(self.names))

    def leaves(self) -> list[bytes]:
        """The leaves, one second apart."""
        return [leaf(e, T0 + i) for i, e in enumerate(self.envelopes)]


def honest_ledger(p: Parties) -> Ledger:
    """Every statement type, each signed exactly as the protocol says."""
    ledger = Ledger()
    ledger.add(
        "coalition", signed(registration(p.coalition, party_pb2.ROLE_COALITION), p.coalition)
    )
    ledger.add("member", signed(registration(p.member, party_pb2.ROLE_CONTRIBUTOR), p.member))
    ledger.add(
        "other_member",
        signed(registration(p.other_member, party_pb2.ROLE_CONTRIBUTOR), p.other_member),
    )
    ledger.add("lab", signed(registration(p.lab, party_pb2.ROLE_LAB), p.lab))
    ledger.add("other_lab", signed(registration(p.other_lab, party_pb2.ROLE_LAB), p.other_lab))
    ledger.add("auditor", signed(registration(p.auditor, party_pb2.ROLE_AUDITOR), p.auditor))
    ledger.add("ItemRegistration", signed(item_registration(ITEM_COMMITMENT), p.member))
    ledger.add("ConsentToken", signed(consent_token(), p.member))
    # The lab opens negotiation NEGOTIATION_ID; the coalition and that lab move in it.
    ledger.add("NegotiationRequest", signed(negotiation_request(), p.lab))
    ledger.add("NegotiationMove", signed(negotiation_move(round_=1), p.coalition))
    ledger.add("NegotiationMove by the lab", signed(negotiation_move(round_=2), p.lab))
    ledger.add("RatificationCall", signed(ratification_call(), p.coalition))
    ledger.add("Ballot", signed(ballot(), p.member))
    ledger.add("RatificationResult", signed(ratification_result(), p.coalition))
    # The lab signs first and the coalition countersigns, as the server does.
    ledger.add("Agreement", signed(honest_agreement(p), p.lab, p.coalition))
    ledger.add("PayoutStatement", signed(statement("PayoutStatement", p), p.coalition))
    # A member the agreement covers disputes it; the agreement's lab answers.
    ledger.add("Dispute", signed(honest_dispute(p), p.member))
    ledger.add("DisputeResponse", signed(statement("DisputeResponse", p), p.lab))
    ledger.add("LeaseRequest", signed(lease_request(), p.lab))
    ledger.add("KeyRelease", signed(key_release(p.lab.key_id), p.coalition))
    ledger.add("StrikePledge", signed(statement("StrikePledge", p), p.member))
    ledger.add("PledgeRetraction", signed(statement("PledgeRetraction", p), p.member))
    ledger.add("StrikeExecution", signed(statement("StrikeExecution", p), p.coalition))
    ledger.add("Withdrawal", signed(withdrawal(), p.member))
    ledger.add("WithdrawalNotice", signed(withdrawal_notice(p.lab.key_id), p.coalition))
    ledger.add("ShreddingRecord", signed(shredding_record(), p.coalition))
    ledger.add("DeletionReceipt", signed(deletion_receipt(), p.lab))
    return ledger


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def checkpoint_of(leaves: list[bytes]) -> Checkpoint:
    tree = merkle.CompactRange.empty()
    for item in leaves:
        tree.append(merkle.leaf_hash(item))
    return Checkpoint(ORIGIN, len(leaves), tree.root())


def replay(
    leaves: list[bytes],
    *,
    defer: bool = False,
    expected: tuple[ExpectedKey, ...] = (),
) -> ReplayResult:
    """Feed every leaf and finish at their checkpoint; raises AuditError on a failed check.

    A failing :meth:`LedgerReplay.feed` must leave the replay exactly as it was.
    """
    r = LedgerReplay(expected_coalition_keys=expected, defer_signatures=defer)
    for i, item in enumerate(leaves):
        before = (r.size, r.root(), r.kinds, r.coalition_key, r.deferred)
        try:
            r.feed(i, item, leaf_hash=merkle.leaf_hash(item))
        except AuditError:
            assert (r.size, r.root(), r.kinds, r.coalition_key, r.deferred) == before
            raise
    return r.finish(checkpoint_of(leaves))
