"""The replay's dispute rules (coalition.audit.LedgerReplay): a Dispute is signed by a member
the agreement it names covers, after that agreement; a DisputeResponse answers an earlier
dispute and is signed by the disputed agreement's lab. Each rule: the honest ledger passes,
and a ledger breaking it in one entry is rejected at that entry, naming the rule."""

from __future__ import annotations

import pytest

from coalition.audit import AuditError, LedgerReplay
from coalition.client import item_id
from tests.audit import ledger as L
from tests.audit.ledger import Ledger, Parties, honest_ledger, signed
from tests.audit.test_signer_rules import party, with_entries, without


@pytest.fixture
def p() -> Parties:
    return Parties.generate()


@pytest.fixture
def honest(p: Parties) -> Ledger:
    return honest_ledger(p)


def rejected(ledger: Ledger) -> AuditError:
    with pytest.raises(AuditError) as info:
        L.replay(ledger.leaves())
    assert info.value.index is not None
    return info.value


def test_the_honest_dispute_and_response_pass(honest: Ledger) -> None:
    kinds = L.replay(honest.leaves()).kinds
    assert (kinds["Dispute"], kinds["DisputeResponse"]) == (1, 1)


def test_a_dispute_by_a_member_the_agreement_does_not_cover_fails(
    p: Parties, honest: Ledger
) -> None:
    # The other member is a registered contributor, but owns no item the agreement lists.
    i = honest.index("Dispute")
    bad = honest.replace("Dispute", signed(L.honest_dispute(p), p.other_member))
    error = rejected(bad)
    agreement_id = L.statement_id_of(L.honest_agreement(p))
    assert (error.index, error.message) == (
        i,
        f"entry {i}: a Dispute about agreement {agreement_id} (entry "
        f"{honest.index('Agreement')}) must be signed by a member whose items it covers, but "
        f"its signer {p.other_member.key_id} ({party(honest, 'other_member', p)}) owns none "
        "of the 1 items it covers",
    )


def test_owning_any_covered_item_is_enough(p: Parties, honest: Ledger) -> None:
    # An agreement covering an item of each member: the other member may dispute it too.
    commitment = bytes(32)
    theirs = item_id(p.other_member.key_id, commitment)
    both = sorted((L.member_item_id(p), theirs))
    agreement = L.agreement(p.lab.key_id, tuple(both), nonce=b"agreement-000002")
    agreement_id = L.statement_id_of(agreement)
    ledger = with_entries(
        honest,
        "DisputeResponse",
        ("their item", signed(L.item_registration(commitment), p.other_member)),
        ("shared agreement", signed(agreement, p.lab, p.coalition)),
        ("their dispute", signed(L.dispute(agreement_id), p.other_member)),
        ("our dispute", signed(L.dispute(agreement_id, b"dispute-00000002"), p.member)),
    )
    assert L.replay(ledger.leaves()).kinds["Dispute"] == 3
    # An item registered only after the agreement is not one it covers.
    late = with_entries(
        without(ledger, "their item"),
        "their dispute",
        ("their item", signed(L.item_registration(commitment), p.other_member)),
    )
    assert rejected(late).index == late.index("their dispute")


def test_a_dispute_names_an_agreement_logged_earlier(p: Parties, honest: Ledger) -> None:
    i = honest.index("Dispute")
    for aid, shown in (("e" * 32, "e" * 32), ("", '""')):
        bad = honest.replace("Dispute", signed(L.dispute(aid), p.member))
        assert rejected(bad).message == (
            f"entry {i}: a Dispute must be about an Agreement logged by an earlier entry, but "
            f"agreement {shown} was not logged before this entry"
        )
    # The agreement logged after the dispute does not count for it.
    agreement = honest.envelopes[honest.index("Agreement")]
    late = with_entries(without(honest, "Agreement"), "Dispute", ("late", agreement))
    assert rejected(late).index == i - 1


def test_a_response_by_another_lab_fails(p: Parties, honest: Ledger) -> None:
    i = honest.index("DisputeResponse")
    dispute_id = L.statement_id_of(L.honest_dispute(p))
    agreement_id = L.statement_id_of(L.honest_agreement(p))
    bad = honest.replace("DisputeResponse", signed(L.dispute_response(dispute_id), p.other_lab))
    assert rejected(bad).message == (
        f"entry {i}: a DisputeResponse to dispute {dispute_id} (entry {honest.index('Dispute')}) "
        f"must be signed by the lab of agreement {agreement_id} ({p.lab.key_id}), but its "
        f"signer {p.other_lab.key_id} is {party(honest, 'other_lab', p)}"
    )


def test_a_response_answers_a_dispute_filed_earlier(p: Parties, honest: Ledger) -> None:
    i = honest.index("DisputeResponse")
    unknown = honest.replace("DisputeResponse", signed(L.dispute_response("d" * 32), p.lab))
    assert rejected(unknown).message == (
        f"entry {i}: a DisputeResponse must answer a Dispute filed by an earlier entry, but "
        f"dispute {'d' * 32} was not filed before this entry"
    )


def test_a_refused_dispute_files_nothing(p: Parties, honest: Ledger) -> None:
    # A dispute that fails its rule changes nothing: the lab's answer to it is refused too.
    leaves = honest.leaves()
    i = honest.index("Dispute")
    replay = LedgerReplay()
    for index, item in enumerate(leaves[:i]):
        replay.feed(index, item)
    by_outsider = L.leaf(signed(L.honest_dispute(p), p.other_member), L.T0 + i)
    with pytest.raises(AuditError, match="must be signed by a member whose items it covers"):
        replay.feed(i, by_outsider)
    with pytest.raises(AuditError, match="was not filed before this entry"):
        replay.feed(i, L.leaf(honest.envelopes[i + 1], L.T0 + i))
    replay.feed(i, leaves[i])
    replay.feed(i + 1, leaves[i + 1])
