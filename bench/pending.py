"""Figures the runner lists but does not measure yet: they appear in the table and the JSON
as "not implemented", with their targets, never with a made-up number."""

from __future__ import annotations

from bench.harness import Benchmark, Target, not_implemented

PROOFS = Benchmark(
    "proofs",
    "figure",
    per_db=False,
    run=None,
    placeholder=not_implemented(
        "proofs",
        "3 proofs at 1M: p50",
        "ms",
        Target("<=", 2),
        "not yet: also <= 5 ms over gRPC, >= 100x pymerkle",
    ),
)
AUDIT = Benchmark(
    "audit",
    "figure",
    per_db=False,
    run=None,
    placeholder=not_implemented(
        "audit",
        "4 audit replay at 1M",
        "entries/s",
        Target(">=", 5000),
        "not yet: `coalition audit verify`, both cores",
    ),
)
MEMORY = Benchmark(
    "memory",
    "figure",
    per_db=False,
    run=None,
    placeholder=not_implemented(
        "memory",
        "8 server peak RSS, proofs",
        "MiB",
        Target("<=", 300),
        "not yet",
    ),
)
