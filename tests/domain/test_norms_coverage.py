"""The property behind members' norms (issue 9): for random pools with random hard and
priced norms, random declarations and prices, the coalition never covers an item whose
hard norm the declaration breaks, nor one whose floor plus premiums exceeds the price:
not in ``covered``, not in what ``check_agreement`` (the last line of defence, also run at
finalisation) lets through, and not in its own counter-offers on the declaration. The
judge is an oracle written from ``norms.assess`` and the floor alone, not from
``consent.permits``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from coalition import norms
from coalition.v1 import terms_pb2
from coalition_server.domain import supply
from coalition_server.domain.bargaining import (
    BargainingPolicy,
    check_agreement,
    coalition_answer,
)
from coalition_server.domain.consent import Token, covers_item
from coalition_server.domain.errors import FailedPreconditionError
from coalition_server.domain.reservation import (
    CoverageError,
    QuorumRule,
    check_covered,
    covered,
)
from tests.domain.test_reservation import AT, LAB, Item, item_key, member_key, terms, token
from tests.domain.test_supply import with_norms
from tests.norms.test_judgement import declarations, norm_sets

USD = 1_000_000


@dataclass(frozen=True)
class World:
    pool: supply.Pool
    declaration: terms_pb2.UseDeclaration


@st.composite
def worlds(draw: st.DrawFn) -> World:
    items: list[Item] = []
    tokens: dict[str, list[Token]] = {}
    for n in range(draw(st.integers(1, 6))):
        member = member_key(n)
        mine = [Item(item_key(member, i), member) for i in range(draw(st.integers(1, 3)))]
        items.extend(mine)
        for _ in range(draw(st.integers(1, 2))):
            named = draw(st.lists(st.sampled_from(mine), min_size=1, unique=True))
            floor = draw(st.integers(0, 6)) * USD // 2
            base = token(member, item_ids=[i.item_id for i in named], purchase=floor)
            tokens.setdefault(member, []).append(with_norms(base, *draw(norm_sets())))
    return World(supply.Pool(items, tokens, LAB, AT), draw(declarations()))


def permitted(pool: supply.Pool, item_id: str, licence: terms_pb2.LicenceTerms) -> bool:
    """The oracle: some token of the item's member, in force, names it, keeps every hard
    norm, and has a purchase floor that with the premiums of the priced norms broken is at
    most the price."""
    item = next(i for i in pool.items if i.item_id == item_id)
    for held in pool.tokens_by_member[item.contributor_key_id]:
        if not (held.in_force(AT) and covers_item(held, item.item_id, item.tags)):
            continue
        judged = norms.assess(held.statement.norms, licence.declaration)
        if any(n.stance == norms.HARD for n in judged.hard_broken):
            continue  # a hard norm broken: this token never covers the item
        (floor,) = [p.minimum_per_item.micros for p in held.statement.floor.prices]
        if floor + judged.premium_micros <= licence.price_per_item.micros:
            return True
    return False


def at_price(licence: terms_pb2.LicenceTerms, price: int) -> terms_pb2.LicenceTerms:
    out = terms_pb2.LicenceTerms()
    out.CopyFrom(licence)
    out.price_per_item.micros = price
    return out


def check_all_permitted(
    pool: supply.Pool, item_ids: Sequence[str], licence: terms_pb2.LicenceTerms
) -> None:
    for item_id in item_ids:
        assert permitted(pool, item_id, licence), item_id
    # The server's own assertion before drafting agrees.
    check_covered(item_ids, pool.items, pool.tokens_by_member, licence, LAB, AT)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    worlds(),
    st.integers(0, 24).map(lambda halves: halves * USD // 2),
    st.sampled_from([0.1, 0.5, 1.0]),
    st.integers(0, 3),
    st.integers(1, 3),
    st.integers(1, 10),
)
def test_no_broken_hard_norm_and_no_underpaid_norm_is_ever_covered(
    world: World,
    price: int,
    fraction: float,
    changes: int,
    k: int,
    round: int,
) -> None:
    pool = world.pool
    licence = terms(price)
    licence.declaration.CopyFrom(world.declaration)
    eligible = pool.candidates(licence)
    chosen = [c.item_id for c in covered(eligible, price)]
    check_all_permitted(pool, chosen, licence)
    # Every item the oracle permits is covered: nothing is kept out for no reason.
    assert {i.item_id for i in pool.items if permitted(pool, i.item_id, licence)} == set(chosen)
    event(f"items covered: {min(len(chosen), 3)}+ of {min(len(pool.items), 3)}+")

    policy = BargainingPolicy(
        quorum=QuorumRule(fraction),
        aspiration_multiplier=1.5,
        beta=1.0,
        max_rounds=10,
        deadline=timedelta(hours=1),
        max_declaration_changes=changes,
    )
    try:
        agreed = check_agreement(policy, eligible, price)
    except FailedPreconditionError:
        agreed = []
    check_all_permitted(pool, [c.item_id for c in agreed], licence)

    answer = coalition_answer(policy, pool, licence, round, timedelta(0), k)
    event(f"coalition: {answer.kind}{' with a declaration' if answer.declaration else ''}")
    if answer.kind == "terminate":
        return
    assert answer.price_micros is not None
    proposed = licence
    if answer.declaration is not None:
        norms.validate_declaration(answer.declaration)
        proposed = supply.with_declaration(licence, answer.declaration)
        assert len(answer.kept_norms) <= changes
    proposed = at_price(proposed, answer.price_micros)
    # Whatever the coalition accepts or offers, it would draft: above its reservation, with
    # a quorum, and every covered item permitted under the terms as offered.
    offered = check_agreement(policy, pool.candidates(proposed), answer.price_micros)
    check_all_permitted(pool, [c.item_id for c in offered], proposed)


def test_check_covered_refuses_an_item_no_consent_permits() -> None:
    military = norms.make_norm("prohibited-use", norms.HARD, {"domains": ["military"]})
    member = member_key(0)
    item = Item(item_key(member, 0), member)
    held = with_norms(token(member, item_ids=[item.item_id], purchase=USD), military)
    licence = terms(5 * USD)
    licence.declaration.CopyFrom(
        terms_pb2.UseDeclaration(
            model_release=terms_pb2.MODEL_RELEASE_CLOSED,
            application_domains=["military"],
            jurisdictions=["DE"],
        )
    )
    with pytest.raises(CoverageError, match="no consent permits"):
        check_covered([item.item_id], [item], {member: [held]}, licence, LAB, AT)
    with pytest.raises(CoverageError, match="not in the pool"):
        check_covered(["f" * 32], [item], {member: [held]}, licence, LAB, AT)
    licence.declaration.ClearField("application_domains")
    check_covered([item.item_id], [item], {member: [held]}, licence, LAB, AT)
    # Underpaid: the floor is 1.
    check_covered([], [item], {member: [held]}, at_price(licence, 0), LAB, AT)
    with pytest.raises(CoverageError):
        check_covered([item.item_id], [item], {member: [held]}, at_price(licence, 0), LAB, AT)
