"""Splitting an agreement's revenue among the covered members (pure).

A rule maps each member's covered item count and the total to amounts in integer micros
that add up to the total exactly. The default is pro rata by items, with the micros left
over by rounding down given, one each, to the largest remainders (ties: by key id), so the
split is deterministic and anyone can recompute it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from coalition import merkle
from coalition.v1 import negotiation_pb2, terms_pb2

PayoutRule = Callable[[Mapping[str, int], int], dict[str, int]]


def pro_rata_items(items_by_member: Mapping[str, int], total_micros: int) -> dict[str, int]:
    """Split ``total_micros`` in proportion to each member's covered items."""
    total_items = sum(items_by_member.values())
    if total_items == 0:
        return dict.fromkeys(items_by_member, 0)
    shares = {m: total_micros * n // total_items for m, n in items_by_member.items()}
    left = total_micros - sum(shares.values())
    by_remainder = sorted(
        items_by_member,
        key=lambda m: (-(total_micros * items_by_member[m] % total_items), m),
    )
    for member in by_remainder[:left]:
        shares[member] += 1
    return shares


PAYOUT_RULES: dict[str, PayoutRule] = {"pro-rata-items": pro_rata_items}


def revenue(terms: terms_pb2.LicenceTerms, covered_items: int) -> int:
    """Total revenue of a deal: price per item times items (per period, or per use)."""
    return terms.price_per_item.micros * covered_items


def payout_statement(
    agreement_id: str,
    terms: terms_pb2.LicenceTerms,
    items_by_member: Mapping[str, int],
    rule: str = "pro-rata-items",
) -> negotiation_pb2.PayoutStatement:
    """The payout statement of an agreement under ``rule``, lines ordered by member id."""
    total = revenue(terms, sum(items_by_member.values()))
    amounts = PAYOUT_RULES[rule](items_by_member, total)
    currency = terms.price_per_item.currency_code
    lines = [
        negotiation_pb2.PayoutLine(
            member_key_id=member,
            item_count=items_by_member[member],
            amount=terms_pb2.Money(currency_code=currency, micros=amounts[member]),
        )
        for member in sorted(items_by_member)
    ]
    return negotiation_pb2.PayoutStatement(
        agreement_id=agreement_id,
        total=terms_pb2.Money(currency_code=currency, micros=total),
        rule=rule,
        lines_root=lines_root(lines),
        lines=lines,
        payment_model=terms.payment_model,
    )


def lines_root(lines: list[negotiation_pb2.PayoutLine]) -> bytes:
    """RFC 6962 root over the serialised lines, in order."""
    tree = merkle.CompactRange.empty()
    for line in lines:
        tree.append(merkle.leaf_hash(line.SerializeToString(deterministic=True)))
    return tree.root()
