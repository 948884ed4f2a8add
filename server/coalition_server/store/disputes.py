"""Disputes in the store: one row per dispute, completed by its lab's response.

The statements themselves are in the ledger; the row keeps their envelopes verbatim (so a
listing is one query and every reader can re-verify the signatures) and indexes them by
agreement, lab and member.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import exists, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from coalition.v1 import disputes_pb2, envelope_pb2
from coalition_server.store import models
from coalition_server.timeutil import as_utc, to_timestamp


@dataclass(frozen=True)
class DisputeEntry:
    """A recorded dispute and, once the lab answered, its response."""

    dispute_id: str
    agreement_id: str
    lab_key_id: str
    member_key_id: str
    index: int
    filed_at: datetime
    envelope: bytes
    response_index: int | None = None
    responded_at: datetime | None = None
    response_envelope: bytes | None = None

    def to_proto(self) -> disputes_pb2.DisputeRecord:
        """The API representation."""
        record = disputes_pb2.DisputeRecord(
            dispute_id=self.dispute_id,
            agreement_id=self.agreement_id,
            lab_key_id=self.lab_key_id,
            member_key_id=self.member_key_id,
            state=disputes_pb2.DISPUTE_STATE_OPEN,
            dispute=envelope_pb2.Envelope.FromString(self.envelope),
            index=self.index,
            filed_time=to_timestamp(self.filed_at),
        )
        if self.response_index is not None:
            assert self.responded_at is not None
            assert self.response_envelope is not None
            record.state = disputes_pb2.DISPUTE_STATE_ANSWERED
            record.response.CopyFrom(envelope_pb2.Envelope.FromString(self.response_envelope))
            record.response_index = self.response_index
            record.response_time.CopyFrom(to_timestamp(self.responded_at))
        return record


def _entry(row: Any) -> DisputeEntry:
    return DisputeEntry(
        dispute_id=row.dispute_id,
        agreement_id=row.agreement_id,
        lab_key_id=row.lab_key_id,
        member_key_id=row.member_key_id,
        index=row.idx,
        filed_at=as_utc(row.filed_at),
        envelope=bytes(row.envelope),
        response_index=row.response_idx,
        responded_at=None if row.responded_at is None else as_utc(row.responded_at),
        response_envelope=None if row.response_envelope is None else bytes(row.response_envelope),
    )


async def insert_dispute(conn: AsyncConnection, entry: DisputeEntry) -> None:
    """Record a new, open dispute."""
    await conn.execute(
        insert(models.DisputeRow),
        [
            {
                "dispute_id": entry.dispute_id,
                "agreement_id": entry.agreement_id,
                "lab_key_id": entry.lab_key_id,
                "member_key_id": entry.member_key_id,
                "idx": entry.index,
                "filed_at": entry.filed_at,
                "envelope": entry.envelope,
            }
        ],
    )


async def record_response(
    conn: AsyncConnection, dispute_id: str, index: int, at: datetime, envelope: bytes
) -> None:
    """Record the lab's response to a dispute."""
    await conn.execute(
        update(models.DisputeRow)
        .where(models.DisputeRow.dispute_id == dispute_id)
        .values(response_idx=index, responded_at=at, response_envelope=envelope)
    )


async def dispute(conn: AsyncConnection, dispute_id: str) -> DisputeEntry | None:
    """One dispute by id."""
    row = (
        await conn.execute(
            select(models.DisputeRow).where(models.DisputeRow.dispute_id == dispute_id)
        )
    ).one_or_none()
    return None if row is None else _entry(row)


async def disputes(
    conn: AsyncConnection,
    start_index: int,
    limit: int,
    *,
    agreement_id: str = "",
    lab_key_id: str = "",
    member_key_id: str = "",
) -> list[DisputeEntry]:
    """Disputes from ledger index ``start_index`` on, in ledger order; each filter given
    (non-empty) must match."""
    table = models.DisputeRow
    query = select(table).where(table.idx >= start_index)
    if agreement_id:
        query = query.where(table.agreement_id == agreement_id)
    if lab_key_id:
        query = query.where(table.lab_key_id == lab_key_id)
    if member_key_id:
        query = query.where(table.member_key_id == member_key_id)
    rows = await conn.execute(query.order_by(table.idx).limit(limit))
    return [_entry(row) for row in rows]


async def covers_member(conn: AsyncConnection, agreement_id: str, member_key_id: str) -> bool:
    """Whether the agreement covers at least one of the member's items (withdrawn or not:
    coverage is what the agreement says, and a withdrawal does not end what it licensed)."""
    query = select(
        exists()
        .where(models.AgreementItem.agreement_id == agreement_id)
        .where(models.ItemRow.item_id == models.AgreementItem.item_id)
        .where(models.ItemRow.contributor_key_id == member_key_id)
    )
    return bool((await conn.execute(query)).scalar_one())
