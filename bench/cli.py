"""The runner: choose benchmarks, run them, print the table, write the JSON.

    python -m bench [--scale smoke|full] [--db sqlite|postgres|both] [--only NAME,...]
                    [--json FILE] [--keep] [--profile DIR]

Baselines run first (those a selected figure is compared with are added even when not
named in ``--only``), then the figures in their issue order; database-dependent ones run once
per selected database, each on a fresh server process and a fresh database. A figure's
machine baselines (``Benchmark.beside``) are measured again right before and right after each
of its passes, and its ratio taken against their mean.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import appends, audit, fetch, ingest, memory, negotiation, proofs, propagation
from bench.baselines import echo, ed25519, pymerkle_proofs, signed_echo, sql_insert
from bench.harness import (
    DEFAULT_PG_URL,
    PG_URL_ENV,
    Benchmark,
    Context,
    DbKind,
    Figure,
    Scale,
    git_commit,
    machine_info,
    pg_reachable,
)
from coalition_server import event_loop as event_loops

BENCHMARKS: tuple[Benchmark, ...] = (
    echo.BENCHMARK,
    signed_echo.BENCHMARK,
    ed25519.BENCHMARK,
    sql_insert.BENCHMARK,
    pymerkle_proofs.BENCHMARK,
    ingest.BENCHMARK,
    appends.BENCHMARK,
    proofs.BENCHMARK,
    audit.BENCHMARK,
    propagation.BENCHMARK,
    negotiation.BENCHMARK,
    fetch.BENCHMARK,
    memory.BENCHMARK,
)
BY_NAME = {b.name: b for b in BENCHMARKS}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure Coalition's figures (issue #6) against their targets and "
        "against baselines measured in the same run.",
    )
    parser.add_argument(
        "--scale",
        choices=("smoke", "full"),
        default="full",
        help="full: the sizes the targets are about (minutes); smoke: tiny, to check the "
        "runner works (CI). Default: full.",
    )
    parser.add_argument(
        "--db",
        choices=("sqlite", "postgres", "both"),
        default="both",
        help=f"database(s) for the database-dependent figures. Default: both (PostgreSQL "
        f"is skipped, with a note, if unreachable). PostgreSQL: ${PG_URL_ENV}, default "
        f"{DEFAULT_PG_URL}; a scratch database is created on it per server and dropped.",
    )
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated names to run (their baselines are added): {', '.join(BY_NAME)}",
    )
    parser.add_argument("--json", type=Path, help="write the results to this JSON file")
    parser.add_argument(
        "--keep", action="store_true", help="keep the scratch directory (server logs, data)"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sample each server under test with py-spy (raw profiles in DIR; the "
        "sampling costs a little speed)",
    )
    parser.add_argument(
        "--event-loop",
        choices=event_loops.CHOICES,
        default=event_loops.AUTO,
        help="the event loop of every server under test (its --event-loop; the baselines "
        "keep asyncio's own). Default: auto (uvloop where installed).",
    )
    return parser


def context(args: argparse.Namespace, workdir: Path, pg_url: str) -> Context:
    """The run's context from its command line."""
    return Context(
        scale=args.scale,
        workdir=workdir,
        pg_url=pg_url,
        profile_dir=args.profile,
        server_args=("--event-loop", args.event_loop),
    )


def _selected(only: str) -> list[Benchmark]:
    if not only:
        return list(BENCHMARKS)
    names = {name.strip() for name in only.split(",") if name.strip()}
    unknown = names - set(BY_NAME)
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    for name in list(names):
        names.update(BY_NAME[name].needs)
    return [b for b in BENCHMARKS if b.name in names]


async def _dbs(choice: str, pg_url: str, notes: list[str]) -> list[DbKind]:
    if choice == "sqlite":
        return ["sqlite"]
    reason = await pg_reachable(pg_url)
    if reason is None:
        return ["postgres"] if choice == "postgres" else ["sqlite", "postgres"]
    if choice == "postgres":
        raise SystemExit(f"PostgreSQL at {pg_url} is unreachable: {reason}")
    notes.append(f"PostgreSQL skipped: {pg_url} unreachable ({reason})")
    return ["sqlite"]


async def _run_all(
    ctx: Context, benchmarks: Sequence[Benchmark], dbs: list[DbKind]
) -> list[Figure]:
    # Baselines first: figures take their ratios from them.
    ordered = [b for b in benchmarks if b.kind == "baseline"] + [
        b for b in benchmarks if b.kind == "figure"
    ]
    figures: list[Figure] = []
    async with ctx.resources:
        await _run_ordered(ctx, ordered, dbs, figures)
    return figures


async def _run_ordered(
    ctx: Context, ordered: Sequence[Benchmark], dbs: list[DbKind], figures: list[Figure]
) -> None:
    # Every baseline a figure is measured beside is in ``ordered``: it is in the figure's needs.
    baselines = {b.name: b for b in ordered if b.kind == "baseline"}
    for benchmark in ordered:
        for db in dbs if benchmark.per_db else [None]:
            before = await _baselines_beside(ctx, benchmark, baselines)
            results = await _run_one(ctx, benchmark, db)
            if before:
                after = await _baselines_beside(ctx, benchmark, baselines)
                for figure in results:
                    _take_ratio_beside(figure, before, after)
            for figure in results:
                if benchmark.kind == "baseline" and figure.value is not None:
                    ctx.baselines[(figure.key, figure.db)] = figure
            figures.extend(results)


async def _run_one(ctx: Context, benchmark: Benchmark, db: DbKind | None) -> list[Figure]:
    """The benchmark's figures on ``db``, or one row saying why it failed."""
    label = benchmark.name + (f" ({db})" if db else "")
    ctx.log(f"{label}: running")
    started = time.perf_counter()
    try:
        results = await benchmark.run(ctx, db)
    except Exception as exc:
        traceback.print_exc()
        results = [
            Figure(
                benchmark.name,
                benchmark.name,
                None,
                "",
                db=db,
                status="failed",
                note=f"{type(exc).__name__}: {exc}",
            )
        ]
    ctx.log(f"{label}: done in {time.perf_counter() - started:.1f}s")
    return results


async def _baselines_beside(
    ctx: Context, figure: Benchmark, baselines: Mapping[str, Benchmark]
) -> dict[str, Figure]:
    """The baselines ``figure`` is measured beside, measured now, by figure key (one that
    fails to run is left out: the figure's ratio then stays against the run's first
    measurement). They are machine baselines, measured once whatever the databases."""
    measured: dict[str, Figure] = {}
    for name in figure.beside:
        if baselines[name].per_db:
            raise ValueError(f"{figure.name} is measured beside {name}, which is per database")
        for result in await _run_one(ctx, baselines[name], None):
            if result.value:
                measured[result.key] = result
    return measured


def _take_ratio_beside(figure: Figure, before: dict[str, Figure], after: dict[str, Figure]) -> None:
    """Take ``figure``'s ratio against the mean of its baseline measured right before and
    right after it, keeping the ratio to the run's first measurement in its details, and the
    baseline's CPU readings (``bench.cpu``) where it took them."""
    name = figure.baseline
    if name is None or name not in before or name not in after or figure.value is None:
        return
    first, last = before[name], after[name]
    if not first.value or not last.value:
        return
    mean = (first.value + last.value) / 2
    beside: dict[str, Any] = {"name": name, "before": first.value, "after": last.value}
    if first.details.get("cpu") and last.details.get("cpu"):
        beside["cpu_before"] = first.details["cpu"]
        beside["cpu_after"] = last.details["cpu"]
    figure.details = {
        **figure.details,
        "baseline_beside": beside,
        "ratio_to_first_baseline": figure.ratio,
    }
    figure.ratio = figure.value / mean
    figure.note = f"{figure.note}; " if figure.note else ""
    figure.note += f"{name} beside it {_number(mean)}"


def _number(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _table(figures: Sequence[Figure], scale: Scale) -> Table:
    table = Table(title=f"Coalition benchmarks ({scale} scale)")
    for column in ("figure", "db", "value", "target", "met", "vs baseline", "note"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for figure in figures:
        if figure.status == "failed":
            met = "[red]FAILED[/red]"
        elif figure.met is None:
            met = "baseline" if figure.target is None and figure.baseline is None else "—"
        else:
            met = "[green]yes[/green]" if figure.met else "[red]no[/red]"
        target = str(figure.target) if figure.target else ""
        if figure.ratio_target:
            target += f"{'; ' if target else ''}ratio {figure.ratio_target}"
        ratio = ""
        if figure.baseline:
            ratio = f"{figure.ratio:.3f} × {figure.baseline}" if figure.ratio else "no baseline"
        value = _number(figure.value) + (f" {figure.unit}" if figure.value is not None else "")
        table.add_row(figure.title, figure.db or "", value, target, met, ratio, figure.note)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """Run; exit 0 when every selected benchmark produced its numbers (met or not), 1 when
    one failed to run. Targets missed do not change the exit code."""
    args = _parser().parse_args(argv)
    benchmarks = _selected(args.only)
    pg_url = os.environ.get(PG_URL_ENV, DEFAULT_PG_URL)
    notes: list[str] = []
    dbs = asyncio.run(_dbs(args.db, pg_url, notes))
    workdir = Path(tempfile.mkdtemp(prefix="coalition-bench-"))
    ctx = context(args, workdir, pg_url)
    machine = machine_info()
    started = datetime.now(UTC)
    clock = time.perf_counter()
    try:
        figures = asyncio.run(_run_all(ctx, benchmarks, dbs))
    finally:
        if args.keep:
            ctx.log(f"scratch directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    console = Console()
    if not console.is_terminal:
        # Piped or captured: do not squeeze the table into the 80-column default.
        console = Console(width=180)
    console.print(_table(figures, args.scale))
    for note in notes:
        console.print(f"note: {note}")
    if args.json:
        report: dict[str, Any] = {
            "scale": args.scale,
            "dbs": dbs,
            "started": started.isoformat(),
            "seconds": round(time.perf_counter() - clock, 1),
            "machine": machine,
            "server_event_loop": event_loops.resolve(args.event_loop),
            "git": git_commit(),
            "notes": notes,
            "figures": [f.to_json(args.scale) for f in figures],
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        ctx.log(f"results written to {args.json}")
    return 1 if any(f.status == "failed" for f in figures) else 0


if __name__ == "__main__":
    sys.exit(main())
