"""Each lab's compliance, computed from the ledger alone.

:func:`compliance_report` reads the ledger's leaves (in index order) and reports, for each
lab, the withdrawal notices it received and how it answered them, and every key release it
got after a withdrawal barred it. It does no I/O and trusts nothing but the leaves it is
given; verify those first (``coalition audit verify`` replays signatures and the root).

Notices and receipts
    A ``WithdrawalNotice`` (signed by the coalition) names a lab and a deadline,
    ``respond_by``. The lab answers with a ``DeletionReceipt`` it signs, naming the notice's
    statement id. The first such receipt signed by the notice's lab counts: it is *in time*
    when its entry's integration time is at or before ``respond_by`` (the log's time is the
    authority for every deadline), *late* otherwise. A notice without a receipt is *missing*
    once ``now`` is past ``respond_by``, and *pending* before.

Releases after a withdrawal (must be zero)
    A ``KeyRelease`` names a lab, an agreement and item ids. An item is *barred* from the
    index of the member's ``Withdrawal`` entry on, as follows:

    * a withdrawal of **items** names them explicitly: each item the member owns (per its
      ``ItemRegistration``) is barred for every lab, for good;
    * a withdrawal of a **token** or of **everything** names no items: its consequences are
      the coalition's follow-up entries carrying the withdrawal's statement id. The items of
      its ``ShreddingRecord`` (no consent left at all) are barred for every lab; the items of
      each ``WithdrawalNotice`` are barred for releases under that notice's agreement (the
      items lost consent for those terms). Such a bar starts at the withdrawal's index, not
      at the follow-up's, and lifts only when the same member later grants a
      ``ConsentToken`` that names the item again (by id, by one of its registered tags, or
      all items): consent given anew.

    Every (release, item) pair with a bar in force at the release's index is a violation.

Disputes and responses (reported, not violations)
    A ``Dispute`` is signed by a member the named agreement covers (the owner, per its
    ``ItemRegistration``, of an item the ``Agreement`` lists), after that agreement; others
    are ignored. The agreement's lab answers with a ``DisputeResponse`` naming the dispute's
    statement id; the first one the lab signs counts, anyone else's is ignored. A dispute is
    *answered* once it has such a response, *open* before. Ages come from the log's
    integration times: how long an open dispute has been open at ``now``, and how long an
    answered one waited for its answer. An allegation is not a finding, so disputes are
    shown beside the violations, never counted among them.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from google.protobuf.message import DecodeError

from coalition import dsse, statements
from coalition.client import item_id
from coalition.errors import CoalitionError
from coalition.v1 import (
    access_pb2,
    consent_pb2,
    disputes_pb2,
    items_pb2,
    ledger_pb2,
    party_pb2,
)

__all__ = [
    "AgreementDisputes",
    "ComplianceReport",
    "DisputeState",
    "DisputeStatus",
    "LabCompliance",
    "NoticeState",
    "NoticeStatus",
    "ReleaseViolation",
    "compliance_report",
]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


class NoticeState(enum.StrEnum):
    """How a notice was answered."""

    IN_TIME = "in_time"
    LATE = "late"
    MISSING = "missing"
    PENDING = "pending"


@dataclass(frozen=True)
class NoticeStatus:
    """One withdrawal notice and its answer."""

    notice_id: str
    index: int
    lab_key_id: str
    agreement_id: str
    withdrawal_id: str
    item_ids: tuple[str, ...]
    issued_time: datetime
    respond_by: datetime
    state: NoticeState
    receipt_index: int | None = None
    receipt_time: datetime | None = None


class DisputeState(enum.StrEnum):
    """Whether the lab answered a dispute."""

    OPEN = "open"
    ANSWERED = "answered"


@dataclass(frozen=True)
class DisputeStatus:
    """One dispute, what it alleges, and its answer."""

    dispute_id: str
    index: int
    agreement_id: str
    lab_key_id: str
    member_key_id: str
    norm_ids: tuple[str, ...]
    declaration_fields: tuple[str, ...]
    filed_time: datetime
    state: DisputeState
    response_index: int | None = None
    response_time: datetime | None = None
    open_for: timedelta | None = None
    """OPEN: how long it has been open at the report's ``now`` (None without a ``now``)."""
    answered_after: timedelta | None = None
    """ANSWERED: how long the lab took to answer."""


@dataclass(frozen=True)
class AgreementDisputes:
    """The disputes about one agreement."""

    agreement_id: str
    lab_key_id: str
    disputes: int
    open: int
    answered: int
    longest_open: timedelta | None
    """The age of its oldest open dispute (None: none open, or no ``now``)."""
    slowest_answer: timedelta | None
    """The longest a lab took to answer one (None: none answered)."""


@dataclass(frozen=True)
class ReleaseViolation:
    """A key released for an item after a withdrawal barred it."""

    release_index: int
    lab_key_id: str
    agreement_id: str
    lease_id: str
    item_id: str
    withdrawal_index: int
    withdrawal_id: str
    rule: str
    """``item-withdrawal``, ``shredded`` or ``notice``: which bar the release broke."""


@dataclass(frozen=True)
class LabCompliance:
    """One lab's record."""

    lab_key_id: str
    name: str
    agreements: int
    releases: int
    notices: int
    receipts_in_time: int
    receipts_late: int
    missing: int
    pending: int
    releases_after_withdrawal: int
    disputes: int = 0
    """Disputes about its agreements (allegations: not violations)."""
    disputes_open: int = 0
    """Of those, not answered yet."""

    @property
    def violations(self) -> int:
        """Late receipts, receipts missing past their deadline, releases after withdrawal."""
        return self.receipts_late + self.missing + self.releases_after_withdrawal

    @property
    def ok(self) -> bool:
        """No violation."""
        return self.violations == 0


@dataclass(frozen=True)
class ComplianceReport:
    """Every lab's compliance, as of ``now``."""

    now: datetime | None
    entries: int
    labs: tuple[LabCompliance, ...]
    notices: tuple[NoticeStatus, ...]
    violations: tuple[ReleaseViolation, ...]
    disputes: tuple[DisputeStatus, ...] = ()
    agreement_disputes: tuple[AgreementDisputes, ...] = ()
    """Per disputed agreement, in order of agreement id."""

    @property
    def ok(self) -> bool:
        """No lab has a violation."""
        return all(lab.ok for lab in self.labs) and not self.violations

    def lab(self, key_id: str) -> LabCompliance | None:
        """The record of one lab, or None if the ledger never mentions it."""
        return next((lab for lab in self.labs if lab.lab_key_id == key_id), None)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "ok": self.ok,
            "now": _iso(self.now),
            "entries": self.entries,
            "labs": [
                {
                    "lab_key_id": lab.lab_key_id,
                    "name": lab.name,
                    "agreements": lab.agreements,
                    "releases": lab.releases,
                    "notices": lab.notices,
                    "receipts_in_time": lab.receipts_in_time,
                    "receipts_late": lab.receipts_late,
                    "missing": lab.missing,
                    "pending": lab.pending,
                    "releases_after_withdrawal": lab.releases_after_withdrawal,
                    "disputes": lab.disputes,
                    "disputes_open": lab.disputes_open,
                    "violations": lab.violations,
                    "ok": lab.ok,
                }
                for lab in self.labs
            ],
            "notices": [
                {
                    "notice_id": n.notice_id,
                    "index": n.index,
                    "lab_key_id": n.lab_key_id,
                    "agreement_id": n.agreement_id,
                    "withdrawal_id": n.withdrawal_id,
                    "item_ids": list(n.item_ids),
                    "issued_time": _iso(n.issued_time),
                    "respond_by": _iso(n.respond_by),
                    "state": n.state.value,
                    "receipt_index": n.receipt_index,
                    "receipt_time": _iso(n.receipt_time),
                }
                for n in self.notices
            ],
            "releases_after_withdrawal": [
                {
                    "release_index": v.release_index,
                    "lab_key_id": v.lab_key_id,
                    "agreement_id": v.agreement_id,
                    "lease_id": v.lease_id,
                    "item_id": v.item_id,
                    "withdrawal_index": v.withdrawal_index,
                    "withdrawal_id": v.withdrawal_id,
                    "rule": v.rule,
                }
                for v in self.violations
            ],
            "disputes": [
                {
                    "dispute_id": d.dispute_id,
                    "index": d.index,
                    "agreement_id": d.agreement_id,
                    "lab_key_id": d.lab_key_id,
                    "member_key_id": d.member_key_id,
                    "norm_ids": list(d.norm_ids),
                    "declaration_fields": list(d.declaration_fields),
                    "filed_time": _iso(d.filed_time),
                    "state": d.state.value,
                    "response_index": d.response_index,
                    "response_time": _iso(d.response_time),
                    "open_for_seconds": _seconds(d.open_for),
                    "answered_after_seconds": _seconds(d.answered_after),
                }
                for d in self.disputes
            ],
            "agreement_disputes": [
                {
                    "agreement_id": a.agreement_id,
                    "lab_key_id": a.lab_key_id,
                    "disputes": a.disputes,
                    "open": a.open,
                    "answered": a.answered,
                    "longest_open_seconds": _seconds(a.longest_open),
                    "slowest_answer_seconds": _seconds(a.slowest_answer),
                }
                for a in self.agreement_disputes
            ],
        }


# --- what the first pass collects -------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    owner: str
    tags: frozenset[str]


@dataclass(frozen=True)
class _Withdrawal:
    index: int
    member: str
    statement: consent_pb2.Withdrawal


@dataclass(frozen=True)
class _Notice:
    notice_id: str
    index: int
    time: datetime
    statement: access_pb2.WithdrawalNotice


@dataclass(frozen=True)
class _Receipt:
    index: int
    time: datetime
    signer: str
    statement: access_pb2.DeletionReceipt


@dataclass(frozen=True)
class _Release:
    index: int
    statement: access_pb2.KeyRelease


@dataclass(frozen=True)
class _Grant:
    index: int
    member: str
    selector: consent_pb2.ConsentToken


@dataclass(frozen=True)
class _Filed:
    dispute_id: str
    index: int
    time: datetime
    member: str
    statement: disputes_pb2.Dispute


@dataclass(frozen=True)
class _Answer:
    index: int
    time: datetime
    signer: str
    statement: disputes_pb2.DisputeResponse


@dataclass(frozen=True)
class _Bar:
    start: int
    agreement_id: str | None  # None: every lab, every agreement
    withdrawal_id: str
    rule: str
    lift: int | None  # index of the renewed consent that lifts it, if any


@dataclass
class _Ledger:
    entries: int = 0
    last_time: datetime | None = None
    lab_names: dict[str, str] = field(default_factory=dict)
    agreements: dict[str, str] = field(default_factory=dict)  # agreement id -> lab
    # agreement id -> the members it covers (owners of its items registered before it)
    covered_members: dict[str, frozenset[str]] = field(default_factory=dict)
    items: dict[str, _Item] = field(default_factory=dict)
    withdrawals: dict[str, _Withdrawal] = field(default_factory=dict)
    shreddings: list[tuple[int, access_pb2.ShreddingRecord]] = field(default_factory=list)
    notices: list[_Notice] = field(default_factory=list)
    receipts: list[_Receipt] = field(default_factory=list)
    releases: list[_Release] = field(default_factory=list)
    grants: list[_Grant] = field(default_factory=list)
    disputes: list[_Filed] = field(default_factory=list)
    answers: list[_Answer] = field(default_factory=list)


def compliance_report(
    entries: Iterable[tuple[int, ledger_pb2.LedgerLeaf | bytes]],
    *,
    now: datetime | None = None,
    coalition_key_id: str | None = None,
) -> ComplianceReport:
    """Each lab's compliance from the ledger's ``(index, leaf)`` pairs, in index order.

    ``now`` decides which unanswered notices are past their deadline (default: the latest
    integration time in the ledger). ``coalition_key_id`` is the only signer whose releases,
    notices and shredding records count; by default, the key the ledger registers with the
    coalition role (if it does, before those statements), else any signer.

    Raises CoalitionError on a leaf that does not decode.
    """
    ledger = _collect(entries, coalition_key_id)
    when = now if now is not None else ledger.last_time
    notices = _notice_statuses(ledger, when)
    violations = _release_violations(ledger)
    disputes = _dispute_statuses(ledger, when)

    labs = set(ledger.lab_names) | set(ledger.agreements.values())
    labs |= {n.lab_key_id for n in notices}
    labs |= {r.statement.lab_key_id for r in ledger.releases}
    rows = []
    for lab in sorted(labs):
        mine = [n for n in notices if n.lab_key_id == lab]
        rows.append(
            LabCompliance(
                lab_key_id=lab,
                name=ledger.lab_names.get(lab, ""),
                agreements=sum(1 for owner in ledger.agreements.values() if owner == lab),
                releases=sum(1 for r in ledger.releases if r.statement.lab_key_id == lab),
                notices=len(mine),
                receipts_in_time=sum(1 for n in mine if n.state is NoticeState.IN_TIME),
                receipts_late=sum(1 for n in mine if n.state is NoticeState.LATE),
                missing=sum(1 for n in mine if n.state is NoticeState.MISSING),
                pending=sum(1 for n in mine if n.state is NoticeState.PENDING),
                releases_after_withdrawal=sum(1 for v in violations if v.lab_key_id == lab),
                disputes=sum(1 for d in disputes if d.lab_key_id == lab),
                disputes_open=sum(
                    1 for d in disputes if d.lab_key_id == lab and d.state is DisputeState.OPEN
                ),
            )
        )
    return ComplianceReport(
        now=when,
        entries=ledger.entries,
        labs=tuple(rows),
        notices=tuple(notices),
        violations=tuple(violations),
        disputes=tuple(disputes),
        agreement_disputes=_by_agreement(disputes),
    )


def _collect(
    entries: Iterable[tuple[int, ledger_pb2.LedgerLeaf | bytes]], coalition_key_id: str | None
) -> _Ledger:
    ledger = _Ledger()
    for index, raw in entries:
        leaf = _leaf(index, raw)
        ledger.entries += 1
        time = _to_datetime(leaf.integrated_time.seconds, leaf.integrated_time.nanos)
        if ledger.last_time is None or time > ledger.last_time:
            ledger.last_time = time
        try:
            envelope = dsse.Envelope.from_proto(leaf.envelope)
            statement = statements.decode_statement(envelope)
        except CoalitionError as exc:
            raise CoalitionError(f"entry {index}: {exc}") from None
        signers = [s.keyid for s in envelope.signatures]
        signer = signers[0]
        by_coalition = coalition_key_id is None or coalition_key_id in signers
        if isinstance(statement, party_pb2.PartyRegistration):
            if statement.role == party_pb2.ROLE_LAB:
                ledger.lab_names[signer] = statement.name
            elif statement.role == party_pb2.ROLE_COALITION and coalition_key_id is None:
                # The server registers the coalition's key as the log's first entry: from
                # then on, only that key's releases, notices and shredding records count.
                coalition_key_id = signer
        elif isinstance(statement, items_pb2.ItemRegistration):
            ledger.items[item_id(signer, bytes(statement.commitment))] = _Item(
                signer, frozenset(statement.tags)
            )
        elif isinstance(statement, consent_pb2.ConsentToken):
            ledger.grants.append(_Grant(index, signer, statement))
        elif isinstance(statement, consent_pb2.Withdrawal):
            ledger.withdrawals[statements.statement_id(envelope)] = _Withdrawal(
                index, signer, statement
            )
        elif isinstance(statement, access_pb2.Agreement):
            agreement_id = statements.statement_id(envelope)
            ledger.agreements[agreement_id] = statement.lab_key_id
            ledger.covered_members[agreement_id] = frozenset(
                known.owner
                for known in (ledger.items.get(i) for i in statement.covered_item_ids)
                if known is not None
            )
        elif isinstance(statement, disputes_pb2.Dispute):
            members = ledger.covered_members.get(statement.agreement_id, frozenset())
            # Only a member the (earlier) agreement covers may dispute it.
            if signer in members:
                ledger.disputes.append(
                    _Filed(statements.statement_id(envelope), index, time, signer, statement)
                )
        elif isinstance(statement, disputes_pb2.DisputeResponse):
            ledger.answers.append(_Answer(index, time, signer, statement))
        elif isinstance(statement, access_pb2.KeyRelease) and by_coalition:
            ledger.releases.append(_Release(index, statement))
        elif isinstance(statement, access_pb2.ShreddingRecord) and by_coalition:
            ledger.shreddings.append((index, statement))
        elif isinstance(statement, access_pb2.WithdrawalNotice) and by_coalition:
            ledger.notices.append(
                _Notice(statements.statement_id(envelope), index, time, statement)
            )
        elif isinstance(statement, access_pb2.DeletionReceipt):
            ledger.receipts.append(_Receipt(index, time, signer, statement))
    return ledger


def _notice_statuses(ledger: _Ledger, now: datetime | None) -> list[NoticeStatus]:
    answers: dict[str, _Receipt] = {}
    lab_of = {n.notice_id: n.statement.lab_key_id for n in ledger.notices}
    for answer in ledger.receipts:
        notice_id = answer.statement.notice_id
        # Only the notified lab can answer, and only its first receipt counts.
        if lab_of.get(notice_id) == answer.signer and notice_id not in answers:
            answers[notice_id] = answer
    out = []
    for notice in ledger.notices:
        respond_by = _to_datetime(
            notice.statement.respond_by.seconds, notice.statement.respond_by.nanos
        )
        receipt = answers.get(notice.notice_id)
        if receipt is not None:
            state = NoticeState.IN_TIME if receipt.time <= respond_by else NoticeState.LATE
        elif now is not None and now > respond_by:
            state = NoticeState.MISSING
        else:
            state = NoticeState.PENDING
        out.append(
            NoticeStatus(
                notice_id=notice.notice_id,
                index=notice.index,
                lab_key_id=notice.statement.lab_key_id,
                agreement_id=notice.statement.agreement_id,
                withdrawal_id=notice.statement.withdrawal_id,
                item_ids=tuple(notice.statement.item_ids),
                issued_time=notice.time,
                respond_by=respond_by,
                state=state,
                receipt_index=receipt.index if receipt is not None else None,
                receipt_time=receipt.time if receipt is not None else None,
            )
        )
    return out


def _dispute_statuses(ledger: _Ledger, now: datetime | None) -> list[DisputeStatus]:
    filed_at = {d.dispute_id: d.index for d in ledger.disputes}
    lab_of = {d.dispute_id: ledger.agreements[d.statement.agreement_id] for d in ledger.disputes}
    answers: dict[str, _Answer] = {}
    for reply in ledger.answers:
        dispute_id = reply.statement.dispute_id
        # Only the disputed agreement's lab answers, after the dispute; its first answer counts.
        after = reply.index > filed_at.get(dispute_id, reply.index)
        if after and lab_of.get(dispute_id) == reply.signer and dispute_id not in answers:
            answers[dispute_id] = reply
    out = []
    for filed in ledger.disputes:
        answer = answers.get(filed.dispute_id)
        open_for = None
        if answer is None and now is not None:
            open_for = max(now - filed.time, timedelta(0))
        out.append(
            DisputeStatus(
                dispute_id=filed.dispute_id,
                index=filed.index,
                agreement_id=filed.statement.agreement_id,
                lab_key_id=lab_of[filed.dispute_id],
                member_key_id=filed.member,
                norm_ids=tuple(filed.statement.norm_ids),
                declaration_fields=tuple(filed.statement.declaration_fields),
                filed_time=filed.time,
                state=DisputeState.OPEN if answer is None else DisputeState.ANSWERED,
                response_index=answer.index if answer is not None else None,
                response_time=answer.time if answer is not None else None,
                open_for=open_for,
                answered_after=answer.time - filed.time if answer is not None else None,
            )
        )
    return out


def _by_agreement(disputes: list[DisputeStatus]) -> tuple[AgreementDisputes, ...]:
    grouped: dict[str, list[DisputeStatus]] = {}
    for d in disputes:
        grouped.setdefault(d.agreement_id, []).append(d)
    rows = []
    for agreement_id in sorted(grouped):
        mine = grouped[agreement_id]
        ages = [d.open_for for d in mine if d.open_for is not None]
        waits = [d.answered_after for d in mine if d.answered_after is not None]
        rows.append(
            AgreementDisputes(
                agreement_id=agreement_id,
                lab_key_id=mine[0].lab_key_id,
                disputes=len(mine),
                open=sum(1 for d in mine if d.state is DisputeState.OPEN),
                answered=sum(1 for d in mine if d.state is DisputeState.ANSWERED),
                longest_open=max(ages) if ages else None,
                slowest_answer=max(waits) if waits else None,
            )
        )
    return tuple(rows)


def _release_violations(ledger: _Ledger) -> list[ReleaseViolation]:
    bars: dict[str, list[_Bar]] = {}

    def renewal(item: str, after: int) -> int | None:
        """Index of the first later token of the item's owner that names the item."""
        known = ledger.items.get(item)
        if known is None:
            return None
        for grant in ledger.grants:
            owner = grant.member == known.owner
            if grant.index > after and owner and _names(grant.selector, item, known.tags):
                return grant.index
        return None

    def bar(item: str, start: int, agreement: str | None, withdrawal: str, rule: str) -> None:
        lift = None if rule == "item-withdrawal" else renewal(item, start)
        bars.setdefault(item, []).append(_Bar(start, agreement, withdrawal, rule, lift))

    for withdrawal_id, withdrawal in ledger.withdrawals.items():
        if withdrawal.statement.WhichOneof("scope") != "items":
            continue
        for item in withdrawal.statement.items.item_ids:
            known = ledger.items.get(item)
            if known is None or known.owner == withdrawal.member:
                bar(item, withdrawal.index, None, withdrawal_id, "item-withdrawal")

    def start_of(withdrawal_id: str, fallback: int) -> int:
        withdrawal = ledger.withdrawals.get(withdrawal_id)
        return withdrawal.index if withdrawal is not None else fallback

    for index, record in ledger.shreddings:
        start = start_of(record.withdrawal_id, index)
        for item in record.item_ids:
            bar(item, start, None, record.withdrawal_id, "shredded")
    for notice in ledger.notices:
        start = start_of(notice.statement.withdrawal_id, notice.index)
        for item in notice.statement.item_ids:
            bar(
                item, start, notice.statement.agreement_id, notice.statement.withdrawal_id, "notice"
            )

    violations = []
    for release in ledger.releases:
        statement = release.statement
        for item in statement.item_ids:
            for b in bars.get(item, ()):
                in_force = b.start < release.index and (b.lift is None or release.index < b.lift)
                applies = b.agreement_id is None or b.agreement_id == statement.agreement_id
                if in_force and applies:
                    violations.append(
                        ReleaseViolation(
                            release_index=release.index,
                            lab_key_id=statement.lab_key_id,
                            agreement_id=statement.agreement_id,
                            lease_id=statement.lease_id,
                            item_id=item,
                            withdrawal_index=b.start,
                            withdrawal_id=b.withdrawal_id,
                            rule=b.rule,
                        )
                    )
                    break
    return violations


def _names(token: consent_pb2.ConsentToken, item: str, tags: frozenset[str]) -> bool:
    selector = token.items.WhichOneof("selector")
    if selector == "item_ids":
        return item in token.items.item_ids.item_ids
    if selector == "tag":
        return token.items.tag in tags
    return selector == "all_items" and token.items.all_items


def _leaf(index: int, raw: ledger_pb2.LedgerLeaf | bytes) -> ledger_pb2.LedgerLeaf:
    if isinstance(raw, ledger_pb2.LedgerLeaf):
        return raw
    try:
        return ledger_pb2.LedgerLeaf.FromString(raw)
    except DecodeError:
        raise CoalitionError(f"entry {index}: not a ledger leaf") from None


def _to_datetime(seconds: int, nanos: int) -> datetime:
    return _EPOCH + timedelta(seconds=seconds, microseconds=nanos // 1000)


def _seconds(value: timedelta | None) -> int | None:
    return None if value is None else int(value.total_seconds())


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
