"""``python -m bench.report results.json``: a results JSON as the Markdown table of
docs/benchmarks.md (so the page is filled from a run, not by hand)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.cpu import machine_ms_each, rate_with_every_core_busy


def _number(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _target(figure: dict[str, Any]) -> str:
    parts = []
    if figure["target"]:
        parts.append(f"{figure['target']['op']} {figure['target']['bound']:g}")
    if figure["ratio_target"]:
        target = figure["ratio_target"]
        parts.append(f"ratio {target['op']} {target['bound']:g}")
    return "; ".join(parts).replace(">=", "≥").replace("<=", "≤")


def _met(figure: dict[str, Any]) -> str:
    if figure["status"] != "measured":
        return str(figure["status"])
    if figure["met"] is None:
        return "baseline" if not figure["baseline"] else ""
    return "**yes**" if figure["met"] else "no"


def markdown(report: dict[str, Any]) -> str:
    """The table: figure, db, value, target, met, ratio to baseline, note."""
    lines = [
        "| figure | db | value | target | met | vs baseline | note |",
        "|---|---|--:|---|---|---|---|",
    ]
    for figure in report["figures"]:
        value = _number(figure["value"])
        if figure["value"] is not None:
            value += f" {figure['unit']}"
        ratio = ""
        if figure["baseline"] and figure["ratio"] is not None:
            ratio = f"{figure['ratio']:.3f} × {figure['baseline']}"
        row = [
            figure["title"],
            figure["db"] or "",
            value,
            _target(figure),
            _met(figure),
            ratio,
            figure["note"].replace("|", "\\|"),
        ]
        lines.append("| " + " | ".join(row) + " |")
    lines.extend(_cpu_table(report["figures"]))
    lines.extend(_calls_table(report["figures"]))
    git = report["git"]
    commit = (git["commit"] or "unknown")[:12] + (" (uncommitted changes)" if git["dirty"] else "")
    machine = report["machine"]
    lines.append("")
    lines.append(
        f"Scale {report['scale']}, commit {commit}, {machine['cpus']} × {machine['cpu_model']}, "
        f"load average at start {machine.get('load_average')}, {report['seconds']:.0f} s."
    )
    return "\n".join(lines)


def _windows(figures: list[dict[str, Any]], reading: str) -> list[dict[str, Any]]:
    """The figures that recorded ``reading`` (a dict in their details), one per timed window:
    figures of one window, as appends' rate and p99, carry the same reading, and only the
    first of them is kept."""
    rows, seen = [], set()
    for figure in figures:
        values = figure["details"].get(reading)
        if not isinstance(values, dict) or not values:
            continue
        # The reading may nest (call_time's SQLite hand-overs): compared as canonical JSON.
        window = (figure["db"], json.dumps(values, sort_keys=True))
        if window not in seen:
            seen.add(window)
            rows.append(figure)
    return rows


def _cpu_table(figures: list[dict[str, Any]]) -> list[str]:
    """Where the CPU went in the timed windows that recorded it (``bench.cpu``), one row per
    window (figures of one window, as appends' rate and p99, share the first's row);
    nothing when none did. A rate's row also gives the machine's CPU per unit of it, and
    that as a number of its baseline's calls where the baseline's CPU was read too, and the
    rate that work per unit would reach with every core busy (its bound on this machine)."""
    rows = _windows(figures, "cpu")
    if not rows:
        return []
    lines = [
        "",
        f"CPU in the timed windows, in cores of {rows[0]['details']['cpu']['cores']}, and the "
        "whole machine's CPU for each call, round, append or token of a rate:",
        "",
        "| figure | db | server's event loop | server process | bench (clients) "
        "| rest of machine | idle | machine's CPU each, ms | in baseline calls "
        "| rate with every core busy |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for figure in rows:
        cpu = figure["details"]["cpu"]
        each = machine_ms_each(cpu, _rate(figure))
        baseline_each = _baseline_ms_each(figure, figures)
        in_calls = ""
        if each is not None and baseline_each:
            in_calls = f"{each / baseline_each:.2f} × {figure['baseline']}"
        ceiling = rate_with_every_core_busy(cpu, _rate(figure))
        at_full_use = "" if ceiling is None else f"{_number(ceiling)} {figure['unit']}"
        lines.append(
            f"| {figure['title']} | {figure['db'] or ''} | {cpu['server_loop_thread']:.2f} "
            f"| {cpu['server_process']:.2f} | {cpu['bench_process']:.2f} "
            f"| {cpu['rest_of_machine']:.2f} | {cpu['idle']:.2f} "
            f"| {'' if each is None else f'{each:.3f}'} | {in_calls} | {at_full_use} |"
        )
    return lines


def _rate(figure: dict[str, Any]) -> float | None:
    """The figure's value if it is a rate (a unit per second), else None."""
    unit = str(figure.get("unit", ""))
    return figure["value"] if unit.endswith("/s") and figure["value"] else None


def _baseline_ms_each(figure: dict[str, Any], figures: list[dict[str, Any]]) -> float | None:
    """The machine's CPU per call of ``figure``'s baseline: the mean of its measurements
    right before and after the figure where they read the CPU, else the run's first."""
    beside = figure["details"].get("baseline_beside") or {}
    if beside.get("cpu_before") and beside.get("cpu_after"):
        before = machine_ms_each(beside["cpu_before"], beside["before"])
        after = machine_ms_each(beside["cpu_after"], beside["after"])
        if before is not None and after is not None:
            return (before + after) / 2
    for other in figures:
        if other["key"] == figure.get("baseline") and other["details"].get("cpu"):
            return machine_ms_each(other["details"]["cpu"], _rate(other))
    return None


def _calls_table(figures: list[dict[str, Any]]) -> list[str]:
    """Where a call's time went in the timed windows that recorded it (``bench.calls``),
    one row per window; nothing when none did."""
    rows = _windows(figures, "call_time")
    if not rows:
        return []
    lines = [
        "",
        "A call's time in the timed windows, in ms (means; the server's from its metrics):",
        "",
        "| figure | db | round trip (clients) | in the handler | of which waiting for the "
        "sequencer | outside the handler | batches/s | statements a batch |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]

    def number(value: float | None, digits: int = 2) -> str:
        return "" if value is None else f"{value:,.{digits}f}"

    for figure in rows:
        calls = figure["details"]["call_time"]
        lines.append(
            f"| {figure['title']} | {figure['db'] or ''} | {number(calls['round_trip_ms'])} "
            f"| {number(calls['handler_ms'])} | {number(calls['sequencer_ms'])} "
            f"| {number(calls['outside_handler_ms'])} | {number(calls['batches_per_s'], 0)} "
            f"| {number(calls['statements_per_batch'], 1)} |"
        )
    return lines + _hand_overs_table(rows)


def _hand_overs_table(rows: list[dict[str, Any]]) -> list[str]:
    """The SQLite hand-overs of the windows that recorded any, one row per pool."""
    found = [
        (figure, pool, times)
        for figure in rows
        for pool, times in sorted(
            figure["details"]["call_time"].get("sqlite_hand_overs", {}).items()
        )
    ]
    if not found:
        return []
    lines = [
        "",
        "SQLite hand-overs to the driver's thread in the same windows (the writer's are the "
        "sequencer's), each one's mean time in ms:",
        "",
        "| figure | db | pool | per second | per batch | waiting for the thread | on the thread "
        "| waiting for the event loop |",
        "|---|---|---|--:|--:|--:|--:|--:|",
    ]
    for figure, pool, times in found:
        per_batch = times["per_batch"]
        lines.append(
            f"| {figure['title']} | {figure['db'] or ''} | {pool} | {times['per_s']:,.0f} "
            f"| {'' if per_batch is None else f'{per_batch:,.1f}'} "
            f"| {times['to_thread_ms']:,.2f} | {times['on_thread_ms']:,.2f} "
            f"| {times['to_loop_ms']:,.2f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    """Print the table of the JSON file named on the command line."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bench.report RESULTS.json", file=sys.stderr)
        return 2
    print(markdown(json.loads(Path(args[0]).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
