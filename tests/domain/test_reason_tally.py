"""The tally by reason of a ratification result (pure): k-anonymous, per side of the vote."""

from __future__ import annotations

from coalition_server.deals import reason_counts
from coalition_server.store.negotiation import Vote


def counts(votes: list[Vote], k: int) -> tuple[list[tuple[str, int, int]], int]:
    shown, other = reason_counts(votes, k)
    return [(c.norm_id, c.members, c.items) for c in shown], other


def test_a_reason_is_shown_from_k_members_on() -> None:
    votes = [
        Vote(False, 2, ("occupation", "prohibited-use")),
        Vote(False, 3, ("prohibited-use",)),
        Vote(False, 5, ("prohibited-use",)),
        Vote(False, 1, ("occupation",)),
    ]
    # Three gave prohibited-use, two occupation: with k = 3 one is shown, with k = 2 both.
    assert counts(votes, 3) == ([("prohibited-use", 3, 10)], 2)
    assert counts(votes, 2) == ([("occupation", 2, 3), ("prohibited-use", 3, 10)], 0)


def test_other_reasons_count_members_once_and_name_no_reason() -> None:
    votes = [
        Vote(True, 1, ("derivatives", "jurisdiction", "model-release")),  # three rare ones
        Vote(True, 1, ()),  # no reason at all: not "other"
        Vote(True, 4, ("model-release",)),
    ]
    shown, other = counts(votes, 2)
    assert shown == [("model-release", 2, 5)]
    assert other == 1


def test_no_ballots_no_reasons() -> None:
    assert counts([], 1) == ([], 0)
    assert counts([Vote(False, 3)], 1) == ([], 0)
