"""A large ledger (1,000,000 entries at full scale) for the proofs, audit and memory figures.

Building it through the public API would take the ingest rate (minutes per database) before a
single proof is timed, so it is built the fastest way that is still the real thing:

- every entry is a genuinely signed statement that the auditor's replay accepts: contributors
  register, then each registers items and grants one consent token per item (the SDK's own
  statement builders, Ed25519 signatures made on both cores);
- the entries are appended by the server's own :class:`~coalition_server.store.sequencer.Sequencer`
  running in this process against the same database as a running server process, exactly as a
  second replica would: same leaf bytes, subject index, stored interior hashes and signed
  checkpoints (one per batch). The server process itself stays idle meanwhile.

What is skipped are the statements' domain effects (the items and consents tables): figures
3, 4 and 8 read only the log (entries, interior hashes, checkpoints), never those tables.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.harness import Context, DbKind, ServerProcess, Stopwatch, coalition_server
from coalition import dsse, statements
from coalition.client import Client, consent_token, price_floor
from coalition.keys import SigningKey
from coalition.v1 import envelope_pb2, party_pb2
from coalition_server.keys.server_keys import ServerKeys
from coalition_server.store.database import Database
from coalition_server.store.sequencer import Group, Sequencer, Submission

ORIGIN = "bench.coalition.example/log"
ITEMS_PER_MEMBER = 499
"""Each member appends 1 registration + 499 items + 499 consent tokens = 999 entries."""
GROUP = 1_000
"""Statements per sequencer group (one request's worth)."""
BATCH_GROUPS = 8
"""Groups per sequencer batch, i.e. per transaction and checkpoint."""


@dataclass(frozen=True)
class BigLedger:
    """A running server over a ledger of ``size`` entries (entry 0 is the coalition's)."""

    server: ServerProcess
    size: int
    build_seconds: float


def _member_statements(seed: bytes) -> list[bytes]:
    """One member's entries, signed: registration, items, then a token per item (serialised
    DSSE envelopes; runs in a worker process)."""
    key = SigningKey.from_seed(seed)
    client = Client("unused:0", key=key)
    out = [
        statements.sign_statement(
            client.registration(party_pb2.ROLE_CONTRIBUTOR, f"member {seed.hex()[:8]}"), key
        )
    ]
    commitments = [
        hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(ITEMS_PER_MEMBER)
    ]
    for commitment in commitments:
        out.append(
            statements.sign_statement(
                client.item_registration(commitment, 1024, "text/plain", ["bench"]), key
            )
        )
    for commitment in commitments:
        token = consent_token(
            item_ids=[client.item_id_for(commitment)],
            purposes=["train-ai"],
            floors=[price_floor("purchase", 1_000_000)],
        )
        out.append(statements.sign_statement(token, key))
    return [envelope.to_proto().SerializeToString() for envelope in out]


def _submission(raw: bytes) -> Submission:
    envelope = dsse.Envelope.from_proto(envelope_pb2.Envelope.FromString(raw))
    return Submission(envelope, envelope.signatures[0].keyid)


async def _append(db_url: str, data_dir: Path, members: int, ctx: Context) -> None:
    keys = ServerKeys.load(data_dir, ORIGIN)
    database = Database.connect(db_url)
    sequencer = Sequencer(database, keys.log_signer, max_batch=BATCH_GROUPS)
    sequencer.start()
    loop = asyncio.get_running_loop()
    # Enough groups in flight that the sequencer always has a full batch queued.
    room = asyncio.Semaphore(4 * BATCH_GROUPS)
    appended: list[asyncio.Task[object]] = []

    async def append(chunk: tuple[Submission, ...]) -> object:
        try:
            return await sequencer.submit(Group(chunk, _no_response))
        finally:
            room.release()

    try:
        with ProcessPoolExecutor(os.cpu_count() or 2) as pool:
            signing = [
                loop.run_in_executor(pool, _member_statements, os.urandom(32))
                for _ in range(members)
            ]
            for done, future in enumerate(signing, start=1):
                subs = [_submission(raw) for raw in await future]
                for start in range(0, len(subs), GROUP):
                    await room.acquire()
                    appended.append(asyncio.create_task(append(tuple(subs[start : start + GROUP]))))
                if done % 100 == 0:
                    ctx.log(f"big ledger: {done:,} of {members:,} members appended")
            await asyncio.gather(*appended)  # raises if any group was refused
    finally:
        await sequencer.stop()
        await database.dispose()


def _no_response(_receipts: Sequence[object]) -> bytes:
    return b""


async def shared_big_ledger(ctx: Context, db: DbKind) -> BigLedger:
    """The run's big ledger on ``db``, built on first use and kept until the run ends."""
    key = ("big-ledger", db)
    if key not in ctx.shared:
        size = ctx.pick(3_000, 1_000_000)
        ctx.shared[key] = await ctx.resources.enter_async_context(big_ledger(ctx, db, size))
    ledger: BigLedger = ctx.shared[key]
    return ledger


@asynccontextmanager
async def big_ledger(ctx: Context, db: DbKind, size: int) -> AsyncIterator[BigLedger]:
    """A server process over a freshly built ledger of at least ``size`` entries."""
    members = max(1, -(-(size - 1) // (1 + 2 * ITEMS_PER_MEMBER)))
    async with coalition_server(ctx, db, "big-ledger") as server:
        with Stopwatch() as build:
            await _append(server.db_url, server.data_dir, members, ctx)
        size = 1 + members * (1 + 2 * ITEMS_PER_MEMBER)
        ctx.log(f"big ledger: {size:,} entries in {build.seconds:.0f} s ({db})")
        yield BigLedger(server, size, build.seconds)
