"""Where the CPU went during a timed window: the server's event-loop thread, the rest of its
process, the bench process (the clients), and the rest of the machine (PostgreSQL, and
whatever else runs).

Figures 2 and 6 are bound by one thread, the server's event loop (docs/benchmarks.md, "What
bounds figures 2 and 6 on this machine"); figure 1, whose signatures are checked on worker
threads, is read too, for contrast. These readings go into each figure's details, so that
every run shows whether that thread was saturated and how much of the machine was idle,
without a profiler attached (py-spy itself slows the server by a quarter or more).

Read from Linux's ``/proc`` (clock ticks, 10 ms apiece: over a 10 s window the share of a
core is good to about 0.2%); where ``/proc`` is missing, :meth:`CpuWindow.details` is empty.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_PROC = Path("/proc")
TICK_SECONDS = 1 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01
"""One clock tick, the unit ``/proc`` counts CPU time in. A thread's ticks and its process's
are scaled to their run times apart, so over a window the two may differ by a tick or so."""


def _stat_seconds(path: Path) -> float:
    """utime + stime of a ``/proc/.../stat`` file, in seconds.

    The command name (field 2) may hold spaces and parentheses, so fields are counted from
    the last ``)``: utime and stime are then the 12th and 13th (fields 14 and 15 of proc(5)).
    """
    text = path.read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) * TICK_SECONDS


def _machine_seconds() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine since boot, all cores summed."""
    values = [int(v) for v in (_PROC / "stat").read_text().split("\n", 1)[0].split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is already in user).
    idle = values[3] + values[4]
    busy = sum(values[:8]) - idle
    return busy * TICK_SECONDS, idle * TICK_SECONDS


@dataclass(frozen=True)
class _Reading:
    loop_thread: float
    server: float
    bench: float
    machine_busy: float
    machine_idle: float


class CpuWindow:
    """CPU used during a ``with`` block by the server process ``server_pid`` (its main thread,
    which runs the event loop, and the whole process), this process, and the machine.

    Used around the timed calls, then read into the figure::

        with CpuWindow(server.pid) as cpu:
            await run_the_calls()
        figure.details["cpu"] = cpu.details()
    """

    def __init__(self, server_pid: int) -> None:
        self._pid = server_pid
        self._start: _Reading | None = None
        self._end: _Reading | None = None

    def _read(self) -> _Reading | None:
        try:
            busy, idle = _machine_seconds()
            server = _PROC / str(self._pid)
            return _Reading(
                # The main thread's id is the process's: it runs the event loop.
                loop_thread=_stat_seconds(server / "task" / str(self._pid) / "stat"),
                server=_stat_seconds(server / "stat"),
                bench=_stat_seconds(_PROC / "self" / "stat"),
                machine_busy=busy,
                machine_idle=idle,
            )
        except (OSError, ValueError, IndexError):
            return None  # no /proc (not Linux), or the server has gone

    def __enter__(self) -> CpuWindow:
        self._start = self._read()
        return self

    def __exit__(self, *exc: object) -> None:
        self._end = self._read()

    def details(self) -> dict[str, Any]:
        """Cores used on average over the window (1.0 is one core kept busy): the server's
        event-loop thread, the server process (all its threads), the bench process, the
        rest of the machine, and the machine's idle cores, of ``cores``. Empty when they
        could not be read."""
        start, end = self._start, self._end
        if start is None or end is None:
            return {}
        seconds = end.machine_busy + end.machine_idle - start.machine_busy - start.machine_idle
        cores = os.cpu_count() or 1
        wall = seconds / cores  # the window's length, measured in the same ticks
        if wall <= 0:
            return {}

        def share(before: float, after: float) -> float:
            return round((after - before) / wall, 3)

        server = share(start.server, end.server)
        bench = share(start.bench, end.bench)
        busy = share(start.machine_busy, end.machine_busy)
        return {
            "cores": cores,
            "server_loop_thread": share(start.loop_thread, end.loop_thread),
            "server_process": server,
            "bench_process": bench,
            "rest_of_machine": round(max(0.0, busy - server - bench), 3),
            "idle": share(start.machine_idle, end.machine_idle),
        }


def machine_ms_each(cpu: Mapping[str, Any], rate: float | None) -> float | None:
    """Milliseconds of the whole machine's CPU (every process, every core) per unit of a
    figure measured at ``rate`` units a second (calls, rounds, appends, tokens) over the
    window ``cpu`` was read in (:meth:`CpuWindow.details`); None without a reading or a rate.

    Set beside the same reading of a baseline, it tells a figure that does too much work per
    unit from one that leaves part of the machine idle: a ratio target of 0.2 to echo holds
    at equal use of the machine if a round costs at most five echo calls.
    """
    if not cpu or not rate or rate <= 0:
        return None
    busy = float(cpu["cores"]) - float(cpu["idle"])
    return round(max(busy, 0.0) / rate * 1000, 4)


def rate_with_every_core_busy(cpu: Mapping[str, Any], rate: float | None) -> float | None:
    """The rate a figure measured at ``rate`` would reach if the same work per unit kept every
    core of the machine busy (:func:`machine_ms_each` into the cores); None without a reading,
    a rate or any busy time.

    An upper bound for any layout over threads or processes that does the same work: where
    it is under an absolute target (figure 2's 800 appends/s), only less work per unit can
    meet the target on that machine, not a better use of its cores.
    """
    each = machine_ms_each(cpu, rate)
    if not each:
        return None
    return round(float(cpu["cores"]) * 1000 / each, 1)
