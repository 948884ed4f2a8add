"""Strike pledges as an assurance contract (pure).

Each pledge says "withdraw me from the target if at least N members (and/or X% of the
items the target's agreements cover) pledge too". The pledges that execute are the largest
set in which every pledge's own condition holds for the set itself: start from all live
pledges and drop those whose condition fails until none does. Dropping only lowers the
counts, so this reaches the unique largest such set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from coalition.v1 import strike_pb2
from coalition_server.domain.errors import InvalidArgumentError
from coalition_server.domain.statements import check_fresh, check_key_id, check_nonce, timestamp

MAX_PLEDGE_LIFETIME = timedelta(days=366)
FULL_SHARE = 10_000


@dataclass(frozen=True)
class Pledge:
    """A live pledge and its condition."""

    pledge_id: str
    member_key_id: str
    target: str
    min_members: int
    min_share_bp: int


def check_pledge(statement: strike_pb2.StrikePledge, now: datetime, members_in_pool: int) -> None:
    """Refuse a malformed pledge or one whose threshold can never be met."""
    check_fresh(statement.created_time, statement.HasField("created_time"), now)
    check_nonce(statement.nonce)
    if statement.target_lab_key_id:
        check_key_id(statement.target_lab_key_id, "target_lab_key_id")
    if not statement.min_members and not statement.min_share_basis_points:
        raise InvalidArgumentError(
            "MISSING_THRESHOLD", "set min_members and/or min_share_basis_points"
        )
    if statement.min_members > members_in_pool:
        raise InvalidArgumentError(
            "IMPOSSIBLE_THRESHOLD",
            f"the coalition has {members_in_pool} members: {statement.min_members} cannot pledge",
            {"members": str(members_in_pool)},
        )
    if statement.min_share_basis_points > FULL_SHARE:
        raise InvalidArgumentError(
            "IMPOSSIBLE_THRESHOLD", "a share is at most 10000 basis points (100%)"
        )
    if not statement.HasField("expiry_time"):
        raise InvalidArgumentError("MISSING_EXPIRY", "a pledge needs an expiry_time")
    expiry = timestamp(statement.expiry_time, "expiry_time")
    if not now < expiry <= now + MAX_PLEDGE_LIFETIME:
        raise InvalidArgumentError("BAD_EXPIRY", "expiry_time must be within the next year")


def executable(
    pledges: Sequence[Pledge], share_of: Callable[[frozenset[str]], int]
) -> list[Pledge]:
    """The largest set of pledges whose conditions all hold for that set.

    ``share_of(members)`` is the share, in basis points, of the items covered by the
    target's agreements that belong to ``members``.
    """
    chosen = list(pledges)
    while chosen:
        members = frozenset(p.member_key_id for p in chosen)
        share = share_of(members)
        kept = [p for p in chosen if len(members) >= p.min_members and share >= p.min_share_bp]
        if len(kept) == len(chosen):
            return chosen
        chosen = kept
    return []
