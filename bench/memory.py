"""Figure 8, memory: the server's peak RSS while serving proofs on the 1,000,000-entry ledger.

A fresh ``coalition-server`` process is started on the run's big ledger (so nothing measured
before, such as the audit's paging of every entry, counts towards its peak). It warms its
tree cache at start, as every server does; then :data:`CLIENTS` concurrent clients ask for
random inclusion and consistency proofs for a fixed time. The figure is the process's
``VmHWM`` (peak resident set) from /proc at the end; the RSS right after start and the proofs
served are in the details.

Target: at most 300 MiB.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

from bench.big_ledger import shared_big_ledger
from bench.harness import OWN_CONNECTION, Benchmark, Context, DbKind, Figure, Target, start_server
from coalition.client import Client

NAME = "memory"
CLIENTS = 16


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


async def measure(ctx: Context, db: DbKind | None) -> list[Figure]:
    """Peak RSS of a server answering proofs on the big ledger."""
    assert db is not None
    big = await shared_big_ledger(ctx, db)
    seconds = ctx.pick_seconds(3.0, 30.0)
    server = await asyncio.to_thread(
        start_server, big.server.db_url, big.server.data_dir, (), "memory-server.log"
    )
    try:
        started_kib = _status_kib(server.pid, "VmRSS")
        served = 0
        rng = random.Random(8)
        deadline = time.perf_counter() + seconds

        async def client() -> None:
            nonlocal served
            async with Client(server.target, channel_options=OWN_CONNECTION) as c:
                size = (await c.checkpoint()).tree_size
                while time.perf_counter() < deadline:
                    if rng.random() < 0.5:
                        await c.inclusion_proof(rng.randrange(size))
                    else:
                        await c.consistency_proof(rng.randint(1, size - 1))
                    served += 1

        await asyncio.gather(*(client() for _ in range(CLIENTS)))
        peak_kib = _status_kib(server.pid, "VmHWM")
        end_kib = _status_kib(server.pid, "VmRSS")
    finally:
        await asyncio.to_thread(server.stop)
    return [
        Figure(
            NAME,
            "8 server peak RSS, serving proofs",
            peak_kib / 1024,
            "MiB",
            db=db,
            target=Target("<=", 300),
            details={
                "tree_size": big.size,
                "rss_after_start_mib": round(started_kib / 1024, 1),
                "rss_end_mib": round(end_kib / 1024, 1),
                "proofs_served": served,
                "clients": CLIENTS,
                "seconds": seconds,
            },
            note=f"{big.size:,} entries; {served:,} proofs by {CLIENTS} clients in {seconds:g} s",
        )
    ]


BENCHMARK = Benchmark(NAME, "figure", per_db=True, run=measure)
