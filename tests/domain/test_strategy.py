"""Time-dependent concession tactics and the labs' AutoNegotiator (pure)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coalition.strategy import (
    AutoMove,
    AutoNegotiator,
    ConcessionStrategy,
    boulware,
    conceder,
    linear,
)

micros = st.integers(min_value=0, max_value=10**15)
betas = st.floats(min_value=0.01, max_value=50, allow_nan=False, allow_infinity=False)
round_limits = st.integers(min_value=1, max_value=100)
deadlines = st.floats(min_value=0.001, max_value=1e7, allow_nan=False, allow_infinity=False)
elapsed_values = st.floats(min_value=0, max_value=2e7, allow_nan=False, allow_infinity=False)
rounds = st.integers(min_value=0, max_value=150)


@st.composite
def strategies(draw: st.DrawFn) -> ConcessionStrategy:
    return ConcessionStrategy(
        initial_micros=draw(micros),
        reservation_micros=draw(micros),
        beta=draw(betas),
        max_rounds=draw(round_limits),
        deadline_seconds=draw(deadlines),
    )


def better_or_equal(strategy: ConcessionStrategy, a: int, b: int) -> bool:
    """Whether price a is at least as good as price b for the strategy's side."""
    return a >= b if strategy.is_seller else a <= b


# --- properties of target -------------------------------------------------------------


@given(strategies(), rounds, rounds, elapsed_values, elapsed_values)
def test_target_is_monotone_in_both_arguments(
    strategy: ConcessionStrategy, r1: int, r2: int, e1: float, e2: float
) -> None:
    early = strategy.target(min(r1, r2), min(e1, e2))
    later_round = strategy.target(max(r1, r2), min(e1, e2))
    later_time = strategy.target(min(r1, r2), max(e1, e2))
    later_both = strategy.target(max(r1, r2), max(e1, e2))
    # Time only moves a side towards its reservation: later targets are no better for it.
    assert better_or_equal(strategy, early, later_round)
    assert better_or_equal(strategy, early, later_time)
    assert better_or_equal(strategy, later_round, later_both)
    assert better_or_equal(strategy, later_time, later_both)


@given(strategies(), rounds, elapsed_values)
def test_target_stays_between_initial_and_reservation(
    strategy: ConcessionStrategy, round: int, elapsed: float
) -> None:
    target = strategy.target(round, elapsed)
    low = min(strategy.initial_micros, strategy.reservation_micros)
    high = max(strategy.initial_micros, strategy.reservation_micros)
    assert isinstance(target, int)
    assert low <= target <= high
    assert strategy.acceptable(target)


@given(strategies(), st.integers(min_value=0, max_value=50), elapsed_values)
def test_target_is_the_reservation_at_the_deadline(
    strategy: ConcessionStrategy, extra: int, elapsed: float
) -> None:
    assert strategy.target(strategy.max_rounds + extra, elapsed) == strategy.reservation_micros
    assert strategy.target(0, strategy.deadline_seconds + elapsed) == strategy.reservation_micros


@given(strategies())
def test_target_is_the_initial_price_at_the_start(strategy: ConcessionStrategy) -> None:
    assert strategy.target(0, 0.0) == strategy.initial_micros
    assert strategy.progress(0, 0.0) == 0.0


@given(strategies(), micros, rounds, elapsed_values)
def test_never_accepts_worse_than_the_reservation(
    strategy: ConcessionStrategy, offered: int, round: int, elapsed: float
) -> None:
    if strategy.accepts(offered, round, elapsed):
        assert strategy.acceptable(offered)
        assert better_or_equal(strategy, offered, strategy.target(round, elapsed))
    else:
        assert not (
            strategy.acceptable(offered)
            and better_or_equal(strategy, offered, strategy.target(round, elapsed))
        )


# --- shapes and rounding ----------------------------------------------------------------


def test_boulware_holds_firm_and_conceder_concedes_early() -> None:
    args = (100_000_000, 10_000_000, 10, 3600.0)
    hard, steady, soft = boulware(*args), linear(*args), conceder(*args)
    assert (hard.beta, steady.beta, soft.beta) == (0.2, 1.0, 5.0)
    for round in range(1, 10):
        assert hard.target(round, 0) > steady.target(round, 0) > soft.target(round, 0)
    # Boulware barely moves at half time; Conceder has given most of it away.
    assert hard.target(5, 0) > 95_000_000
    assert soft.target(5, 0) < 25_000_000
    assert steady.target(5, 0) == 55_000_000
    for strategy in (hard, steady, soft):
        assert strategy.target(0, 0) == 100_000_000
        assert strategy.target(10, 0) == 10_000_000


def test_buyer_shapes_mirror_the_seller() -> None:
    args = (1_000_000, 9_000_000, 8, 3600.0)
    hard, soft = boulware(*args), conceder(*args)
    assert not hard.is_seller
    for round in range(1, 8):
        assert hard.target(round, 0) < soft.target(round, 0)


def test_rounding_favours_the_own_side() -> None:
    seller = linear(10, 0, 3, 60.0)
    buyer = linear(0, 10, 3, 60.0)
    assert seller.target(1, 0) == 7  # 10 - 3.33 -> rounds up
    assert seller.target(2, 0) == 4  # 10 - 6.67 -> rounds up
    assert buyer.target(1, 0) == 3  # 3.33 -> rounds down
    assert buyer.target(2, 0) == 6  # 6.67 -> rounds down


def test_exact_at_large_amounts() -> None:
    seller = linear(10**15, 10**15 - 3, 3, 60.0)
    assert [seller.target(r, 0) for r in range(4)] == [
        10**15,
        10**15 - 1,
        10**15 - 2,
        10**15 - 3,
    ]


def test_progress_takes_the_further_of_rounds_and_time() -> None:
    strategy = linear(100, 0, 10, 100.0)
    assert strategy.progress(2, 50.0) == 0.5
    assert strategy.progress(7, 50.0) == 0.7
    assert strategy.progress(20, 0.0) == 1.0
    assert strategy.progress(-3, -5.0) == 0.0
    assert strategy.progress(0, math.inf) == 1.0
    assert strategy.target(0, 50.0) == 50
    with pytest.raises(ValueError, match="elapsed_seconds"):
        strategy.progress(1, math.nan)


def test_flat_strategy_is_a_fixed_price() -> None:
    strategy = linear(5, 5, 4, 10.0)
    assert strategy.is_seller
    assert {strategy.target(r, 0) for r in range(6)} == {5}
    assert strategy.accepts(5, 1, 0)
    assert not strategy.accepts(4, 4, 0)


def test_seller_accepts_offers_at_least_its_next_target() -> None:
    seller = linear(100, 50, 10, 1000.0)
    assert seller.target(5, 0) == 75
    assert seller.accepts(75, 5, 0)
    assert seller.accepts(90, 5, 0)
    assert not seller.accepts(74, 5, 0)
    assert seller.accepts(50, 10, 0)
    assert not seller.accepts(49, 10, 0)


def test_buyer_accepts_offers_at_most_its_next_target() -> None:
    buyer = linear(50, 100, 10, 1000.0)
    assert buyer.target(5, 0) == 75
    assert buyer.accepts(75, 5, 0)
    assert buyer.accepts(10, 5, 0)
    assert not buyer.accepts(76, 5, 0)
    assert not buyer.accepts(101, 10, 0)


def test_deadline_reached() -> None:
    strategy = linear(100, 0, 4, 30.0)
    assert not strategy.deadline_reached(3, 29.9)
    assert strategy.deadline_reached(4, 0)
    assert strategy.deadline_reached(0, 30.0)


# --- validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"initial_micros": -1}, "initial_micros must not be negative"),
        ({"reservation_micros": -5}, "reservation_micros must not be negative"),
        ({"initial_micros": 1.5}, "initial_micros must be an integer"),
        ({"reservation_micros": True}, "reservation_micros must be an integer"),
        ({"beta": 0}, "beta must be a finite number above 0"),
        ({"beta": -1.0}, "beta must be a finite number above 0"),
        ({"beta": math.nan}, "beta must be a finite number above 0"),
        ({"beta": math.inf}, "beta must be a finite number above 0"),
        ({"beta": "1"}, "beta must be a number"),
        ({"max_rounds": 0}, "max_rounds must be at least 1"),
        ({"max_rounds": 2.0}, "max_rounds must be an integer"),
        ({"deadline_seconds": 0}, "deadline_seconds must be a finite number above 0"),
        ({"deadline_seconds": math.inf}, "deadline_seconds must be a finite number above 0"),
    ],
)
def test_invalid_strategies_are_refused(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {
        "initial_micros": 10,
        "reservation_micros": 5,
        "beta": 1.0,
        "max_rounds": 3,
        "deadline_seconds": 60.0,
    }
    fields.update(kwargs)
    with pytest.raises(ValueError, match=message):
        ConcessionStrategy(**fields)  # type: ignore[arg-type]


def test_named_constructors_check_their_shape() -> None:
    assert boulware(10, 5, 3, 60, beta=0.5).beta == 0.5
    assert conceder(10, 5, 3, 60, beta=2).beta == 2
    assert linear(10, 5, 3, 60, beta=1.1).beta == 1.1
    with pytest.raises(ValueError, match="Boulware"):
        boulware(10, 5, 3, 60, beta=2)
    with pytest.raises(ValueError, match="Conceder"):
        conceder(10, 5, 3, 60, beta=0.5)


# --- AutoNegotiator ---------------------------------------------------------------------


def test_auto_negotiator_opens_low_and_counters_upwards() -> None:
    lab = AutoNegotiator(linear(1_000_000, 5_000_000, 10, 3600.0))
    assert lab.opening_bid() == 1_000_000
    assert lab.budget_micros == 5_000_000
    moves = [lab.decide(9_000_000, round, 0) for round in (2, 4, 6, 8)]
    assert [m.kind for m in moves] == ["counter"] * 4
    prices = [m.price_micros for m in moves]
    assert prices == [1_800_000, 2_600_000, 3_400_000, 4_200_000]


def test_auto_negotiator_accepts_a_price_within_its_bid() -> None:
    lab = AutoNegotiator(linear(1_000_000, 5_000_000, 10, 3600.0))
    assert lab.decide(2_600_000, 4, 0) == AutoMove("accept", 2_600_000)
    assert lab.decide(500_000, 2, 0) == AutoMove("accept", 500_000)
    assert lab.decide(2_600_001, 4, 0) == AutoMove("counter", 2_600_000)


def test_auto_negotiator_terminates_over_budget_at_the_deadline() -> None:
    lab = AutoNegotiator(conceder(1_000_000, 5_000_000, 10, 3600.0))
    assert lab.decide(5_000_001, 10, 0) == AutoMove("terminate", None, "OVER_BUDGET")
    assert lab.decide(5_000_001, 2, 3600.0) == AutoMove("terminate", None, "OVER_BUDGET")
    assert lab.decide(5_000_000, 10, 0) == AutoMove("accept", 5_000_000)


def test_auto_negotiator_with_a_fixed_budget_is_take_it_or_leave_it() -> None:
    lab = AutoNegotiator(linear(3_000_000, 3_000_000, 4, 60.0))
    assert lab.decide(3_000_000, 2, 0) == AutoMove("accept", 3_000_000)
    assert lab.decide(3_000_001, 2, 0) == AutoMove("counter", 3_000_000)
    assert lab.decide(3_000_001, 4, 0).kind == "terminate"


def test_auto_negotiator_needs_a_buyer_strategy() -> None:
    with pytest.raises(ValueError, match="opening bid must not exceed its budget"):
        AutoNegotiator(linear(6, 5, 3, 60.0))


def test_auto_moves_are_well_formed() -> None:
    with pytest.raises(ValueError, match="carry a price"):
        AutoMove("counter", None)
    with pytest.raises(ValueError, match="carry a price"):
        AutoMove("terminate", 5)
    with pytest.raises(ValueError, match="unknown move kind"):
        AutoMove("haggle", 5)  # type: ignore[arg-type]


@given(micros, micros, betas, round_limits, deadlines, micros, rounds, elapsed_values)
def test_auto_negotiator_never_pays_or_bids_above_budget(
    a: int,
    b: int,
    beta: float,
    max_rounds: int,
    deadline: float,
    price: int,
    round: int,
    elapsed: float,
) -> None:
    lab = AutoNegotiator(ConcessionStrategy(min(a, b), max(a, b), beta, max_rounds, deadline))
    move = lab.decide(price, round, elapsed)
    if move.kind == "accept":
        assert move.price_micros == price <= lab.budget_micros
    elif move.kind == "counter":
        assert move.price_micros is not None
        assert move.price_micros < price
        assert move.price_micros <= lab.budget_micros
        assert not lab.strategy.deadline_reached(round, elapsed)
    else:
        assert price > lab.budget_micros
        assert lab.strategy.deadline_reached(round, elapsed)


def test_self_play_reaches_a_deal_inside_the_zone_of_agreement() -> None:
    coalition = linear(20_000_000, 8_000_000, 12, 3600.0)
    lab = AutoNegotiator(conceder(2_000_000, 10_000_000, 12, 3600.0))
    lab_price = lab.opening_bid()
    deal: int | None = None
    for round in range(1, 13, 2):
        if coalition.accepts(lab_price, round, 0):
            deal = lab_price
            break
        offer = coalition.target(round, 0)
        move = lab.decide(offer, round + 1, 0)
        if move.kind == "accept":
            deal = offer
            break
        assert move.kind == "counter"
        assert move.price_micros is not None
        lab_price = move.price_micros
    assert deal is not None
    assert 8_000_000 <= deal <= 10_000_000
