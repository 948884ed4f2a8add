"""The coalition's reservation from members' floors: candidates, coverage, quorum (pure).

The helpers at the top (fixed clock, items, tokens, terms) are shared with
test_bargaining.py.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from coalition.v1 import consent_pb2, items_pb2, terms_pb2
from coalition_server.domain.consent import Token, covers_item, parse_token, permits
from coalition_server.domain.reservation import (
    Candidate,
    Candidates,
    QuorumRule,
    candidates,
    covered,
    reservation_price,
)

AT = datetime(2030, 1, 1, tzinfo=UTC)
LAB = "1" * 64
OTHER_LAB = "2" * 64
USD = "USD"
TRAIN = terms_pb2.PURPOSE_TRAIN_AI
GENAI = terms_pb2.PURPOSE_TRAIN_GENAI
INPUT = terms_pb2.PURPOSE_AI_INPUT
PURCHASE = terms_pb2.PAYMENT_MODEL_PURCHASE
SUBSCRIPTION = terms_pb2.PAYMENT_MODEL_SUBSCRIPTION
PER_USE = terms_pb2.PAYMENT_MODEL_PER_USE
STORED = items_pb2.ITEM_STATE_STORED
REGISTERED = items_pb2.ITEM_STATE_REGISTERED
WITHDRAWN = items_pb2.ITEM_STATE_WITHDRAWN
DAY = 86_400


def member_key(n: int) -> str:
    """A member key id (64 hex)."""
    return hashlib.sha256(f"member-{n}".encode()).hexdigest()


def item_key(member: str, n: int) -> str:
    """An item id (32 hex)."""
    return hashlib.sha256(f"{member}/{n}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Item:
    """An ItemLike for tests."""

    item_id: str
    contributor_key_id: str
    tags: frozenset[str] = field(default_factory=frozenset)
    state: int = STORED
    media_type: str = "text/plain"


def ts(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def dur(seconds: int) -> Duration:
    return Duration(seconds=seconds)


def usd(micros: int, currency: str = USD) -> terms_pb2.Money:
    return terms_pb2.Money(currency_code=currency, micros=micros)


def token(
    member: str,
    *,
    item_ids: Iterable[str] | None = None,
    tag: str | None = None,
    purposes: Iterable[int] = (TRAIN,),
    purchase: int | None = 1_000_000,
    subscription: tuple[int, int] | None = None,
    per_use: int | None = None,
    currency: str = USD,
    excluded_labs: Iterable[str] = (),
    not_before: datetime = AT - timedelta(days=1),
    not_after: datetime = AT + timedelta(days=30),
    attribution_required: bool = False,
    max_licence_seconds: int | None = None,
    max_deletion_seconds: int | None = None,
) -> Token:
    """A parsed consent token of ``member`` (subscription: (micros, period seconds))."""
    selector = terms_pb2.ItemSelector()
    if item_ids is not None:
        selector.item_ids.item_ids.extend(item_ids)
    elif tag is not None:
        selector.tag = tag
    else:
        selector.all_items = True
    floor = terms_pb2.FloorTerms(attribution_required=attribution_required)
    if purchase is not None:
        floor.prices.append(
            terms_pb2.PriceFloor(payment_model=PURCHASE, minimum_per_item=usd(purchase, currency))
        )
    if subscription is not None:
        floor.prices.append(
            terms_pb2.PriceFloor(
                payment_model=SUBSCRIPTION,
                minimum_per_item=usd(subscription[0], currency),
                period=dur(subscription[1]),
            )
        )
    if per_use is not None:
        floor.prices.append(
            terms_pb2.PriceFloor(payment_model=PER_USE, minimum_per_item=usd(per_use, currency))
        )
    if max_licence_seconds is not None:
        floor.max_licence_duration.CopyFrom(dur(max_licence_seconds))
    if max_deletion_seconds is not None:
        floor.max_deletion_deadline.CopyFrom(dur(max_deletion_seconds))
    statement = consent_pb2.ConsentToken(
        items=selector,
        purposes=list(purposes),  # type: ignore[arg-type]
        floor=floor,
        excluded_lab_key_ids=list(excluded_labs),
        not_before=ts(not_before),
        not_after=ts(not_after),
        created_time=ts(AT - timedelta(days=2)),
        nonce=b"\0" * 16,
    )
    consent_id = hashlib.sha256(statement.SerializeToString()).hexdigest()[:32]
    return parse_token(consent_id, member, statement, AT - timedelta(days=2))


def terms(
    price: int,
    *,
    purposes: Iterable[int] = (TRAIN,),
    model: int = PURCHASE,
    period_seconds: int | None = None,
    currency: str = USD,
    licence_seconds: int = 365 * DAY,
    deletion_seconds: int = 7 * DAY,
    attribution: bool = False,
    tags: Iterable[str] = (),
    media_types: Iterable[str] = (),
    max_items: int = 0,
) -> terms_pb2.LicenceTerms:
    """Licence terms at ``price`` micros per item."""
    result = terms_pb2.LicenceTerms(
        purposes=list(purposes),  # type: ignore[arg-type]
        scope=terms_pb2.ItemFilter(
            tags=list(tags), media_types=list(media_types), max_item_count=max_items
        ),
        payment_model=model,  # type: ignore[arg-type]
        price_per_item=usd(price, currency),
        licence_duration=dur(licence_seconds),
        attribution=attribution,
        deletion_deadline=dur(deletion_seconds),
        lease_duration=dur(3600),
    )
    if period_seconds is not None:
        result.subscription_period.CopyFrom(dur(period_seconds))
    return result


def at_price(licence: terms_pb2.LicenceTerms, price: int) -> terms_pb2.LicenceTerms:
    """A copy of ``licence`` at another price."""
    result = terms_pb2.LicenceTerms()
    result.CopyFrom(licence)
    result.price_per_item.micros = price
    return result


def directly_covered(
    items: Sequence[Item],
    tokens_by_member: Mapping[str, Sequence[Token]],
    licence: terms_pb2.LicenceTerms,
    lab: str,
    at: datetime,
) -> set[str]:
    """Item ids covered at the licence's own price, decided by consent.permits alone."""
    scope = licence.scope
    return {
        item.item_id
        for item in items
        if item.state != WITHDRAWN
        and (not scope.tags or bool(item.tags & set(scope.tags)))
        and (not scope.media_types or item.media_type in scope.media_types)
        and any(
            covers_item(t, item.item_id, item.tags) and permits(t, licence, lab, at)
            for t in tokens_by_member.get(item.contributor_key_id, ())
        )
    }


def pool(floors: Sequence[int], member_count: int = 0) -> tuple[list[Item], dict[str, list[Token]]]:
    """One item per floor; each on its own member (or spread over ``member_count``)."""
    items: list[Item] = []
    tokens: dict[str, list[Token]] = {}
    for n, floor in enumerate(floors):
        member = member_key(n % member_count if member_count else n)
        item = Item(item_key(member, n), member)
        items.append(item)
        tokens.setdefault(member, []).append(token(member, item_ids=[item.item_id], purchase=floor))
    return items, tokens


def cands(*floors: int) -> list[Candidate]:
    """Candidates with the given floors, item ids in order."""
    return [Candidate(f"{n:032x}", member_key(n), floor) for n, floor in enumerate(floors)]


# --- candidates -----------------------------------------------------------------------------


def test_one_candidate_per_eligible_item_with_its_floor() -> None:
    items, tokens = pool([3_000_000, 1_000_000, 2_000_000])
    result = candidates(items, tokens, terms(1), LAB, AT)
    assert len(result) == 3
    by_id = {c.item_id: c for c in result}
    assert [by_id[i.item_id].floor_micros for i in items] == [3_000_000, 1_000_000, 2_000_000]
    assert [by_id[i.item_id].member_key_id for i in items] == [i.contributor_key_id for i in items]
    assert [c.item_id for c in result] == sorted(c.item_id for c in result)


def test_the_price_of_the_terms_does_not_matter() -> None:
    items, tokens = pool([5_000_000, 1_000_000])
    assert candidates(items, tokens, terms(0), LAB, AT) == candidates(
        items, tokens, terms(10**15), LAB, AT
    )


def test_floor_is_the_lowest_over_permitting_tokens() -> None:
    member = member_key(0)
    item = Item(item_key(member, 0), member, frozenset({"poems"}))
    tokens = {
        member: [
            token(member, purchase=5_000_000),
            token(member, tag="poems", purchase=2_000_000),
            # Cheaper, but not for this purpose: does not count.
            token(member, item_ids=[item.item_id], purchase=1, purposes=(INPUT,)),
            # Cheaper, but another tag: does not name the item.
            token(member, tag="essays", purchase=2),
        ]
    }
    [candidate] = candidates([item], tokens, terms(0), LAB, AT)
    assert candidate.floor_micros == 2_000_000


@pytest.mark.parametrize(
    ("token_kwargs", "terms_kwargs"),
    [
        ({"purposes": (TRAIN,)}, {"purposes": (TRAIN, GENAI)}),
        ({"excluded_labs": (LAB,)}, {}),
        ({"not_before": AT + timedelta(seconds=1)}, {}),
        ({"not_after": AT}, {}),
        ({"attribution_required": True}, {"attribution": False}),
        ({"max_licence_seconds": 30 * DAY}, {"licence_seconds": 31 * DAY}),
        ({"max_deletion_seconds": DAY}, {"deletion_seconds": 2 * DAY}),
        ({}, {"deletion_seconds": 31 * DAY}),  # default: at most 30 days
        ({"purchase": None, "per_use": 5}, {}),  # no floor for the terms' model
        ({"currency": "EUR"}, {}),
        ({}, {"model": SUBSCRIPTION, "period_seconds": DAY}),
    ],
)
def test_tokens_that_refuse_anything_but_price_make_no_candidate(
    token_kwargs: dict[str, object], terms_kwargs: dict[str, object]
) -> None:
    member = member_key(0)
    item = Item(item_key(member, 0), member)
    tokens = {member: [token(member, **token_kwargs)]}  # type: ignore[arg-type]
    licence = terms(10**15, **terms_kwargs)  # type: ignore[arg-type]
    assert candidates([item], tokens, licence, LAB, AT) == []
    # The defaults pass: only the rule varied above refused.
    assert candidates([item], {member: [token(member)]}, terms(0), LAB, AT) != []


def test_the_other_lab_is_not_excluded() -> None:
    items, tokens = pool([1_000_000])
    member = items[0].contributor_key_id
    tokens[member] = [token(member, excluded_labs=(LAB,))]
    assert candidates(items, tokens, terms(0), LAB, AT) == []
    assert len(candidates(items, tokens, terms(0), OTHER_LAB, AT)) == 1


def test_permitting_terms_are_met_when_the_floor_asks_for_them() -> None:
    member = member_key(0)
    item = Item(item_key(member, 0), member)
    tokens = {
        member: [
            token(
                member,
                attribution_required=True,
                max_licence_seconds=30 * DAY,
                max_deletion_seconds=DAY,
            )
        ]
    }
    licence = terms(0, attribution=True, licence_seconds=30 * DAY, deletion_seconds=DAY)
    assert len(candidates([item], tokens, licence, LAB, AT)) == 1


def test_withdrawn_items_and_other_members_tokens_do_not_count() -> None:
    a, b = member_key(0), member_key(1)
    withdrawn = Item(item_key(a, 0), a, state=WITHDRAWN)
    registered = Item(item_key(a, 1), a, state=REGISTERED)
    orphan = Item(item_key(b, 0), b)
    # b's item is named by a token of a that a caller mistakenly filed under b.
    tokens = {a: [token(a)], b: [token(a, item_ids=[orphan.item_id])]}
    result = candidates([withdrawn, registered, orphan], tokens, terms(0), LAB, AT)
    assert [c.item_id for c in result] == [registered.item_id]


def test_duplicate_items_give_one_candidate() -> None:
    items, tokens = pool([1_000_000])
    assert len(candidates(items * 3, tokens, terms(0), LAB, AT)) == 1


def test_scope_tags_and_media_types_are_any_of() -> None:
    member = member_key(0)
    items = [
        Item(item_key(member, 0), member, frozenset({"poems"}), media_type="text/plain"),
        Item(item_key(member, 1), member, frozenset({"essays"}), media_type="text/plain"),
        Item(item_key(member, 2), member, frozenset({"poems", "x"}), media_type="image/png"),
        Item(item_key(member, 3), member, frozenset(), media_type="audio/ogg"),
    ]
    tokens = {member: [token(member)]}

    def ids(**kwargs: Iterable[str]) -> set[str]:
        licence = terms(0, **kwargs)  # type: ignore[arg-type]
        return {c.item_id for c in candidates(items, tokens, licence, LAB, AT)}

    names = [i.item_id for i in items]
    assert ids() == set(names)
    assert ids(tags=["poems"]) == {names[0], names[2]}
    assert ids(tags=["poems", "essays"]) == {names[0], names[1], names[2]}
    assert ids(media_types=["text/plain"]) == {names[0], names[1]}
    assert ids(media_types=["image/png", "audio/ogg"]) == {names[2], names[3]}
    assert ids(tags=["poems"], media_types=["text/plain"]) == {names[0]}


def test_an_explicit_scope_filter_overrides_the_terms_scope() -> None:
    member = member_key(0)
    poem = Item(item_key(member, 0), member, frozenset({"poems"}))
    essay = Item(item_key(member, 1), member, frozenset({"essays"}))
    tokens = {member: [token(member)]}
    licence = terms(0, tags=["poems"])
    only_essays = terms_pb2.ItemFilter(tags=["essays"])
    result = candidates([poem, essay], tokens, licence, LAB, AT, only_essays)
    assert [c.item_id for c in result] == [essay.item_id]
    everything = candidates([poem, essay], tokens, licence, LAB, AT, terms_pb2.ItemFilter())
    assert len(everything) == 2


def test_store_item_records_are_item_like() -> None:
    from coalition_server.store.items import ItemRecord

    member = member_key(0)
    record = ItemRecord(
        item_id=item_key(member, 0),
        contributor_key_id=member,
        commitment=b"\0" * 32,
        size_bytes=3,
        media_type="text/plain",
        tags=frozenset({"poems"}),
        state=STORED,
        registration_index=7,
    )
    tokens = {member: [token(member, tag="poems", purchase=4)]}
    assert candidates([record], tokens, terms(0), LAB, AT) == [Candidate(record.item_id, member, 4)]


# --- subscriptions ----------------------------------------------------------------------


def test_subscription_floors_are_normalised_to_the_terms_period() -> None:
    member = member_key(0)
    item = Item(item_key(member, 0), member)
    tokens = {member: [token(member, purchase=None, subscription=(1_000_000, 30 * DAY))]}
    weekly = terms(0, model=SUBSCRIPTION, period_seconds=7 * DAY)
    [candidate] = candidates([item], tokens, weekly, LAB, AT)
    assert candidate.floor_micros == 233_334  # ceil(1_000_000 * 7 / 30)
    # Exactly where consent.permits draws the line.
    assert permits(tokens[member][0], at_price(weekly, 233_334), LAB, AT)
    assert not permits(tokens[member][0], at_price(weekly, 233_333), LAB, AT)
    yearly = terms(0, model=SUBSCRIPTION, period_seconds=360 * DAY)
    assert candidates([item], tokens, yearly, LAB, AT)[0].floor_micros == 12_000_000


def test_subscription_floor_is_the_lowest_rate_over_tokens() -> None:
    member = member_key(0)
    item = Item(item_key(member, 0), member)
    tokens = {
        member: [
            token(member, purchase=None, subscription=(1_000_000, 30 * DAY)),  # 33_334/day
            token(member, purchase=None, subscription=(200_000, 7 * DAY)),  # 28_572/day
        ]
    }
    daily = terms(0, model=SUBSCRIPTION, period_seconds=DAY)
    assert candidates([item], tokens, daily, LAB, AT)[0].floor_micros == 28_572


@given(
    st.integers(min_value=0, max_value=10**12),
    st.integers(min_value=3600, max_value=3650 * DAY),
    st.integers(min_value=1, max_value=3650 * DAY),
)
def test_subscription_floor_agrees_with_permits(
    minimum: int, floor_period: int, terms_period: int
) -> None:
    member = member_key(0)
    item = Item(item_key(member, 0), member)
    tok = token(member, purchase=None, subscription=(minimum, floor_period))
    licence = terms(0, model=SUBSCRIPTION, period_seconds=terms_period)
    [candidate] = candidates([item], {member: [tok]}, licence, LAB, AT)
    floor = candidate.floor_micros
    assert permits(tok, at_price(licence, floor), LAB, AT)
    if floor > 0:
        assert not permits(tok, at_price(licence, floor - 1), LAB, AT)


# --- covered ------------------------------------------------------------------------------


def test_covered_is_every_candidate_at_or_under_the_price() -> None:
    pool_ = cands(5, 1, 3, 3, 9)
    assert [c.floor_micros for c in covered(pool_, 3)] == [1, 3, 3]
    assert covered(pool_, 0) == []
    assert len(covered(pool_, 9)) == 5


def test_max_items_picks_by_item_id_not_by_floor() -> None:
    pool_ = [
        Candidate("c" * 32, "m3", 1),
        Candidate("a" * 32, "m1", 9),
        Candidate("d" * 32, "m4", 2),
        Candidate("b" * 32, "m2", 8),
    ]
    chosen = covered(pool_, 10, max_items=2)
    # The two cheapest (c, d) are NOT picked off first: the lowest item ids are.
    assert [c.item_id for c in chosen] == ["a" * 32, "b" * 32]
    for _ in range(20):
        shuffled = list(pool_)
        random.Random(_).shuffle(shuffled)
        assert covered(shuffled, 10, max_items=2) == chosen
    # Items over the price are skipped before the cap applies.
    assert [c.item_id for c in covered(pool_, 2, max_items=1)] == ["c" * 32]
    with pytest.raises(ValueError, match="max_items"):
        covered(pool_, 10, max_items=-1)


# --- quorum and reservation ---------------------------------------------------------------


def test_quorum_required() -> None:
    half = QuorumRule(0.5, 1)
    assert [half.required(n) for n in (0, 1, 2, 3, 10, 11)] == [1, 1, 1, 2, 5, 6]
    assert QuorumRule(0.5, 4).required(3) == 4
    assert QuorumRule(1.0).required(7) == 7
    # Decimal fractions are read as written: 0.1 * 30 is 3, not 4.
    assert QuorumRule(0.1).required(30) == 3
    assert QuorumRule(0.7).required(10) == 7
    assert QuorumRule(1 / 3).required(3) == 1


@pytest.mark.parametrize(
    ("fraction", "min_items", "message"),
    [
        (0.0, 1, "fraction must be above 0"),
        (1.5, 1, "fraction must be above 0"),
        (-0.1, 1, "fraction must be above 0"),
        (float("nan"), 1, "fraction must be above 0"),
        ("0.5", 1, "fraction must be a number"),
        (0.5, 0, "min_items must be at least 1"),
        (0.5, 1.0, "min_items must be an integer"),
    ],
)
def test_invalid_quorum_rules_are_refused(
    fraction: object, min_items: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        QuorumRule(fraction, min_items)  # type: ignore[arg-type]


def test_reservation_is_the_lowest_price_reaching_the_quorum() -> None:
    pool_ = cands(5, 1, 3, 3, 9, 7)
    assert reservation_price(pool_, QuorumRule(0.5)) == 3
    assert reservation_price(pool_, QuorumRule(0.5, min_items=4)) == 5
    assert reservation_price(pool_, QuorumRule(1.0)) == 9
    assert reservation_price(pool_, QuorumRule(0.01)) == 1
    assert reservation_price(pool_, QuorumRule(0.5), max_items=3) == 3


def test_no_reservation_when_the_quorum_is_impossible() -> None:
    assert reservation_price([], QuorumRule(0.5)) is None
    assert reservation_price(cands(1, 2), QuorumRule(0.5, min_items=3)) is None
    # A cap below the requirement can never reach the quorum.
    assert reservation_price(cands(1, 2, 3, 4), QuorumRule(0.75), max_items=2) is None
    with pytest.raises(ValueError, match="max_items"):
        reservation_price(cands(1), QuorumRule(0.5), max_items=-1)


@given(
    st.lists(st.integers(min_value=0, max_value=10**9), max_size=30),
    st.floats(min_value=0.01, max_value=1.0),
    st.integers(min_value=1, max_value=10),
    st.integers(min_value=0, max_value=40),
)
def test_reservation_is_minimal(
    floors: list[int], fraction: float, min_items: int, max_items: int
) -> None:
    pool_ = cands(*floors)
    rule = QuorumRule(fraction, min_items)
    required = rule.required(len(pool_))
    price = reservation_price(pool_, rule, max_items)
    if price is None:
        assert all(len(covered(pool_, p, max_items)) < required for p in {*floors, 10**9 + 1})
        return
    assert len(covered(pool_, price, max_items)) >= required
    assert len(covered(pool_, price - 1, max_items)) < required


@given(
    st.lists(st.integers(min_value=0, max_value=50), max_size=30),
    st.integers(min_value=0, max_value=60),
    st.integers(min_value=0, max_value=40),
    st.floats(min_value=0.01, max_value=1.0),
)
def test_a_remembered_candidate_list_answers_as_a_plain_one(
    floors: list[int], price: int, max_items: int, fraction: float
) -> None:
    # Candidates (a pool memo's frozen list, floors sorted once) takes shortcuts in covered
    # and reservation_price: they must give what the plain list gives.
    plain = cands(*floors)
    frozen = Candidates(sorted(plain, key=lambda c: c.item_id))
    assert covered(frozen, price, max_items) == covered(plain, price, max_items)
    rule = QuorumRule(fraction)
    assert reservation_price(frozen, rule, max_items) == reservation_price(plain, rule, max_items)


def test_reservation_from_a_real_pool_matches_permits() -> None:
    items, tokens = pool([4_000_000, 1_000_000, 2_500_000, 9_000_000, 2_500_000], 3)
    pool_ = candidates(items, tokens, terms(0), LAB, AT)
    price = reservation_price(pool_, QuorumRule(0.5))
    assert price == 2_500_000
    assert len(directly_covered(items, tokens, terms(price), LAB, AT)) == 3
    assert len(directly_covered(items, tokens, terms(price - 1), LAB, AT)) == 1
