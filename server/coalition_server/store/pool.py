"""The pool as the bargaining logic sees it: every usable item and every given token.

Read inside the sequencer's transaction when the coalition decides, so the reservation is
computed from exactly the consent in force at that point of the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from coalition_server.domain import consent as rules
from coalition_server.store import models
from coalition_server.store.consent import given_tokens
from coalition_server.store.items import WITHDRAWN, ItemRecord, load_items


@dataclass(frozen=True)
class Pool:
    """Items not withdrawn, and the GIVEN tokens of their members."""

    items: list[ItemRecord]
    tokens: dict[str, list[rules.Token]]


async def load_pool(conn: AsyncConnection) -> Pool:
    """The whole pool (members with at least one given token)."""
    members = [
        row.contributor_key_id
        for row in await conn.execute(
            select(models.ConsentRow.contributor_key_id)
            .where(models.ConsentRow.state == rules.GIVEN)
            .distinct()
        )
    ]
    tokens = await given_tokens(conn, members)
    ids = (
        [
            row.item_id
            for row in await conn.execute(
                select(models.ItemRow.item_id).where(
                    models.ItemRow.contributor_key_id.in_(members),
                    models.ItemRow.state != WITHDRAWN,
                )
            )
        ]
        if members
        else []
    )
    found = await load_items(conn, ids)
    return Pool([found[i] for i in sorted(found)], tokens)
