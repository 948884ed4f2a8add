"""The catalogue: the pool in aggregate only, k-anonymous (pure).

For each purpose and payment model: how many members and items consent, and the quantiles
of the items' floor prices. A group with fewer members than the minimum is not shown at
all, so no member's identity or individual floor can be read off a small group.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from coalition.v1 import terms_pb2
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
