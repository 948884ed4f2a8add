"""The shared harness: result type, percentiles, timing, scratch databases, server processes.

Every benchmark module measures with these so that each figure is taken the same way: the
server under test is a real ``coalition-server`` process on 127.0.0.1 port 0, with a fresh
data directory and a fresh database (a SQLite file in that directory, or a scratch
PostgreSQL database created for it and dropped afterwards); clients run in the bench process.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy.engine import make_url

Scale = Literal["smoke", "full"]
DbKind = Literal["sqlite", "postgres"]
Status = Literal["measured", "failed"]

ROOT = Path(__file__).resolve().parent.parent
PG_URL_ENV = "COALITION_BENCH_PG_URL"
DEFAULT_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
"""Where scratch databases are created; the named database is only used to create them."""

SERVER_START_TIMEOUT = 60.0
OWN_CONNECTION: tuple[tuple[str, int], ...] = (("grpc.use_local_subchannel_pool", 1),)
"""gRPC channel options giving a client its own TCP connection. Without them, every channel
of the bench process to one server shares a single connection (gRPC's global subchannel
pool), so 64 "members" would reach the server as one HTTP/2 connection, as no 64 users do."""
_LISTENING = re.compile(r"listening on (\S+):(\d+)")


# --- results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A bound a figure must meet: ``value op bound`` (op is ">=" or "<=")."""

    op: Literal[">=", "<="]
    bound: float

    def met(self, value: float) -> bool:
        """Whether ``value`` is within the bound."""
        return value >= self.bound if self.op == ">=" else value <= self.bound

    def __str__(self) -> str:
        return f"{self.op} {self.bound:g}"


@dataclass
class Figure:
    """One measured number (or a row saying why it failed).

    ``ratio`` is ``value`` divided by the same-run value of ``baseline`` (for a figure whose
    target is relative, ``ratio_target`` bounds it); ``details`` holds the supporting numbers
    (sample counts, percentiles, sizes) that go into the JSON.
    """

    key: str
    title: str
    value: float | None
    unit: str
    db: DbKind | None = None
    target: Target | None = None
    baseline: str | None = None
    ratio: float | None = None
    ratio_target: Target | None = None
    status: Status = "measured"
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def met(self) -> bool | None:
        """Whether every target of the figure is met (None when it has none or no value)."""
        if self.value is None or (self.target is None and self.ratio_target is None):
            return None
        ok = self.target is None or self.target.met(self.value)
        if self.ratio_target is not None:
            ok = ok and self.ratio is not None and self.ratio_target.met(self.ratio)
        return ok

    def to_json(self, scale: Scale) -> dict[str, Any]:
        """The figure as a JSON object (targets as {op, bound})."""
        data = asdict(self)
        data["target"] = asdict(self.target) if self.target else None
        data["ratio_target"] = asdict(self.ratio_target) if self.ratio_target else None
        data["met"] = self.met
        data["scale"] = scale
        return data


# --- numbers --------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation between closest ranks."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_details(seconds: Sequence[float]) -> dict[str, Any]:
    """p50/p90/p99/max in milliseconds and the sample count."""
    return {
        "samples": len(seconds),
        "p50_ms": round(percentile(seconds, 50) * 1000, 3),
        "p90_ms": round(percentile(seconds, 90) * 1000, 3),
        "p99_ms": round(percentile(seconds, 99) * 1000, 3),
        "max_ms": round(max(seconds) * 1000, 3),
    }


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Collect the bench process's garbage, then keep what is alive out of the collector's
    passes for the block.

    The clients run in the bench process beside everything the harness holds (about 100,000
    objects once set-up is done), so a full collection there paused every client for 40 to
    60 ms, and when one fell in a timed window it set the p99 of the calls it held up. The
    server does the same once at start (decision 40); the harness gives its objects back to
    the collector after the block. Do not nest it (a ``Stopwatch`` is one): leaving the inner
    block unfreezes everything for the rest of the outer one.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@dataclass
class Stopwatch:
    """Wall-clock seconds of a ``with`` block (perf_counter), inside :func:`frozen_heap`."""

    started: float = 0.0
    seconds: float = 0.0
    _heap: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, repr=False)

    def __enter__(self) -> Stopwatch:
        self._heap.enter_context(frozen_heap())
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started
        self._heap.close()


async def run_for(
    seconds: float, workers: int, call: Callable[[int], Awaitable[None]]
) -> tuple[int, float]:
    """Run ``workers`` loops of ``call(worker)`` until ``seconds`` pass; (calls, elapsed).

    Each worker finishes the call it is in, so every counted call completed.
    """
    deadline = time.perf_counter() + seconds
    counts = [0] * workers

    async def loop(worker: int) -> None:
        while time.perf_counter() < deadline:
            await call(worker)
            counts[worker] += 1

    with Stopwatch() as watch:
        await asyncio.gather(*(loop(w) for w in range(workers)))
    return sum(counts), watch.seconds


# --- the run's context ----------------------------------------------------------------------


@dataclass
class Context:
    """What every benchmark gets: the scale, a scratch directory and where PostgreSQL is."""

    scale: Scale
    workdir: Path
    pg_url: str
    baselines: dict[tuple[str, DbKind | None], Figure] = field(default_factory=dict)
    profile_dir: Path | None = None
    """When set, every server under test is sampled by py-spy into a raw profile here."""
    server_args: tuple[str, ...] = ()
    """Flags given to every server under test (``--event-loop``)."""
    resources: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    """What several benchmarks share (the big ledger): closed when the run ends."""
    shared: dict[Any, Any] = field(default_factory=dict)

    def pick(self, smoke: int, full: int) -> int:
        """A size by scale."""
        return smoke if self.scale == "smoke" else full

    def pick_seconds(self, smoke: float, full: float) -> float:
        """A duration by scale."""
        return smoke if self.scale == "smoke" else full

    def fresh_dir(self, name: str) -> Path:
        """A new, empty directory under the run's scratch directory."""
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.workdir))

    def log(self, message: str) -> None:
        """Progress on stderr (the table goes to stdout)."""
        print(f"[bench] {message}", file=sys.stderr, flush=True)

    def ratio_to(self, figure: Figure, baseline: str) -> None:
        """Fill ``figure.ratio`` from this run's ``baseline`` (same db, else db-free)."""
        found = self.baselines.get((baseline, figure.db)) or self.baselines.get((baseline, None))
        figure.baseline = baseline
        if found is not None and found.value and figure.value is not None:
            figure.ratio = figure.value / found.value


# --- databases ------------------------------------------------------------------------------


async def _pg_admin(admin_url: str, sql: str) -> None:
    import asyncpg

    url = make_url(admin_url)
    conn = await asyncpg.connect(
        host=url.host,
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        database=url.database,
        timeout=10,
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def pg_reachable(admin_url: str) -> str | None:
    """None if PostgreSQL answers at ``admin_url``, else why not."""
    try:
        await _pg_admin(admin_url, "SELECT 1")
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@contextlib.asynccontextmanager
async def scratch_database(ctx: Context, db: DbKind, name: str) -> AsyncIterator[str]:
    """A fresh, empty database URL: a SQLite file, or a new PostgreSQL database (dropped
    when the block ends)."""
    if db == "sqlite":
        yield f"sqlite+aiosqlite:///{ctx.fresh_dir(name) / 'coalition.db'}"
        return
    database = f"bench_{name.replace('-', '_')}_{uuid.uuid4().hex[:10]}"
    await _pg_admin(ctx.pg_url, f'CREATE DATABASE "{database}"')
    try:
        yield (make_url(ctx.pg_url).set(database=database).render_as_string(hide_password=False))
    finally:
        await _pg_admin(ctx.pg_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


# --- server processes -----------------------------------------------------------------------

SERVER = [sys.executable, "-m", "coalition_server"]


@dataclass
class ServerProcess:
    """A ``coalition-server`` subprocess; ``target`` is its loopback host:port."""

    process: subprocess.Popen[bytes]
    target: str
    log_path: Path
    db_url: str
    data_dir: Path
    metrics_url: str | None = None
    """Where it serves its Prometheus metrics, when started with them."""

    @property
    def pid(self) -> int:
        """The server's process id (for py-spy or RSS readings)."""
        return self.process.pid

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (graceful), then SIGKILL if it does not exit in time."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _server_env() -> dict[str, str]:
    # The bench's own COALITION_* settings must not leak into the server under test.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COALITION_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def free_port() -> int:
    """A loopback TCP port free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(
    db_url: str, data_dir: Path, extra: Sequence[str] = (), log_name: str = "server.log"
) -> ServerProcess:
    """Start a ``coalition-server`` on an existing database and data directory (blocking)."""
    log_path = data_dir / log_name
    # The log goes to a file, not a pipe: a pipe nobody drains would stall a chatty server.
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                *SERVER,
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                str(data_dir),
                "--db",
                db_url,
                "--origin",
                "bench.coalition.example/log",
                "--log-level",
                "WARNING",
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_server_env(),
            cwd=data_dir,
        )
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        match = _LISTENING.search(text)
        if match:
            return ServerProcess(process, f"127.0.0.1:{match.group(2)}", log_path, db_url, data_dir)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    process.wait()
    raise RuntimeError("coalition-server did not start:\n" + log_path.read_text(errors="replace"))


def _migrate(db_url: str, data_dir: Path) -> None:
    subprocess.run(
        [*SERVER, "--db", db_url, "--data-dir", str(data_dir), "migrate"],
        check=True,
        capture_output=True,
        env=_server_env(),
        timeout=120,
    )


@contextlib.asynccontextmanager
async def coalition_server(
    ctx: Context, db: DbKind, name: str, extra: Sequence[str] = (), *, metrics: bool = False
) -> AsyncIterator[ServerProcess]:
    """A fresh coalition-server process on ``db`` (migrated), stopped when the block ends;
    with ``metrics``, serving its Prometheus metrics on a loopback port (``metrics_url``)."""
    async with scratch_database(ctx, db, name) as db_url:
        data_dir = ctx.fresh_dir(f"{name}-data")
        if db == "postgres":
            await asyncio.to_thread(_migrate, db_url, data_dir)
        # The server logs the metrics port it bound only at INFO (the bench runs it at
        # WARNING), so the port is chosen here.
        metrics_port = free_port() if metrics else None
        if metrics_port is not None:
            extra = (*extra, "--metrics-listen", f"127.0.0.1:{metrics_port}")
        server = await asyncio.to_thread(start_server, db_url, data_dir, (*ctx.server_args, *extra))
        if metrics_port is not None:
            server.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        ctx.log(f"{name}: coalition-server pid {server.pid} on {server.target} ({db})")
        profiler = (
            _profile(ctx.profile_dir / f"{name}-{db}.txt", server) if ctx.profile_dir else None
        )
        try:
            yield server
        finally:
            await asyncio.to_thread(server.stop)
            if profiler is not None:
                # py-spy writes its profile once the process it samples has exited.
                await asyncio.to_thread(profiler.wait, 60)


@contextlib.asynccontextmanager
async def replica_of(
    ctx: Context, server: ServerProcess, name: str
) -> AsyncIterator[ServerProcess]:
    """Another ``coalition-server`` process on ``server``'s database and keys (a replica, as
    docker-compose.yml runs two), stopped when the block ends."""
    replica = await asyncio.to_thread(
        start_server, server.db_url, server.data_dir, ctx.server_args, f"{name}-replica.log"
    )
    ctx.log(f"{name}: replica pid {replica.pid} on {replica.target}")
    try:
        yield replica
    finally:
        await asyncio.to_thread(replica.stop)


def _profile(out: Path, server: ServerProcess) -> subprocess.Popen[bytes]:
    """py-spy sampling the server (set-up included) until it exits, as a raw profile that
    flamegraph tools (e.g. speedscope) read."""
    out.parent.mkdir(parents=True, exist_ok=True)
    py_spy = Path(sys.executable).parent / "py-spy"
    return subprocess.Popen(
        [str(py_spy), "record", "--pid", str(server.pid), "--format", "raw", "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@contextlib.contextmanager
def subprocess_with_port(args: Sequence[str], log_path: Path) -> Iterator[tuple[int, int]]:
    """Start a helper process that prints ``port N`` first; yield (pid, port), stop it after."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(args), stdout=subprocess.PIPE, stderr=log, cwd=ROOT, env=_helper_env()
        )
    assert process.stdout is not None
    try:
        line = process.stdout.readline().decode()
        match = re.match(r"port (\d+)", line)
        if not match:
            raise RuntimeError(f"helper did not start: {line!r} {log_path.read_text()}")
        yield process.pid, int(match.group(1))
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


def _helper_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # The helper imports bench from the repository, whatever the caller's working directory.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


# --- where the numbers were taken -----------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """CPU, memory, OS and Python of this machine, and its load when the run started."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
    }
    with contextlib.suppress(OSError):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    with contextlib.suppress(OSError, ValueError, IndexError):
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        info["memory_mib"] = int(meminfo[0].split()[1]) // 1024
    return info


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def git_commit() -> dict[str, Any]:
    """The checked-out commit and whether the tree has uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


# --- what a benchmark module declares -------------------------------------------------------


Run = Callable[[Context, "DbKind | None"], Awaitable[list[Figure]]]


@dataclass(frozen=True)
class Benchmark:
    """One benchmark module's entry: a baseline or a figure, and how to run it.

    ``per_db``: run once per selected database (``db`` is passed) rather than once (``None``).
    ``needs``: baselines its ratios are taken against (run first, even if not selected).
    ``beside``: those of ``needs`` measured again right before and right after each run of
    the figure, its ratios then taken against their mean: the machine's speed drifts over
    a run (echo moved by a quarter within minutes on the shared 2-core machines), and a
    baseline measured beside the figure is measured on the machine the figure ran on.
    """

    name: str
    kind: Literal["baseline", "figure"]
    per_db: bool
    run: Run
    needs: tuple[str, ...] = ()
    beside: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not set(self.beside) <= set(self.needs):
            raise ValueError(f"{self.name}: baselines measured beside it must be in its needs")
