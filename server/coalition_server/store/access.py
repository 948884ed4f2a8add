"""Agreements, leases, key releases and withdrawal notices in the store."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from coalition.v1 import access_pb2
from coalition_server.store import bulk, models
from coalition_server.timeutil import as_utc


@dataclass(frozen=True)
class AgreementEntry:
    """A recorded agreement."""

    agreement_id: str
    lab_key_id: str
    statement: access_pb2.Agreement
    index: int
    expiry_time: datetime


@dataclass(frozen=True)
class LeaseEntry:
    """A recorded lease."""

    lease_id: str
    agreement_id: str
    lab_key_id: str
    index: int
    start_time: datetime
    expiry_time: datetime


@dataclass(frozen=True)
class NoticeEntry:
    """A recorded withdrawal notice."""

    notice_id: str
    index: int
    lab_key_id: str
    agreement_id: str
    withdrawal_id: str
    statement: access_pb2.WithdrawalNotice
    respond_by: datetime
    receipt_index: int | None


def _agreement(row: Any) -> AgreementEntry:
    return AgreementEntry(
        row.agreement_id,
        row.lab_key_id,
        access_pb2.Agreement.FromString(row.payload),
        row.idx,
        as_utc(row.expiry_time),
    )


async def record_agreement(
    conn: AsyncConnection,
    agreement_id: str,
    statement: access_pb2.Agreement,
    index: int,
    expiry_time: datetime,
) -> None:
    """Insert an agreement and its covered items."""
    await conn.execute(
        insert(models.AgreementRow),
        [
            {
                "agreement_id": agreement_id,
                "lab_key_id": statement.lab_key_id,
                "idx": index,
                "payload": statement.SerializeToString(deterministic=True),
                "expiry_time": expiry_time,
            }
        ],
    )
    ids = list(statement.covered_item_ids)
    for start in range(0, len(ids), 1000):
        await conn.execute(
            insert(models.AgreementItem),
            [{"agreement_id": agreement_id, "item_id": i} for i in ids[start : start + 1000]],
        )


async def agreement(conn: AsyncConnection, agreement_id: str) -> AgreementEntry | None:
    """One agreement by id."""
    row = (
        await conn.execute(
            select(models.AgreementRow).where(models.AgreementRow.agreement_id == agreement_id)
        )
    ).one_or_none()
    return None if row is None else _agreement(row)


async def lab_agreements(
    conn: AsyncConnection, lab_key_id: str, start_index: int, limit: int
) -> list[AgreementEntry]:
    """A lab's agreements in ledger order."""
    rows = await conn.execute(
        select(models.AgreementRow)
        .where(models.AgreementRow.lab_key_id == lab_key_id, models.AgreementRow.idx >= start_index)
        .order_by(models.AgreementRow.idx)
        .limit(limit)
    )
    return [_agreement(row) for row in rows]


async def agreements_covering(
    conn: AsyncConnection, item_ids: Iterable[str]
) -> list[tuple[AgreementEntry, list[str]]]:
    """Every agreement that covers any of the items, with which of them it covers."""
    covered: dict[str, list[str]] = {}
    for row in await bulk.select_in(conn, models.AgreementItem, "item_id", item_ids):
        covered.setdefault(row.agreement_id, []).append(row.item_id)
    found = await agreements(conn, covered)
    return [
        (found[agreement_id], sorted(covered[agreement_id]))
        for agreement_id in sorted(covered)
        if agreement_id in found
    ]


async def agreements(
    conn: AsyncConnection, agreement_ids: Iterable[str]
) -> dict[str, AgreementEntry]:
    """Agreements by id (missing ids are simply absent)."""
    rows = await bulk.select_in(conn, models.AgreementRow, "agreement_id", agreement_ids)
    return {row.agreement_id: _agreement(row) for row in rows}


async def agreement_item_ids(
    conn: AsyncConnection, agreement_id: str, after: str, limit: int
) -> list[str]:
    """Covered item ids of an agreement, in id order, after a cursor."""
    rows = await conn.execute(
        select(models.AgreementItem.item_id)
        .where(
            models.AgreementItem.agreement_id == agreement_id, models.AgreementItem.item_id > after
        )
        .order_by(models.AgreementItem.item_id)
        .limit(limit)
    )
    return [row.item_id for row in rows]


async def record_lease(conn: AsyncConnection, lease: LeaseEntry) -> None:
    """Insert a lease."""
    await conn.execute(
        insert(models.LeaseRow),
        [
            {
                "lease_id": lease.lease_id,
                "agreement_id": lease.agreement_id,
                "lab_key_id": lease.lab_key_id,
                "idx": lease.index,
                "start_time": lease.start_time,
                "expiry_time": lease.expiry_time,
            }
        ],
    )


async def lease(conn: AsyncConnection, lease_id: str) -> LeaseEntry | None:
    """One lease by id."""
    row = (
        await conn.execute(select(models.LeaseRow).where(models.LeaseRow.lease_id == lease_id))
    ).one_or_none()
    if row is None:
        return None
    return LeaseEntry(
        row.lease_id,
        row.agreement_id,
        row.lab_key_id,
        row.idx,
        as_utc(row.start_time),
        as_utc(row.expiry_time),
    )


async def record_release(
    conn: AsyncConnection, index: int, lab_key_id: str, item_ids: Iterable[str]
) -> None:
    """Record which items' keys a KeyRelease entry released."""
    rows = [{"release_idx": index, "item_id": i, "lab_key_id": lab_key_id} for i in item_ids]
    if rows:
        await conn.execute(insert(models.ReleasedItem), rows)


async def record_notices(conn: AsyncConnection, notices: Sequence[NoticeEntry]) -> None:
    """Insert withdrawal notices."""
    if not notices:
        return
    await conn.execute(
        insert(models.NoticeRow),
        [
            {
                "notice_id": notice.notice_id,
                "idx": notice.index,
                "lab_key_id": notice.lab_key_id,
                "agreement_id": notice.agreement_id,
                "withdrawal_id": notice.withdrawal_id,
                "payload": notice.statement.SerializeToString(deterministic=True),
                "respond_by": notice.respond_by,
            }
            for notice in notices
        ],
    )


def _notice(row: Any) -> NoticeEntry:
    return NoticeEntry(
        row.notice_id,
        row.idx,
        row.lab_key_id,
        row.agreement_id,
        row.withdrawal_id,
        access_pb2.WithdrawalNotice.FromString(row.payload),
        as_utc(row.respond_by),
        row.receipt_idx,
    )


async def notice(conn: AsyncConnection, notice_id: str) -> NoticeEntry | None:
    """One notice by id."""
    row = (
        await conn.execute(select(models.NoticeRow).where(models.NoticeRow.notice_id == notice_id))
    ).one_or_none()
    return None if row is None else _notice(row)


async def notices_for_lab(
    conn: AsyncConnection, lab_key_id: str, since_index: int, limit: int
) -> list[NoticeEntry]:
    """A lab's notices from a ledger index on."""
    rows = await conn.execute(
        select(models.NoticeRow)
        .where(models.NoticeRow.lab_key_id == lab_key_id, models.NoticeRow.idx >= since_index)
        .order_by(models.NoticeRow.idx)
        .limit(limit)
    )
    return [_notice(row) for row in rows]


async def record_receipt(conn: AsyncConnection, notice_id: str, index: int) -> None:
    """Mark a notice answered by the deletion receipt at ``index``."""
    await conn.execute(
        update(models.NoticeRow)
        .where(models.NoticeRow.notice_id == notice_id)
        .values(receipt_idx=index)
    )
