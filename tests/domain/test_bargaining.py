"""The coalition's side of a negotiation: decisions and the last line of defence (pure).

The property test drives the coalition against random pools, policies and lab behaviour
(random AutoNegotiator strategies or arbitrary price sequences) and checks that it never
accepts or offers a price below its reservation, that every accepted price covers the
quorum (also when recounted with consent.permits alone), and that check_agreement refuses
anything below.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from coalition.strategy import AutoNegotiator, ConcessionStrategy
from coalition.v1 import terms_pb2
from coalition_server.domain.bargaining import (
    BargainingPolicy,
    Decision,
    check_agreement,
    coalition_decision,
)
from coalition_server.domain.consent import MAX_MICROS, Token
from coalition_server.domain.errors import FailedPreconditionError, InvalidArgumentError
from coalition_server.domain.reservation import (
    QuorumRule,
    candidates,
    covered,
    reservation_price,
)
from tests.domain.test_reservation import (
    AT,
    DAY,
    GENAI,
    INPUT,
    LAB,
    OTHER_LAB,
    PURCHASE,
    REGISTERED,
    STORED,
    SUBSCRIPTION,
    TRAIN,
    WITHDRAWN,
    Item,
    cands,
    directly_covered,
    item_key,
    member_key,
    terms,
    token,
)


def policy(**kwargs: object) -> BargainingPolicy:
    fields: dict[str, object] = {
        "quorum": QuorumRule(0.5),
        "aspiration_multiplier": 2.0,
        "beta": 1.0,
        "max_rounds": 10,
        "deadline": timedelta(hours=1),
    }
    fields.update(kwargs)
    return BargainingPolicy(**fields)  # type: ignore[arg-type]


# --- decisions ----------------------------------------------------------------------------


def test_opens_at_the_aspiration_and_concedes_to_the_reservation() -> None:
    pool = cands(1_000_000, 2_000_000, 3_000_000, 4_000_000)  # reservation 2_000_000
    rules = policy()
    offers = [coalition_decision(rules, pool, 0, r, timedelta(0)) for r in range(0, 10)]
    assert offers[0] == Decision("offer", 4_000_000)
    prices = [d.price_micros for d in offers]
    assert prices == [4_000_000 - 200_000 * r for r in range(10)]
    assert all(d.kind == "offer" and d.reason == "" for d in offers)


def test_accepts_a_price_at_least_its_own_next_offer() -> None:
    pool = cands(1_000_000, 2_000_000, 3_000_000, 4_000_000)
    rules = policy()
    assert coalition_decision(rules, pool, 3_000_000, 5, timedelta(0)) == Decision(
        "accept", 3_000_000
    )
    assert coalition_decision(rules, pool, 2_999_999, 5, timedelta(0)) == Decision(
        "offer", 3_000_000
    )
    # Early on, a generous price is taken at once.
    assert coalition_decision(rules, pool, 4_000_000, 1, timedelta(0)).kind == "accept"


@settings(max_examples=300, deadline=None)
@given(
    floors=st.lists(st.integers(0, 50_000_000), min_size=1, max_size=8),
    lab_price=st.integers(0, 120_000_000),
    round=st.integers(0, 12),
    seconds=st.floats(0, 4000, allow_nan=False),
    beta=st.sampled_from([0.2, 0.5, 1.0, 3.0]),
)
def test_decisions_follow_the_strategys_own_acceptance(
    floors: list[int], lab_price: int, round: int, seconds: float, beta: float
) -> None:
    # coalition_decision computes the target once for AC_next and the counter: it must
    # decide exactly as ConcessionStrategy.accepts and .target would.
    pool = cands(*floors)
    rules = policy(beta=beta)
    elapsed = timedelta(seconds=seconds)
    decision = coalition_decision(rules, pool, lab_price, round, elapsed)
    reservation = reservation_price(pool, rules.quorum)
    assert reservation is not None
    strategy = ConcessionStrategy(
        rules.aspiration(reservation), reservation, beta, rules.max_rounds, 3600.0
    )
    if strategy.accepts(lab_price, round, elapsed.total_seconds()):
        assert decision == Decision("accept", lab_price)
    elif round >= rules.max_rounds or elapsed >= rules.deadline:
        assert decision == Decision("terminate", None, "DEADLINE")
    else:
        assert decision == Decision("offer", strategy.target(round, elapsed.total_seconds()))


def test_remembered_strategies_are_each_reservations_own() -> None:
    # The policy remembers a strategy per reservation: asking again, in any order and past
    # the point where it starts again, gives the strategy built afresh for that reservation.
    rules = policy(beta=0.5, max_rounds=7)

    def fresh(reservation: int) -> ConcessionStrategy:
        return ConcessionStrategy(
            rules.aspiration(reservation), reservation, 0.5, 7, timedelta(hours=1).total_seconds()
        )

    for reservation in (2_000_000, 3_000_000, 2_000_000, 0, 3_000_000):
        assert rules.strategy(reservation) == fresh(reservation)
    for reservation in range(3000):  # more than it keeps
        assert rules.strategy(reservation).reservation_micros == reservation
    assert rules.strategy(2_000_000) == fresh(2_000_000)
    # Another policy (e.g. one with a raised quorum) keeps its own.
    other = policy(beta=1.0, max_rounds=7)
    assert other.strategy(2_000_000).beta == 1.0
    assert rules.strategy(2_000_000).beta == 0.5


def test_time_counts_like_rounds() -> None:
    pool = cands(1_000_000, 2_000_000, 3_000_000, 4_000_000)
    rules = policy()
    decision = coalition_decision(rules, pool, 0, 1, timedelta(minutes=30))
    assert decision == Decision("offer", 3_000_000)


def test_boulware_holds_out_longer_than_conceder() -> None:
    pool = cands(10_000_000, 10_000_000)
    hard, soft = policy(beta=0.2), policy(beta=5.0)
    for round in range(1, 10):
        firm = coalition_decision(hard, pool, 0, round, timedelta(0)).price_micros
        weak = coalition_decision(soft, pool, 0, round, timedelta(0)).price_micros
        assert firm is not None
        assert weak is not None
        assert firm > weak >= 10_000_000
    assert coalition_decision(hard, pool, 0, 5, timedelta(0)).price_micros == 19_687_500


def test_deadline_by_rounds_terminates() -> None:
    pool = cands(1_000_000, 2_000_000)
    rules = policy(max_rounds=6)
    assert coalition_decision(rules, pool, 999_999, 6, timedelta(0)) == Decision(
        "terminate", None, "DEADLINE"
    )
    assert coalition_decision(rules, pool, 999_999, 9, timedelta(0)).reason == "DEADLINE"
    # At the deadline the reservation itself is still taken.
    assert coalition_decision(rules, pool, 1_000_000, 6, timedelta(0)).kind == "accept"


def test_deadline_by_time_terminates() -> None:
    pool = cands(1_000_000, 2_000_000)
    rules = policy(deadline=timedelta(minutes=5))
    late = timedelta(minutes=5)
    assert coalition_decision(rules, pool, 0, 1, late) == Decision("terminate", None, "DEADLINE")
    assert coalition_decision(rules, pool, 1_000_000, 1, late).kind == "accept"
    assert coalition_decision(rules, pool, 0, 1, late - timedelta(seconds=1)).kind == "offer"


def test_no_quorum_possible_terminates_at_once() -> None:
    no_quorum = Decision("terminate", None, "NO_QUORUM_POSSIBLE")
    rules = policy(quorum=QuorumRule(0.5, min_items=3))
    assert coalition_decision(rules, [], 10**9, 1, timedelta(0)) == no_quorum
    assert coalition_decision(rules, cands(1, 2), 10**9, 1, timedelta(0)) == no_quorum
    assert coalition_decision(rules, cands(1, 2, 3, 4, 5, 6), 10**9, 1, timedelta(0), 2) == (
        no_quorum
    )
    # A reservation above the absurd-price guard is no deal either.
    capped = policy(max_price_micros=5_000_000)
    assert coalition_decision(capped, cands(6_000_000), 1, 1, timedelta(0)) == no_quorum


def test_aspiration_is_capped_by_the_max_price() -> None:
    rules = policy(max_price_micros=3_000_000)
    pool = cands(2_000_000)
    assert coalition_decision(rules, pool, 0, 0, timedelta(0)) == Decision("offer", 3_000_000)
    assert rules.aspiration(2_000_000) == 3_000_000
    assert rules.aspiration(3_000_000) == 3_000_000
    assert policy(aspiration_multiplier=1.1).aspiration(10) == 11
    assert policy(aspiration_multiplier=1.5).aspiration(3) == 5


def test_max_items_bounds_what_a_price_buys() -> None:
    pool = cands(1, 2, 3, 4, 5, 6, 7, 8)
    rules = policy(quorum=QuorumRule(0.25))  # 2 of the 8 eligible items
    assert reservation_price(pool, rules.quorum, max_items=2) == 2
    decision = coalition_decision(rules, pool, 2, 10, timedelta(0), max_items=2)
    assert decision == Decision("accept", 2)
    assert [c.floor_micros for c in check_agreement(rules, pool, 8, max_items=2)] == [1, 2]
    assert len(check_agreement(rules, pool, 8, max_items=0)) == 8


def test_bad_lab_prices_are_refused() -> None:
    rules = policy(max_price_micros=10_000_000)
    pool = cands(1)
    with pytest.raises(InvalidArgumentError) as negative:
        coalition_decision(rules, pool, -1, 1, timedelta(0))
    assert negative.value.reason == "NEGATIVE_PRICE"
    with pytest.raises(InvalidArgumentError) as absurd:
        coalition_decision(rules, pool, 10_000_001, 1, timedelta(0))
    assert absurd.value.reason == "ABSURD_PRICE"
    with pytest.raises(InvalidArgumentError):
        check_agreement(rules, pool, 10_000_001)


# --- check_agreement ----------------------------------------------------------------------


def test_check_agreement_returns_the_covered_set() -> None:
    pool = cands(3, 1, 2, 9)
    chosen = check_agreement(policy(), pool, 2)
    assert chosen == [pool[1], pool[2]]


def test_check_agreement_refuses_below_the_reservation() -> None:
    with pytest.raises(FailedPreconditionError) as error:
        check_agreement(policy(), cands(3, 1, 2, 9), 1)
    assert error.value.reason == "BELOW_RESERVATION"
    # Nothing about the reservation leaks into what the lab is told.
    assert "2" not in error.value.message
    assert error.value.metadata == {}


def test_check_agreement_refuses_without_quorum() -> None:
    with pytest.raises(FailedPreconditionError) as error:
        check_agreement(policy(quorum=QuorumRule(0.5, min_items=5)), cands(1, 2), 10)
    assert error.value.reason == "QUORUM_NOT_MET"
    with pytest.raises(FailedPreconditionError) as capped:
        check_agreement(policy(), cands(1, 2, 3, 4), 10, max_items=1)
    assert capped.value.reason == "QUORUM_NOT_MET"


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"quorum": 0.5}, "quorum must be a QuorumRule"),
        ({"aspiration_multiplier": 0.9}, "aspiration_multiplier must be a finite number"),
        ({"aspiration_multiplier": float("inf")}, "aspiration_multiplier must be a finite"),
        ({"beta": 0}, "beta must be a finite number above 0"),
        ({"max_rounds": 0}, "max_rounds must be at least 1"),
        ({"max_rounds": True}, "max_rounds must be an integer"),
        ({"deadline": timedelta(0)}, "deadline must be a positive duration"),
        ({"deadline": 60}, "deadline must be a positive duration"),
        ({"max_price_micros": 0}, "max_price_micros must be above 0"),
        ({"max_price_micros": MAX_MICROS + 1}, "max_price_micros must be above 0"),
    ],
)
def test_invalid_policies_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        policy(**kwargs)


def test_decisions_are_well_formed() -> None:
    with pytest.raises(ValueError, match="carry a price"):
        Decision("offer", None)
    with pytest.raises(ValueError, match="carry a price"):
        Decision("terminate", 1, "DEADLINE")
    with pytest.raises(ValueError, match="unknown decision kind"):
        Decision("sulk", None)  # type: ignore[arg-type]


# --- the property: never below the reservation, never below the quorum -------------------

PURPOSES = (TRAIN, GENAI, INPUT)
TAGS = ("poems", "essays", "code")
MEDIA = ("text/plain", "image/png")


@dataclass
class World:
    """A random pool of members, items and tokens, and a lab's terms."""

    items: list[Item]
    tokens: dict[str, list[Token]]
    licence: terms_pb2.LicenceTerms
    lab: str
    at: datetime


def sometimes(draw: st.DrawFn, percent: int) -> bool:
    """True about ``percent`` % of the time (restrictions are rare, so pools are not empty)."""
    return draw(st.integers(min_value=0, max_value=99)) >= 100 - percent


@st.composite
def token_for(draw: st.DrawFn, member: str, item_ids: Sequence[str]) -> Token:
    selector = draw(st.sampled_from(["all", "tag", "ids"]))
    kwargs: dict[str, object] = {}
    if selector == "tag":
        kwargs["tag"] = draw(st.sampled_from(TAGS))
    elif selector == "ids" and item_ids:
        kwargs["item_ids"] = draw(st.lists(st.sampled_from(item_ids), min_size=1, unique=True))
    floor = st.integers(min_value=0, max_value=20_000_000)
    purchase = draw(floor) if not sometimes(draw, 20) else None
    periods = st.sampled_from([3600, DAY, 7 * DAY, 30 * DAY, 365 * DAY])
    subscription = draw(st.tuples(floor, periods)) if not sometimes(draw, 30) else None
    per_use = draw(floor) if purchase is None and subscription is None else None
    not_before = AT - timedelta(days=draw(st.integers(min_value=0, max_value=20)))
    if sometimes(draw, 10):
        not_before = AT + timedelta(days=draw(st.integers(min_value=1, max_value=3)))
    not_after = not_before + timedelta(days=draw(st.integers(min_value=1, max_value=60)))
    purposes = list(PURPOSES)
    if sometimes(draw, 25):
        purposes = draw(st.lists(st.sampled_from(PURPOSES), min_size=1, max_size=3, unique=True))
    excluded: list[str] = []
    if sometimes(draw, 15):
        excluded = draw(st.lists(st.sampled_from([LAB, OTHER_LAB]), min_size=1, unique=True))
    return token(
        member,
        purposes=purposes,
        purchase=purchase,
        subscription=subscription,
        per_use=per_use,
        currency="EUR" if sometimes(draw, 5) else "USD",
        excluded_labs=excluded,
        not_before=not_before,
        not_after=not_after,
        attribution_required=sometimes(draw, 20),
        max_licence_seconds=(
            draw(st.sampled_from([30 * DAY, 365 * DAY, 1000 * DAY]))
            if sometimes(draw, 20)
            else None
        ),
        max_deletion_seconds=(
            draw(st.sampled_from([DAY, 7 * DAY, 60 * DAY])) if sometimes(draw, 20) else None
        ),
        **kwargs,  # type: ignore[arg-type]
    )


@st.composite
def worlds(draw: st.DrawFn) -> World:
    items: list[Item] = []
    tokens: dict[str, list[Token]] = {}
    for m in range(draw(st.integers(min_value=1, max_value=7))):
        member = member_key(m)
        mine = [
            Item(
                item_key(member, n),
                member,
                frozenset(draw(st.lists(st.sampled_from(TAGS), max_size=2))),
                draw(st.sampled_from([STORED, STORED, REGISTERED, WITHDRAWN])),
                draw(st.sampled_from(MEDIA)),
            )
            for n in range(draw(st.integers(min_value=1, max_value=6)))
        ]
        items.extend(mine)
        ids = [i.item_id for i in mine]
        tokens[member] = [
            draw(token_for(member, ids)) for _ in range(draw(st.integers(min_value=1, max_value=3)))
        ]
    subscription = draw(st.booleans())
    licence = terms(
        0,
        purposes=draw(st.lists(st.sampled_from(PURPOSES), min_size=1, max_size=2, unique=True)),
        model=SUBSCRIPTION if subscription else PURCHASE,
        period_seconds=draw(st.sampled_from([DAY, 7 * DAY, 30 * DAY])) if subscription else None,
        licence_seconds=draw(st.sampled_from([30 * DAY, 365 * DAY, 730 * DAY])),
        deletion_seconds=45 * DAY
        if sometimes(draw, 10)
        else draw(st.sampled_from([DAY, 7 * DAY, 30 * DAY])),
        attribution=not sometimes(draw, 20),
        tags=draw(st.lists(st.sampled_from(TAGS), max_size=2, unique=True))
        if sometimes(draw, 30)
        else [],
        media_types=draw(st.lists(st.sampled_from(MEDIA), max_size=1))
        if sometimes(draw, 20)
        else [],
    )
    return World(items, tokens, licence, draw(st.sampled_from([LAB, OTHER_LAB])), AT)


@st.composite
def policies(draw: st.DrawFn) -> BargainingPolicy:
    return BargainingPolicy(
        quorum=QuorumRule(
            draw(st.floats(min_value=0.01, max_value=1.0)),
            draw(st.integers(min_value=1, max_value=3)),
        ),
        aspiration_multiplier=draw(st.floats(min_value=1.0, max_value=5.0)),
        beta=draw(st.sampled_from([0.1, 0.2, 0.5, 1.0, 2.0, 5.0]) | st.floats(0.05, 20.0)),
        max_rounds=draw(st.integers(min_value=1, max_value=16)),
        deadline=timedelta(seconds=draw(st.integers(min_value=1, max_value=3600))),
        max_price_micros=draw(st.sampled_from([MAX_MICROS, 50_000_000, 15_000_000])),
    )


@st.composite
def labs(draw: st.DrawFn) -> AutoNegotiator | list[int]:
    """A lab: an AutoNegotiator with a random budget and strategy, or arbitrary prices."""
    price = st.integers(min_value=0, max_value=25_000_000)
    if draw(st.booleans()):
        return draw(st.lists(price, min_size=1, max_size=20))
    low, high = sorted((draw(price), draw(price)))
    return AutoNegotiator(
        ConcessionStrategy(
            low,
            high,
            draw(st.floats(min_value=0.05, max_value=20.0)),
            draw(st.integers(min_value=1, max_value=20)),
            float(draw(st.integers(min_value=1, max_value=3600))),
        )
    )


def check_reservation_against_permits(
    world: World, rules: BargainingPolicy, max_items: int
) -> int | None:
    """The reservation, checked against a direct count with consent.permits."""
    pool = candidates(world.items, world.tokens, world.licence, world.lab, world.at)
    reservation = reservation_price(pool, rules.quorum, max_items)
    required = rules.quorum.required(len(pool))

    def count(price: int) -> int:
        licence = terms_pb2.LicenceTerms()
        licence.CopyFrom(world.licence)
        licence.price_per_item.micros = price
        direct = directly_covered(world.items, world.tokens, licence, world.lab, world.at)
        assert direct == {c.item_id for c in covered(pool, price)}
        return min(len(direct), max_items) if max_items else len(direct)

    if reservation is None:
        assert count(MAX_MICROS) < required
    else:
        assert count(reservation) >= required
        if reservation > 0:
            assert count(reservation - 1) < required
    return reservation


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    worlds(),
    policies(),
    labs(),
    st.integers(min_value=0, max_value=6),
    st.lists(st.integers(min_value=0, max_value=900), min_size=20, max_size=20),
    st.integers(min_value=0, max_value=10**9),
)
def test_never_below_reservation_or_quorum(
    world: World,
    rules: BargainingPolicy,
    lab: AutoNegotiator | list[int],
    max_items: int,
    pauses: list[int],
    probe: int,
) -> None:
    pool = candidates(world.items, world.tokens, world.licence, world.lab, world.at)
    required = rules.quorum.required(len(pool))
    event(f"eligible: {min(len(pool), 5)}{'+' if len(pool) >= 5 else ''}")
    reservation = check_reservation_against_permits(world, rules, max_items)
    if reservation is not None and reservation > rules.max_price_micros:
        reservation = None

    def agreed(price: int) -> None:
        """A price the coalition agreed to: at or above reservation, quorum covered."""
        assert reservation is not None
        assert reservation <= price <= rules.max_price_micros
        chosen = check_agreement(rules, pool, price, max_items)
        assert len(chosen) >= required
        assert chosen == covered(pool, price, max_items)
        licence = terms_pb2.LicenceTerms()
        licence.CopyFrom(world.licence)
        licence.price_per_item.micros = price
        direct = directly_covered(world.items, world.tokens, licence, world.lab, world.at)
        assert {c.item_id for c in chosen} <= direct

    # check_agreement refuses anything below the reservation.
    if reservation is None:
        with pytest.raises(FailedPreconditionError) as none:
            check_agreement(rules, pool, min(probe, rules.max_price_micros), max_items)
        assert none.value.reason == "QUORUM_NOT_MET"
    elif reservation > 0:
        with pytest.raises(FailedPreconditionError) as below:
            check_agreement(rules, pool, probe % reservation, max_items)
        assert below.value.reason == "BELOW_RESERVATION"

    elapsed = timedelta(0)
    auto = lab if isinstance(lab, AutoNegotiator) else None
    scripted = iter(lab if isinstance(lab, list) else [])
    lab_price = auto.opening_bid() if auto else next(scripted)
    previous_offer: int | None = None
    for round in range(1, 2 * rules.max_rounds + 3, 2):
        lab_price = min(lab_price, rules.max_price_micros)
        decision = coalition_decision(rules, pool, lab_price, round, elapsed, max_items)
        event(f"coalition: {decision.kind} {decision.reason}".strip())
        if reservation is None:
            assert decision == Decision("terminate", None, "NO_QUORUM_POSSIBLE")
            return
        if decision.kind == "accept":
            assert decision.price_micros == lab_price
            agreed(lab_price)
            return
        if decision.kind == "terminate":
            assert decision.reason == "DEADLINE"
            assert round >= rules.max_rounds or elapsed >= rules.deadline
            assert lab_price < reservation or lab_price < rules.strategy(reservation).target(
                round, elapsed.total_seconds()
            )
            return
        offer = decision.price_micros
        assert offer is not None
        assert reservation <= offer <= rules.max_price_micros
        assert lab_price < offer
        if previous_offer is not None:
            assert offer <= previous_offer
        previous_offer = offer
        # Were the lab to accept this offer, the agreement would hold.
        agreed(offer)
        elapsed += timedelta(seconds=pauses[(round // 2) % len(pauses)])
        if auto is not None:
            move = auto.decide(offer, round + 1, elapsed.total_seconds())
            event(f"lab: {move.kind} {move.reason}".strip())
            if move.kind != "counter":
                return
            assert move.price_micros is not None
            lab_price = move.price_micros
        else:
            next_price = next(scripted, None)
            if next_price is None:
                return
            lab_price = next_price
    pytest.fail("the coalition never ended a negotiation past its deadline")


def test_candidates_of_a_mixed_pool_reach_agreement() -> None:
    """A worked example end to end: candidates, reservation, concession, agreement."""
    items: list[Item] = []
    tokens: dict[str, list[Token]] = {}
    floors = [1_000_000, 2_000_000, 3_000_000, 4_000_000, 5_000_000, 6_000_000]
    for n, floor in enumerate(floors):
        member = member_key(n)
        item = Item(item_key(member, 0), member, frozenset({"poems"}))
        items.append(item)
        tokens[member] = [token(member, purchase=floor)]
    # One more member who excludes this lab, one whose consent has lapsed.
    for n, kwargs in ((6, {"excluded_labs": (LAB,)}), (7, {"not_after": AT})):
        member = member_key(n)
        items.append(Item(item_key(member, 0), member))
        tokens[member] = [token(member, purchase=1, **kwargs)]
    pool = candidates(items, tokens, terms(0), LAB, AT)
    assert len(pool) == 6
    rules = policy(quorum=QuorumRule(0.5), beta=0.5, max_rounds=8)
    assert reservation_price(pool, rules.quorum) == 3_000_000
    lab = AutoNegotiator(ConcessionStrategy(1_000_000, 4_500_000, 3.0, 8, 3600.0))
    lab_price = lab.opening_bid()
    for round in range(1, 9, 2):
        decision = coalition_decision(rules, pool, lab_price, round, timedelta(0))
        if decision.kind == "accept":
            price = lab_price
            break
        assert decision.kind == "offer"
        assert decision.price_micros is not None
        move = lab.decide(decision.price_micros, round + 1, 0)
        if move.kind == "accept":
            price = decision.price_micros
            break
        assert move.price_micros is not None
        lab_price = move.price_micros
    else:
        pytest.fail("no agreement")
    assert 3_000_000 <= price <= 4_500_000
    chosen = check_agreement(rules, pool, price)
    assert len(chosen) >= 3
    assert all(c.floor_micros <= price for c in chosen)
