"""Figure 1, ingest: signed consent tokens through GrantConsent, verified and durably committed.

:data:`MEMBERS` contributors register items (untimed); the bench then signs every token
beforehand (one item each, train-ai, a purchase floor), in GrantConsent requests of 1000
tokens, one member per request. Timed: sending all the requests with :data:`IN_FLIGHT`
outstanding at once, until the last is acknowledged (each acknowledgement carries a receipt
per token, so the tokens are verified, sequenced into the Merkle tree and committed).

Targets: at least 3,000 tokens/s, and at least 40% of the same run's Ed25519-verify rate
(the server must verify every token's signature; that is its floor of work per token).
"""

from __future__ import annotations

import asyncio
import itertools

from bench import world
from bench.cpu import CpuWindow
from bench.harness import (
    Benchmark,
    Context,
    DbKind,
    Figure,
    Stopwatch,
    Target,
    coalition_server,
)
from coalition import statements
from coalition.client import CONSENT, MAX_BATCH, consent_token, price_floor
from coalition.v1 import consent_pb2

NAME = "ingest"
MEMBERS = 4
ITEMS_PER_MEMBER = 100
IN_FLIGHT = 3
"""Requests outstanding at once: enough to keep the sequencer's next batch queued."""


def _requests(members: list[world.Party], tokens: int) -> list[consent_pb2.GrantConsentRequest]:
    """``tokens`` signed tokens in requests of MAX_BATCH, the members taking turns."""
    requests = []
    items = [itertools.cycle(m.item_ids) for m in members]
    for number, start in enumerate(range(0, tokens, MAX_BATCH)):
        owner = number % len(members)
        envelopes = [
            statements.sign_statement(
                consent_token(
                    item_ids=[next(items[owner])],
                    purposes=[world.PURPOSE],
                    floors=[price_floor("purchase", world.USD)],
                ),
                members[owner].key,
            ).to_proto()
            for _ in range(min(MAX_BATCH, tokens - start))
        ]
        requests.append(consent_pb2.GrantConsentRequest(tokens=envelopes))
    return requests


async def measure(ctx: Context, db: DbKind | None) -> list[Figure]:
    """Tokens per second through GrantConsent batches."""
    assert db is not None
    tokens = ctx.pick(3_000, 100_000)
    async with coalition_server(ctx, db, NAME) as server:
        members = [
            await world.member(server.target, f"member {i}", ITEMS_PER_MEMBER, grant=False)
            for i in range(MEMBERS)
        ]
        try:
            ctx.log(f"{NAME}: signing {tokens} tokens")
            requests = _requests(members, tokens)
            owners = [members[n % len(members)] for n in range(len(requests))]
            gate = asyncio.Semaphore(IN_FLIGHT)
            acknowledged = 0

            async def send(request: consent_pb2.GrantConsentRequest, owner: world.Party) -> None:
                nonlocal acknowledged
                async with gate:
                    response = await owner.client.call(
                        CONSENT + "GrantConsent",
                        request,
                        consent_pb2.GrantConsentResponse,
                        sign=True,
                    )
                acknowledged += len(response.receipts)

            ctx.log(f"{NAME}: granting {tokens} tokens, {IN_FLIGHT} requests in flight")
            with Stopwatch() as watch, CpuWindow(server.pid) as cpu:
                await asyncio.gather(*(send(r, o) for r, o in zip(requests, owners, strict=True)))
        finally:
            await world.close_all(members)
    if acknowledged != tokens:
        raise RuntimeError(f"{acknowledged} receipts for {tokens} tokens")
    figure = Figure(
        NAME,
        "1 ingest: consent tokens",
        tokens / watch.seconds,
        "tokens/s",
        db=db,
        target=Target(">=", 3000),
        ratio_target=Target(">=", 0.4),
        details={
            "tokens": tokens,
            "per_request": MAX_BATCH,
            "in_flight": IN_FLIGHT,
            "members": MEMBERS,
            "seconds": round(watch.seconds, 3),
            "cpu": cpu.details(),
        },
    )
    ctx.ratio_to(figure, "ed25519")
    # Also against the database's own bound (the rows ingest writes, bulk-inserted).
    insert = Figure("", "", figure.value, "", db=db)
    ctx.ratio_to(insert, "sql-insert")
    if insert.ratio is not None:
        figure.details["ratio_to_sql_insert"] = round(insert.ratio, 4)
        figure.note = f"{insert.ratio:.3f} × sql-insert"
    return [figure]


BENCHMARK = Benchmark(
    NAME, "figure", per_db=True, run=measure, needs=("ed25519", "sql-insert"), beside=("ed25519",)
)
