"""Figure 4, audit replay: ``coalition audit verify`` on the 1,000,000-entry ledger.

End to end, as an auditor runs it: the CLI, in its own process, pages every entry out of the
server over gRPC, replays the statement rules in order, recomputes the root, checks it
against the signed checkpoint, and verifies every signature in a process pool on every core
(``--jobs 0``, the default). Timed from starting the command to its exit; the CPU seconds
of the command and its workers are reported (``cpu_seconds / seconds`` above 1 means more
than one core was busy).

Target: at least 5,000 entries per second.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

from bench.big_ledger import shared_big_ledger
from bench.harness import Benchmark, Context, DbKind, Figure, Stopwatch, Target
from coalition.client import Client

NAME = "audit"
COALITION = [str(Path(sys.executable).parent / "coalition")]
"""The auditor's command, from the environment the bench runs in."""


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _verify(target: str, log_key: str, state: Path) -> tuple[dict[str, object], float, float]:
    """Run the auditor's command; (its JSON report, wall seconds, CPU seconds)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COALITION_")}
    cpu_before = _children_cpu()
    with Stopwatch() as watch:
        done = subprocess.run(
            [
                *COALITION,
                "--server",
                target,
                "audit",
                "verify",
                "--json",
                "--state",
                str(state),
                "--log-key",
                log_key,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=3600,
        )
    if done.returncode != 0:
        raise RuntimeError(f"audit verify failed ({done.returncode}): {done.stderr or done.stdout}")
    report: dict[str, object] = json.loads(done.stdout)
    return report, watch.seconds, _children_cpu() - cpu_before


async def measure(ctx: Context, db: DbKind | None) -> list[Figure]:
    """Entries replayed and verified per second, end to end."""
    assert db is not None
    big = await shared_big_ledger(ctx, db)
    async with Client(big.server.target) as client:
        log_key = (await client.log_info()).verifier_key
    state = ctx.fresh_dir("audit-state") / "state.json"
    report, seconds, cpu = await asyncio.to_thread(_verify, big.server.target, log_key, state)
    size = int(str(report.get("tree_size", big.size)))
    figure = Figure(
        NAME,
        "4 audit replay (coalition audit verify)",
        size / seconds,
        "entries/s",
        db=db,
        target=Target(">=", 5000),
        details={
            "entries": size,
            "seconds": round(seconds, 2),
            "cpu_seconds": round(cpu, 2),
            "cores_busy": round(cpu / seconds, 2),
        },
        note=f"{size:,} entries in {seconds:.1f} s; {cpu / seconds:.2f} cores busy",
    )
    ctx.ratio_to(figure, "ed25519")
    return [figure]


BENCHMARK = Benchmark(
    NAME, "figure", per_db=True, run=measure, needs=("ed25519",), beside=("ed25519",)
)
