"""The coalition's side of a negotiation over a uniform price per item (pure).

At each of its turns the coalition recomputes its reservation from the members' floors
(``reservation.reservation_price``), and answers the lab's last price with a
time-dependent concession strategy (``coalition.strategy``) running from an aspiration
(a multiple of the reservation) down to the reservation:

- no price reaches the quorum (within the absurd-price guard): terminate,
  ``NO_QUORUM_POSSIBLE``;
- the lab's price is at least what the coalition would offer now (AC_next, which implies
  at least the reservation and hence a quorum): accept;
- the deadline (rounds or time) has come: terminate, ``DEADLINE``;
- otherwise: offer the strategy's target, never below the reservation.

``coalition_answer`` adds bargaining over the use declaration (members' norms, issue 9):
when the coalition would offer a price, or finds no quorum possible, it also looks for
changes to the lab's declaration that bring in more members' items (``supply.improve``:
greedy by items brought in, at most ``max_declaration_changes`` per counter) and, if one
helps, offers the amended declaration at the strategy's target for the amended terms (never
below the lab's own price). It never turns an acceptance into a counter, and never
proposes a change that reveals fewer members' values than the catalogue would.

``check_agreement`` is the last line of defence, called right before an agreement is
drafted or finalised: it refuses any price below the reservation or any covered set below
the quorum, whatever the state machine believes.

Error messages never reveal the reservation, floors or counts: they go to the lab.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from fractions import Fraction
from typing import Literal

from coalition.strategy import ConcessionStrategy
from coalition.v1 import terms_pb2
from coalition_server.domain import supply
from coalition_server.domain.consent import MAX_MICROS
from coalition_server.domain.errors import FailedPreconditionError, InvalidArgumentError
from coalition_server.domain.reservation import (
    Candidate,
    QuorumRule,
    bounded_reservation,
    covered,
)

ACCEPT: Literal["accept"] = "accept"
OFFER: Literal["offer"] = "offer"
TERMINATE: Literal["terminate"] = "terminate"
NO_QUORUM_POSSIBLE = "NO_QUORUM_POSSIBLE"
DEADLINE = "DEADLINE"
BELOW_RESERVATION = "BELOW_RESERVATION"
QUORUM_NOT_MET = "QUORUM_NOT_MET"
# Bound on max_declaration_changes: each change weighs up to supply.MAX_AMENDMENTS passes.
MAX_DECLARATION_CHANGES = 8
# Strategies a policy remembers (one per reservation seen) before it starts again.
_STRATEGIES_KEPT = 1024


@dataclass(frozen=True)
class BargainingPolicy:
    """How the coalition bargains (loaded from the operator's policy file)."""

    quorum: QuorumRule
    """How much of the eligible pool a deal must cover."""
    aspiration_multiplier: float = 2.0
    """>= 1: the coalition opens at ceil(reservation * multiplier) (capped at max price)."""
    beta: float = 0.5
    """Concession exponent (> 0): < 1 Boulware, 1 linear, > 1 Conceder."""
    max_rounds: int = 20
    """A negotiation ends after this many moves."""
    deadline: timedelta = timedelta(days=7)
    """A negotiation ends this long after it opened."""
    max_price_micros: int = MAX_MICROS
    """Absurd-price guard: no price above this is offered or accepted."""
    max_declaration_changes: int = 2
    """At most this many changes to the lab's use declaration per counter-offer (0: the
    coalition counters on price only)."""

    def __post_init__(self) -> None:
        if not isinstance(self.quorum, QuorumRule):
            raise ValueError("quorum must be a QuorumRule")
        multiplier = self.aspiration_multiplier
        if isinstance(multiplier, bool) or not isinstance(multiplier, int | float):
            raise ValueError("aspiration_multiplier must be a number")
        if not math.isfinite(multiplier) or multiplier < 1:
            raise ValueError("aspiration_multiplier must be a finite number of at least 1")
        if isinstance(self.beta, bool) or not isinstance(self.beta, int | float):
            raise ValueError("beta must be a number")
        if not math.isfinite(self.beta) or self.beta <= 0:
            raise ValueError("beta must be a finite number above 0")
        if isinstance(self.max_rounds, bool) or not isinstance(self.max_rounds, int):
            raise ValueError("max_rounds must be an integer")
        if self.max_rounds < 1:
            raise ValueError("max_rounds must be at least 1")
        if not isinstance(self.deadline, timedelta) or self.deadline <= timedelta(0):
            raise ValueError("deadline must be a positive duration")
        if isinstance(self.max_price_micros, bool) or not isinstance(self.max_price_micros, int):
            raise ValueError("max_price_micros must be an integer")
        if not 0 < self.max_price_micros <= MAX_MICROS:
            raise ValueError(f"max_price_micros must be above 0 and at most {MAX_MICROS}")
        changes = self.max_declaration_changes
        if isinstance(changes, bool) or not isinstance(changes, int):
            raise ValueError("max_declaration_changes must be an integer")
        if not 0 <= changes <= MAX_DECLARATION_CHANGES:
            raise ValueError(f"max_declaration_changes must be 0 to {MAX_DECLARATION_CHANGES}")

    @functools.cached_property
    def _exact_multiplier(self) -> Fraction:
        return Fraction(repr(float(self.aspiration_multiplier)))

    def aspiration(self, reservation_micros: int) -> int:
        """Where the coalition opens: ceil(reservation * multiplier), capped at the max
        price but never below the reservation."""
        wanted = math.ceil(reservation_micros * self._exact_multiplier)
        return max(reservation_micros, min(wanted, self.max_price_micros))

    def strategy(self, reservation_micros: int) -> ConcessionStrategy:
        """The coalition's concession strategy for a given reservation."""
        # Remembered per reservation (a strategy is immutable): every move asks, and the
        # reservation stays the same until the pool's consent or the terms change.
        strategies = self._strategies
        found = strategies.get(reservation_micros)
        if found is None:
            if len(strategies) >= _STRATEGIES_KEPT:
                strategies.clear()
            found = strategies[reservation_micros] = ConcessionStrategy(
                initial_micros=self.aspiration(reservation_micros),
                reservation_micros=reservation_micros,
                beta=float(self.beta),
                max_rounds=self.max_rounds,
                deadline_seconds=self.deadline.total_seconds(),
            )
        return found

    @functools.cached_property
    def _strategies(self) -> dict[int, ConcessionStrategy]:
        return {}


DecisionKind = Literal["accept", "offer", "terminate"]


@dataclass(frozen=True)
class Decision:
    """The coalition's next move."""

    kind: DecisionKind
    """accept the lab's price, offer a price, or terminate."""
    price_micros: int | None
    """The accepted or offered price; None for terminate."""
    reason: str = ""
    """For terminate: NO_QUORUM_POSSIBLE or DEADLINE; empty otherwise."""
    declaration: terms_pb2.UseDeclaration | None = None
    """For offers: the amended use declaration proposed with the price (None: the lab's)."""
    kept_norms: tuple[str, ...] = ()
    """For offers with a declaration: the norm ids the changes keep, in the order chosen."""

    def __post_init__(self) -> None:
        if self.kind not in (ACCEPT, OFFER, TERMINATE):
            raise ValueError(f"unknown decision kind {self.kind!r}")
        if (self.price_micros is None) != (self.kind == TERMINATE):
            raise ValueError("accept and offer carry a price; terminate does not")
        if self.declaration is not None and self.kind != OFFER:
            raise ValueError("only an offer proposes a declaration")


def _check_price(policy: BargainingPolicy, price_micros: int) -> None:
    if price_micros < 0:
        raise InvalidArgumentError("NEGATIVE_PRICE", "the price must not be negative")
    if price_micros > policy.max_price_micros:
        raise InvalidArgumentError("ABSURD_PRICE", "the price is above the coalition's limit")


def _reservation(
    policy: BargainingPolicy, candidates: Sequence[Candidate], max_items: int
) -> int | None:
    return bounded_reservation(candidates, policy.quorum, max_items, policy.max_price_micros)


def coalition_decision(
    policy: BargainingPolicy,
    candidates: Sequence[Candidate],
    lab_price_micros: int,
    round: int,
    elapsed: timedelta,
    max_items: int = 0,
) -> Decision:
    """The coalition's answer to the lab's last price.

    ``candidates`` are the eligible items under the lab's terms (``reservation.candidates``),
    ``round`` the number of the move the coalition is about to make, ``elapsed`` the time
    since the negotiation opened, ``max_items`` the terms' item cap (0: none). A lab price
    that is negative or above the policy's max price is refused (InvalidArgumentError).
    """
    _check_price(policy, lab_price_micros)
    reservation = _reservation(policy, candidates, max_items)
    if reservation is None:
        return Decision(TERMINATE, None, NO_QUORUM_POSSIBLE)
    strategy = policy.strategy(reservation)
    # The target once, for both the acceptance test and the counter: ``strategy.accepts``
    # (AC_next) is exactly this comparison with it, and each target is exact fractions
    # (a test checks the two agree).
    target = strategy.target(round, elapsed.total_seconds())
    if strategy.acceptable(lab_price_micros) and (
        lab_price_micros >= target if strategy.is_seller else lab_price_micros <= target
    ):
        return Decision(ACCEPT, lab_price_micros)
    if round >= policy.max_rounds or elapsed >= policy.deadline:
        return Decision(TERMINATE, None, DEADLINE)
    return Decision(OFFER, target)


def check_agreement(
    policy: BargainingPolicy,
    candidates: Sequence[Candidate],
    price_micros: int,
    max_items: int = 0,
) -> list[Candidate]:
    """The covered set for agreed terms at ``price_micros``, or a refusal.

    Raises FailedPreconditionError ``BELOW_RESERVATION`` when the price is below the
    reservation, ``QUORUM_NOT_MET`` when no price reaches the quorum or the covered set falls
    short of it; InvalidArgumentError for a negative or absurd price.
    """
    _check_price(policy, price_micros)
    reservation = _reservation(policy, candidates, max_items)
    if reservation is None:
        raise FailedPreconditionError(
            QUORUM_NOT_MET, "the pool cannot cover the quorum under these terms"
        )
    if price_micros < reservation:
        raise FailedPreconditionError(
            BELOW_RESERVATION, "the price is below the coalition's reservation"
        )
    chosen = covered(candidates, price_micros, max_items)
    if len(chosen) < policy.quorum.required(len(candidates)):
        raise FailedPreconditionError(
            QUORUM_NOT_MET, "the terms would cover less than the coalition's quorum"
        )
    return chosen


def coalition_answer(
    policy: BargainingPolicy,
    pool: supply.Pool,
    terms: terms_pb2.LicenceTerms,
    round: int,
    elapsed: timedelta,
    minimum_group_size: int,
) -> Decision:
    """The coalition's answer to the lab's ``terms``, bargaining over the declaration too.

    First the price decision (:func:`coalition_decision` on ``pool.candidates(terms)``).
    An acceptance or a deadline stands. Otherwise (an offer, or no quorum possible) the
    coalition looks for declaration changes (:func:`supply.improve`) that cover more items
    at the price it would offer (at ``max_price_micros`` when no price reaches the quorum):
    if some do and the amended terms reach a quorum, it offers them at the strategy's
    target for the amended reservation, or at the lab's own price if that is higher
    ("open weights instead of closed, at the same price"). ``minimum_group_size`` keeps
    the proposal from revealing fewer members' values than the catalogue shows."""
    max_items = int(terms.scope.max_item_count)
    lab_price = terms.price_per_item.micros
    decision = coalition_decision(
        policy, pool.candidates(terms), lab_price, round, elapsed, max_items
    )
    if decision.kind == ACCEPT or decision.reason == DEADLINE or not policy.max_declaration_changes:
        return decision
    if round >= policy.max_rounds or elapsed >= policy.deadline:
        return decision  # no quorum, and no time left to propose anything
    price = decision.price_micros if decision.kind == OFFER else policy.max_price_micros
    assert price is not None
    amended, kept = supply.improve(
        pool, terms, price, policy.max_declaration_changes, minimum_group_size
    )
    if not kept:
        return decision
    reservation = _reservation(policy, pool.candidates(amended), max_items)
    if reservation is None:
        return decision
    target = policy.strategy(reservation).target(round, elapsed.total_seconds())
    return Decision(
        OFFER,
        max(target, lab_price),
        declaration=amended.declaration,
        kept_norms=tuple(kept),
    )
