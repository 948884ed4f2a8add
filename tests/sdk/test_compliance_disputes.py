"""Disputes in the compliance report, on ledgers built in memory (no server): open or
answered, their ages from the log's times, per agreement; who counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from coalition.compliance import ComplianceReport, DisputeState, compliance_report
from tests.audit import ledger as L
from tests.audit.ledger import Ledger, Parties, honest_ledger, signed
from tests.audit.test_signer_rules import with_entries, without

T0 = datetime.fromtimestamp(L.T0, UTC)


def report_of(ledger: Ledger, now: datetime | None = None) -> ComplianceReport:
    return compliance_report(list(enumerate(ledger.leaves())), now=now)


def test_an_answered_dispute_and_how_long_it_waited() -> None:
    p = Parties.generate()
    honest = honest_ledger(p)
    report = report_of(honest)
    (status,) = report.disputes
    filed, answered = honest.index("Dispute"), honest.index("DisputeResponse")
    assert status.dispute_id == L.statement_id_of(L.honest_dispute(p))
    assert (status.lab_key_id, status.member_key_id) == (p.lab.key_id, p.member.key_id)
    assert (status.norm_ids, status.declaration_fields) == (
        ("prohibited-use",),
        ("application_domains",),
    )
    assert (status.state, status.index, status.response_index) == (
        DisputeState.ANSWERED,
        filed,
        answered,
    )
    # Leaves are a second apart: the log's times, not the statements' own, give the ages.
    assert status.answered_after == timedelta(seconds=answered - filed)
    assert status.open_for is None
    (row,) = report.agreement_disputes
    assert (row.agreement_id, row.lab_key_id) == (
        L.statement_id_of(L.honest_agreement(p)),
        p.lab.key_id,
    )
    assert (row.disputes, row.open, row.answered) == (1, 0, 1)
    assert row.slowest_answer == timedelta(seconds=answered - filed)
    lab = report.lab(p.lab.key_id)
    assert lab is not None
    assert (lab.disputes, lab.disputes_open) == (1, 0)
    assert report.ok  # an allegation is not a violation


def test_an_open_dispute_ages_until_now() -> None:
    p = Parties.generate()
    ledger = without(honest_ledger(p), "DisputeResponse")
    filed = T0 + timedelta(seconds=ledger.index("Dispute"))
    now = filed + timedelta(days=3)
    report = report_of(ledger, now)
    (status,) = report.disputes
    assert (status.state, status.open_for, status.answered_after) == (
        DisputeState.OPEN,
        timedelta(days=3),
        None,
    )
    (row,) = report.agreement_disputes
    assert (row.open, row.longest_open, row.slowest_answer) == (1, timedelta(days=3), None)
    lab = report.lab(p.lab.key_id)
    assert lab is not None
    assert (lab.disputes, lab.disputes_open) == (1, 1)
    shown = report.to_json()
    assert shown["disputes"][0]["state"] == "open"
    assert shown["disputes"][0]["open_for_seconds"] == 3 * 86_400
    assert shown["agreement_disputes"][0]["longest_open_seconds"] == 3 * 86_400


def test_only_the_agreements_lab_answers_and_its_first_answer_counts() -> None:
    p = Parties.generate()
    honest = honest_ledger(p)
    dispute_id = L.statement_id_of(L.honest_dispute(p))
    # Another lab's answer first: ignored (the replay would refuse it); then the lab's two.
    ledger = with_entries(
        without(honest, "DisputeResponse"),
        "Dispute",
        ("theirs", signed(L.dispute_response(dispute_id), p.other_lab)),
        ("first", signed(L.dispute_response(dispute_id), p.lab)),
        ("second", signed(L.dispute_response(dispute_id), p.lab)),
    )
    (status,) = report_of(ledger).disputes
    assert (status.state, status.response_index) == (DisputeState.ANSWERED, ledger.index("first"))


def test_disputes_by_members_not_covered_are_not_counted() -> None:
    p = Parties.generate()
    honest = honest_ledger(p)
    ledger = honest.replace("Dispute", signed(L.honest_dispute(p), p.other_member))
    report = report_of(ledger)
    assert report.disputes == ()
    assert report.agreement_disputes == ()
