"""The benchmark runner works: `python -m bench --scale smoke` runs every figure
and baseline and writes them all to JSON. Nothing here asserts a speed (docs/benchmarks.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bench.cpu import TICK_SECONDS

from .conftest import PG_URL, PROJECT_ROOT, REQUIRE_PG, _pg_unreachable_reason

MEASURED = {
    "echo": None,
    "signed-echo": None,
    "ed25519": None,
    "pymerkle-inclusion": None,
    "pymerkle-consistency": None,
    "sql-insert": "db",
    "ingest": "db",
    "appends": "db",
    "appends-p99": "db",
    "propagation": "db",
    "propagation-replicas": "postgres",
    "negotiation": "db",
    "fetch": "db",
    "proofs-inclusion": "db",
    "proofs-consistency": "db",
    "proofs-inclusion-grpc": "db",
    "proofs-consistency-grpc": "db",
    "audit": "db",
    "memory": "db",
}
"""Every figure the runner measures, and whether it is per database (or on PostgreSQL only)."""


@pytest.mark.slow
@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_smoke_run_reports_every_figure(db: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "COALITION_BENCH_PG_URL"}
    if db == "postgres":
        reason = _pg_unreachable_reason()
        if reason:
            if REQUIRE_PG:
                pytest.fail(f"{reason} and COALITION_REQUIRE_PG=1")
            pytest.skip(reason)
        env["COALITION_BENCH_PG_URL"] = PG_URL  # scratch databases are created on it
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--scale", "smoke", "--db", db, "--json", str(out)],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["scale"] == "smoke"
    assert report["dbs"] == [db]
    assert report["machine"]["cpus"]
    assert "commit" in report["git"]
    figures = {(f["key"], f["db"]): f for f in report["figures"]}
    for key, per_db in MEASURED.items():
        if per_db == "postgres" and db != "postgres":
            assert (key, db) not in figures
            continue
        figure = figures[(key, db if per_db else None)]
        assert figure["status"] == "measured", figure
        assert figure["value"] is not None, figure
        # A latency may truly be 0 ms (a notice can beat the acknowledgement); rates cannot.
        assert figure["value"] > 0 or (figure["unit"] == "ms" and figure["value"] == 0), figure
        assert figure["scale"] == "smoke"
    assert not [f for f in report["figures"] if f["status"] != "measured"]
    ingest = figures[("ingest", db)]
    assert ingest["baseline"] == "ed25519"
    assert ingest["ratio"] > 0
    assert figures[("negotiation", db)]["ratio"] > 0
    assert figures[("appends", db)]["baseline"] == "signed-echo"
    assert figures[("appends", db)]["ratio"] > 0
    assert figures[("proofs-inclusion", db)]["baseline"] == "pymerkle-inclusion"
    assert figures[("proofs-inclusion", db)]["details"]["tree_size"] > 2_000  # the big ledger
    assert figures[("audit", db)]["details"]["entries"] > 2_000
    # Relative figures are compared with their baseline measured right before and after them.
    for key, baseline in (
        ("ingest", "ed25519"),
        ("appends", "signed-echo"),
        ("audit", "ed25519"),
        ("proofs-consistency", "pymerkle-consistency"),
        ("negotiation", "echo"),
    ):
        figure = figures[(key, db)]
        beside = figure["details"]["baseline_beside"]
        assert beside["name"] == baseline, figure
        mean = (beside["before"] + beside["after"]) / 2
        assert figure["ratio"] == pytest.approx(figure["value"] / mean), figure
    for key in ("appends", "negotiation"):  # bench.calls: the server's metrics
        call_time = figures[(key, db)]["details"]["call_time"]
        assert call_time["calls"] > 0, call_time
        assert 0 < call_time["handler_ms"] < call_time["round_trip_ms"], call_time
        assert 0 < call_time["sequencer_ms"] <= call_time["handler_ms"], call_time
        assert call_time["statements_per_batch"] >= 1, call_time
    if Path("/proc/self/task").is_dir():  # bench.cpu reads Linux's /proc
        for key in ("ingest", "appends", "negotiation"):
            details = figures[(key, db)]["details"]
            cpu = details["cpu"]
            assert cpu["server_loop_thread"] > 0, cpu
            # Two ticks over the window: a thread's and its process's may differ by one at
            # each end (a smoke window lasts about a second, where 0.01 is under one tick).
            slack = 2 * TICK_SECONDS / details["seconds"]
            assert cpu["server_process"] >= cpu["server_loop_thread"] - slack, cpu
        # The echo baselines read the machine's CPU too, beside the figures compared with them.
        for key in ("echo", "signed-echo"):
            assert figures[(key, None)]["details"]["cpu"]["server_loop_thread"] > 0
        for key in ("appends", "negotiation"):
            beside = figures[(key, db)]["details"]["baseline_beside"]
            assert beside["cpu_before"]["cores"] == beside["cpu_after"]["cores"] >= 1, beside
