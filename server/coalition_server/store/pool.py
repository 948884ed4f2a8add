"""The pool as the bargaining logic sees it: every usable item and every given token.

Read inside the sequencer's transaction when the coalition decides, so the reservation is
computed from exactly the consent in force at that point of the ledger.

Every change to the pool is the effect of a ledger entry of one of :data:`POOL_KINDS` (items
registered, tokens granted, withdrawals, executed strikes), so the newest such entry names
the pool's version. :class:`PoolCache` keeps the pool loaded at one version and reuses it
until that entry changes: a negotiation move then costs one indexed read per kind instead of
reading every item and token. With ``COALITION_CHECK_POOL_CACHE=1`` (the test suite sets it)
every reuse is checked against a fresh load, so a pool change made by some other kind of
entry fails the tests that make it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache

from sqlalchemy import select, union_all
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from coalition_server.domain import consent as rules
from coalition_server.domain.supply import CandidateMemo
from coalition_server.store import models, round_trip
from coalition_server.store.consent import given_tokens
from coalition_server.store.items import WITHDRAWN, ItemRecord, load_items

POOL_KINDS = ("ItemRegistration", "ConsentToken", "Withdrawal", "StrikeExecution")
"""The statement kinds whose effects change the pool (items, given tokens, exclusions)."""
CHECK_ENV = "COALITION_CHECK_POOL_CACHE"

Version = tuple[tuple[int, bytes], ...]
"""The newest entry (index, leaf hash) of each pool kind: the hash tells apart an entry
rolled back with its batch from another later written at the same index."""


@dataclass(frozen=True)
class Pool:
    """Items not withdrawn, and the GIVEN tokens of their members."""

    items: list[ItemRecord]
    tokens: dict[str, list[rules.Token]]
    memo: CandidateMemo = field(default_factory=CandidateMemo, compare=False)
    """Candidate lists computed from this pool (see ``supply.Pool``)."""


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


# Built once: the statement is the same on every call, and building it (a union of one
# subquery per kind) cost more than running it.
_POOL_VERSION = union_all(
    *(
        select(models.LogEntry.kind, models.LogEntry.idx, models.LogEntry.leaf_hash)
        .where(models.LogEntry.kind == kind)
        .order_by(models.LogEntry.idx.desc())
        .limit(1)
        .subquery()
        .select()
        for kind in POOL_KINDS
    )
)


@lru_cache(maxsize=4)
def _pool_version_sql(dialect: Dialect) -> str:
    # The kinds are this module's constants: rendered into the SQL, which binds nothing.
    return str(_POOL_VERSION.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


async def pool_version(conn: AsyncConnection) -> Version:
    """The pool's version: one index seek per kind (the (kind, idx) index). Asked on every
    negotiation batch: below SQLAlchemy where it can be (``round_trip``)."""
    if round_trip.below_sqlalchemy(conn):
        (found,) = await round_trip.run(conn, [(_pool_version_sql(conn.dialect), ())])
        rows = {kind: (idx, bytes(leaf_hash)) for kind, idx, leaf_hash in found}
    else:
        result = await conn.execute(_POOL_VERSION)
        rows = {row.kind: (row.idx, row.leaf_hash) for row in result}
    return tuple(rows.get(kind, (-1, b"")) for kind in POOL_KINDS)


def _bargaining_view(pool: Pool) -> tuple[object, ...]:
    """What bargaining reads of a pool: items (withdrawn or not; uploads and shredding,
    which are not ledger entries, change only whether content is stored) and tokens."""
    return (
        [(i.item_id, i.contributor_key_id, i.tags, i.state == WITHDRAWN) for i in pool.items],
        pool.tokens,
    )


@dataclass
class PoolCache:
    """The pool at its latest version, reloaded when an entry of :data:`POOL_KINDS` is
    appended. One per server process; safe to share between readers and the sequencer
    (each load is keyed by the version its own connection sees)."""

    check: bool = field(default_factory=lambda: os.environ.get(CHECK_ENV) == "1")
    _loaded: tuple[Version, Pool] | None = None

    async def load(self, conn: AsyncConnection) -> Pool:
        """The pool as ``conn`` sees it."""
        version = await pool_version(conn)
        loaded = self._loaded
        if loaded is not None and loaded[0] == version:
            if self.check:
                fresh = await load_pool(conn)
                if _bargaining_view(fresh) != _bargaining_view(loaded[1]):
                    raise AssertionError(f"the pool changed without an entry of {POOL_KINDS}")
            return loaded[1]
        pool = await load_pool(conn)
        self._loaded = (version, pool)
        return pool
