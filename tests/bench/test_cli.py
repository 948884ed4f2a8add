"""The benchmark runner's command line: what it hands every server under test."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench import cli
from bench.harness import Benchmark, Context, DbKind, Figure


@pytest.mark.parametrize(("argv", "loop"), [([], "auto"), (["--event-loop", "asyncio"], "asyncio")])
def test_every_server_under_test_gets_the_event_loop_asked_for(
    argv: list[str], loop: str, tmp_path: Path
) -> None:
    args = cli._parser().parse_args(argv)
    ctx = cli.context(args, tmp_path, "postgresql://unused")
    assert ctx.server_args == ("--event-loop", loop)


def test_an_unknown_event_loop_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exit_:
        cli._parser().parse_args(["--event-loop", "trio"])
    assert exit_.value.code == 2


def _speeds(*values: float) -> Benchmark:
    """A baseline that measures ``values`` one after another."""
    left = list(values)

    async def run(_ctx: Context, _db: DbKind | None) -> list[Figure]:
        return [Figure("speed", "machine speed", left.pop(0), "calls/s")]

    return Benchmark("speed", "baseline", per_db=False, run=run)


async def _figure(ctx: Context, db: DbKind | None) -> list[Figure]:
    rate = Figure("work", "work done", 200.0, "calls/s", db=db, note="32 at once")
    ctx.ratio_to(rate, "speed")
    return [rate]


FIGURE = Benchmark("work", "figure", per_db=True, run=_figure, needs=("speed",), beside=("speed",))


async def test_a_figure_is_compared_with_its_baseline_measured_right_beside_it(
    tmp_path: Path,
) -> None:
    ctx = cli.context(cli._parser().parse_args([]), tmp_path, "postgresql://unused")
    figures: list[Figure] = []
    # The run's first measurement, then before and after the figure on each database.
    await cli._run_ordered(
        ctx, [_speeds(1000, 600, 1000, 400, 600), FIGURE], ["sqlite", "postgres"], figures
    )
    first, sqlite, postgres = figures  # the measurements beside the figure are not rows
    assert first.value == 1000
    assert sqlite.ratio == pytest.approx(200 / 800)
    assert sqlite.details["baseline_beside"] == {"name": "speed", "before": 600, "after": 1000}
    assert sqlite.details["ratio_to_first_baseline"] == pytest.approx(200 / 1000)
    assert postgres.ratio == pytest.approx(200 / 500)
    assert postgres.note == "32 at once; speed beside it 500"


async def test_a_baseline_that_fails_beside_the_figure_leaves_its_ratio_to_the_first(
    tmp_path: Path,
) -> None:
    ctx = cli.context(cli._parser().parse_args([]), tmp_path, "postgresql://unused")
    calls = 0

    async def flaky(_ctx: Context, _db: DbKind | None) -> list[Figure]:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise RuntimeError("the echo server did not start")
        return [Figure("speed", "machine speed", 1000.0, "calls/s")]

    figures: list[Figure] = []
    speed = Benchmark("speed", "baseline", per_db=False, run=flaky)
    await cli._run_ordered(ctx, [speed, FIGURE], ["sqlite"], figures)
    rate = figures[-1]
    assert rate.ratio == pytest.approx(0.2)
    assert "baseline_beside" not in rate.details
    assert rate.note == "32 at once"


async def test_the_baselines_cpu_readings_beside_the_figure_go_into_its_details(
    tmp_path: Path,
) -> None:
    ctx = cli.context(cli._parser().parse_args([]), tmp_path, "postgresql://unused")
    reading = {"cores": 2, "server_loop_thread": 0.9, "idle": 0.2}

    async def speed(_ctx: Context, _db: DbKind | None) -> list[Figure]:
        return [Figure("speed", "machine speed", 1000.0, "calls/s", details={"cpu": reading})]

    figures: list[Figure] = []
    await cli._run_ordered(
        ctx, [Benchmark("speed", "baseline", per_db=False, run=speed), FIGURE], ["sqlite"], figures
    )
    beside = figures[-1].details["baseline_beside"]
    assert beside["cpu_before"] == reading
    assert beside["cpu_after"] == reading


def test_a_figure_is_measured_beside_only_machine_baselines_it_needs() -> None:
    for figure in cli.BENCHMARKS:
        for name in figure.beside:
            assert cli.BY_NAME[name].kind == "baseline"
            assert not cli.BY_NAME[name].per_db
    with pytest.raises(ValueError, match="needs"):
        Benchmark("work", "figure", per_db=True, run=_figure, beside=("speed",))
