"""Strike pledges in the store."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from coalition.v1 import strike_pb2
from coalition_server.domain.strikes import Pledge
from coalition_server.store import models
from coalition_server.timeutil import as_utc

ACTIVE = strike_pb2.PLEDGE_STATE_ACTIVE
RETRACTED = strike_pb2.PLEDGE_STATE_RETRACTED
EXECUTED = strike_pb2.PLEDGE_STATE_EXECUTED
EXPIRED = strike_pb2.PLEDGE_STATE_EXPIRED


async def insert_pledge(
    conn: AsyncConnection,
    pledge: Pledge,
    statement: strike_pb2.StrikePledge,
    expiry: datetime,
    index: int,
) -> None:
    """Record an active pledge."""
    await conn.execute(
        insert(models.PledgeRow),
        [
            {
                "pledge_id": pledge.pledge_id,
                "member_key_id": pledge.member_key_id,
                "target": pledge.target,
                "min_members": pledge.min_members,
                "min_share_bp": pledge.min_share_bp,
                "expiry_time": expiry,
                "state": ACTIVE,
                "idx": index,
                "payload": statement.SerializeToString(deterministic=True),
            }
        ],
    )


def _pledge(row: Any) -> Pledge:
    return Pledge(row.pledge_id, row.member_key_id, row.target, row.min_members, row.min_share_bp)


async def live_pledges(conn: AsyncConnection, target: str, now: datetime) -> list[Pledge]:
    """Active, unexpired pledges against ``target``, in ledger order."""
    rows = await conn.execute(
        select(models.PledgeRow)
        .where(
            models.PledgeRow.target == target,
            models.PledgeRow.state == ACTIVE,
            models.PledgeRow.expiry_time > now,
        )
        .order_by(models.PledgeRow.idx)
    )
    return [_pledge(row) for row in rows]


async def set_state(conn: AsyncConnection, pledge_ids: Iterable[str], state: int) -> None:
    """Move pledges to ``state``."""
    ids = sorted(pledge_ids)
    if ids:
        await conn.execute(
            update(models.PledgeRow).where(models.PledgeRow.pledge_id.in_(ids)).values(state=state)
        )


async def pledge_row(conn: AsyncConnection, pledge_id: str) -> Any:
    """One pledge row (or None)."""
    return (
        await conn.execute(select(models.PledgeRow).where(models.PledgeRow.pledge_id == pledge_id))
    ).one_or_none()


def state_at(row: Any, now: datetime) -> int:
    """The pledge's state now (an active pledge past its expiry has EXPIRED)."""
    if row.state == ACTIVE and as_utc(row.expiry_time) <= now:
        return EXPIRED
    return int(row.state)


async def member_pledges(conn: AsyncConnection, member: str) -> list[Any]:
    """A member's pledge rows in ledger order."""
    rows = await conn.execute(
        select(models.PledgeRow)
        .where(models.PledgeRow.member_key_id == member)
        .order_by(models.PledgeRow.idx)
    )
    return list(rows)


async def all_pledges(conn: AsyncConnection) -> list[Any]:
    """Every pledge row (for the public, aggregate progress)."""
    return list(await conn.execute(select(models.PledgeRow).order_by(models.PledgeRow.idx)))


async def contributor_count(conn: AsyncConnection) -> int:
    """Registered contributors: the most members a threshold can ask for."""
    from coalition.v1 import party_pb2

    return int(
        (
            await conn.execute(
                select(func.count()).where(models.Party.role == party_pb2.ROLE_CONTRIBUTOR)
            )
        ).scalar_one()
    )


async def covered_by_target(conn: AsyncConnection, target: str) -> dict[str, str]:
    """item -> member for the items the target's agreements cover ("" = every lab's)."""
    query = select(models.AgreementItem.item_id, models.ItemRow.contributor_key_id).join(
        models.ItemRow, models.ItemRow.item_id == models.AgreementItem.item_id
    )
    if target:
        query = query.join(
            models.AgreementRow,
            models.AgreementRow.agreement_id == models.AgreementItem.agreement_id,
        ).where(models.AgreementRow.lab_key_id == target)
    return {row.item_id: row.contributor_key_id for row in await conn.execute(query)}
