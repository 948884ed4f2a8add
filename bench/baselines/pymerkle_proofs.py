"""Baseline: pymerkle's SqliteTree inclusion and consistency proofs at the proofs figure's size.

pymerkle (PyPI) is a general-purpose Merkle-tree library with an SQLite backend: it stores
the leaves and computes interior hashes when a proof asks for them (with its default
subroot cache). Figure 3 is to be at least 100 times faster at the same size; this measures
the peer: the tree is built with ``append_entries`` (not timed), then proofs of random leaves
and random prior sizes against the full tree are timed one at a time (p50 in ms).
"""

from __future__ import annotations

import os
import random
import time

from pymerkle import SqliteTree

from bench.harness import Benchmark, Context, DbKind, Figure, Stopwatch, frozen_heap, percentile

NAME = "pymerkle"
ENTRY_BYTES = 300
"""About a ledger leaf (a signed one-item consent token)."""


def _sample(call: object, budget: float, most: int) -> list[float]:
    """Time ``call()`` up to ``most`` times or until ``budget`` seconds are spent."""
    assert callable(call)
    times: list[float] = []
    with frozen_heap():
        spent_until = time.perf_counter() + budget
        while len(times) < most and (len(times) < 3 or time.perf_counter() < spent_until):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
    return times


async def measure(ctx: Context, _db: DbKind | None) -> list[Figure]:
    """Build a tree of ``size`` entries, then time inclusion and consistency proofs."""
    size = ctx.pick(5_000, 1_000_000)
    budget = ctx.pick_seconds(2.0, 30.0)
    most = ctx.pick(50, 500)
    rng = random.Random(6)
    tree = SqliteTree(str(ctx.fresh_dir("pymerkle") / "tree.db"))
    try:
        with Stopwatch() as build:
            chunk = 100_000
            for start in range(0, size, chunk):
                tree.append_entries(
                    [os.urandom(ENTRY_BYTES) for _ in range(min(chunk, size - start))]
                )
        inclusion = _sample(lambda: tree.prove_inclusion(rng.randint(1, size), size), budget, most)
        consistency = _sample(
            lambda: tree.prove_consistency(rng.randint(1, size - 1), size), budget, most
        )
    finally:
        tree.close()
    common = {"tree_size": size, "build_seconds": round(build.seconds, 2)}
    note = f"{size:,} entries"
    return [
        Figure(
            f"{NAME}-inclusion",
            "pymerkle inclusion proof p50",
            percentile(inclusion, 50) * 1000,
            "ms",
            details={**common, "proofs": len(inclusion)},
            note=note,
        ),
        Figure(
            f"{NAME}-consistency",
            "pymerkle consistency proof p50",
            percentile(consistency, 50) * 1000,
            "ms",
            details={**common, "proofs": len(consistency)},
            note=note,
        ),
    ]


BENCHMARK = Benchmark(NAME, "baseline", per_db=False, run=measure)
