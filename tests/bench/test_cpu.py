"""The CPU readings of a timed window (``bench.cpu``) and their table in the report.

No speed is asserted: only that the readings see work where there is some, add up, and are
absent where they cannot be taken."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from bench import cpu
from bench.cpu import CpuWindow
from bench.report import markdown

from tests.bench.reports import figure, report

needs_proc = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads Linux's /proc")

_SPIN = "import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end: pass\n"
"""A child that keeps its main thread busy for 0.6 s of CPU, then exits."""


def test_stat_fields_are_counted_from_the_end_of_the_command_name(tmp_path: Path) -> None:
    # proc(5): pid (comm) state ppid ... utime (14) stime (15); comm may hold ") (" and spaces.
    fields = ["S", *["0"] * 10, "250", "50", *["0"] * 30]
    stat = tmp_path / "stat"
    stat.write_text("4242 (odd ) (name) " + " ".join(fields) + "\n")
    assert cpu._stat_seconds(stat) == pytest.approx(300 * cpu.TICK_SECONDS)


@needs_proc
def test_a_server_that_exits_within_the_window_gives_no_readings() -> None:
    child = subprocess.Popen([sys.executable, "-c", _SPIN])
    try:
        with CpuWindow(child.pid) as window:
            child.wait(timeout=30)  # exited and reaped: its /proc entry is gone at the end
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert window.details() == {}


@needs_proc
def test_the_event_loop_thread_is_part_of_the_server_process() -> None:
    # A parent that spins in its main thread and stays alive until told to exit.
    script = _SPIN + "import sys\nsys.stdin.read()\n"
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE)
    try:
        started = time.monotonic()
        with CpuWindow(child.pid) as window:
            _wait_for_cpu(child.pid, 0.5)
        elapsed = time.monotonic() - started
        details = window.details()
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)
    assert details["cores"] >= 1
    assert details["server_loop_thread"] > 0
    # Two ticks over the window: a thread's and its process's may differ by one at each end.
    slack = 2 * cpu.TICK_SECONDS / elapsed
    assert details["server_loop_thread"] <= details["server_process"] + slack
    total = (
        details["server_process"]
        + details["bench_process"]
        + details["rest_of_machine"]
        + details["idle"]
    )
    assert total == pytest.approx(details["cores"], abs=0.1)


def _wait_for_cpu(pid: int, seconds: float) -> None:
    """Block until process ``pid`` has used ``seconds`` of CPU (bounded: 30 s)."""
    deadline = time.monotonic() + 30
    stat = Path(f"/proc/{pid}/stat")
    while cpu._stat_seconds(stat) < seconds:
        if time.monotonic() > deadline:
            raise TimeoutError("the child never got busy")
        time.sleep(0.02)


def test_a_server_that_is_gone_gives_no_readings() -> None:
    with CpuWindow(2**22 + 1) as window:  # above Linux's pid_max: no such process
        pass
    assert window.details() == {}


def test_the_report_tabulates_the_windows_that_were_read() -> None:
    reading = {
        "cores": 2,
        "server_loop_thread": 0.95,
        "server_process": 1.2,
        "bench_process": 0.3,
        "rest_of_machine": 0.05,
        "idle": 0.45,
    }
    text = markdown(
        report(
            [
                figure("echo", None, {}),
                figure("appends", "sqlite", {"cpu": reading}),
                figure("appends-p99", "sqlite", {"cpu": reading}),  # the same window
                figure("appends", "postgres", {"cpu": {}}),  # not read there: no row
            ]
        )
    )
    assert "CPU in the timed windows, in cores of 2" in text
    # 1.55 cores busy at 1 append a second: 1,550 ms of the machine's CPU each.
    # With both cores busy, that work per append would give 2 / 1.55 appends a second.
    assert "| appends | sqlite | 0.95 | 1.20 | 0.30 | 0.05 | 0.45 | 1550.000 |  | 1.3 x/s |" in text
    table = text.split("CPU in the timed windows")[1]
    assert "| appends-p99 |" not in table
    assert "| appends | postgres |" not in table


def test_no_table_when_no_window_was_read() -> None:
    assert "CPU in the timed windows" not in markdown(report([figure("echo", None, {})]))


def _reading(idle: float) -> dict[str, float]:
    """A two-core window's reading with ``idle`` cores idle (the rest split at will)."""
    busy = 2 - idle
    return {
        "cores": 2,
        "server_loop_thread": busy / 2,
        "server_process": busy / 2,
        "bench_process": busy / 2,
        "rest_of_machine": 0.0,
        "idle": idle,
    }


def test_the_machines_cpu_per_unit_is_the_busy_cores_over_the_rate() -> None:
    assert cpu.machine_ms_each(_reading(idle=0.5), 1000.0) == pytest.approx(1.5)
    assert cpu.machine_ms_each(_reading(idle=0.5), None) is None
    assert cpu.machine_ms_each({}, 1000.0) is None


def test_the_rate_with_every_core_busy_keeps_the_work_per_unit() -> None:
    # 1.5 of 2 cores busy at 1,000 a second: 1.5 ms each, 1,333 a second on both cores.
    assert cpu.rate_with_every_core_busy(_reading(idle=0.5), 1000.0) == pytest.approx(1333.3)
    assert cpu.rate_with_every_core_busy(_reading(idle=0.0), 1000.0) == pytest.approx(1000.0)
    assert cpu.rate_with_every_core_busy(_reading(idle=2.0), 1000.0) is None  # nothing busy
    assert cpu.rate_with_every_core_busy(_reading(idle=0.5), None) is None
    assert cpu.rate_with_every_core_busy({}, 1000.0) is None
    appends = figure("appends", "sqlite", {"cpu": _reading(idle=0.5)})
    appends["value"], appends["unit"] = 600.0, "appends/s"
    assert "| 2.500 |  | 800 appends/s |" in markdown(report([appends]))


def test_a_rate_is_set_beside_its_baselines_cpu_per_call() -> None:
    negotiation = figure("negotiation", "sqlite", {"cpu": _reading(idle=0.5)})
    negotiation["value"] = 1000.0  # 1.5 cores: 1.5 ms of the machine each round
    negotiation["baseline"] = "echo"
    # Echo beside it: 1.8 cores at 6,000 calls/s before (0.3 ms each), 1.6 at 4,000 after (0.4).
    negotiation["details"]["baseline_beside"] = {
        "name": "echo",
        "before": 6000.0,
        "after": 4000.0,
        "cpu_before": _reading(idle=0.2),
        "cpu_after": _reading(idle=0.4),
    }
    echo = figure("echo", None, {"cpu": _reading(idle=0.0)})
    echo["value"] = 1000.0  # the run's first echo: 2 ms each, not used when read beside
    text = markdown(report([echo, negotiation]))
    assert "| negotiation | sqlite |" in text
    assert "| 1.500 | 4.29 × echo | 1,333 x/s |" in text  # 1.5 / 0.35

    # Without readings beside it, against the run's first measurement of the baseline.
    del negotiation["details"]["baseline_beside"]
    assert "| 1.500 | 0.75 × echo |" in markdown(report([echo, negotiation]))
    # Without any reading of the baseline's CPU, the column stays empty.
    echo["details"] = {}
    assert "| 1.500 |  |" in markdown(report([echo, negotiation]))
