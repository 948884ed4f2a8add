"""Items: registration rows, reads, and the data-key lifecycle (wrap, rotate, shred).

Key material never leaves this module except as a wrapped key or inside the upload/fetch
path; the database holds only wrapped data keys and sealed content segments.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from coalition.v1 import items_pb2
from coalition_server.domain.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    NotFoundError,
    PermissionDeniedError,
)
from coalition_server.keys.provider import KeyProvider, WrappedKey
from coalition_server.store import bulk, models

REGISTERED = items_pb2.ITEM_STATE_REGISTERED
STORED = items_pb2.ITEM_STATE_STORED
WITHDRAWN = items_pb2.ITEM_STATE_WITHDRAWN


@dataclass(frozen=True)
class ItemRecord:
    """An item as stored."""

    item_id: str
    contributor_key_id: str
    commitment: bytes
    size_bytes: int
    media_type: str
    tags: frozenset[str]
    state: int
    registration_index: int

    def to_proto(self) -> items_pb2.Item:
        """The API representation."""
        return items_pb2.Item(
            item_id=self.item_id,
            contributor_key_id=self.contributor_key_id,
            commitment=self.commitment,
            size_bytes=self.size_bytes,
            media_type=self.media_type,
            tags=sorted(self.tags),
            state=items_pb2.ItemState.ValueType(self.state),
            registration_index=self.registration_index,
        )


def data_key_associated_data(item_id: str, contributor_key_id: str) -> bytes:
    """What a wrapped data key is bound to: its item and its contributor."""
    return f"item={item_id};contributor={contributor_key_id}".encode()


async def insert_items(conn: AsyncConnection, records: Sequence[ItemRecord]) -> None:
    """Insert registrations inside the sequencer's transaction, in bulk.

    Content registered before, or twice in these records, is refused (ALREADY_EXISTS).
    """
    ids = [record.item_id for record in records]
    known: str | None = None
    seen: set[str] = set()
    for item_id in ids:  # the same content twice in one request
        if item_id in seen:
            known = item_id
            break
        seen.add(item_id)
    for start in range(0, len(ids), 500):
        if known is not None:
            break
        known = (
            await conn.execute(
                select(models.ItemRow.item_id).where(
                    models.ItemRow.item_id.in_(ids[start : start + 500])
                )
            )
        ).scalar()
    if known is not None:
        raise AlreadyExistsError(
            "ITEM_ALREADY_REGISTERED",
            "you registered this content already",
            {"item_id": known},
        )
    await conn.execute(
        insert(models.ItemRow),
        [
            {
                "item_id": record.item_id,
                "contributor_key_id": record.contributor_key_id,
                "commitment": record.commitment,
                "size_bytes": record.size_bytes,
                "media_type": record.media_type,
                "state": record.state,
                "registration_idx": record.registration_index,
            }
            for record in records
        ],
    )
    tags = [
        {"item_id": record.item_id, "tag": tag} for record in records for tag in sorted(record.tags)
    ]
    if tags:
        await conn.execute(insert(models.ItemTag), tags)


async def load_items(conn: AsyncConnection, item_ids: Iterable[str]) -> dict[str, ItemRecord]:
    """Items by id (missing ids are simply absent)."""
    ids = sorted(set(item_ids))
    if not ids:
        return {}
    tags: dict[str, set[str]] = {item_id: set() for item_id in ids}
    for tag_row in await bulk.select_in(conn, models.ItemTag, "item_id", ids):
        tags[tag_row.item_id].add(tag_row.tag)
    rows = await bulk.select_in(conn, models.ItemRow, "item_id", ids)
    return {row.item_id: _record(row, tags[row.item_id]) for row in rows}


async def member_items(conn: AsyncConnection, contributor_key_id: str) -> list[ItemRecord]:
    """Every item of one member, in registration order."""
    return (await members_items(conn, [contributor_key_id]))[contributor_key_id]


async def members_items(
    conn: AsyncConnection, contributor_key_ids: Iterable[str]
) -> dict[str, list[ItemRecord]]:
    """Every item of each member, in registration order (two queries per 500 members)."""
    members = sorted(set(contributor_key_ids))
    found: dict[str, list[ItemRecord]] = {member: [] for member in members}
    for start in range(0, len(members), 500):
        chunk = members[start : start + 500]
        tags: dict[str, set[str]] = {}
        for tag_row in await conn.execute(
            select(models.ItemTag.item_id, models.ItemTag.tag)
            .join(models.ItemRow, models.ItemRow.item_id == models.ItemTag.item_id)
            .where(models.ItemRow.contributor_key_id.in_(chunk))
        ):
            tags.setdefault(tag_row.item_id, set()).add(tag_row.tag)
        for row in await conn.execute(
            select(models.ItemRow)
            .where(models.ItemRow.contributor_key_id.in_(chunk))
            .order_by(models.ItemRow.registration_idx)
        ):
            found[row.contributor_key_id].append(_record(row, tags.get(row.item_id, set())))
    return found


async def stored_item_ids(conn: AsyncConnection, item_ids: Iterable[str]) -> set[str]:
    """Which of these items have content (a wrapped data key) stored."""
    rows = await bulk.select_in(conn, models.ItemContent, "item_id", item_ids, columns=["item_id"])
    return {row.item_id for row in rows}


async def mark_withdrawn(conn: AsyncConnection, withdrawals: Mapping[str, int]) -> None:
    """Set items WITHDRAWN, each by the withdrawal at the given ledger index (one
    executemany for them all)."""
    if not withdrawals:
        return
    await bulk.execute_many(
        conn,
        _MARK_WITHDRAWN,
        [
            {"b_item_id": item_id, "b_state": WITHDRAWN, "b_index": index}
            for item_id, index in withdrawals.items()
        ],
    )


_MARK_WITHDRAWN = (
    update(models.ItemRow)
    .where(models.ItemRow.item_id == bindparam("b_item_id"))
    .values(state=bindparam("b_state"), withdrawal_idx=bindparam("b_index"))
)


def _record(row: Any, tags: set[str]) -> ItemRecord:
    return ItemRecord(
        item_id=row.item_id,
        contributor_key_id=row.contributor_key_id,
        commitment=bytes(row.commitment),
        size_bytes=row.size_bytes,
        media_type=row.media_type,
        tags=frozenset(tags),
        state=row.state,
        registration_index=row.registration_idx,
    )


def require_own_items(
    found: dict[str, ItemRecord], item_ids: Sequence[str], member: str, *, usable: bool
) -> list[ItemRecord]:
    """The named items, refusing unknown ones, other members' and (if usable) withdrawn."""
    records = []
    for item_id in item_ids:
        record = found.get(item_id)
        if record is None:
            raise NotFoundError("ITEM_NOT_FOUND", "no such item", {"item_id": item_id})
        if record.contributor_key_id != member:
            raise PermissionDeniedError(
                "NOT_YOUR_ITEM", "that item belongs to another member", {"item_id": item_id}
            )
        if usable and record.state == WITHDRAWN:
            raise FailedPreconditionError(
                "ITEM_WITHDRAWN", "that item was withdrawn", {"item_id": item_id}
            )
        records.append(record)
    return records


async def current_kek(
    conn: AsyncConnection, provider: KeyProvider, owner: str, now: datetime
) -> str:
    """The owner's current key-encryption key, created on first use."""
    row = (
        await conn.execute(
            select(models.KeyEncryptionKey.kek_id)
            .where(
                models.KeyEncryptionKey.owner_key_id == owner,
                models.KeyEncryptionKey.retired_at.is_(None),
            )
            .order_by(models.KeyEncryptionKey.created_at.desc())
            .limit(1)
        )
    ).first()
    if row is not None:
        return str(row.kek_id)
    kek_id = provider.create_kek(owner)
    await conn.execute(
        insert(models.KeyEncryptionKey),
        [{"kek_id": kek_id, "owner_key_id": owner, "created_at": now}],
    )
    return kek_id


async def shred_items(conn: AsyncConnection, item_ids: Iterable[str]) -> None:
    """Delete the wrapped data keys and sealed content of these items (those with content).

    The data key exists only wrapped in ``item_content``: once that row is gone and the KEK
    that wrapped it is destroyed (``retire_keks`` retires it at once, the retention job
    destroys it), nothing left anywhere decrypts the content.
    """
    ids = sorted(set(item_ids))
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        await conn.execute(delete(models.ItemSegment).where(models.ItemSegment.item_id.in_(chunk)))
        await conn.execute(delete(models.ItemContent).where(models.ItemContent.item_id.in_(chunk)))
        await conn.execute(
            update(models.ItemRow)
            .where(models.ItemRow.item_id.in_(chunk), models.ItemRow.state == STORED)
            .values(state=REGISTERED)
        )


async def retire_keks(conn: AsyncConnection, owners: Iterable[str], now: datetime) -> None:
    """Retire these owners' current KEKs (after shredding); a new one is made on next use.

    Cheap on purpose: it runs inside the withdrawal's transaction. The data keys still
    wrapped under a retired KEK are moved to the current one by ``maintain_keks``, before
    the retired KEK is destroyed at the end of the retention window. From then on a copy of
    a shredded item's wrapped key that survives somewhere (a WAL page, a backup) is useless.
    """
    wanted = sorted(set(owners))
    for start in range(0, len(wanted), 500):
        await conn.execute(
            update(models.KeyEncryptionKey)
            .where(
                models.KeyEncryptionKey.owner_key_id.in_(wanted[start : start + 500]),
                models.KeyEncryptionKey.retired_at.is_(None),
            )
            .values(retired_at=now)
        )


async def retire_aged_keks(conn: AsyncConnection, created_before: datetime, now: datetime) -> None:
    """Scheduled rotation: retire every active KEK created before ``created_before``."""
    await conn.execute(
        update(models.KeyEncryptionKey)
        .where(
            models.KeyEncryptionKey.retired_at.is_(None),
            models.KeyEncryptionKey.created_at < created_before,
        )
        .values(retired_at=now)
    )


async def rewrap_retired(conn: AsyncConnection, provider: KeyProvider, now: datetime) -> int:
    """Re-wrap every data key still under a retired KEK with its owner's current KEK."""
    rows = (
        await conn.execute(
            select(
                models.ItemContent.item_id,
                models.ItemContent.kek_id,
                models.ItemContent.wrapped_data_key,
                models.KeyEncryptionKey.owner_key_id,
            )
            .join(
                models.KeyEncryptionKey, models.KeyEncryptionKey.kek_id == models.ItemContent.kek_id
            )
            .where(models.KeyEncryptionKey.retired_at.is_not(None))
        )
    ).all()
    current: dict[str, str] = {}
    for row in rows:
        owner = row.owner_key_id
        if owner not in current:
            current[owner] = await current_kek(conn, provider, owner, now)
        aad = data_key_associated_data(row.item_id, owner)
        data_key = provider.unwrap(WrappedKey(row.kek_id, bytes(row.wrapped_data_key)), aad)
        wrapped = provider.wrap(current[owner], data_key, aad)
        await conn.execute(
            update(models.ItemContent)
            .where(models.ItemContent.item_id == row.item_id)
            .values(kek_id=current[owner], wrapped_data_key=wrapped.ciphertext)
        )
    return len(rows)


async def destroy_retired_keks(
    conn: AsyncConnection, provider: KeyProvider, older_than: datetime, now: datetime
) -> list[str]:
    """Move data keys off retired KEKs, then destroy KEKs retired before ``older_than``."""
    await rewrap_retired(conn, provider, now)
    rows = await conn.execute(
        select(models.KeyEncryptionKey.kek_id).where(
            models.KeyEncryptionKey.retired_at.is_not(None),
            models.KeyEncryptionKey.retired_at <= older_than,
            models.KeyEncryptionKey.destroyed_at.is_(None),
        )
    )
    destroyed = [row.kek_id for row in rows]
    for kek_id in destroyed:
        provider.destroy_kek(kek_id)
    if destroyed:
        await conn.execute(
            update(models.KeyEncryptionKey)
            .where(models.KeyEncryptionKey.kek_id.in_(destroyed))
            .values(destroyed_at=now)
        )
    return destroyed


@dataclass(frozen=True)
class SegmentSpan:
    """Segments ``start`` (included) to ``stop`` (excluded) of one item's stored content."""

    item_id: str
    start: int
    stop: int


async def read_segments(
    conn: AsyncConnection, spans: Sequence[SegmentSpan]
) -> dict[str, list[bytes]]:
    """The sealed segments of these spans (of distinct items), by item, in order, in one query.

    A span whose item was shredded meanwhile comes back short (or empty): the caller checks.
    Several spans are read by item id (meant for whole items; rows outside a span are dropped).
    """
    segment = models.ItemSegment
    query = select(segment.item_id, segment.seq, segment.data)
    if len(spans) == 1:
        only = spans[0]
        query = query.where(
            segment.item_id == only.item_id, segment.seq >= only.start, segment.seq < only.stop
        )
    else:
        query = query.where(segment.item_id.in_([span.item_id for span in spans]))
    by_item = {span.item_id: span for span in spans}
    found: dict[str, list[bytes]] = {span.item_id: [] for span in spans}
    for item_id, seq, data in await conn.execute(query.order_by(segment.item_id, segment.seq)):
        span = by_item[item_id]
        if span.start <= seq < span.stop:
            found[item_id].append(bytes(data))
    return found
