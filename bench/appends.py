"""Figure 2, single appends: withdrawals from 64 concurrent clients, each acknowledged with
its receipt (index, signed checkpoint, inclusion proof).

Untimed set-up: :data:`CLIENTS` members, each on its own connection, register
``per_client`` items and grant one token for them; every Withdrawal statement (one item
each) is signed beforehand. Timed: each client withdraws its items one call at a time, all
clients at once; each call's latency is from sending the request to holding the response
with its receipt. After the timing every receipt is checked (checkpoint signature, leaf hash,
inclusion proof) so that the acknowledgements counted are real ones.

Targets: at least 800 appends/s, and p99 acknowledgement latency at most 100 ms.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from bench import world
from bench.calls import CallWindow
from bench.cpu import CpuWindow
from bench.harness import (
    Benchmark,
    Context,
    DbKind,
    Figure,
    Stopwatch,
    Target,
    coalition_server,
    latency_details,
)
from coalition import statements
from coalition.client import CONSENT
from coalition.note import NoteVerifier
from coalition.receipts import verify_receipt
from coalition.v1 import consent_pb2

NAME = "appends"
CLIENTS = 64


def withdrawal_request(party: world.Party, item_id: str) -> consent_pb2.WithdrawRequest:
    """A signed withdrawal of one item."""
    created = Timestamp()
    created.FromDatetime(datetime.now(UTC))
    statement = consent_pb2.Withdrawal(created_time=created, nonce=os.urandom(16))
    statement.items.item_ids.append(item_id)
    return consent_pb2.WithdrawRequest(
        withdrawal=statements.sign_statement(statement, party.key).to_proto()
    )


async def measure(ctx: Context, db: DbKind | None) -> list[Figure]:
    """Appends per second and acknowledgement latency percentiles."""
    assert db is not None
    per_client = ctx.pick(4, 100)
    async with coalition_server(ctx, db, NAME, metrics=True) as server:
        ctx.log(f"{NAME}: {CLIENTS} members with {per_client} items each")
        members = await asyncio.gather(
            *(world.member(server.target, f"member {i}", per_client) for i in range(CLIENTS))
        )
        try:
            requests = [[withdrawal_request(m, i) for i in m.item_ids] for m in members]
            latencies: list[float] = []
            responses: list[consent_pb2.WithdrawResponse] = []

            async def client(member: world.Party, mine: list[consent_pb2.WithdrawRequest]) -> None:
                for request in mine:
                    started = time.perf_counter()
                    response = await member.client.call(
                        CONSENT + "Withdraw", request, consent_pb2.WithdrawResponse, sign=True
                    )
                    latencies.append(time.perf_counter() - started)
                    if not response.HasField("receipt"):
                        raise RuntimeError("a withdrawal was acknowledged without its receipt")
                    responses.append(response)

            ctx.log(f"{NAME}: {CLIENTS * per_client} withdrawals from {CLIENTS} clients")
            window = CallWindow(server.metrics_url, [(CONSENT.strip("/"), "Withdraw")])
            with window, Stopwatch() as watch, CpuWindow(server.pid) as cpu:
                await asyncio.gather(
                    *(client(m, r) for m, r in zip(members, requests, strict=True))
                )
            verifier = NoteVerifier.parse((await members[0].client.log_info()).verifier_key)
            for response in responses:
                verify_receipt(response.receipt, verifier)
        finally:
            await world.close_all(list(members))
    appends = len(latencies)
    lat = latency_details(latencies)
    common = {
        "clients": CLIENTS,
        "appends": appends,
        "seconds": round(watch.seconds, 3),
        **lat,
        "cpu": cpu.details(),
        "call_time": window.details(statistics.fmean(latencies), watch.seconds),
    }
    rate = Figure(
        NAME,
        "2 appends: 64 clients withdrawing",
        appends / watch.seconds,
        "appends/s",
        db=db,
        target=Target(">=", 800),
        details=common,
        note=f"{appends} withdrawals",
    )
    ctx.ratio_to(rate, "signed-echo")
    p99 = Figure(
        f"{NAME}-p99",
        "2 appends: ack latency p99",
        lat["p99_ms"],
        "ms",
        db=db,
        target=Target("<=", 100),
        details=common,
        note=f"p50 {lat['p50_ms']:.1f} ms",
    )
    return [rate, p99]


BENCHMARK = Benchmark(
    NAME, "figure", per_db=True, run=measure, needs=("signed-echo",), beside=("signed-echo",)
)
