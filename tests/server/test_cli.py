"""``coalition-server`` as an operator runs it: real processes, real gRPC, real PostgreSQL.

The health probe (``health``), key creation (``init-keys``), the refusal to serve an
unmigrated PostgreSQL database, and a server configured by nothing but a config file.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer
from grpc_health.v1.health_pb2_grpc import add_HealthServicer_to_server

from coalition.client import Client
from coalition.note import NoteVerifier
from coalition_server.keys.server_keys import COALITION_KEY_FILE, LOG_KEY_FILE
from coalition_server.server import CoalitionServer

SERVER = [sys.executable, "-m", "coalition_server"]
_LISTENING = re.compile(r"listening on \S+:([1-9]\d*)")  # not the log line's ":0"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the developer's COALITION_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COALITION_")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``coalition-server ARGS`` to completion."""
    return subprocess.run(
        [*SERVER, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env if env is not None else clean_env(),
        cwd=cwd,
    )


async def arun(*args: str) -> tuple[int, str]:
    """``coalition-server ARGS`` without blocking the event loop a test server runs on."""
    process = await asyncio.create_subprocess_exec(
        *SERVER,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=clean_env(),
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, output.decode()


class Served:
    """A ``coalition-server`` process that is serving; ``target`` is its address."""

    def __init__(self, args: list[str], env: dict[str, str], timeout: float = 30.0) -> None:
        self.process = subprocess.Popen(
            [*SERVER, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        assert self.process.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            lines.append(line)
            match = _LISTENING.search(line)
            if match:
                self.target = f"127.0.0.1:{match.group(1)}"
                self.start_output = "".join(lines)
                return
        self.stop()
        raise AssertionError("server did not start:\n" + "".join(lines))

    def stop(self) -> None:
        """SIGTERM, as an orchestrator stops it; SIGKILL if it does not exit in time."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# --- health ---------------------------------------------------------------------------------

# The probe does not care which database the server has: SQLite keeps these quick.
on_sqlite = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@on_sqlite
async def test_health_exits_zero_when_serving(server: CoalitionServer) -> None:
    target = f"127.0.0.1:{server.port}"
    code, output = await arun("health", "--target", target)
    assert (code, output.strip()) == (0, f"{target}: SERVING")
    code, output = await arun(
        "health", "--target", target, "--service", "coalition.v1.LedgerService"
    )
    assert code == 0, output


@on_sqlite
async def test_health_finds_the_port_from_the_listen_setting(server: CoalitionServer) -> None:
    # In a container, `coalition-server health` alone probes COALITION_LISTEN's port.
    code, output = await arun("--listen", f"0.0.0.0:{server.port}", "health")
    assert (code, output.strip()) == (0, f"127.0.0.1:{server.port}: SERVING")


@on_sqlite
async def test_health_fails_for_an_unknown_service(server: CoalitionServer) -> None:
    code, output = await arun(
        "health", "--target", f"127.0.0.1:{server.port}", "--service", "no.such.Service"
    )
    assert code == 1
    assert "no service 'no.such.Service'" in output


async def test_health_fails_when_not_serving() -> None:
    # A server that answers but reports NOT_SERVING (as one draining for shutdown does).
    server = grpc.aio.server()
    health = HealthServicer()
    add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        await health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        code, output = await arun("health", "--target", f"127.0.0.1:{port}")
        assert (code, output.strip()) == (1, f"127.0.0.1:{port}: NOT_SERVING")
    finally:
        await server.stop(None)


async def test_health_fails_when_nothing_listens() -> None:
    code, output = await arun("health", "--target", "127.0.0.1:1", "--timeout", "2")
    assert code == 1
    assert "127.0.0.1:1: UNAVAILABLE" in output


# --- init-keys ------------------------------------------------------------------------------


def test_init_keys_creates_the_keys_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "keys"
    first = run("--data-dir", str(data_dir), "--origin", "coalition.test/log", "init-keys")
    assert first.returncode == 0, first.stderr
    assert f"created {data_dir / LOG_KEY_FILE}" in first.stdout
    assert f"created {data_dir / COALITION_KEY_FILE}" in first.stdout
    for name in (LOG_KEY_FILE, COALITION_KEY_FILE):
        assert stat.S_IMODE((data_dir / name).stat().st_mode) == 0o600
    contents = {name: (data_dir / name).read_bytes() for name in (LOG_KEY_FILE, COALITION_KEY_FILE)}
    # What auditors pin: a well-formed verifier key in note form, named by the origin.
    match = re.search(r"log verifier key: (\S+)", first.stdout)
    assert match is not None, first.stdout
    assert NoteVerifier.parse(match.group(1)).name == "coalition.test/log"

    again = run("--data-dir", str(data_dir), "--origin", "coalition.test/log", "init-keys")
    assert again.returncode == 0, again.stderr
    assert f"kept {data_dir / LOG_KEY_FILE}" in again.stdout
    assert match.group(1) in again.stdout
    assert {n: (data_dir / n).read_bytes() for n in contents} == contents


def test_init_keys_refuses_keys_others_can_read(tmp_path: Path) -> None:
    data_dir = tmp_path / "keys"
    assert run("--data-dir", str(data_dir), "init-keys").returncode == 0
    (data_dir / LOG_KEY_FILE).chmod(0o644)
    result = run("--data-dir", str(data_dir), "init-keys")
    assert result.returncode == 2
    assert "readable by others" in result.stderr


# --- an unmigrated PostgreSQL database, then migrate ----------------------------------------


@pytest.fixture
def served() -> Iterator[list[Served]]:
    """Server processes started by a test; all stopped after it."""
    processes: list[Served] = []
    yield processes
    for process in processes:
        process.stop()


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_serve_refuses_an_unmigrated_database_until_migrated(
    db_url: str, tmp_path: Path, served: list[Served]
) -> None:
    data_dir = tmp_path / "data"
    env = clean_env(COALITION_DB_URL=db_url, COALITION_DATA_DIR=str(data_dir))
    refused = subprocess.run(
        [*SERVER, "--listen", "127.0.0.1:0", "serve"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert refused.returncode == 2
    assert "listening" not in refused.stdout
    assert (
        "the database is not migrated to this version: run `coalition-server migrate`"
        in refused.stderr
    )

    migrated = run("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert "database at revision" in migrated.stdout

    server = Served(["--listen", "127.0.0.1:0", "--log-level", "WARNING"], env)
    served.append(server)
    assert run("health", "--target", server.target).returncode == 0


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_server_configured_by_a_file_alone(
    db_url: str, tmp_path: Path, served: list[Served]
) -> None:
    # Everything from the file (relative paths from its directory), nothing from flags/env.
    config = tmp_path / "etc" / "coalition.toml"
    config.parent.mkdir()
    config.write_text(
        f'db = "{db_url}"\n'
        'listen = "127.0.0.1:0"\n'
        'data_dir = "../state"\n'
        'kek_dir = "../keks"\n'
        'origin = "coalition.test/from-a-file"\n'
        'log_level = "WARNING"\n'
    )
    env = clean_env(COALITION_CONFIG=str(config))
    assert run("init-keys", env=env).returncode == 0
    assert run("migrate", env=env).returncode == 0
    server = Served([], env)
    served.append(server)
    assert (tmp_path / "state" / LOG_KEY_FILE).exists()
    assert (tmp_path / "keks").is_dir()
    assert run("health", "--target", server.target).returncode == 0

    async def origin() -> str:
        async with Client(server.target) as client:
            checkpoint = await client.checkpoint()
            return checkpoint.checkpoint.split("\n", 1)[0]

    assert asyncio.run(origin()) == "coalition.test/from-a-file"


@pytest.mark.parametrize(
    ("args", "loop"), [([], "uvloop"), (["--event-loop", "asyncio"], "asyncio")]
)
def test_serve_runs_on_the_event_loop_asked_for(
    args: list[str], loop: str, tmp_path: Path, served: list[Served]
) -> None:
    env = clean_env(COALITION_DATA_DIR=str(tmp_path / "data"))
    server = Served(["--listen", "127.0.0.1:0", *args], env)
    served.append(server)
    assert f"event loop: {loop}" in server.start_output
    assert run("health", "--target", server.target).returncode == 0

    async def checkpoint() -> str:  # signed: keys, database and gRPC all work on it
        async with Client(server.target) as client:
            return (await client.checkpoint()).checkpoint

    assert asyncio.run(checkpoint()).count("\n") >= 3  # origin, size, root hash, signature


def test_a_config_error_stops_serve_before_it_starts(tmp_path: Path) -> None:
    config = tmp_path / "coalition.toml"
    config.write_text('listen = "127.0.0.1:0"\nmax_batch = "many"\n')
    result = run("--config", str(config), "serve", cwd=tmp_path)
    assert result.returncode == 2
    assert "max_batch must be an integer, not a string" in result.stderr
    assert not (tmp_path / "coalition-data").exists()
