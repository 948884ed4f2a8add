"""Time-dependent concession tactics for automated bargaining over a uniform price.

After Faratin, Sierra & Jennings, "Negotiation decision functions for autonomous agents"
(1998): a side starts at its *initial* price and concedes towards its *reservation* as time
runs out, by a polynomial decision function

    target(t) = initial + (reservation - initial) * t ** (1 / beta),   t in [0, 1]

where ``t`` is the fraction of the deadline used (in rounds or in time, whichever is further
along). ``beta < 1`` is *Boulware* (hold firm, concede near the deadline), ``beta == 1`` is
linear, ``beta > 1`` is *Conceder* (concede early).

The same class serves both sides: the coalition sells (initial aspiration above its
reservation), a lab buys (low opening bid below its budget). Prices are integer micros;
the concession is computed exactly (``fractions.Fraction``) and rounded towards the side's own
interest, so a target never passes the reservation and equals it exactly at the deadline.

Everything here is pure and deterministic: no clocks, no I/O. Callers pass the round and the
elapsed time.

The coalition may also counter on the lab's use declaration ("open weights instead of
closed"); :meth:`AutoNegotiator.decide_terms` takes such a counter only within the lab's own
:class:`~coalition.norms.DeclarationLimits`, and otherwise counters back with the lab's
own declaration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Literal

from coalition.norms import DeclarationLimits
from coalition.v1 import terms_pb2

# Why a lab ends a negotiation whose offered terms it cannot take at its deadline.
DECLARATION_REFUSED = "DECLARATION_REFUSED"
BOULWARE_BETA = 0.2
LINEAR_BETA = 1.0
CONCEDER_BETA = 5.0
# progress ** n is computed exactly for whole exponents up to this.
MAX_EXACT_EXPONENT = 16


def _check_micros(value: object, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field} must be an integer number of micros")
    if value < 0:
        raise ValueError(f"{field} must not be negative")


def _check_positive_float(value: object, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{field} must be a number")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{field} must be a finite number above 0")


@dataclass(frozen=True)
class ConcessionStrategy:
    """A polynomial time-dependent concession tactic over a uniform price in micros.

    ``round`` arguments are the number of the move the side is about to make (the
    NegotiationMove.round convention); ``elapsed_seconds`` is the time since the negotiation
    opened. The side is a seller when ``initial_micros >= reservation_micros``.
    """

    initial_micros: int
    """Where this side starts (seller: aspiration, high; buyer: low opening bid)."""
    reservation_micros: int
    """The worst price this side accepts (seller: reservation; buyer: budget)."""
    beta: float
    """Concession exponent, > 0: < 1 Boulware, 1 linear, > 1 Conceder."""
    max_rounds: int
    """Deadline in rounds (> 0)."""
    deadline_seconds: float
    """Deadline in seconds (> 0)."""

    def __post_init__(self) -> None:
        _check_micros(self.initial_micros, "initial_micros")
        _check_micros(self.reservation_micros, "reservation_micros")
        _check_positive_float(self.beta, "beta")
        if isinstance(self.max_rounds, bool) or not isinstance(self.max_rounds, int):
            raise ValueError("max_rounds must be an integer")
        if self.max_rounds <= 0:
            raise ValueError("max_rounds must be at least 1")
        _check_positive_float(self.deadline_seconds, "deadline_seconds")

    @property
    def is_seller(self) -> bool:
        """Whether this side sells (starts at or above its reservation)."""
        return self.initial_micros >= self.reservation_micros

    def progress(self, round: int, elapsed_seconds: float) -> float:
        """How far along the deadline is, in [0, 1]: the further of rounds and time."""
        return float(self._progress(round, elapsed_seconds))

    def _progress(self, round: int, elapsed_seconds: float) -> Fraction:
        """progress() computed exactly (round/max_rounds is not rounded to a float)."""
        if math.isnan(elapsed_seconds):
            raise ValueError("elapsed_seconds must be a number")
        by_rounds = Fraction(round, self.max_rounds)
        if math.isinf(elapsed_seconds):
            by_time = Fraction(1 if elapsed_seconds > 0 else 0)
        else:
            by_time = Fraction(elapsed_seconds) / Fraction(self.deadline_seconds)
        return min(Fraction(1), max(Fraction(0), by_rounds, by_time))

    def concession(self, round: int, elapsed_seconds: float) -> Fraction:
        """The fraction of the distance from initial to reservation conceded, in [0, 1]:
        ``progress ** (1 / beta)``, exact when ``1 / beta`` is a small whole number (linear,
        and the default Boulware 0.2), else through a correctly rounded float power.
        """
        progress = self._progress(round, elapsed_seconds)
        exponent = 1.0 / self.beta
        if exponent.is_integer() and exponent <= MAX_EXACT_EXPONENT:
            fraction = progress ** int(exponent)
        else:
            fraction = Fraction(math.pow(float(progress), exponent))
        return min(Fraction(1), max(Fraction(0), fraction))

    def target(self, round: int, elapsed_seconds: float) -> int:
        """This side's price at (round, elapsed), in micros.

        ``initial + (reservation - initial) * progress ** (1 / beta)``, with the concession
        rounded down (a seller's price up, a buyer's down), so the target lies between
        initial and reservation inclusive, equals ``initial`` at the start and
        ``reservation`` at the deadline, and is monotone in both arguments (non-increasing
        for a seller, non-decreasing for a buyer).
        """
        distance = abs(self.reservation_micros - self.initial_micros)
        conceded = math.floor(distance * self.concession(round, elapsed_seconds))
        conceded = min(distance, max(0, conceded))
        if self.is_seller:
            return self.initial_micros - conceded
        return self.initial_micros + conceded

    def acceptable(self, offered_micros: int) -> bool:
        """Whether a price is not worse than the reservation."""
        if self.is_seller:
            return offered_micros >= self.reservation_micros
        return offered_micros <= self.reservation_micros

    def accepts(self, offered_micros: int, round: int, elapsed_seconds: float) -> bool:
        """AC_next: accept iff the offer is at least as good as the counter-offer this side
        would make now (``target(round, elapsed_seconds)``) and not worse than the reservation.
        """
        own = self.target(round, elapsed_seconds)
        if not self.acceptable(offered_micros):
            return False
        if self.is_seller:
            return offered_micros >= own
        return offered_micros <= own

    def deadline_reached(self, round: int, elapsed_seconds: float) -> bool:
        """Whether the round or time deadline has come."""
        return round >= self.max_rounds or elapsed_seconds >= self.deadline_seconds


def boulware(
    initial_micros: int,
    reservation_micros: int,
    max_rounds: int,
    deadline_seconds: float,
    beta: float = BOULWARE_BETA,
) -> ConcessionStrategy:
    """A Boulware strategy: holds near the initial price and concedes late."""
    if beta >= 1:
        raise ValueError("a Boulware beta is below 1")
    return ConcessionStrategy(
        initial_micros, reservation_micros, beta, max_rounds, deadline_seconds
    )


def conceder(
    initial_micros: int,
    reservation_micros: int,
    max_rounds: int,
    deadline_seconds: float,
    beta: float = CONCEDER_BETA,
) -> ConcessionStrategy:
    """A Conceder strategy: moves quickly towards the reservation."""
    if beta <= 1:
        raise ValueError("a Conceder beta is above 1")
    return ConcessionStrategy(
        initial_micros, reservation_micros, beta, max_rounds, deadline_seconds
    )


def linear(
    initial_micros: int,
    reservation_micros: int,
    max_rounds: int,
    deadline_seconds: float,
    beta: float = LINEAR_BETA,
) -> ConcessionStrategy:
    """A linear strategy (beta 1 by default): concedes at a constant rate."""
    return ConcessionStrategy(
        initial_micros, reservation_micros, beta, max_rounds, deadline_seconds
    )


AutoMoveKind = Literal["accept", "counter", "terminate"]


@dataclass(frozen=True)
class AutoMove:
    """A lab's next move as decided by an AutoNegotiator."""

    kind: AutoMoveKind
    """``accept`` the coalition's price, ``counter`` with ``price_micros``, or ``terminate``."""
    price_micros: int | None
    """The accepted price (accept), the counter-offer (counter), None (terminate)."""
    reason: str = ""
    """For terminations: ``OVER_BUDGET`` (the deadline came with the price above budget) or
    ``DECLARATION_REFUSED`` (with terms the lab cannot take)."""
    declaration: terms_pb2.UseDeclaration | None = None
    """For counters: the use declaration to counter with (the coalition's proposal, taken
    within the lab's limits); None: the lab's own."""

    def __post_init__(self) -> None:
        if self.kind not in ("accept", "counter", "terminate"):
            raise ValueError(f"unknown move kind {self.kind!r}")
        if (self.price_micros is None) != (self.kind == "terminate"):
            raise ValueError("accept and counter carry a price; terminate does not")
        if self.declaration is not None and self.kind != "counter":
            raise ValueError("only a counter carries a declaration")


@dataclass(frozen=True)
class AutoNegotiator:
    """Bargains for a lab automatically within a budget, by a buyer ConcessionStrategy.

    The strategy's ``initial_micros`` is the opening bid and ``reservation_micros`` the
    budget (``initial_micros <= reservation_micros``). The negotiator is stateless: at each
    turn the caller passes the coalition's last price, the number of the move the lab is
    about to make, and the seconds since the negotiation opened, and gets back the move:

    - **accept** when the coalition's price is within budget and no higher than the bid the
      lab would make now (AC_next), so the lab never counters above a price on the table;
    - **terminate** (reason ``OVER_BUDGET``) once the deadline (rounds or time) has come and
      the price is still above budget: there is no later turn to wait for;
    - otherwise **counter** with the strategy's target, which never exceeds the budget and
      rises over time as the strategy prescribes.

    Give the strategy the negotiation's own ``max_rounds`` and deadline (from the
    Negotiation message): a negotiation allows no move after them, so at the deadline the
    lab can only take the price or leave, and ``decide`` never counters there. A Conceder
    beta brings the lab's counters close to its budget before the last rounds; a Boulware
    one keeps them low and risks the coalition's own deadline.

    The coalition's offers may change the lab's use declaration too: :meth:`decide_terms`
    judges whole terms against ``limits`` (what the lab may concede; by default nothing).
    """

    strategy: ConcessionStrategy
    limits: DeclarationLimits = field(default_factory=DeclarationLimits)

    def __post_init__(self) -> None:
        if self.strategy.initial_micros > self.strategy.reservation_micros:
            raise ValueError("a lab's opening bid must not exceed its budget")

    @property
    def budget_micros(self) -> int:
        """The most the lab will pay per item."""
        return self.strategy.reservation_micros

    def opening_bid(self) -> int:
        """The price for the lab's opening request."""
        return self.strategy.target(0, 0.0)

    def bid(self, round: int, elapsed_seconds: float) -> int:
        """The lab's counter-offer at (round, elapsed): never above the budget."""
        return min(self.strategy.target(round, elapsed_seconds), self.budget_micros)

    def decide(self, coalition_price_micros: int, round: int, elapsed_seconds: float) -> AutoMove:
        """The lab's next move in answer to the coalition's last offered price."""
        own = self.bid(round, elapsed_seconds)
        if coalition_price_micros <= own:
            return AutoMove("accept", coalition_price_micros)
        if self.strategy.deadline_reached(round, elapsed_seconds):
            return AutoMove("terminate", None, "OVER_BUDGET")
        return AutoMove("counter", own)

    def refusal(self, own: terms_pb2.LicenceTerms, offered: terms_pb2.LicenceTerms) -> str | None:
        """Why the lab cannot take the coalition's ``offered`` terms whatever their price,
        given its ``own`` (the terms it opened with): another term than price and
        declaration changed, or the declaration changed beyond :attr:`limits`. None when it
        can."""
        mine, theirs = _without_price_or_use(own), _without_price_or_use(offered)
        if mine.SerializeToString(deterministic=True) != theirs.SerializeToString(
            deterministic=True
        ):
            return "the coalition changed terms other than price and use"
        if _same_use(own.declaration, offered.declaration):
            return None
        return self.limits.refusal(own.declaration, offered.declaration)

    def decide_terms(
        self,
        own: terms_pb2.LicenceTerms,
        offered: terms_pb2.LicenceTerms,
        round: int,
        elapsed_seconds: float,
    ) -> AutoMove:
        """The lab's next move in answer to the coalition's ``offered`` terms, ``own`` being
        the terms the lab opened with.

        Terms the lab can take (:meth:`refusal` is None) are decided on price as by
        :meth:`decide`; a counter then keeps the coalition's declaration, so a concession
        made is not taken back. Terms it cannot take are never accepted: it counters with
        its own declaration at its bid, or, at the deadline, terminates
        (``DECLARATION_REFUSED``)."""
        if self.refusal(own, offered) is None:
            move = self.decide(offered.price_per_item.micros, round, elapsed_seconds)
            if move.kind == "counter" and not _same_use(own.declaration, offered.declaration):
                return replace(move, declaration=offered.declaration)
            return move
        if self.strategy.deadline_reached(round, elapsed_seconds):
            return AutoMove("terminate", None, DECLARATION_REFUSED)
        return AutoMove("counter", self.bid(round, elapsed_seconds))


def _without_price_or_use(terms: terms_pb2.LicenceTerms) -> terms_pb2.LicenceTerms:
    out = terms_pb2.LicenceTerms()
    out.CopyFrom(terms)
    out.price_per_item.micros = 0
    out.ClearField("declaration")
    return out


def _same_use(a: terms_pb2.UseDeclaration, b: terms_pb2.UseDeclaration) -> bool:
    return a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)
