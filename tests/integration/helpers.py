"""Helpers for integration tests: raw calls, row counts, verification shortcuts."""

from __future__ import annotations

import grpc
from google.protobuf.message import Message
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from coalition.client import Client, ServerError
from coalition.note import NoteVerifier
from coalition_server.store import models


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
