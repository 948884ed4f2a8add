"""Figure 6, negotiation: offer rounds per second over gRPC with 32 negotiations at once.

Untimed set-up: a pool of members (``members`` contributors with :data:`ITEMS_PER_MEMBER`
items each, floors from 1 to 5 USD, consented for train-ai) and :data:`NEGOTIATIONS` labs.
Timed, for a fixed time: each lab keeps one negotiation going. A round is one signed lab
offer answered, in the same call, by the coalition's signed decision (it recomputes its
reservation from the pool, applies its concession strategy and logs both moves): the
opening request counts as the lab's first offer, and each counter-offer after it; the lab
offers well below the pool's floors, so the coalition counters until its round limit ends
the negotiation, and the lab then opens the next one.

Targets: at least 300 rounds/s, and at least 20% of the same run's bare gRPC echo rate
(measured with the same number of calls in flight).
"""

from __future__ import annotations

import asyncio

from bench import world
from bench.baselines.echo import CONCURRENCY
from bench.calls import CallWindow
from bench.cpu import CpuWindow
from bench.harness import (
    Benchmark,
    Context,
    DbKind,
    Figure,
    Target,
    coalition_server,
    run_for,
)
from coalition.client import NEGOTIATION
from coalition.v1 import negotiation_pb2

NAME = "negotiation"
NEGOTIATIONS = CONCURRENCY
ITEMS_PER_MEMBER = 10
LAB_PRICE = world.USD // 10
"""The lab's price: below every floor, so the coalition always counters."""


class _Lab:
    """One lab's current negotiation (round and id), reopened when it ends."""

    def __init__(self, party: world.Party) -> None:
        self.party = party
        self.negotiation_id = ""
        self.round = 0
        self.opened = 0

    async def round_trip(self) -> None:
        """One lab offer and the coalition's answer."""
        terms = world.licence_terms(LAB_PRICE)
        if not self.negotiation_id:
            negotiation = (await self.party.client.open_negotiation(terms)).negotiation
            self.opened += 1
        else:
            moved = await self.party.client.offer(self.negotiation_id, self.round + 1, terms)
            negotiation = moved.negotiation
        if negotiation.state == negotiation_pb2.NEGOTIATION_STATE_OFFERED:
            self.negotiation_id, self.round = negotiation.negotiation_id, negotiation.round
        elif negotiation.state == negotiation_pb2.NEGOTIATION_STATE_TERMINATED:
            self.negotiation_id, self.round = "", 0
        else:
            raise RuntimeError(f"unexpected negotiation state {negotiation.state}")


async def measure(ctx: Context, db: DbKind | None) -> list[Figure]:
    """Rounds per second with NEGOTIATIONS negotiations at once."""
    assert db is not None
    members = ctx.pick(10, 100)
    seconds = ctx.pick_seconds(2.0, 20.0)
    async with coalition_server(ctx, db, NAME, metrics=True) as server:
        ctx.log(
            f"{NAME}: pool of {members} members x {ITEMS_PER_MEMBER} items, {NEGOTIATIONS} labs"
        )
        pool = await asyncio.gather(
            *(
                world.member(
                    server.target,
                    f"member {i}",
                    ITEMS_PER_MEMBER,
                    floor_micros=(1 + i % 5) * world.USD,
                )
                for i in range(members)
            )
        )
        labs = [_Lab(await world.lab(server.target, f"lab {i}")) for i in range(NEGOTIATIONS)]
        try:

            async def call(worker: int) -> None:
                await labs[worker].round_trip()

            await run_for(min(1.0, seconds / 4), NEGOTIATIONS, call)  # warm-up
            service = NEGOTIATION.strip("/")
            window = CallWindow(
                server.metrics_url,
                [(service, "OpenNegotiation"), (service, "Move")],
            )
            ctx.log(f"{NAME}: timed window of {seconds:g} s")
            with window, CpuWindow(server.pid) as cpu:
                rounds, elapsed = await run_for(seconds, NEGOTIATIONS, call)
        finally:
            await world.close_all([*pool, *(lab.party for lab in labs)])
    figure = Figure(
        NAME,
        "6 negotiation: 32 at once",
        rounds / elapsed,
        "rounds/s",
        db=db,
        target=Target(">=", 300),
        ratio_target=Target(">=", 0.2),
        note=f"pool {members * ITEMS_PER_MEMBER} items",
        details={
            "rounds": rounds,
            "seconds": round(elapsed, 3),
            "negotiations_at_once": NEGOTIATIONS,
            "negotiations_opened": sum(lab.opened for lab in labs),
            "pool_members": members,
            "pool_items": members * ITEMS_PER_MEMBER,
            "cpu": cpu.details(),
            # Every lab has a round in flight all the time: the mean round trip is
            # (labs x time) / rounds (Little's law).
            "call_time": window.details(NEGOTIATIONS * elapsed / rounds, elapsed),
        },
    )
    ctx.ratio_to(figure, "echo")
    return [figure]


BENCHMARK = Benchmark(NAME, "figure", per_db=True, run=measure, needs=("echo",), beside=("echo",))
