"""What a use costs: the supply curve of the pool under given terms, and what keeping one
more of the members' norms would bring in (pure).

Every number here comes from the functions the coalition bargains with:
``reservation.candidates`` (eligibility and floors, premiums included),
``reservation.covered`` (what a uniform price covers) and
``reservation.bounded_reservation`` (the reservation and its quorum). So the what-if a lab
asks for (``NegotiationService.EstimateSupply``) is exactly what the coalition would do if
the lab opened a negotiation with the same terms against the same pool.

K-anonymity, as in the catalogue: nothing is shown about fewer than ``minimum_group_size``
members. A point of the curve is shown only when the items it adds over the last shown
point belong to that many members (so no difference of two points isolates a smaller
group); a declaration change only when the items it brings in or loses do; the reservation
only when the items covered at it do. The quorum is always shown: it follows from the policy
and the number of eligible items, which the curve's last point shows anyway.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import groupby

from coalition import norms
from coalition.v1 import terms_pb2
from coalition_server.domain.consent import Token
from coalition_server.domain.reservation import (
    Candidate,
    Candidates,
    ItemLike,
    QuorumRule,
    bounded_reservation,
    candidates,
    covered,
)

# Remembered candidate lists per loaded pool before the memo starts again.
MEMO_LIMIT = 256

# At most this many distinct declaration changes are weighed per question (the most widely
# held first): each costs one pass over the pool.
MAX_AMENDMENTS = 16


@dataclass
class CandidateMemo:
    """Candidate lists computed from one loaded pool, shared by every view of it (all labs,
    all moves until the pool changes). A list is remembered by lab, terms but price, and the
    stretch between two token validity boundaries that the moment falls in: within it no
    token comes into or goes out of force, so nothing else changes the answer."""

    boundaries: list[datetime] | None = None
    lists: dict[tuple[str, bytes, int], Candidates] = field(default_factory=dict)
    amendments: dict[tuple[bytes, int, int], tuple[Amendment, ...]] = field(default_factory=dict)
    """:func:`amendments` by declaration, stretch and limit: they depend on the tokens in
    force only, not on the lab."""

    def stretch(self, tokens_by_member: Mapping[str, Sequence[Token]], at: datetime) -> int:
        """Which stretch between two token validity boundaries ``at`` falls in."""
        if self.boundaries is None:
            self.boundaries = sorted(
                {
                    moment
                    for tokens in tokens_by_member.values()
                    for token in tokens
                    for moment in (token.not_before, token.not_after)
                }
            )
        return bisect.bisect_right(self.boundaries, at)


@dataclass(frozen=True)
class Pool:
    """The pool as one lab faces it at one moment: what ``candidates`` needs besides terms.

    Built from ``store.pool.load_pool``, the loader the negotiation itself uses. With a
    ``memo`` candidates are remembered (see :class:`CandidateMemo`); ``check_memo``
    recomputes each remembered list and fails if it differs (the test suite turns it on).
    """

    items: Sequence[ItemLike]
    tokens_by_member: Mapping[str, Sequence[Token]]
    lab_key_id: str
    at: datetime
    memo: CandidateMemo | None = field(default=None, compare=False)
    check_memo: bool = field(default=False, compare=False)

    def candidates(self, terms: terms_pb2.LicenceTerms) -> Candidates:
        """``reservation.candidates`` for these terms, scoped by the terms' own scope,
        exactly as the negotiation computes them."""
        memo = self.memo
        if memo is None:
            return self._candidates(terms)
        probe = terms_pb2.LicenceTerms()
        probe.CopyFrom(terms)
        probe.ClearField("price_per_item")
        key = (
            self.lab_key_id,
            probe.SerializeToString(deterministic=True),
            memo.stretch(self.tokens_by_member, self.at),
        )
        found = memo.lists.get(key)
        if found is None:
            if len(memo.lists) >= MEMO_LIMIT:
                memo.lists.clear()
            found = memo.lists[key] = self._candidates(terms)
        elif self.check_memo and found != self._candidates(terms):
            raise AssertionError("remembered candidates differ from computed ones")
        return found

    def _candidates(self, terms: terms_pb2.LicenceTerms) -> Candidates:
        return Candidates(
            candidates(
                self.items, self.tokens_by_member, terms, self.lab_key_id, self.at, terms.scope
            )
        )


@dataclass(frozen=True)
class SupplyPoint:
    """One shown step of the supply curve."""

    price_micros: int
    """A uniform price per item: one of the candidates' floors."""
    item_count: int
    """Items that price covers (``len(covered(candidates, price, max_items))``)."""
    member_count: int
    """Members whose items those are."""


@dataclass(frozen=True)
class Amendment:
    """A minimal change of a declaration that keeps one norm some member holds."""

    norm_id: str
    declaration: terms_pb2.UseDeclaration
    members: frozenset[str] = field(default_factory=frozenset)
    """Members holding a norm this change keeps (for ranking only)."""


@dataclass(frozen=True)
class Change:
    """What one declaration change would do to the terms' supply."""

    norm_id: str
    declaration: terms_pb2.UseDeclaration
    more_items_at_any_price: int
    """Eligible items after the change minus before (negative: it loses some)."""
    more_items_at_reservation: int
    """Items covered at the terms' reservation after the change minus before (0 when the
    terms have no reservation)."""


@dataclass(frozen=True)
class Estimate:
    """The what-if for some terms: see :func:`estimate`."""

    curve: list[SupplyPoint]
    reservation_micros: int | None
    """The reservation the coalition would apply now; None when no price reaches the
    quorum, or when it is hidden (too few members)."""
    quorum_items: int
    """Items a deal must cover under the policy (always shown: see the module)."""
    covered_at_reservation: int
    """Items the reservation covers (0 when there is none)."""
    changes: list[Change]


def with_declaration(
    terms: terms_pb2.LicenceTerms, declaration: terms_pb2.UseDeclaration
) -> terms_pb2.LicenceTerms:
    """A copy of ``terms`` with another use declaration."""
    out = terms_pb2.LicenceTerms()
    out.CopyFrom(terms)
    out.declaration.CopyFrom(declaration)
    return out


def _members(chosen: Iterable[Candidate]) -> set[str]:
    return {c.member_key_id for c in chosen}


def _anonymous(difference: Iterable[Candidate], minimum_group_size: int) -> bool:
    """Whether a difference between two sets is empty or spans enough members to show."""
    members = _members(difference)
    return not members or len(members) >= minimum_group_size


def _difference(a: Sequence[Candidate], b: Sequence[Candidate]) -> list[Candidate]:
    """Candidates in exactly one of two sets (by item id)."""
    ids_a = {c.item_id for c in a}
    ids_b = {c.item_id for c in b}
    return [c for c in a if c.item_id not in ids_b] + [c for c in b if c.item_id not in ids_a]


def supply_curve(
    eligible: Sequence[Candidate], minimum_group_size: int, max_items: int = 0
) -> list[SupplyPoint]:
    """The items covered against price, at each distinct floor in ascending order,
    k-anonymous: a point is shown only when what it adds over the last shown point (the
    first: over nothing) belongs to at least ``minimum_group_size`` members. A capped
    deal (``max_items``) is counted by ``covered`` itself, whose choice under a cap is not
    cumulative."""
    points: list[SupplyPoint] = []
    by_floor = sorted(eligible, key=lambda c: c.floor_micros)
    shown: list[Candidate] = []
    so_far: list[Candidate] = []
    pending: set[str] = set()  # members added since the last shown point (uncapped)
    for floor, group in groupby(by_floor, key=lambda c: c.floor_micros):
        added = list(group)
        so_far.extend(added)
        if max_items:
            now = covered(eligible, floor, max_items)
            step = _members(_difference(shown, now))
        else:
            now = so_far
            pending |= _members(added)
            step = pending
        if len(step) < minimum_group_size:
            continue
        points.append(SupplyPoint(floor, len(now), len(_members(now))))
        shown = list(now)
        pending = set()
    return points


def amendments(
    pool: Pool, declaration: terms_pb2.UseDeclaration, limit: int = MAX_AMENDMENTS
) -> list[Amendment]:
    """The distinct valid declarations that each keep one norm the pool's tokens in force
    hold and ``declaration`` breaks (``norms.amend_to_keep``), most widely held first (ties:
    by norm id, then encoding), at most ``limit``. Remembered in the pool's memo."""
    memo = pool.memo
    if memo is None:
        return _amendments(pool, declaration, limit)
    key = (
        declaration.SerializeToString(deterministic=True),
        memo.stretch(pool.tokens_by_member, pool.at),
        limit,
    )
    found = memo.amendments.get(key)
    if found is None:
        if len(memo.amendments) >= MEMO_LIMIT:
            memo.amendments.clear()
        found = memo.amendments[key] = tuple(_amendments(pool, declaration, limit))
    elif pool.check_memo and list(found) != _amendments(pool, declaration, limit):
        raise AssertionError("remembered amendments differ from computed ones")
    return list(found)


def _amendments(pool: Pool, declaration: terms_pb2.UseDeclaration, limit: int) -> list[Amendment]:
    found: dict[bytes, tuple[str, terms_pb2.UseDeclaration, set[str]]] = {}
    for member, tokens in pool.tokens_by_member.items():
        for token in tokens:
            if not token.in_force(pool.at):
                continue
            for norm in token.statement.norms:
                if not norms.breaks(norm, declaration):
                    continue
                amended = norms.amend_to_keep(declaration, norm)
                if amended is None:
                    continue
                try:
                    norms.validate_declaration(amended)
                except norms.NormError:
                    continue  # only ever propose what the lab could sign
                key = amended.SerializeToString(deterministic=True)
                entry = found.setdefault(key, (norm.norm_id, amended, set()))
                entry[2].add(member)
    ranked = sorted(found.items(), key=lambda kv: (-len(kv[1][2]), kv[1][0], kv[0]))
    return [
        Amendment(norm_id, amended, frozenset(members))
        for _, (norm_id, amended, members) in ranked[:limit]
    ]


def estimate(
    pool: Pool,
    terms: terms_pb2.LicenceTerms,
    quorum: QuorumRule,
    max_price_micros: int,
    minimum_group_size: int,
    limit: int = MAX_AMENDMENTS,
) -> Estimate:
    """The what-if for ``terms`` (their price is ignored): the supply curve, the
    reservation and quorum the coalition would apply now (``quorum`` as the negotiation's
    policy gives it for these terms), and for each norm the declaration breaks, what the
    least change keeping it would bring in, at the reservation and at any price. Changes
    that bring in and lose nothing are left out; so is anything too few members would
    show. Changes are ordered by items at the reservation, then at any price (most
    first), then norm id."""
    max_items = int(terms.scope.max_item_count)
    base = pool.candidates(terms)
    if len(_members(base)) < minimum_group_size:
        return Estimate([], None, 0, 0, [])
    reservation = bounded_reservation(base, quorum, max_items, max_price_micros)
    at_reservation = [] if reservation is None else covered(base, reservation, max_items)
    if reservation is not None and len(_members(at_reservation)) < minimum_group_size:
        reservation, at_reservation = None, []
    changes: list[Change] = []
    for amendment in amendments(pool, terms.declaration, limit):
        after = pool.candidates(with_declaration(terms, amendment.declaration))
        eligible_diff = _difference(base, after)
        after_covered = [] if reservation is None else covered(after, reservation, max_items)
        covered_diff = _difference(at_reservation, after_covered)
        if not eligible_diff and not covered_diff:
            continue
        if not (
            _anonymous(eligible_diff, minimum_group_size)
            and _anonymous(covered_diff, minimum_group_size)
        ):
            continue
        changes.append(
            Change(
                amendment.norm_id,
                amendment.declaration,
                len(after) - len(base),
                len(after_covered) - len(at_reservation),
            )
        )
    changes.sort(
        key=lambda c: (-c.more_items_at_reservation, -c.more_items_at_any_price, c.norm_id)
    )
    return Estimate(
        curve=supply_curve(base, minimum_group_size, max_items),
        reservation_micros=reservation,
        quorum_items=quorum.required(len(base)),
        covered_at_reservation=len(at_reservation),
        changes=changes,
    )


def improve(
    pool: Pool,
    terms: terms_pb2.LicenceTerms,
    price_micros: int,
    max_changes: int,
    minimum_group_size: int,
    limit: int = MAX_AMENDMENTS,
) -> tuple[terms_pb2.LicenceTerms, list[str]]:
    """The coalition's declaration proposal: greedily, up to ``max_changes`` times, take
    the change (:func:`amendments` of the current declaration) that covers the most more
    items at ``price_micros``, as long as it covers more at all and what it brings in or
    loses spans at least ``minimum_group_size`` members (a counter-offer must not reveal
    a smaller group's values). Returns the amended terms and the norm ids kept, in order;
    the terms unchanged and ``[]`` when no change helps."""
    max_items = int(terms.scope.max_item_count)
    current = terms
    now: list[Candidate] | None = None
    kept: list[str] = []
    for _ in range(max_changes):
        options = amendments(pool, current.declaration, limit)
        if not options:
            break
        if now is None:
            # A pass over every candidate, only needed to weigh changes: a counter with none
            # to weigh (no member's norm is broken) skips it.
            now = covered(pool.candidates(current), price_micros, max_items)
        best: tuple[list[Candidate], terms_pb2.LicenceTerms, str] | None = None
        for amendment in options:
            proposal = with_declaration(current, amendment.declaration)
            after = covered(pool.candidates(proposal), price_micros, max_items)
            if len(after) <= len(now if best is None else best[0]):
                continue
            if not _anonymous(_difference(now, after), minimum_group_size):
                continue
            best = (after, proposal, amendment.norm_id)
        if best is None:
            break
        now, current = best[0], best[1]
        kept.append(best[2])
    return current, kept
