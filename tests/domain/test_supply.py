"""What a use costs (domain/supply.py), the catalogue's norm shares, the coalition's
counter-offers on the use declaration, and the lab's auto-negotiator taking them within
its limits (pure)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coalition import norms
from coalition.norms import DeclarationLimits
from coalition.strategy import AutoMove, AutoNegotiator, ConcessionStrategy
from coalition.v1 import consent_pb2, norms_pb2, terms_pb2
from coalition_server.domain import catalogue, supply
from coalition_server.domain.bargaining import (
    BargainingPolicy,
    Decision,
    coalition_answer,
    coalition_decision,
)
from coalition_server.domain.consent import Token
from coalition_server.domain.reservation import (
    Candidate,
    QuorumRule,
    bounded_reservation,
    covered,
)
from coalition_server.policy import CoalitionPolicy, PolicyError
from tests.domain.test_reservation import AT, LAB, Item, item_key, member_key, terms, token

USD = 1_000_000
HARD = norms_pb2.NORM_STANCE_HARD
PRICED = norms_pb2.NORM_STANCE_PRICED
OPEN = terms_pb2.MODEL_RELEASE_OPEN_WEIGHTS
CLOSED = terms_pb2.MODEL_RELEASE_CLOSED

NO_MILITARY = norms.make_norm("prohibited-use", HARD, {"domains": ["military"]})
OPEN_OR_PAY = norms.make_norm(
    "model-release",
    PRICED,
    {"release": "open-weights"},
    premium=terms_pb2.Money(currency_code="USD", micros=2 * USD),
)


def with_norms(base: Token, *extra: norms_pb2.Norm) -> Token:
    """The token with norms added."""
    statement = consent_pb2.ConsentToken()
    statement.CopyFrom(base.statement)
    statement.norms.extend(extra)
    return dataclasses.replace(base, statement=statement)


def make_pool(*members: tuple[int, Sequence[norms_pb2.Norm]], items: int = 1) -> supply.Pool:
    """One member per (floor, norms), each with ``items`` items under one token."""
    all_items: list[Item] = []
    tokens: dict[str, list[Token]] = {}
    for n, (floor, held) in enumerate(members):
        member = member_key(n)
        mine = [Item(item_key(member, i), member) for i in range(items)]
        all_items.extend(mine)
        base = token(member, item_ids=[i.item_id for i in mine], purchase=floor)
        tokens[member] = [with_norms(base, *held)]
    return supply.Pool(all_items, tokens, LAB, AT)


def declared(**fields: object) -> terms_pb2.UseDeclaration:
    base: dict[str, object] = {"model_release": CLOSED, "jurisdictions": ["DE"]}
    base.update(fields)
    return terms_pb2.UseDeclaration(**base)  # type: ignore[arg-type]


def licence(price: int = 0, **fields: object) -> terms_pb2.LicenceTerms:
    out = terms(price)
    out.declaration.CopyFrom(declared(**fields))
    return out


def mixed_pool() -> supply.Pool:
    """Three plain members (floor 1), three hard against military (floor 1), three who
    want open weights or 2 more (floor 1)."""
    return make_pool(
        *[(USD, ())] * 3,
        *[(USD, (NO_MILITARY,))] * 3,
        *[(USD, (OPEN_OR_PAY,))] * 3,
    )


# --- the supply curve -----------------------------------------------------------------------


def cands(*floors: tuple[int, int]) -> list[Candidate]:
    """Candidates from (floor, member number), item ids in order."""
    return [
        Candidate(f"{n:032x}", member_key(member), floor)
        for n, (floor, member) in enumerate(floors)
    ]


def test_the_curve_shows_a_step_only_when_enough_members_add_to_it() -> None:
    eligible = cands((1, 0), (1, 1), (2, 2), (3, 3), (3, 4), (3, 5))
    assert supply.supply_curve(eligible, 1) == [
        supply.SupplyPoint(1, 2, 2),
        supply.SupplyPoint(2, 3, 3),
        supply.SupplyPoint(3, 6, 6),
    ]
    # With k = 2 the single member at 2 is folded into the next shown step.
    assert supply.supply_curve(eligible, 2) == [
        supply.SupplyPoint(1, 2, 2),
        supply.SupplyPoint(3, 6, 6),
    ]
    # A member's second item adds no member: counted, but not enough for a step on its own.
    assert supply.supply_curve(cands((1, 0), (1, 1), (2, 1)), 2) == [supply.SupplyPoint(1, 2, 2)]
    assert supply.supply_curve(eligible, 7) == []


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 6), st.integers(0, 7)), max_size=25),
    st.integers(1, 4),
    st.integers(0, 8),
)
def test_every_point_is_what_covered_counts(
    raw: list[tuple[int, int]], k: int, max_items: int
) -> None:
    eligible = cands(*raw)
    curve = supply.supply_curve(eligible, k, max_items)
    prices = [p.price_micros for p in curve]
    assert prices == sorted(set(prices))
    previous: list[Candidate] = []
    for point in curve:
        chosen = covered(eligible, point.price_micros, max_items)
        assert point.item_count == len(chosen)
        assert point.member_count == len({c.member_key_id for c in chosen})
        changed = {c.item_id for c in chosen} ^ {c.item_id for c in previous}
        members = {c.member_key_id for c in [*chosen, *previous] if c.item_id in changed}
        assert len(members) >= k
        previous = chosen
    if k == 1 and not max_items:
        assert prices == sorted({c.floor_micros for c in eligible})


# --- the what-if ----------------------------------------------------------------------------

QUORUM = QuorumRule(0.5)


def test_the_estimate_reads_everything_off_candidates() -> None:
    pool = mixed_pool()
    lab_terms = licence(application_domains=["military"])
    result = supply.estimate(pool, lab_terms, QUORUM, 10**15, 3)
    base = pool.candidates(lab_terms)
    assert len(base) == 6  # the three against military are out
    assert result.quorum_items == QUORUM.required(6) == 3
    assert result.reservation_micros == bounded_reservation(base, QUORUM, 0, 10**15) == USD
    assert result.covered_at_reservation == len(covered(base, USD)) == 3
    assert result.curve == [supply.SupplyPoint(USD, 3, 3), supply.SupplyPoint(3 * USD, 6, 6)]
    by_norm = {change.norm_id: change for change in result.changes}
    assert [c.norm_id for c in result.changes] == ["prohibited-use", "model-release"]
    peaceful = by_norm["prohibited-use"]
    assert list(peaceful.declaration.application_domains) == []
    assert (peaceful.more_items_at_any_price, peaceful.more_items_at_reservation) == (3, 3)
    opened = by_norm["model-release"]
    assert opened.declaration.model_release == OPEN
    assert (opened.more_items_at_any_price, opened.more_items_at_reservation) == (0, 3)
    for change in result.changes:
        after = pool.candidates(supply.with_declaration(lab_terms, change.declaration))
        assert change.more_items_at_any_price == len(after) - len(base)
        assert change.more_items_at_reservation == len(covered(after, USD)) - 3


def test_the_estimate_hides_what_too_few_members_would_show() -> None:
    pool = mixed_pool()
    lab_terms = licence(application_domains=["military"])
    # k = 4: six eligible members, but only three at the reservation and three per change.
    hidden = supply.estimate(pool, lab_terms, QUORUM, 10**15, 4)
    assert (hidden.reservation_micros, hidden.covered_at_reservation) == (None, 0)
    assert hidden.quorum_items == 3
    assert hidden.changes == []
    assert hidden.curve == [supply.SupplyPoint(3 * USD, 6, 6)]
    # k = 7: fewer eligible members than that, nothing at all.
    assert supply.estimate(pool, lab_terms, QUORUM, 10**15, 7) == supply.Estimate(
        [], None, 0, 0, []
    )


def test_a_reservation_above_the_price_guard_is_none() -> None:
    pool = mixed_pool()
    result = supply.estimate(pool, licence(application_domains=["military"]), QUORUM, USD - 1, 1)
    assert result.reservation_micros is None
    assert result.covered_at_reservation == 0
    assert all(c.more_items_at_reservation == 0 for c in result.changes)


def test_amendments_rank_the_most_widely_held_first_and_skip_the_unkeepable() -> None:
    fundless = norms.make_norm("public-benefit", HARD, {"min_share_basis_points": 10})
    pool = make_pool((USD, (NO_MILITARY,)), (USD, (OPEN_OR_PAY, fundless)), (USD, (OPEN_OR_PAY,)))
    found = supply.amendments(pool, declared(application_domains=["military"]))
    assert [(a.norm_id, len(a.members)) for a in found] == [
        ("model-release", 2),
        ("prohibited-use", 1),
    ]
    assert (
        supply.amendments(pool, declared(application_domains=["military"]), limit=1) == (found[:1])
    )


# --- counter-offers on the declaration --------------------------------------------------------


def test_improve_is_greedy_bounded_and_k_anonymous() -> None:
    pool = mixed_pool()
    lab_terms = licence(application_domains=["military"])
    amended, kept = supply.improve(pool, lab_terms, USD, 2, 3)
    # Both changes bring in three items at 1; the tie goes to the more widely held change,
    # then the norm id: model-release first.
    assert kept == ["model-release", "prohibited-use"]
    assert amended.declaration == declared(model_release=OPEN)
    assert amended.price_per_item == lab_terms.price_per_item
    assert len(covered(pool.candidates(amended), USD)) == 9
    assert supply.improve(pool, lab_terms, USD, 1, 3)[1] == ["model-release"]
    assert supply.improve(pool, lab_terms, USD, 2, 4) == (lab_terms, [])
    # At 3 the open-weights members are in anyway: only the military change helps.
    assert supply.improve(pool, lab_terms, 3 * USD, 2, 3)[1] == ["prohibited-use"]


def bargaining_policy(**kwargs: object) -> BargainingPolicy:
    fields: dict[str, object] = {
        "quorum": QUORUM,
        "aspiration_multiplier": 2.0,
        "beta": 1.0,
        "max_rounds": 10,
        "deadline": timedelta(hours=1),
    }
    fields.update(kwargs)
    return BargainingPolicy(**fields)  # type: ignore[arg-type]


def test_the_coalition_counters_with_declaration_changes() -> None:
    pool = mixed_pool()
    rules = bargaining_policy()
    lab_terms = licence(price=USD // 2, application_domains=["military"])
    price_only = coalition_decision(rules, pool.candidates(lab_terms), USD // 2, 1, timedelta(0))
    assert price_only == Decision("offer", 2 * USD - USD // 10)
    answer = coalition_answer(rules, pool, lab_terms, 1, timedelta(0), 3)
    assert answer.kind == "offer"
    assert answer.kept_norms == ("model-release", "prohibited-use")
    assert answer.declaration == declared(model_release=OPEN)
    # Priced for the amended pool: nine items, all at 1, reservation 1.
    assert answer.price_micros == 2 * USD - USD // 10
    # Without declaration changes in the policy, or with too large a k, price only.
    assert (
        coalition_answer(
            bargaining_policy(max_declaration_changes=0), pool, lab_terms, 1, timedelta(0), 3
        )
        == price_only
    )
    assert coalition_answer(rules, pool, lab_terms, 1, timedelta(0), 4) == price_only


def test_an_acceptable_price_is_accepted_as_declared() -> None:
    pool = mixed_pool()
    lab_terms = licence(price=2 * USD, application_domains=["military"])
    answer = coalition_answer(bargaining_policy(), pool, lab_terms, 1, timedelta(0), 3)
    assert answer == Decision("accept", 2 * USD)


def test_a_declaration_change_rescues_a_negotiation_without_quorum() -> None:
    pool = make_pool(*[(USD, (NO_MILITARY,))] * 3)
    lab_terms = licence(price=5 * USD, application_domains=["military"])
    rules = bargaining_policy()
    assert coalition_decision(rules, pool.candidates(lab_terms), 5 * USD, 1, timedelta(0)) == (
        Decision("terminate", None, "NO_QUORUM_POSSIBLE")
    )
    answer = coalition_answer(rules, pool, lab_terms, 1, timedelta(0), 3)
    # The lab's own price is more than the amended terms need: it is offered back.
    assert answer == Decision(
        "offer", 5 * USD, declaration=declared(), kept_norms=("prohibited-use",)
    )
    # ... but not once the time is up.
    late = coalition_answer(rules, pool, lab_terms, 10, timedelta(0), 3)
    assert late == Decision("terminate", None, "NO_QUORUM_POSSIBLE")


def test_the_policy_file_sets_the_changes_per_counter() -> None:
    assert CoalitionPolicy().negotiation.max_declaration_changes == 2
    parsed = CoalitionPolicy.from_mapping({"negotiation": {"max_declaration_changes": 0}})
    assert parsed.negotiation.max_declaration_changes == 0
    with pytest.raises(PolicyError, match="max_declaration_changes"):
        CoalitionPolicy.from_mapping({"negotiation": {"max_declaration_changes": 9}})


def test_only_offers_carry_a_declaration() -> None:
    with pytest.raises(ValueError, match="only an offer"):
        Decision("accept", 1, declaration=declared())
    with pytest.raises(ValueError, match="max_declaration_changes"):
        bargaining_policy(max_declaration_changes=-1)
    with pytest.raises(ValueError, match="max_declaration_changes"):
        bargaining_policy(max_declaration_changes=True)


# --- the catalogue's norm shares ----------------------------------------------------------------


def shares_by_id(pool: supply.Pool, k: int) -> dict[str, catalogue.NormShare]:
    return {s.norm_id: s for s in catalogue.norm_shares(pool.items, pool.tokens_by_member, AT, k)}


def test_norm_shares_count_items_by_stance() -> None:
    shares = shares_by_id(mixed_pool(), 3)
    assert list(shares) == list(norms.Vocabulary.load().norms)
    shown = catalogue.StanceGroup
    assert shares["prohibited-use"] == catalogue.NormShare(
        "prohibited-use", shown(True, 3, 3), shown(True, 0, 0), shown(True, 6, 6)
    )
    assert shares["model-release"] == catalogue.NormShare(
        "model-release", shown(True, 0, 0), shown(True, 3, 3), shown(True, 6, 6)
    )
    assert shares["occupation"].unheld == shown(True, 9, 9)
    assert shares_by_id(mixed_pool(), 10) == {}


def test_an_item_counts_under_its_weakest_token() -> None:
    member = member_key(0)
    items = [Item(item_key(member, i), member) for i in range(2)]
    strict = with_norms(token(member, item_ids=[items[0].item_id, items[1].item_id]), NO_MILITARY)
    lenient = with_norms(token(member, item_ids=[items[1].item_id]), OPEN_OR_PAY)
    mixed = norms.make_norm(
        "prohibited-use",
        PRICED,
        {"domains": ["targeted-advertising"]},
        premium=terms_pb2.Money(currency_code="USD", micros=1),
    )
    both = with_norms(token(member, item_ids=[items[0].item_id]), NO_MILITARY, mixed)
    shares = {
        s.norm_id: s for s in catalogue.norm_shares(items, {member: [strict, lenient, both]}, AT, 1)
    }
    # Item 0: hard under both of its tokens (one holds it hard and priced: hard).
    # Item 1: hard under one token, not at all under the other: unheld.
    use = shares["prohibited-use"]
    assert (use.hard.item_count, use.priced.item_count, use.unheld.item_count) == (1, 0, 1)
    release = shares["model-release"]
    assert (release.hard.item_count, release.priced.item_count) == (0, 0)
    assert release.unheld.item_count == 2


def test_a_small_group_hides_the_next_smallest_too() -> None:
    pool = make_pool(*[(USD, ())] * 5, (USD, (NO_MILITARY,)), *[(USD, (OPEN_OR_PAY,))] * 3)
    shares = shares_by_id(pool, 3)
    hidden = catalogue.StanceGroup(False, 0, 0)
    # One member hard against military: hidden; the priced group is empty, so the unheld
    # one (the total would give the hard one away) is hidden with it.
    assert shares["prohibited-use"] == catalogue.NormShare(
        "prohibited-use", hidden, catalogue.StanceGroup(True, 0, 0), hidden
    )
    # Three priced against six unheld: all shown.
    assert shares["model-release"].priced == catalogue.StanceGroup(True, 3, 3)
    assert shares["model-release"].unheld == catalogue.StanceGroup(True, 6, 6)


# --- the lab's side ---------------------------------------------------------------------------


def negotiator(limits: DeclarationLimits | None = None) -> AutoNegotiator:
    return AutoNegotiator(
        ConcessionStrategy(USD, 4 * USD, 1.0, 10, 3600.0), limits or DeclarationLimits()
    )


def test_the_lab_takes_a_declaration_change_within_its_limits() -> None:
    own = licence(price=USD, application_domains=["military"])
    offered = licence(price=2 * USD, model_release=OPEN, application_domains=["military"])
    willing = negotiator(DeclarationLimits(model_releases=frozenset({OPEN})))
    assert willing.refusal(own, offered) is None
    # Price too high for now: counter at its bid, keeping the conceded declaration.
    move = willing.decide_terms(own, offered, 1, 0.0)
    assert move == AutoMove("counter", USD + 3 * USD // 10, declaration=offered.declaration)
    # A price within its bid: accepted, declaration and all.
    assert willing.decide_terms(own, offered, 8, 0.0) == AutoMove("accept", 2 * USD)


def test_the_lab_counters_with_its_own_declaration_beyond_its_limits() -> None:
    own = licence(price=USD, application_domains=["military"])
    offered = licence(price=USD, model_release=OPEN, application_domains=["military"])
    unwilling = negotiator()
    assert unwilling.refusal(own, offered) == "model_release open-weights"
    # Even at its own price: never accepted, countered with its own declaration.
    assert unwilling.decide_terms(own, offered, 1, 0.0) == AutoMove("counter", USD + 3 * USD // 10)
    assert unwilling.decide_terms(own, offered, 10, 0.0) == AutoMove(
        "terminate", None, "DECLARATION_REFUSED"
    )
    # Other terms changed: refused whatever the declaration.
    longer = licence(price=USD, application_domains=["military"])
    longer.licence_duration.seconds += 1
    assert unwilling.refusal(own, longer) == "the coalition changed terms other than price and use"
    # Price-only offers decide as before.
    same = licence(price=USD, application_domains=["military"])
    assert unwilling.decide_terms(own, same, 1, 0.0) == unwilling.decide(USD, 1, 0.0)
    with pytest.raises(ValueError, match="only a counter"):
        AutoMove("accept", 1, declaration=declared())
