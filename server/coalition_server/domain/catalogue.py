"""The catalogue: the pool in aggregate only, k-anonymous (pure).

For each purpose and payment model: how many members and items consent, and the quantiles
of the items' floor prices. A group with fewer members than the minimum is not shown at
all, so no member's identity or individual floor can be read off a small group.

For each norm of the vocabulary: how many consented items are held to it hard, priced, or
not at all (``norm_shares``), each group k-anonymous the same way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from coalition import norms
from coalition.v1 import norms_pb2, terms_pb2
from coalition_server.domain import consent as rules
from coalition_server.domain.reservation import ItemLike

QUANTILES = (0.10, 0.25, 0.50, 0.75, 0.90)
# Subscription floors are shown per 30 days, whatever period each member chose.
DISPLAY_PERIOD = timedelta(days=30)


@dataclass(frozen=True)
class Row:
    """One visible group."""

    purpose: int
    payment_model: int
    member_count: int
    item_count: int
    floor_quantiles_micros: tuple[int, ...]


def floor_for(price: terms_pb2.PriceFloor) -> int:
    """A floor in comparable micros (subscriptions normalised to 30 days, rounded up)."""
    micros = price.minimum_per_item.micros
    if price.payment_model == terms_pb2.PAYMENT_MODEL_SUBSCRIPTION:
        period = max(price.period.seconds, 1)
        return -(-micros * int(DISPLAY_PERIOD.total_seconds()) // period)
    return micros


def quantile(sorted_values: Sequence[int], q: float) -> int:
    """Nearest-rank quantile of a sorted, non-empty sequence."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def catalogue(
    items: Iterable[ItemLike],
    tokens_by_member: Mapping[str, Sequence[rules.Token]],
    at: datetime,
    minimum_group_size: int,
) -> list[Row]:
    """Visible rows, ordered by purpose then payment model."""
    floors: dict[tuple[int, int], dict[str, int]] = {}
    members: dict[tuple[int, int], set[str]] = {}
    for item in items:
        for token in tokens_by_member.get(item.contributor_key_id, ()):
            if not token.in_force(at) or not rules.covers_item(token, item.item_id, item.tags):
                continue
            for price in token.statement.floor.prices:
                for purpose in token.purposes:
                    key: tuple[int, int] = (purpose, int(price.payment_model))
                    best = floors.setdefault(key, {})
                    value = floor_for(price)
                    best[item.item_id] = min(value, best.get(item.item_id, value))
                    members.setdefault(key, set()).add(item.contributor_key_id)
    rows = []
    for key in sorted(floors):
        if len(members[key]) < minimum_group_size:
            continue
        values = sorted(floors[key].values())
        rows.append(
            Row(
                purpose=key[0],
                payment_model=key[1],
                member_count=len(members[key]),
                item_count=len(values),
                floor_quantiles_micros=tuple(quantile(values, q) for q in QUANTILES),
            )
        )
    return rows


# How firmly an item is held to a norm, weakest first.
UNHELD = norms_pb2.NORM_STANCE_UNSPECIFIED
PRICED = norms_pb2.NORM_STANCE_PRICED
HARD = norms_pb2.NORM_STANCE_HARD
_STRENGTH: Mapping[int, int] = {UNHELD: 0, PRICED: 1, HARD: 2}


@dataclass(frozen=True)
class StanceGroup:
    """The consented items held to one norm with one stance (or not at all)."""

    shown: bool
    """False when hidden for k-anonymity; the counts are then 0."""
    member_count: int
    item_count: int


@dataclass(frozen=True)
class NormShare:
    """How the pool's consented items are held to one norm of the vocabulary."""

    norm_id: str
    hard: StanceGroup
    priced: StanceGroup
    unheld: StanceGroup


def token_stance(token: rules.Token, norm_id: str) -> int:
    """How firmly one token holds a norm: HARD if any instance of it is hard (some use
    under that norm is then refused at any price), else PRICED if any is, else UNHELD."""
    stances = {n.stance for n in token.statement.norms if n.norm_id == norm_id}
    if HARD in stances:
        return HARD
    return PRICED if PRICED in stances else UNHELD


def _suppressed(groups: dict[int, tuple[set[str], int]], minimum_group_size: int) -> set[int]:
    """The stances to hide: every non-empty group with fewer members than the minimum and,
    while the hidden groups together still have fewer, the smallest shown one too; else the
    total (known from other norms' shares) minus the shown groups would give them away."""
    hidden = {s for s, (members, _) in groups.items() if 0 < len(members) < minimum_group_size}
    while hidden:
        union: set[str] = set().union(*(groups[s][0] for s in hidden))
        if len(union) >= minimum_group_size:
            break
        rest = [s for s, (members, _) in groups.items() if s not in hidden and members]
        if not rest:
            break
        hidden.add(min(rest, key=lambda s: (len(groups[s][0]), groups[s][1], _STRENGTH[s])))
    return hidden


def norm_shares(
    items: Iterable[ItemLike],
    tokens_by_member: Mapping[str, Sequence[rules.Token]],
    at: datetime,
    minimum_group_size: int,
    vocabulary: norms.Vocabulary | None = None,
) -> list[NormShare]:
    """For every norm of the vocabulary (in its order): the consented items whose member
    holds it hard, priced, or not at all, with their members.

    An item is consented when some token in force names it (as for the rows). With several
    such tokens it counts under the **weakest** stance among them: coverage needs only one
    token to permit a use, so the most permissive token is what a deal faces. Nothing is
    shown when the consented items have fewer members than the minimum; otherwise groups
    are hidden as :func:`_suppressed` says."""
    vocab = vocabulary or norms.Vocabulary.load()
    consented: list[tuple[ItemLike, list[rules.Token]]] = []
    for item in items:
        tokens = [
            token
            for token in tokens_by_member.get(item.contributor_key_id, ())
            if token.in_force(at) and rules.covers_item(token, item.item_id, item.tags)
        ]
        if tokens:
            consented.append((item, tokens))
    if len({item.contributor_key_id for item, _ in consented}) < minimum_group_size:
        return []
    shares = []
    for norm_id in vocab.norms:
        groups: dict[int, tuple[set[str], int]] = {s: (set(), 0) for s in (HARD, PRICED, UNHELD)}
        for item, tokens in consented:
            stance = min((token_stance(t, norm_id) for t in tokens), key=_STRENGTH.__getitem__)
            members, count = groups[stance]
            members.add(item.contributor_key_id)
            groups[stance] = (members, count + 1)
        hidden = _suppressed(groups, minimum_group_size)
        shown = {
            stance: StanceGroup(False, 0, 0)
            if stance in hidden
            else StanceGroup(True, len(members), count)
            for stance, (members, count) in groups.items()
        }
        shares.append(NormShare(norm_id, shown[HARD], shown[PRICED], shown[UNHELD]))
    return shares
