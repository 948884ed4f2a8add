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

``check_agreement`` is the last line of defence, called right before an agreement is
drafted or finalised: it refuses any price below the reservation or any covered set below
the quorum, whatever the state machine believes.

Error messages never reveal the reservation, floors or counts: they go to the lab.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from fractions import Fraction
from typing import Literal

from coalition.strategy import ConcessionStrategy
from coalition_server.domain.consent import MAX_MICROS
from coalition_server.domain.errors import FailedPreconditionError, InvalidArgumentError
from coalition_server.domain.reservation import (
    Candidate,
    QuorumRule,
    covered,
    reservation_price,
)

ACCEPT: Literal["accept"] = "accept"
OFFER: Literal["offer"] = "offer"
TERMINATE: Literal["terminate"] = "terminate"
NO_QUORUM_POSSIBLE = "NO_QUORUM_POSSIBLE"
DEADLINE = "DEADLINE"
BELOW_RESERVATION = "BELOW_RESERVATION"
QUORUM_NOT_MET = "QUORUM_NOT_MET"


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

    def aspiration(self, reservation_micros: int) -> int:
        """Where the coalition opens: ceil(reservation * multiplier), capped at the max
        price but never below the reservation."""
        multiplier = Fraction(repr(float(self.aspiration_multiplier)))
        wanted = math.ceil(reservation_micros * multiplier)
        return max(reservation_micros, min(wanted, self.max_price_micros))

    def strategy(self, reservation_micros: int) -> ConcessionStrategy:
        """The coalition's concession strategy for a given reservation."""
        return ConcessionStrategy(
            initial_micros=self.aspiration(reservation_micros),
            reservation_micros=reservation_micros,
            beta=float(self.beta),
            max_rounds=self.max_rounds,
            deadline_seconds=self.deadline.total_seconds(),
        )


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

    def __post_init__(self) -> None:
        if self.kind not in (ACCEPT, OFFER, TERMINATE):
            raise ValueError(f"unknown decision kind {self.kind!r}")
        if (self.price_micros is None) != (self.kind == TERMINATE):
            raise ValueError("accept and offer carry a price; terminate does not")


def _check_price(policy: BargainingPolicy, price_micros: int) -> None:
    if price_micros < 0:
        raise InvalidArgumentError("NEGATIVE_PRICE", "the price must not be negative")
    if price_micros > policy.max_price_micros:
        raise InvalidArgumentError("ABSURD_PRICE", "the price is above the coalition's limit")


def _reservation(
    policy: BargainingPolicy, candidates: Sequence[Candidate], max_items: int
) -> int | None:
    reservation = reservation_price(candidates, policy.quorum, max_items)
    if reservation is None or reservation > policy.max_price_micros:
        return None
    return reservation


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
    seconds = elapsed.total_seconds()
    if strategy.accepts(lab_price_micros, round, seconds):
        return Decision(ACCEPT, lab_price_micros)
    if round >= policy.max_rounds or elapsed >= policy.deadline:
        return Decision(TERMINATE, None, DEADLINE)
    return Decision(OFFER, strategy.target(round, seconds))


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
