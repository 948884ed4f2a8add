"""The coalition's reservation price, computed from its members' floors (pure).

For a lab's terms, each eligible item has a *floor*: the lowest uniform price per item at
which some consent token of its member permits the item under those terms. At a price ``p``
the covered set is every eligible item whose floor is at most ``p`` (prices are uniform:
every covered item gets ``p``, nobody undercuts). A quorum rule (e.g. at least half of the
eligible items) stops a lab from buying a cheap sliver; the reservation is the lowest price
at which the covered set reaches the quorum.

Whether a token permits terms is decided only by ``consent.permits`` (the one rule key
release, notices and shredding also use); the floor is read off the permitting tokens'
PriceFloor, so "floor <= p" holds exactly when ``permits`` would hold at price ``p``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from typing import Protocol

from coalition.v1 import items_pb2, terms_pb2
from coalition_server.domain.consent import Token, covers_item, norms_premium, permits

ITEM_WITHDRAWN = items_pb2.ITEM_STATE_WITHDRAWN
SUBSCRIPTION = terms_pb2.PAYMENT_MODEL_SUBSCRIPTION
# A price no floor can exceed (int64 maximum): terms at this price test every rule but price.
PROBE_PRICE_MICROS = 2**63 - 1


class ItemLike(Protocol):
    """What the reservation needs to know about an item (store.items.ItemRecord has it)."""

    @property
    def item_id(self) -> str: ...

    @property
    def contributor_key_id(self) -> str: ...

    @property
    def tags(self) -> frozenset[str]: ...

    @property
    def state(self) -> int: ...

    @property
    def media_type(self) -> str: ...


@dataclass(frozen=True)
class Candidate:
    """An eligible item and its floor under given terms.

    ``floor_micros`` is the lowest price per item, in the terms' payment model (normalised to
    the terms' subscription period for subscriptions), at which some token of the member
    permits this item under the terms.
    """

    item_id: str
    member_key_id: str
    floor_micros: int


class Candidates(tuple[Candidate, ...]):
    """Candidates in item-id order, one per item (what :func:`candidates` returns, frozen).

    A pool's memo hands the same list to every move of every negotiation until the pool
    changes, so the floors are sorted once here rather than on every reservation."""

    @functools.cached_property
    def sorted_floors(self) -> list[int]:
        """Every candidate's floor, ascending."""
        return sorted(c.floor_micros for c in self)


def in_scope(item: ItemLike, scope: terms_pb2.ItemFilter) -> bool:
    """Whether an item matches a scope: any of its tags and any of its media types."""
    if scope.tags and item.tags.isdisjoint(scope.tags):
        return False
    return not scope.media_types or item.media_type in scope.media_types


def _floor_for_terms(token: Token, terms: terms_pb2.LicenceTerms) -> int | None:
    """The token's floor in the terms' payment model (and subscription period), or None."""
    price = next(
        (p for p in token.statement.floor.prices if p.payment_model == terms.payment_model),
        None,
    )
    if price is None:
        return None
    premium = norms_premium(token, terms)
    if premium is None:
        return None  # the use breaks one of the token's hard norms
    minimum = price.minimum_per_item.micros + premium
    if terms.payment_model != SUBSCRIPTION:
        return minimum
    # Same units as meets_floor (whole seconds): p/T >= m/P  <=>  p >= m*T/P, p an integer.
    terms_period = terms.subscription_period.seconds
    floor_period = price.period.seconds
    if floor_period <= 0:
        return 0 if minimum == 0 else None
    return -(-minimum * terms_period // floor_period)


def item_floor(
    item: ItemLike,
    tokens: Sequence[Token],
    probe: terms_pb2.LicenceTerms,
    lab_key_id: str,
    at: datetime,
) -> int | None:
    """The lowest floor over the member's tokens that name the item and permit the terms
    in every respect but price (``probe`` is the terms at PROBE_PRICE_MICROS); None if none.
    """
    floors = [
        floor
        for token in tokens
        if token.contributor_key_id == item.contributor_key_id
        and covers_item(token, item.item_id, item.tags)
        and permits(token, probe, lab_key_id, at)
        and (floor := _floor_for_terms(token, probe)) is not None
    ]
    return min(floors) if floors else None


def candidates(
    items: Iterable[ItemLike],
    tokens_by_member: Mapping[str, Sequence[Token]],
    terms: terms_pb2.LicenceTerms,
    lab_key_id: str,
    at: datetime,
    scope_filter: terms_pb2.ItemFilter | None = None,
) -> list[Candidate]:
    """The items eligible under ``terms`` for ``lab_key_id`` at ``at``, with their floors.

    ``tokens_by_member`` maps a member's key id to their tokens whose recorded state is
    GIVEN (the caller filters out withdrawn and invalidated ones; lapse is checked here
    through the validity window). ``scope_filter`` defaults to ``terms.scope``.

    An item is eligible when it matches the scope (tags: any of them, if given; media
    types: any of them, if given), is not WITHDRAWN, and one of its member's tokens names it
    and permits the terms in every respect but price: purposes, lab not excluded, validity
    at ``at``, attribution, licence and deletion durations, and a floor in the terms'
    payment model and currency. Its floor is the minimum over those tokens. The result is
    sorted by item id, one candidate per item.
    """
    scope = terms.scope if scope_filter is None else scope_filter
    probe = terms_pb2.LicenceTerms()
    probe.CopyFrom(terms)
    probe.price_per_item.micros = PROBE_PRICE_MICROS
    result: dict[str, Candidate] = {}
    for item in items:
        if item.item_id in result or item.state == ITEM_WITHDRAWN or not in_scope(item, scope):
            continue
        tokens = tokens_by_member.get(item.contributor_key_id, ())
        floor = item_floor(item, tokens, probe, lab_key_id, at)
        if floor is not None:
            result[item.item_id] = Candidate(item.item_id, item.contributor_key_id, floor)
    return [result[key] for key in sorted(result)]


def covered(
    candidates: Iterable[Candidate], price_micros: int, max_items: int = 0
) -> list[Candidate]:
    """The candidates a uniform price covers: every one whose floor is at most the price.

    When ``max_items`` (> 0) caps the deal, the first ``max_items`` covered candidates in
    item-id order are chosen: deliberately NOT the cheapest, so a lab cannot pick off the
    members with low floors first, and the choice is deterministic. The result is sorted
    by item id.
    """
    if max_items < 0:
        raise ValueError("max_items must not be negative")
    if isinstance(candidates, Candidates):
        # Already in item-id order; with nothing above the price, nothing to filter.
        if candidates.sorted_floors and candidates.sorted_floors[-1] <= price_micros:
            chosen = list(candidates)
        else:
            chosen = [c for c in candidates if c.floor_micros <= price_micros]
    else:
        chosen = sorted(
            (c for c in candidates if c.floor_micros <= price_micros), key=lambda c: c.item_id
        )
    return chosen[:max_items] if max_items else chosen


@dataclass(frozen=True)
class QuorumRule:
    """How many eligible items a deal must cover: a fraction of them, and at least a minimum.

    ``fraction`` is read as the decimal it was written as (0.1 means exactly 1/10), so
    ``required`` has no floating-point surprises.
    """

    fraction: float
    """0 < fraction <= 1, e.g. 0.5: at least half of the eligible items."""
    min_items: int = 1
    """At least this many items (>= 1)."""

    def __post_init__(self) -> None:
        if isinstance(self.fraction, bool) or not isinstance(self.fraction, int | float):
            raise ValueError("quorum fraction must be a number")
        if not math.isfinite(self.fraction) or not 0 < self.fraction <= 1:
            raise ValueError("quorum fraction must be above 0 and at most 1")
        if isinstance(self.min_items, bool) or not isinstance(self.min_items, int):
            raise ValueError("quorum min_items must be an integer")
        if self.min_items < 1:
            raise ValueError("quorum min_items must be at least 1")

    @functools.cached_property
    def _exact_fraction(self) -> Fraction:
        return Fraction(repr(float(self.fraction)))

    def required(self, eligible_count: int) -> int:
        """max(min_items, ceil(fraction * eligible_count))."""
        share = math.ceil(self._exact_fraction * eligible_count)
        return max(self.min_items, share)


def reservation_price(
    candidates: Sequence[Candidate], rule: QuorumRule, max_items: int = 0
) -> int | None:
    """The lowest uniform price at which the covered set reaches the quorum.

    None when no price does: fewer eligible items than the quorum requires, or a
    ``max_items`` cap below the requirement.
    """
    if max_items < 0:
        raise ValueError("max_items must not be negative")
    required = rule.required(len(candidates))
    if required > len(candidates) or (max_items and max_items < required):
        return None
    if isinstance(candidates, Candidates):
        return candidates.sorted_floors[required - 1]
    floors = sorted(c.floor_micros for c in candidates)
    return floors[required - 1]


def bounded_reservation(
    candidates: Sequence[Candidate], rule: QuorumRule, max_items: int, max_price_micros: int
) -> int | None:
    """The reservation the coalition applies: :func:`reservation_price`, or None when that
    is above ``max_price_micros`` (the absurd-price guard), as if no price reached quorum.
    The negotiation, the what-if and the counter-offers all read it from here."""
    reservation = reservation_price(candidates, rule, max_items)
    if reservation is None or reservation > max_price_micros:
        return None
    return reservation


class CoverageError(RuntimeError):
    """An item about to be covered is not permitted by any consent: a defect, never input."""


def check_covered(
    item_ids: Iterable[str],
    items: Iterable[ItemLike],
    tokens_by_member: Mapping[str, Sequence[Token]],
    terms: terms_pb2.LicenceTerms,
    lab_key_id: str,
    at: datetime,
) -> None:
    """Defence in depth before an agreement is drafted: every item to be covered must be
    permitted, at the terms' own price, by some token of its member that names it
    (``consent.permits``: no hard norm broken, floor plus premiums met). Raises
    CoverageError otherwise. This re-derives coverage item by item through ``permits``,
    independently of how :func:`candidates` and :func:`covered` got there."""
    by_id = {item.item_id: item for item in items}
    for item_id in item_ids:
        item = by_id.get(item_id)
        if item is None or item.state == ITEM_WITHDRAWN:
            raise CoverageError(f"item {item_id} is not in the pool")
        if not any(
            token.contributor_key_id == item.contributor_key_id
            and covers_item(token, item.item_id, item.tags)
            and permits(token, terms, lab_key_id, at)
            for token in tokens_by_member.get(item.contributor_key_id, ())
        ):
            raise CoverageError(f"no consent permits item {item_id} under these terms")
