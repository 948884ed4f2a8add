"""Consent tokens in the store: recording grants, loading members' tokens, coverage."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from coalition.v1 import consent_pb2
from coalition_server.domain import consent as rules
from coalition_server.domain.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    NotFoundError,
    PermissionDeniedError,
)
from coalition_server.store import bulk, models
from coalition_server.store.items import WITHDRAWN, ItemRecord, load_items, require_own_items
from coalition_server.timeutil import as_utc


@dataclass(frozen=True)
class ConsentEntry:
    """A stored token with its recorded state and ledger positions."""

    token: rules.Token
    recorded_state: int
    index: int
    withdrawal_index: int | None
    withdrawn_items: int = 0
    """Of a token naming items by id, while it is GIVEN: how many of its distinct items its
    member has withdrawn item by item."""

    def state_at(self, at: datetime) -> int:
        """The ISO/IEC TS 27560 state at ``at``."""
        return self.token.state_at(self.recorded_state, at)


def _entry(row: Any) -> ConsentEntry:
    statement = consent_pb2.ConsentToken.FromString(row.payload)
    token = rules.Token(
        consent_id=row.consent_id,
        contributor_key_id=row.contributor_key_id,
        statement=statement,
        not_before=as_utc(row.not_before),
        not_after=as_utc(row.not_after),
    )
    return ConsentEntry(token, row.state, row.idx, row.withdrawal_idx, row.withdrawn_items)


class Grant(NamedTuple):
    """A GIVEN token to record, as its ``consents`` row (in the table's column order: the
    bulk insert takes it as it is): ``idx`` is the ledger index it got, ``payload`` its signed
    payload (the token's canonical encoding, stored verbatim), ``not_before`` the integration
    time when the token leaves it open."""

    consent_id: str
    contributor_key_id: str
    idx: int
    payload: bytes
    state: int
    not_before: datetime
    not_after: datetime
    nonce: bytes


_CONSENT_COLUMNS = Grant._fields


async def record_grants(
    conn: AsyncConnection, grants: Sequence[Grant], item_ids: Sequence[Sequence[str]]
) -> None:
    """Record granted tokens inside the sequencer's transaction, checking the items each
    names (``item_ids``, in the same order: ``rules.named_items``).

    A fixed number of queries however many tokens (one member's batch of a thousand costs
    what one token did): the items are read in bulk, and the rows written with the driver's
    executemany (:mod:`bulk`). A nonce used before is caught by the (member, nonce) unique
    constraint as the tokens are inserted, then named by the same query the check always ran.
    """
    found = await load_items(conn, {item_id for ids in item_ids for item_id in ids})
    _require_items(found, grants, item_ids)
    pairs = [(grant.contributor_key_id, grant.nonce) for grant in grants]
    if len(set(pairs)) != len(pairs):
        raise _duplicate_nonce()
    try:
        if conn.dialect.name == "sqlite":
            # A failed statement undoes itself and the transaction goes on: no savepoint
            # (two round trips to the driver's thread).
            await bulk.insert_rows(conn, models.ConsentRow, _CONSENT_COLUMNS, grants)
        else:
            # Its own savepoint: after a constraint violation PostgreSQL refuses every
            # further query of the transaction until it is rolled back.
            async with conn.begin_nested():
                await bulk.insert_rows(conn, models.ConsentRow, _CONSENT_COLUMNS, grants)
    except IntegrityError:
        # Querying the nonces up front cost more than the inserts (on PostgreSQL, until it
        # has statistics, a scan of the member's tokens): ask only when the insert failed.
        if await _nonce_used(conn, pairs):
            raise _duplicate_nonce() from None
        raise
    await bulk.insert_rows(
        conn,
        models.ConsentItem,
        ("consent_id", "item_id"),
        [
            (grant.consent_id, item_id)
            for grant, ids in zip(grants, item_ids, strict=True)
            for item_id in ids
        ],
    )


def _require_items(
    found: dict[str, ItemRecord], grants: Sequence[Grant], item_ids: Sequence[Sequence[str]]
) -> None:
    """Refuse unknown, other members' and withdrawn items, with the error a token-by-token
    check raises first. Each (member, item) pair is checked once (a batch names the same
    items again and again); only when one fails are the tokens checked in order."""
    named = {
        (grant.contributor_key_id, item_id)
        for grant, ids in zip(grants, item_ids, strict=True)
        for item_id in ids
    }
    if all(
        (record := found.get(item_id)) is not None
        and record.contributor_key_id == member
        and record.state != WITHDRAWN
        for member, item_id in named
    ):
        return
    for grant, ids in zip(grants, item_ids, strict=True):
        if ids:
            require_own_items(found, ids, grant.contributor_key_id, usable=True)
    raise AssertionError("an item failed the check once but not in order")


def _duplicate_nonce() -> AlreadyExistsError:
    return AlreadyExistsError("DUPLICATE_NONCE", "you used this nonce in another token")


async def _nonce_used(conn: AsyncConnection, pairs: Sequence[tuple[str, bytes]]) -> bool:
    """Whether an earlier token of the member already used one of these nonces."""
    by_member: dict[str, list[bytes]] = {}
    for member, nonce in pairs:
        by_member.setdefault(member, []).append(nonce)
    table = models.ConsentRow
    for member, nonces in by_member.items():
        for start in range(0, len(nonces), 500):
            # member = ? AND nonce IN (...): the unique (member, nonce) index answers it; a
            # (member, nonce) IN (VALUES ...) form made SQLite scan the table.
            clash = (
                await conn.execute(
                    select(table.consent_id).where(
                        table.contributor_key_id == member,
                        table.nonce.in_(nonces[start : start + 500]),
                    )
                )
            ).first()
            if clash is not None:
                return True
    return False


async def consent(conn: AsyncConnection, consent_id: str) -> ConsentEntry | None:
    """One token by id."""
    row = (
        await conn.execute(
            select(models.ConsentRow).where(models.ConsentRow.consent_id == consent_id)
        )
    ).one_or_none()
    return None if row is None else _entry(row)


async def member_consents(
    conn: AsyncConnection, member: str, *, start_index: int = 0, limit: int | None = None
) -> list[ConsentEntry]:
    """A member's tokens in ledger order (all states)."""
    query = (
        select(models.ConsentRow)
        .where(models.ConsentRow.contributor_key_id == member, models.ConsentRow.idx >= start_index)
        .order_by(models.ConsentRow.idx)
    )
    if limit is not None:
        query = query.limit(limit)
    return [_entry(row) for row in await conn.execute(query)]


async def given_tokens(
    conn: AsyncConnection, members: Iterable[str]
) -> dict[str, list[rules.Token]]:
    """The GIVEN (not withdrawn or invalidated) tokens of each member."""
    wanted = sorted(set(members))
    tokens: dict[str, list[rules.Token]] = {member: [] for member in wanted}
    for start in range(0, len(wanted), 500):
        rows = await conn.execute(
            select(models.ConsentRow)
            .where(
                models.ConsentRow.contributor_key_id.in_(wanted[start : start + 500]),
                models.ConsentRow.state == rules.GIVEN,
            )
            .order_by(models.ConsentRow.idx)
        )
        for row in rows:
            tokens[row.contributor_key_id].append(_entry(row).token)
    for member, labs in (await struck_labs(conn, wanted)).items():
        tokens[member] = with_struck_labs(tokens[member], labs)
    return tokens


def with_struck_labs(tokens: Iterable[rules.Token], labs: Iterable[str]) -> list[rules.Token]:
    """``tokens`` as they bind a member who has struck ``labs``: a strike excludes those labs
    from every token the member has given, without a new token."""
    struck = frozenset(labs)
    return [replace(t, struck_labs=struck) for t in tokens] if struck else list(tokens)


def consented_for(
    item: ItemRecord,
    tokens: Iterable[rules.Token],
    terms: Any,
    lab_key_id: str,
    at: datetime,
) -> bool:
    """Whether some GIVEN token of the item's member permits this use of it now."""
    if item.state == WITHDRAWN:
        return False  # withdrawn item by item: no token can cover it any more
    return any(
        rules.covers_item(token, item.item_id, item.tags)
        and rules.permits(token, terms, lab_key_id, at)
        for token in tokens
    )


def consented_at_all(item: ItemRecord, tokens: Iterable[rules.Token], at: datetime) -> bool:
    """Whether some GIVEN token in force still names the item (else it is shredded)."""
    if item.state == WITHDRAWN:
        return False
    return any(
        rules.covers_item(token, item.item_id, item.tags) and token.in_force(at) for token in tokens
    )


async def save_tokens(conn: AsyncConnection, entries: Iterable[ConsentEntry]) -> None:
    """Record tokens as they now are: their recorded state, the index of the withdrawal that
    changed it, and their count of withdrawn items. One executemany for them all."""
    rows = [
        {
            "b_consent_id": entry.token.consent_id,
            "b_state": entry.recorded_state,
            "b_index": entry.withdrawal_index,
            "b_count": entry.withdrawn_items,
        }
        for entry in entries
    ]
    if not rows:
        return
    await bulk.execute_many(conn, _SAVE_TOKENS, rows)


_SAVE_TOKENS = (
    update(models.ConsentRow)
    .where(models.ConsentRow.consent_id == bindparam("b_consent_id"))
    .values(
        state=bindparam("b_state"),
        withdrawal_idx=bindparam("b_index"),
        withdrawn_items=bindparam("b_count"),
    )
)


def require_withdrawable(entry: ConsentEntry | None, member: str, at: datetime) -> ConsentEntry:
    """The token a member withdraws: theirs, and still given."""
    if entry is None:
        raise NotFoundError("CONSENT_NOT_FOUND", "no such consent token")
    if entry.token.contributor_key_id != member:
        raise PermissionDeniedError(
            "NOT_YOUR_CONSENT", "that consent token belongs to another member"
        )
    if entry.state_at(at) != rules.GIVEN:
        raise FailedPreconditionError(
            "CONSENT_NOT_GIVEN", "that consent token is already withdrawn, lapsed or invalid"
        )
    return entry


async def members_consents(
    conn: AsyncConnection, members: Iterable[str]
) -> dict[str, list[ConsentEntry]]:
    """Every token of each member (all states), in ledger order."""
    wanted = sorted(set(members))
    found: dict[str, list[ConsentEntry]] = {member: [] for member in wanted}
    # Ordered by idx within each chunk of members: each member's tokens are in one chunk.
    rows = await bulk.select_in(
        conn, models.ConsentRow, "contributor_key_id", wanted, order_by="idx"
    )
    for row in rows:
        found[row.contributor_key_id].append(_entry(row))
    return found


async def consents_by_id(
    conn: AsyncConnection, consent_ids: Iterable[str]
) -> dict[str, ConsentEntry]:
    """Tokens by id (missing ids are simply absent)."""
    rows = await bulk.select_in(conn, models.ConsentRow, "consent_id", consent_ids)
    return {row.consent_id: _entry(row) for row in rows}


async def struck_labs(conn: AsyncConnection, members: Iterable[str]) -> dict[str, set[str]]:
    """The labs each member's consent no longer covers (executed strike pledges)."""
    wanted = sorted(set(members))
    found: dict[str, set[str]] = {member: set() for member in wanted}
    columns = ["member_key_id", "lab_key_id"]
    for row in await bulk.select_in(
        conn, models.ConsentExclusion, "member_key_id", wanted, columns=columns
    ):
        found[row.member_key_id].add(row.lab_key_id)
    return found


async def exclude_labs(conn: AsyncConnection, exclusions: Mapping[tuple[str, str], int]) -> None:
    """Record (member, lab) exclusions, each with the index of the strike execution that
    made it; the caller passes only pairs not yet recorded."""
    if exclusions:
        await conn.execute(
            insert(models.ConsentExclusion),
            [
                {"member_key_id": member, "lab_key_id": lab, "idx": index}
                for (member, lab), index in exclusions.items()
            ],
        )
