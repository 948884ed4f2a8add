"""ItemService: register items, upload their content (encrypted at rest), list them."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

from sqlalchemy import delete, insert, select, update

from coalition.content import SegmentEncryptor, new_data_key
from coalition.v1 import items_pb2, ledger_pb2, party_pb2
from coalition_server.api.auth import Policy
from coalition_server.api.dispatch import Call, Encoded, rpc
from coalition_server.api.mutations import idempotency_key, open_batch
from coalition_server.context import ServerContext
from coalition_server.domain import items as rules
from coalition_server.domain.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
)
from coalition_server.domain.pagination import decode_token, encode_token, page_size
from coalition_server.domain.statements import check_item_id
from coalition_server.store import items as store
from coalition_server.store import models
from coalition_server.store.sequencer import Group, GroupContext, Submission
from coalition_server.timeutil import utcnow

CONTRIBUTOR = party_pb2.ROLE_CONTRIBUTOR
MAX_CHUNK = 1 << 20


class ItemServicer:
    """Contributors' items."""

    def __init__(self, context: ServerContext) -> None:
        self._ctx = context

    @rpc(Policy.PARTY)
    async def RegisterItems(self, request: items_pb2.RegisterItemsRequest, call: Call) -> Encoded:
        party = call.require_role(CONTRIBUTOR)
        key = idempotency_key(request, call)
        if not 1 <= len(request.registrations) <= rules.MAX_ITEMS_PER_REQUEST:
            raise InvalidArgumentError("BAD_BATCH", "send 1 to 1000 registrations")
        now = utcnow()
        opened = await open_batch(
            request.registrations,
            "registrations",
            items_pb2.ItemRegistration,
            call,
            lambda statement: rules.check_registration(statement, now),
        )
        records = [
            store.ItemRecord(
                item_id=rules.item_id(party.key_id, statement.commitment),
                contributor_key_id=party.key_id,
                commitment=bytes(statement.commitment),
                size_bytes=statement.size_bytes,
                media_type=statement.media_type,
                tags=frozenset(statement.tags),
                state=store.REGISTERED,
                registration_index=0,
            )
            for _, statement in opened
        ]
        submissions = [Submission(envelope, party.key_id) for envelope, _ in opened]
        effect = _RegisterAll(records)

        def respond(receipts: Sequence[ledger_pb2.Receipt]) -> bytes:
            return items_pb2.RegisterItemsResponse(
                items=[r.to_proto() for r in records], receipts=receipts
            ).SerializeToString()

        result = await self._ctx.sequencer.submit(Group(tuple(submissions), respond, key, effect))
        return Encoded(result.response)

    @rpc(Policy.PARTY)
    async def ListItems(
        self, request: items_pb2.ListItemsRequest, call: Call
    ) -> items_pb2.ListItemsResponse:
        party = call.require_role(CONTRIBUTOR)
        start = decode_token(request.page_token) if request.page_token else 0
        size = page_size(request.page_size)
        async with self._ctx.database.reader.connect() as conn:
            records = [
                r
                for r in await store.member_items(conn, party.key_id)
                if r.registration_index >= start
            ]
        page, more = records[:size], len(records) > size
        token = encode_token(page[-1].registration_index + 1) if more else ""
        return items_pb2.ListItemsResponse(
            items=[r.to_proto() for r in page], next_page_token=token
        )

    @rpc(Policy.PARTY)
    async def GetItem(
        self, request: items_pb2.GetItemRequest, call: Call
    ) -> items_pb2.GetItemResponse:
        party = call.require_role(CONTRIBUTOR)
        check_item_id(request.item_id)
        async with self._ctx.database.reader.connect() as conn:
            found = await store.load_items(conn, [request.item_id])
        (record,) = store.require_own_items(found, [request.item_id], party.key_id, usable=False)
        return items_pb2.GetItemResponse(item=record.to_proto())

    @rpc(Policy.PARTY)
    async def UploadContent(
        self, requests: AsyncIterator[items_pb2.UploadContentRequest], call: Call
    ) -> items_pb2.UploadContentResponse:
        party = call.require_role(CONTRIBUTOR)
        first = await anext(requests, None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidArgumentError("MISSING_HEADER", "the first message names the item")
        item_id = first.header.item_id
        check_item_id(item_id)
        db = self._ctx.database
        async with db.reader.connect() as conn:
            found = await store.load_items(conn, [item_id])
        (record,) = store.require_own_items(found, [item_id], party.key_id, usable=True)
        if record.state == store.STORED:
            raise AlreadyExistsError("CONTENT_ALREADY_STORED", "this item's content is stored")
        data_key = new_data_key()
        encryptor = SegmentEncryptor(data_key, item_id, party.key_id)
        digest = hashlib.sha256()
        size = 0
        seq = 0

        async def store_segments(segments: list[bytes]) -> None:
            nonlocal seq
            if not segments:
                return
            async with db.reader.begin() as conn:
                await conn.execute(
                    insert(models.ItemSegment),
                    [
                        {"item_id": item_id, "seq": seq + i, "data": segment}
                        for i, segment in enumerate(segments)
                    ],
                )
            seq += len(segments)

        try:
            # Clear leftovers of an upload that failed half-way before.
            async with db.reader.begin() as conn:
                await conn.execute(
                    delete(models.ItemSegment).where(models.ItemSegment.item_id == item_id)
                )
            async for message in requests:
                if message.WhichOneof("part") != "chunk":
                    raise InvalidArgumentError("BAD_UPLOAD", "only chunks follow the header")
                if len(message.chunk) > MAX_CHUNK:
                    raise InvalidArgumentError("CHUNK_TOO_LARGE", "chunks are at most 1 MiB")
                size += len(message.chunk)
                if size > record.size_bytes:
                    raise InvalidArgumentError(
                        "CONTENT_MISMATCH", "more content than the registered size"
                    )
                digest.update(message.chunk)
                await store_segments(encryptor.update(message.chunk))
            await store_segments(encryptor.finish())
            if size != record.size_bytes or digest.digest() != record.commitment:
                raise InvalidArgumentError(
                    "CONTENT_MISMATCH", "the content does not match the registered commitment"
                )
            await self._finalise(record, data_key, seq)
        except BaseException:
            async with db.reader.begin() as conn:
                await conn.execute(
                    delete(models.ItemSegment).where(models.ItemSegment.item_id == item_id)
                )
            raise
        stored = store.ItemRecord(**{**record.__dict__, "state": store.STORED})
        return items_pb2.UploadContentResponse(item=stored.to_proto(), size_bytes=size)

    async def _finalise(self, record: store.ItemRecord, data_key: bytes, segments: int) -> None:
        """Store the wrapped data key, if the item is still uploadable (race-free)."""
        provider = self._ctx.key_provider
        async with self._ctx.database.read_write.begin() as conn:
            state = (
                await conn.execute(
                    select(models.ItemRow.state).where(models.ItemRow.item_id == record.item_id)
                )
            ).scalar_one()
            if state != store.REGISTERED:
                raise FailedPreconditionError(
                    "ITEM_NOT_UPLOADABLE", "the item was withdrawn or stored meanwhile"
                )
            kek_id = await store.current_kek(conn, provider, record.contributor_key_id, utcnow())
            wrapped = provider.wrap(
                kek_id,
                data_key,
                store.data_key_associated_data(record.item_id, record.contributor_key_id),
            )
            await conn.execute(
                insert(models.ItemContent),
                [
                    {
                        "item_id": record.item_id,
                        "kek_id": kek_id,
                        "wrapped_data_key": wrapped.ciphertext,
                        "segment_count": segments,
                    }
                ],
            )
            await conn.execute(
                update(models.ItemRow)
                .where(models.ItemRow.item_id == record.item_id)
                .values(state=store.STORED)
            )


class _RegisterAll:
    """Inserts a request's items in bulk; fills in their indices for the response."""

    def __init__(self, records: list[store.ItemRecord]) -> None:
        self._records = records

    async def __call__(self, ctx: GroupContext) -> None:
        self._records[:] = [
            replace(record, registration_index=index)
            for record, index in zip(self._records, ctx.indices, strict=True)
        ]
        await store.insert_items(ctx.conn, self._records)
