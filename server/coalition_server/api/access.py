"""AccessService: leases, fetching under HPKE key release, notices and deletion receipts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from coalition import hpke, statements
from coalition.v1 import access_pb2, ledger_pb2, party_pb2
from coalition_server.agreements import item_ids_root
from coalition_server.api.auth import Policy
from coalition_server.api.dispatch import Call, Encoded, rpc
from coalition_server.api.mutations import idempotency_key, signed_statement
from coalition_server.context import ServerContext
from coalition_server.domain import consent as rules
from coalition_server.domain import exports
from coalition_server.domain.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
)
from coalition_server.domain.pagination import decode_token, encode_token, page_size
from coalition_server.domain.statements import (
    HEX_ID,
    MAX_CLOCK_SKEW,
    timestamp,
)
from coalition_server.keys.provider import WrappedKey
from coalition_server.store import access as store
from coalition_server.store import consent as consents
from coalition_server.store import items, models
from coalition_server.store.database import Database
from coalition_server.store.sequencer import EffectContext, Group, Submission
from coalition_server.timeutil import to_timestamp, utcnow

LAB = party_pb2.ROLE_LAB
RELEASE_ATTEMPTS = 5


# Each refusal names its reason literally (not built with an f-string), so that
# tests/test_docs.py finds it and checks docs/protocol.md documents it.


def _check_agreement_id(value: str) -> None:
    if not HEX_ID.match(value):
        raise InvalidArgumentError("BAD_AGREEMENT_ID", "agreement ids are 32 lowercase hex")


def _check_lease_id(value: str) -> None:
    if not HEX_ID.match(value):
        raise InvalidArgumentError("BAD_LEASE_ID", "lease ids are 32 lowercase hex")


def _check_notice_id(value: str) -> None:
    if not HEX_ID.match(value):
        raise InvalidArgumentError("BAD_NOTICE_ID", "notice ids are 32 lowercase hex")


SEGMENTS_PER_READ = 8
"""Sealed segments read from the database at once (8 MiB at the default segment size). A
fetch holds at most two reads: the one streaming and the next, read meanwhile."""


def _segment_wire(segment: bytes) -> bytes:
    n = len(segment)
    head = bytearray(b"\x1a")
    while n > 0x7F:
        head.append(0x80 | (n & 0x7F))
        n >>= 7
    head.append(n)
    return b"".join((head, segment))


def _segment_reads(released: Sequence[_ReleasedItem]) -> list[list[items.SegmentSpan]]:
    """The reads of a page's content, in streaming order: whole items together, up to
    SEGMENTS_PER_READ segments a read; an item with more is read alone, that many at a time."""
    reads: list[list[items.SegmentSpan]] = []
    group: list[items.SegmentSpan] = []
    held = 0
    for item in released:
        item_id, count = item.record.item_id, item.segment_count
        if group and (held + count > SEGMENTS_PER_READ or count > SEGMENTS_PER_READ):
            reads.append(group)
            group, held = [], 0
        if count > SEGMENTS_PER_READ:
            reads.extend(
                [items.SegmentSpan(item_id, start, min(start + SEGMENTS_PER_READ, count))]
                for start in range(0, count, SEGMENTS_PER_READ)
            )
        elif count > 0:
            group.append(items.SegmentSpan(item_id, 0, count))
            held += count
    if group:
        reads.append(group)
    return reads


class _ReadAhead:
    """Runs a fetch's segment reads in order, each next one while the previous streams."""

    def __init__(self, database: Database, reads: Sequence[list[items.SegmentSpan]]) -> None:
        self._database = database
        self._reads = deque(reads)
        self._current: dict[str, tuple[items.SegmentSpan, list[bytes]]] = {}
        self._next: asyncio.Task[dict[str, tuple[items.SegmentSpan, list[bytes]]]] | None = None
        self._start_next()

    def _start_next(self) -> None:
        self._next = (
            asyncio.ensure_future(self._read(self._reads.popleft())) if self._reads else None
        )

    async def _read(
        self, spans: list[items.SegmentSpan]
    ) -> dict[str, tuple[items.SegmentSpan, list[bytes]]]:
        async with self._database.reader.connect() as conn:
            found = await items.read_segments(conn, spans)
        return {span.item_id: (span, found[span.item_id]) for span in spans}

    async def take(self, item_id: str) -> tuple[items.SegmentSpan, list[bytes]]:
        """The next span of ``item_id`` (the items' order is the reads' order) and what of
        it is stored."""
        if item_id not in self._current:
            if self._next is None:
                raise AssertionError(f"no read left for item {item_id}")
            self._current = await self._next
            self._start_next()
        return self._current.pop(item_id)

    async def close(self) -> None:
        """Stop the read in flight, if any (the stream ended or failed)."""
        pending, self._next = self._next, None
        if pending is not None:
            pending.cancel()
            # Its outcome no longer matters (the stream is over), but it is collected.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pending


class AccessServicer:
    """Labs' access to licensed items."""

    def __init__(self, context: ServerContext) -> None:
        self._ctx = context

    @rpc(Policy.PARTY)
    async def ListAgreements(
        self, request: access_pb2.ListAgreementsRequest, call: Call
    ) -> access_pb2.ListAgreementsResponse:
        lab = call.require_role(LAB)
        start = decode_token(request.page_token) if request.page_token else 0
        size = page_size(request.page_size)
        async with self._ctx.database.reader.connect() as conn:
            entries = await store.lab_agreements(conn, lab.key_id, start, size + 1)
            leaves = {
                row.idx: row.leaf
                for row in await conn.execute(
                    select(models.LogEntry.idx, models.LogEntry.leaf).where(
                        models.LogEntry.idx.in_([e.index for e in entries[:size]])
                    )
                )
            }
        records = [
            access_pb2.AgreementRecord(
                agreement_id=entry.agreement_id,
                agreement=ledger_pb2.LedgerLeaf.FromString(leaves[entry.index]).envelope,
                index=entry.index,
            )
            for entry in entries[:size]
        ]
        token = encode_token(entries[size - 1].index + 1) if len(entries) > size else ""
        return access_pb2.ListAgreementsResponse(agreements=records, next_page_token=token)

    @rpc(Policy.PUBLIC)
    async def ExportAgreement(
        self, request: access_pb2.ExportAgreementRequest, call: Call
    ) -> access_pb2.ExportAgreementResponse:
        if not HEX_ID.match(request.agreement_id):
            raise InvalidArgumentError("BAD_AGREEMENT_ID", "agreement ids are 32 lowercase hex")
        async with self._ctx.database.reader.connect() as conn:
            entry = await store.agreement(conn, request.agreement_id)
        if entry is None:
            raise NotFoundError("AGREEMENT_NOT_FOUND", "no such agreement")
        policy = exports.agreement_to_odrl(
            entry.agreement_id, entry.statement, self._ctx.coalition_key.public_key.key_id
        )
        return access_pb2.ExportAgreementResponse(
            media_type="application/ld+json",
            document=json.dumps(policy, indent=2),
            index=entry.index,
        )

    @rpc(Policy.PARTY)
    async def TakeLease(self, request: access_pb2.TakeLeaseRequest, call: Call) -> Encoded:
        lab = call.require_role(LAB)
        key = idempotency_key(request, call)
        envelope, statement = signed_statement(
            request, "lease_request", access_pb2.LeaseRequest, call
        )
        _check_agreement_id(statement.agreement_id)
        effect = _LeaseEffect(statements.statement_id(envelope), lab.key_id, statement)

        def respond(receipts: Sequence[ledger_pb2.Receipt]) -> bytes:
            assert effect.lease is not None
            lease = effect.lease
            return access_pb2.TakeLeaseResponse(
                lease=access_pb2.Lease(
                    lease_id=lease.lease_id,
                    agreement_id=lease.agreement_id,
                    start_time=to_timestamp(lease.start_time),
                    expiry_time=to_timestamp(lease.expiry_time),
                ),
                receipt=receipts[0],
            ).SerializeToString()

        result = await self._ctx.sequencer.submit(
            Group((Submission(envelope, lab.key_id, effect=effect),), respond, key)
        )
        return Encoded(result.response)

    @rpc(Policy.PARTY)
    async def Fetch(
        self, request: access_pb2.FetchRequest, call: Call
    ) -> AsyncIterator[access_pb2.FetchResponse | Encoded]:
        lab = call.require_role(LAB)
        _check_lease_id(request.lease_id)
        after = request.page_token
        # The cursor is the last item id of the previous page; anything else is refused
        # like any listing's token we did not issue.
        if after and not HEX_ID.match(after):
            raise InvalidArgumentError("BAD_PAGE_TOKEN", "page_token is not valid")
        size = page_size(request.page_size) if request.page_size else 100
        for _attempt in range(RELEASE_ATTEMPTS):
            try:
                release = await self._release(lab.key_id, request.lease_id, after, size)
                break
            except _StalePlan:
                continue
        else:
            raise UnavailableError("CONSENT_CHANGING", "consent kept changing; retry")
        # The first read of content starts now and each next one while the previous streams.
        segments = _ReadAhead(self._ctx.database, _segment_reads(release.items))
        try:
            yield access_pb2.FetchResponse(
                release=access_pb2.FetchRelease(
                    receipt=release.receipt, next_page_token=release.next_page_token
                )
            )
            for item in release.items:
                yield self._item_header(release, item, lab.encryption_key)
                sent = 0
                while sent < item.segment_count:
                    span, found = await segments.take(item.record.item_id)
                    for segment in found:
                        yield Encoded(_segment_wire(segment))
                    sent += len(found)
                    if len(found) < span.stop - span.start:
                        # Withdrawn (and shredded) while it streamed: its key was released
                        # before the withdrawal, but the stream must not end as if the item
                        # were complete.
                        raise FailedPreconditionError(
                            "ITEM_WITHDRAWN",
                            "the item was withdrawn during the fetch; its content is gone",
                            {"item_id": item.record.item_id},
                        )
        finally:
            await segments.close()

    async def _release(self, lab: str, lease_id: str, after: str, size: int) -> _Release:
        """Plan a page of releasable items, then sequence the KeyRelease (re-checked)."""
        db = self._ctx.database
        now = utcnow()
        async with db.reader.connect() as conn:
            lease = await store.lease(conn, lease_id)
            if lease is None:
                raise NotFoundError("LEASE_NOT_FOUND", "no such lease")
            if lease.lab_key_id != lab:
                raise PermissionDeniedError("NOT_YOUR_LEASE", "that lease is another lab's")
            if lease.expiry_time <= now:
                raise FailedPreconditionError("LEASE_EXPIRED", "the lease has expired; renew it")
            agreement = await store.agreement(conn, lease.agreement_id)
            assert agreement is not None
            page = await store.agreement_item_ids(conn, agreement.agreement_id, after, size + 1)
            more = len(page) > size
            page = page[:size]
            planned = await _releasable(conn, agreement, page, now)
        release = _Release(lease, agreement, next_page_token=page[-1] if more and page else "")
        if not planned:
            return release
        statement = access_pb2.KeyRelease(
            lease_id=lease.lease_id,
            agreement_id=agreement.agreement_id,
            lab_key_id=lab,
            item_ids=planned,
            item_ids_root=item_ids_root(planned),
            nonce=os.urandom(16),
        )
        envelope = statements.sign_statement(statement, self._ctx.coalition_key)
        effect = _ReleaseEffect(lease, agreement, planned, release)
        result = await self._ctx.sequencer.submit_one(
            Submission(envelope, self._ctx.coalition_key.key_id, subjects=(lab,), effect=effect),
            lambda receipt: receipt.SerializeToString(),
        )
        release.receipt = result.receipts[0]
        return release

    def _item_header(
        self, release: _Release, item: _ReleasedItem, lab_encryption_key: bytes
    ) -> access_pb2.FetchResponse:
        """An item's header: its data key unwrapped and sealed to the lab (HPKE)."""
        record = item.record
        aad = items.data_key_associated_data(record.item_id, record.contributor_key_id)
        data_key = self._ctx.key_provider.unwrap(item.wrapped, aad)
        sealed = hpke.seal_data_key(
            lab_encryption_key,
            data_key,
            hpke.release_info(
                release.agreement.agreement_id, release.lease.lease_id, record.item_id
            ),
        )
        return access_pb2.FetchResponse(
            item=access_pb2.FetchedItem(
                item_id=record.item_id,
                contributor_key_id=record.contributor_key_id,
                commitment=record.commitment,
                size_bytes=record.size_bytes,
                media_type=record.media_type,
                sealed_data_key=sealed,
                segment_count=item.segment_count,
                has_content=True,
            )
        )

    @rpc(Policy.PARTY)
    async def WatchWithdrawals(
        self, request: access_pb2.WatchWithdrawalsRequest, call: Call
    ) -> AsyncIterator[access_pb2.WatchWithdrawalsResponse]:
        lab = call.require_role(LAB)
        since = request.since_index
        if since >= 2**63:
            raise InvalidArgumentError("BAD_INDEX", "since_index is beyond any ledger")
        while True:
            async with self._ctx.database.reader.connect() as conn:
                notices = await store.notices_for_lab(conn, lab.key_id, since, 100)
                leaves = {
                    row.idx: row.leaf
                    for row in await conn.execute(
                        select(models.LogEntry.idx, models.LogEntry.leaf).where(
                            models.LogEntry.idx.in_([n.index for n in notices])
                        )
                    )
                }
            for notice in notices:
                yield access_pb2.WatchWithdrawalsResponse(
                    index=notice.index,
                    notice_id=notice.notice_id,
                    notice=ledger_pb2.LedgerLeaf.FromString(leaves[notice.index]).envelope,
                )
                since = notice.index + 1
            if not notices:
                await self._ctx.sequencer.wait_for_commit(self._ctx.follow_poll_seconds)

    @rpc(Policy.PARTY)
    async def AcknowledgeWithdrawal(
        self, request: access_pb2.AcknowledgeWithdrawalRequest, call: Call
    ) -> Encoded:
        lab = call.require_role(LAB)
        key = idempotency_key(request, call)
        envelope, statement = signed_statement(request, "receipt", access_pb2.DeletionReceipt, call)
        _check_notice_id(statement.notice_id)
        if not statement.HasField("deleted_time"):
            raise InvalidArgumentError("MISSING_DELETED_TIME", "say when the items were deleted")
        if timestamp(statement.deleted_time, "deleted_time") > utcnow() + MAX_CLOCK_SKEW:
            raise InvalidArgumentError("BAD_DELETED_TIME", "deleted_time is in the future")
        effect = _ReceiptEffect(lab.key_id, statement)

        def respond(receipts: Sequence[ledger_pb2.Receipt]) -> bytes:
            return access_pb2.AcknowledgeWithdrawalResponse(
                receipt=receipts[0], in_time=effect.in_time
            ).SerializeToString()

        result = await self._ctx.sequencer.submit(
            Group((Submission(envelope, lab.key_id, effect=effect),), respond, key)
        )
        return Encoded(result.response)


@dataclass
class _ReleasedItem:
    record: items.ItemRecord
    wrapped: WrappedKey
    segment_count: int


@dataclass
class _Release:
    lease: store.LeaseEntry
    agreement: store.AgreementEntry
    next_page_token: str = ""
    receipt: ledger_pb2.Receipt | None = None
    items: list[_ReleasedItem] = field(default_factory=list)


async def _releasable(
    conn: AsyncConnection, agreement: store.AgreementEntry, item_ids: list[str], at: datetime
) -> list[str]:
    """Of these covered items, those stored and consented for this agreement at ``at``."""
    found = await items.load_items(conn, item_ids)
    tokens = await consents.given_tokens(conn, {r.contributor_key_id for r in found.values()})
    return sorted(
        record.item_id
        for record in found.values()
        if record.state == items.STORED
        and consents.consented_for(
            record,
            tokens[record.contributor_key_id],
            agreement.statement.terms,
            agreement.lab_key_id,
            at,
        )
    )


@dataclass
class _ReleaseEffect:
    """Re-checks, inside the sequencing transaction, that every planned item is releasable.

    This is what makes release race-free against withdrawal: both are decided under the
    same lock, in ledger order.
    """

    lease: store.LeaseEntry
    agreement: store.AgreementEntry
    planned: list[str]
    release: _Release

    async def __call__(self, ctx: EffectContext) -> None:
        if self.lease.expiry_time <= ctx.integrated_time:
            raise FailedPreconditionError("LEASE_EXPIRED", "the lease has expired; renew it")
        if self.agreement.expiry_time <= ctx.integrated_time:
            raise FailedPreconditionError("AGREEMENT_EXPIRED", "the agreement has expired")
        now_releasable = await _releasable(
            ctx.conn, self.agreement, self.planned, ctx.integrated_time
        )
        if now_releasable != self.planned:
            raise _StalePlan()
        found = await items.load_items(ctx.conn, self.planned)
        rows = await ctx.conn.execute(
            select(models.ItemContent).where(models.ItemContent.item_id.in_(self.planned))
        )
        content = {row.item_id: row for row in rows}
        self.release.items = [
            _ReleasedItem(
                found[item_id],
                WrappedKey(content[item_id].kek_id, bytes(content[item_id].wrapped_data_key)),
                content[item_id].segment_count,
            )
            for item_id in self.planned
        ]
        await store.record_release(ctx.conn, ctx.index, self.lease.lab_key_id, self.planned)


class _StalePlan(FailedPreconditionError):
    """Consent changed between planning a release and sequencing it: plan again."""

    def __init__(self) -> None:
        super().__init__("RELEASE_PLAN_STALE", "consent changed while releasing")


@dataclass
class _LeaseEffect:
    lease_id: str
    lab: str
    statement: access_pb2.LeaseRequest
    lease: store.LeaseEntry | None = None

    async def __call__(self, ctx: EffectContext) -> None:
        agreement = await store.agreement(ctx.conn, self.statement.agreement_id)
        if agreement is None:
            raise NotFoundError("AGREEMENT_NOT_FOUND", "no such agreement")
        if agreement.lab_key_id != self.lab:
            raise PermissionDeniedError("NOT_YOUR_AGREEMENT", "that agreement is another lab's")
        now = ctx.integrated_time
        if agreement.expiry_time <= now:
            raise FailedPreconditionError("AGREEMENT_EXPIRED", "the agreement has expired")
        # Renewal re-checks consent: a lease on an agreement nothing is consented for is refused.
        covered = await store.agreement_item_ids(ctx.conn, agreement.agreement_id, "", 10**9)
        if not await _releasable(ctx.conn, agreement, covered, now):
            raise FailedPreconditionError(
                "NO_CONSENTED_ITEMS", "no covered item is consented any more"
            )
        length = rules.duration(agreement.statement.terms.lease_duration, "lease_duration")
        self.lease = store.LeaseEntry(
            lease_id=self.lease_id,
            agreement_id=agreement.agreement_id,
            lab_key_id=self.lab,
            index=ctx.index,
            start_time=now,
            expiry_time=min(now + length, agreement.expiry_time),
        )
        await store.record_lease(ctx.conn, self.lease)


@dataclass
class _ReceiptEffect:
    lab: str
    statement: access_pb2.DeletionReceipt
    in_time: bool = False

    async def __call__(self, ctx: EffectContext) -> None:
        notice = await store.notice(ctx.conn, self.statement.notice_id)
        if notice is None:
            raise NotFoundError("NOTICE_NOT_FOUND", "no such notice")
        if notice.lab_key_id != self.lab:
            raise PermissionDeniedError("NOT_YOUR_NOTICE", "that notice is another lab's")
        if notice.receipt_index is not None:
            raise AlreadyExistsError("NOTICE_ALREADY_ACKNOWLEDGED", "that notice is answered")
        if list(self.statement.item_ids) != list(notice.statement.item_ids):
            raise InvalidArgumentError(
                "ITEMS_MISMATCH", "a receipt names exactly the notice's items"
            )
        self.in_time = ctx.integrated_time <= notice.respond_by
        await store.record_receipt(ctx.conn, notice.notice_id, ctx.index)
