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
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

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
)
from coalition import statements
from coalition.dsse import Envelope
from coalition.v1 import access_pb2

NAME = "propagation"
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
    """p99 of acknowledgement-to-notice latency across LABS feeds."""
    assert db is not None
    withdrawals = ctx.pick(5, 200)
    async with coalition_server(ctx, db, NAME) as server:
        member = await world.member(server.target, "member", withdrawals + 1)
        labs = [await world.lab(server.target, f"lab {i}") for i in range(LABS)]
        followers: list[asyncio.Task[None]] = []
        try:
            for lab in labs:
                await world.conclude_agreement(lab)
            arrivals = _Arrivals()
            followers = [
                asyncio.create_task(_follow(lab, n, arrivals)) for n, lab in enumerate(labs)
            ]
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
    lat = latency_details(latencies)
    return [
        Figure(
            NAME,
            "5 propagation to 10 labs: p99",
            lat["p99_ms"],
            "ms",
            db=db,
            target=Target("<=", 100),
            note=f"p50 {lat['p50_ms']:.1f} ms, {lat['samples']} notices",
            details={
                "labs": LABS,
                "withdrawals": withdrawals,
                "notices_before_ack": early,
                **lat,
            },
        )
    ]


BENCHMARK = Benchmark(NAME, "figure", per_db=True, run=measure)
