"""The compliance rules, on hand-made ledgers (no server): notices, receipts, and every way a
release can come after a withdrawal."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime, timedelta

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from coalition import statements
from coalition.client import item_id
from coalition.compliance import ComplianceReport, NoticeState, compliance_report
from coalition.keys import SigningKey
from coalition.v1 import (
    access_pb2,
    consent_pb2,
    items_pb2,
    ledger_pb2,
    party_pb2,
    terms_pb2,
)

T0 = datetime(2030, 1, 1, tzinfo=UTC)
COALITION = SigningKey.generate()
MEMBER = SigningKey.generate()
LAB = SigningKey.generate()
OTHER_LAB = SigningKey.generate()


def ts(when: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


class Ledger:
    """Builds a ledger one statement at a time, a second apart."""

    def __init__(self) -> None:
        self.leaves: list[tuple[int, ledger_pb2.LedgerLeaf]] = []

    @property
    def time(self) -> datetime:
        return T0 + timedelta(seconds=len(self.leaves))

    def add(self, statement: Message, key: SigningKey) -> tuple[int, str]:
        envelope = statements.sign_statement(statement, key)
        index = len(self.leaves)
        self.leaves.append(
            (
                index,
                ledger_pb2.LedgerLeaf(integrated_time=ts(self.time), envelope=envelope.to_proto()),
            )
        )
        return index, statements.statement_id(envelope)

    def party(self, key: SigningKey, role: party_pb2.Role.ValueType, name: str) -> None:
        self.add(
            party_pb2.PartyRegistration(
                role=role, name=name, signing_key=key.public_key.raw, nonce=os.urandom(16)
            ),
            key,
        )

    def item(self, content: bytes, tags: tuple[str, ...] = ()) -> str:
        commitment = hashlib.sha256(content).digest()
        self.add(
            items_pb2.ItemRegistration(
                commitment=commitment, size_bytes=len(content), media_type="text/plain",
                tags=list(tags), nonce=os.urandom(16),
            ),
            MEMBER,
        )  # fmt: skip
        return item_id(MEMBER.key_id, commitment)

    def token(self, **selector: object) -> str:
        items = terms_pb2.ItemSelector(**selector)  # type: ignore[arg-type]
        return self.add(
            consent_pb2.ConsentToken(
                items=items, purposes=[terms_pb2.PURPOSE_TRAIN_AI], nonce=os.urandom(16)
            ),
            MEMBER,
        )[1]

    def withdraw(self, **scope: object) -> tuple[int, str]:
        return self.add(consent_pb2.Withdrawal(nonce=os.urandom(16), **scope), MEMBER)  # type: ignore[arg-type]

    def shred(self, withdrawal_id: str, ids: list[str]) -> None:
        self.add(
            access_pb2.ShreddingRecord(withdrawal_id=withdrawal_id, item_ids=sorted(ids)), COALITION
        )

    def notice(
        self,
        withdrawal_id: str,
        ids: list[str],
        *,
        lab: SigningKey = LAB,
        agreement: str = "a1",
        deadline: timedelta = timedelta(seconds=10),
    ) -> str:
        return self.add(
            access_pb2.WithdrawalNotice(
                withdrawal_id=withdrawal_id, lab_key_id=lab.key_id, agreement_id=agreement,
                item_ids=sorted(ids), respond_by=ts(self.time + deadline),
            ),
            COALITION,
        )[1]  # fmt: skip

    def receipt(self, notice_id: str, ids: list[str], lab: SigningKey = LAB) -> None:
        self.add(
            access_pb2.DeletionReceipt(
                notice_id=notice_id, item_ids=sorted(ids), nonce=os.urandom(16)
            ),
            lab,
        )

    def release(
        self,
        ids: list[str],
        *,
        lab: SigningKey = LAB,
        agreement: str = "a1",
        signer: SigningKey = COALITION,
    ) -> int:
        return self.add(
            access_pb2.KeyRelease(
                lease_id="l1", agreement_id=agreement, lab_key_id=lab.key_id, item_ids=sorted(ids)
            ),
            signer,
        )[0]  # fmt: skip

    def report(self, now: datetime | None = None) -> ComplianceReport:
        return compliance_report(self.leaves, now=now, coalition_key_id=COALITION.key_id)


def fresh() -> Ledger:
    ledger = Ledger()
    ledger.party(MEMBER, party_pb2.ROLE_CONTRIBUTOR, "Ada")
    ledger.party(LAB, party_pb2.ROLE_LAB, "Lab One")
    ledger.party(OTHER_LAB, party_pb2.ROLE_LAB, "Lab Two")
    return ledger


def test_receipts_in_time_late_missing_and_pending() -> None:
    ledger = fresh()
    a = ledger.item(b"a")
    _, w = ledger.withdraw(items=terms_pb2.ItemIdList(item_ids=[a]))
    on_time = ledger.notice(w, [a], deadline=timedelta(seconds=5))
    late = ledger.notice(w, [a], deadline=timedelta(seconds=1), agreement="a2")
    missing = ledger.notice(w, [a], deadline=timedelta(seconds=1), agreement="a3")
    pending = ledger.notice(w, [a], deadline=timedelta(hours=1), agreement="a4")
    ledger.receipt(on_time, [a])
    ledger.receipt(on_time, [a])  # a second receipt changes nothing
    ledger.receipt(late, [a], lab=OTHER_LAB)  # not the notified lab: does not count
    ledger.add(access_pb2.ShreddingRecord(withdrawal_id=w), COALITION)  # filler: time passes
    ledger.receipt(late, [a])
    report = ledger.report()
    states = {n.notice_id: n.state for n in report.notices}
    assert states == {
        on_time: NoticeState.IN_TIME,
        late: NoticeState.LATE,
        missing: NoticeState.MISSING,
        pending: NoticeState.PENDING,
    }
    lab = report.lab(LAB.key_id)
    assert lab is not None
    assert (lab.notices, lab.receipts_in_time, lab.receipts_late, lab.missing, lab.pending) == (
        4, 1, 1, 1, 1,
    )  # fmt: skip
    assert lab.name == "Lab One"
    assert lab.violations == 2
    assert not report.ok
    other = report.lab(OTHER_LAB.key_id)
    assert other is not None
    assert other.ok
    assert other.notices == 0
    # Before the deadlines, nothing is missing yet.
    early = ledger.report(now=T0)
    assert {n.state for n in early.notices if n.receipt_index is None} == {NoticeState.PENDING}
    json_form = report.to_json()
    assert json_form["ok"] is False
    assert {n["state"] for n in json_form["notices"]} == {"in_time", "late", "missing", "pending"}


def test_release_after_an_item_withdrawal_is_a_violation_for_every_lab() -> None:
    ledger = fresh()
    a, b = ledger.item(b"a"), ledger.item(b"b")
    ledger.token(all_items=True)
    ledger.release([a, b])
    w_index, w = ledger.withdraw(items=terms_pb2.ItemIdList(item_ids=[a]))
    ledger.release([b])  # fine: b was not withdrawn
    bad = ledger.release([a, b], lab=OTHER_LAB, agreement="a9")
    ledger.token(all_items=True)  # renewed consent does not undo an item withdrawal
    worse = ledger.release([a])
    report = ledger.report()
    assert [
        (v.release_index, v.item_id, v.rule, v.withdrawal_index) for v in report.violations
    ] == [
        (bad, a, "item-withdrawal", w_index),
        (worse, a, "item-withdrawal", w_index),
    ]
    assert report.violations[0].withdrawal_id == w
    assert report.lab(OTHER_LAB.key_id).releases_after_withdrawal == 1  # type: ignore[union-attr]
    assert not report.ok


def test_token_withdrawals_bar_what_was_shredded_and_notified() -> None:
    ledger = fresh()
    a, b, c = ledger.item(b"a", ("x",)), ledger.item(b"b"), ledger.item(b"c")
    token = ledger.token(all_items=True)
    w_index, w = ledger.withdraw(consent_id=token)
    # A release sequenced between the withdrawal and its follow-ups still counts.
    between = ledger.release([a])
    ledger.shred(w, [a])
    ledger.notice(w, [b], agreement="a1")
    ledger.release([c])  # c lost no consent: fine
    ledger.release([b], agreement="a2")  # b is barred under a1 only
    under_a1 = ledger.release([b], agreement="a1")
    report = ledger.report()
    assert [(v.release_index, v.item_id, v.rule) for v in report.violations] == [
        (between, a, "shredded"),
        (under_a1, b, "notice"),
    ]
    assert all(v.withdrawal_index == w_index for v in report.violations)


def test_consent_given_anew_lifts_a_token_withdrawals_bar() -> None:
    ledger = fresh()
    a, b = ledger.item(b"a", ("x",)), ledger.item(b"b")
    token = ledger.token(all_items=True)
    _, w = ledger.withdraw(consent_id=token)
    ledger.shred(w, [a, b])
    ledger.token(tag="x")  # names a again, not b
    ledger.release([a])
    barred = ledger.release([b])
    report = ledger.report()
    assert [(v.release_index, v.item_id) for v in report.violations] == [(barred, b)]


def test_only_the_coalitions_statements_count() -> None:
    ledger = fresh()
    a = ledger.item(b"a")
    ledger.withdraw(items=terms_pb2.ItemIdList(item_ids=[a]))
    ledger.release([a], signer=OTHER_LAB)  # forged: not the coalition's
    report = ledger.report()
    assert report.violations == ()
    assert report.lab(LAB.key_id).releases == 0  # type: ignore[union-attr]
    # Raw leaf bytes are accepted too.
    raw = [(i, leaf.SerializeToString()) for i, leaf in ledger.leaves]
    assert compliance_report(raw).lab(LAB.key_id).releases == 1  # type: ignore[union-attr]


def test_the_coalition_key_can_come_from_the_ledger() -> None:
    ledger = Ledger()
    ledger.party(COALITION, party_pb2.ROLE_COALITION, "coalition")
    ledger.party(MEMBER, party_pb2.ROLE_CONTRIBUTOR, "Ada")
    ledger.party(LAB, party_pb2.ROLE_LAB, "Lab One")
    a = ledger.item(b"a")
    ledger.release([a])
    ledger.release([a], signer=OTHER_LAB)  # not the registered coalition's: ignored
    report = compliance_report(ledger.leaves)
    lab = report.lab(LAB.key_id)
    assert lab is not None
    assert lab.releases == 1
    assert [lab.lab_key_id for lab in report.labs] == [LAB.key_id]
