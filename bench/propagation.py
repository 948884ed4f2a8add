"""Figure 5, withdrawal propagation: from a withdrawal's acknowledgement to its notice arriving
on each of 10 labs' feeds.

Untimed set-up: one member registers items and grants consent for them; :data:`LABS` labs
each conclude an agreement over gRPC (open a negotiation, accept, sign) that covers all of
them, then follow their notice feed (``Client.watch_withdrawals``) on their own connection.
A first withdrawal, not counted, makes sure every feed is live.

Timed, one withdrawal at a time: the member withdraws one item; the latency on each feed is
the time from the Withdraw call returning (the acknowledgement, with its receipt) to that
feed yielding the notice naming the item. A notice can arrive before the acknowledgement
(both follow the same commit); that counts as 0 ms, and how often it happened is reported.
The feeds do not verify notices while timed (their arrival is what is measured).

Target: p99 at most 100 ms over all feeds and withdrawals.

On PostgreSQL the same is measured again in production's shape, two replicas
(docker-compose.yml): a second server process on the same database and keys, the labs
following their feeds on it while the member withdraws on the first. The notices then reach
the feeds through the first replica's commit announcements (decision 43).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any

from bench import world
from bench.harness import (
    Benchmark,
    Context,
    DbKind,
    Figure,
    Target,
    coalition_server,
    frozen_heap,
    latency_details,
    replica_of,
)
from coalition import statements
from coalition.dsse import Envelope
from coalition.v1 import access_pb2

NAME = "propagation"
REPLICAS_KEY = "propagation-replicas"
LABS = 10
NOTICE_TIMEOUT = 30.0


class _Arrivals:
    """When each lab's feed yielded the notice for each item, and who waits for them."""

    def __init__(self) -> None:
        self.times: dict[str, dict[int, float]] = defaultdict(dict)
        self._events: dict[str, asyncio.Event] = defaultdict(asyncio.Event)

    def record(self, lab: int, item_id: str, at: float) -> None:
        self.times[item_id][lab] = at
        if len(self.times[item_id]) == LABS:
            self._events[item_id].set()

    async def all_arrived(self, item_id: str) -> None:
        await asyncio.wait_for(self._events[item_id].wait(), NOTICE_TIMEOUT)


async def _follow(lab: world.Party, number: int, arrivals: _Arrivals) -> None:
    async for message in lab.client.watch_withdrawals(verify=False):
        at = time.perf_counter()
        notice = statements.parse_payload(
            access_pb2.WithdrawalNotice, Envelope.from_proto(message.notice).payload
        )
        for item_id in notice.item_ids:
            arrivals.record(number, item_id, at)


async def measure(ctx: Context, db: DbKind | None) -> list[Figure]:
    """p99 of acknowledgement-to-notice latency across LABS feeds; on PostgreSQL, also with
    the feeds on a second replica (``REPLICAS_KEY``)."""
    assert db is not None
    figures: list[Figure] = []
    async with coalition_server(ctx, db, NAME) as server:
        lat, details = await _propagation(ctx, server.target, server.target)
        figures.append(_figure(NAME, "5 propagation to 10 labs: p99", db, lat, details))
        if db == "postgres":
            # Production shape (docker-compose.yml): a gateway spreads calls over two
            # replicas, so a withdrawal and the feeds waiting for it are often on different
            # processes. Here always: the member on the first, every lab on the second.
            async with replica_of(ctx, server, NAME) as replica:
                lat, details = await _propagation(ctx, server.target, replica.target)
            figures.append(
                _figure(REPLICAS_KEY, "5 propagation across 2 replicas: p99", db, lat, details)
            )
    return figures


async def _propagation(
    ctx: Context, member_target: str, labs_target: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The latencies (``latency_details``) of fresh withdrawals made by a member on
    ``member_target`` to LABS labs' feeds on ``labs_target``, and the run's details."""
    withdrawals = ctx.pick(5, 200)
    member = await world.member(member_target, "member", withdrawals + 1)
    labs = [await world.lab(labs_target, f"lab {i}") for i in range(LABS)]
    followers: list[asyncio.Task[None]] = []
    try:
        for lab in labs:
            await world.conclude_agreement(lab)
        arrivals = _Arrivals()
        followers = [asyncio.create_task(_follow(lab, n, arrivals)) for n, lab in enumerate(labs)]
        warm_up, *timed = member.item_ids
        await member.client.withdraw(item_ids=[warm_up])
        await arrivals.all_arrived(warm_up)
        ctx.log(f"{NAME}: {withdrawals} withdrawals, each noticed by {LABS} labs")
        latencies: list[float] = []
        early = 0
        with frozen_heap():
            for item_id in timed:
                response = await member.client.withdraw(item_ids=[item_id])
                acknowledged = time.perf_counter()
                if response.notified_labs != LABS:
                    raise RuntimeError(f"{response.notified_labs} labs notified, not {LABS}")
                await arrivals.all_arrived(item_id)
                for at in arrivals.times[item_id].values():
                    early += at < acknowledged
                    latencies.append(max(0.0, at - acknowledged))
    finally:
        for task in followers:
            task.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
        await world.close_all([member, *labs])
    details = {"labs": LABS, "withdrawals": withdrawals, "notices_before_ack": early}
    return latency_details(latencies), details


def _figure(
    key: str, title: str, db: DbKind, lat: dict[str, Any], details: dict[str, Any]
) -> Figure:
    return Figure(
        key,
        title,
        lat["p99_ms"],
        "ms",
        db=db,
        target=Target("<=", 100),
        note=f"p50 {lat['p50_ms']:.1f} ms, {lat['samples']} notices",
        details={**details, **lat},
    )


BENCHMARK = Benchmark(NAME, "figure", per_db=True, run=measure)
