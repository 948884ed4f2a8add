"""Helpers for integration tests: raw calls, row counts, verification shortcuts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import grpc
from google.protobuf.message import Message
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from coalition.client import Client, ServerError
from coalition.keys import SigningKey
from coalition.note import NoteVerifier
from coalition.statements import sign_statement
from coalition_server.server import CoalitionServer
from coalition_server.store import models
from coalition_server.store.sequencer import Group, GroupContext, Submission

from . import builders


async def verifier(client: Client) -> NoteVerifier:
    """The log's note verifier, as an auditor would fetch it."""
    return NoteVerifier.parse((await client.log_info()).verifier_key)


async def raw_call(
    target: str,
    method: str,
    payload: bytes,
    metadata: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """Send arbitrary bytes as a request; raise ServerError like the SDK does."""
    from coalition.client import _server_error

    async with grpc.aio.insecure_channel(target) as channel:
        stub: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
        try:
            response: bytes = await stub(payload, metadata=metadata, timeout=10)
        except grpc.aio.AioRpcError as exc:
            raise _server_error(exc) from None
        return response


async def row_counts(db_url: str) -> dict[str, int]:
    """Rows in every table: a refused request must leave these unchanged."""
    engine = create_async_engine(db_url)
    counts = {}
    try:
        async with engine.connect() as conn:
            for table in models.Base.metadata.sorted_tables:
                counts[table.name] = (
                    await conn.execute(select(func.count()).select_from(table))
                ).scalar_one()
    finally:
        await engine.dispose()
    return counts


def reason(error: ServerError) -> tuple[grpc.StatusCode, str]:
    """(code, ErrorInfo reason) of a refused call."""
    return error.code, error.reason


__all__ = ["Message", "raw_call", "reason", "row_counts", "verifier"]


@asynccontextmanager
async def held(server: CoalitionServer) -> AsyncIterator[Callable[[int], asyncio.Future[None]]]:
    """Keep the sequencer inside a batch until the block ends, so that what is submitted
    meanwhile queues up for one next batch. Yields ``until(n)``: wait for n queued groups."""
    sequencer = server.context.sequencer
    release = asyncio.Event()
    entered = asyncio.Event()

    async def wait(ctx: GroupContext) -> None:
        entered.set()
        await release.wait()

    key = SigningKey.generate()
    blocker = Group(
        (Submission(sign_statement(builders.withdrawal(), key), key.public_key.key_id),),
        lambda receipts: b"",
        effect=wait,
    )
    blocking = asyncio.create_task(sequencer.submit(blocker))
    await entered.wait()

    def until(count: int) -> asyncio.Future[None]:
        async def poll() -> None:
            while sequencer.queued < count:  # noqa: ASYNC110 - the queue signals nothing
                await asyncio.sleep(0.005)

        return asyncio.ensure_future(asyncio.wait_for(poll(), 10))

    try:
        yield until
    finally:
        release.set()
        await blocking
