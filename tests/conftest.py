"""Shared fixtures: one parametrised database across SQLite and PostgreSQL, and a real
gRPC server on 127.0.0.1 with port 0.

PostgreSQL is found through COALITION_TEST_PG_URL (default: the local trust-auth server).
Each test gets a fresh database. Where PostgreSQL is unreachable its tests skip with the
reason, unless COALITION_REQUIRE_PG=1 (set by CI), where they fail.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from coalition.client import Client
from coalition.keys import SigningKey
from coalition_server.config import Settings
from coalition_server.server import CoalitionServer

# Every reuse of the server's cached pool is checked against a fresh load, in this process
# and in server subprocesses (store/pool.py): a pool change the cache misses fails a test.
os.environ["COALITION_CHECK_POOL_CACHE"] = "1"

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED = PROJECT_ROOT.parent / "shared"
DEFAULT_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
PG_URL = os.environ.get("COALITION_TEST_PG_URL", DEFAULT_PG_URL)
REQUIRE_PG = os.environ.get("COALITION_REQUIRE_PG") == "1"


async def _pg_admin(sql: str) -> None:
    import asyncpg

    url = make_url(PG_URL)
    conn = await asyncpg.connect(
        host=url.host,
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        database=url.database,
        timeout=5,
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


_pg_status: str | None = None


def _pg_unreachable_reason() -> str | None:
    global _pg_status
    if _pg_status is None:
        try:
            asyncio.run(_pg_admin("SELECT 1"))
            _pg_status = ""
        except Exception as exc:
            _pg_status = f"PostgreSQL at {PG_URL} unreachable ({type(exc).__name__}: {exc})"
    return _pg_status or None


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL: SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'coalition.db'}"
        return
    reason = _pg_unreachable_reason()
    if reason:
        if REQUIRE_PG:
            pytest.fail(f"{reason} and COALITION_REQUIRE_PG=1")
        pytest.skip(reason)
    name = f"coalition_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    """Settings for a test server on loopback, port 0, migrating on start."""
    return Settings(
        listen="127.0.0.1:0",
        data_dir=tmp_path / "data",
        db_url=db_url,
        origin="coalition.test/log",
        auto_migrate=True,
    )


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[CoalitionServer]:
    """A running server; stopped (gracefully) after the test."""
    instance = CoalitionServer(settings)
    await instance.start()
    try:
        yield instance
    finally:
        await instance.stop(grace=1.0)


@pytest.fixture
def target(server: CoalitionServer) -> str:
    """host:port of the running server."""
    return f"127.0.0.1:{server.port}"


@pytest.fixture
async def anonymous(target: str) -> AsyncIterator[Client]:
    """A client with no key (public reads only)."""
    async with Client(target) as client:
        yield client


@pytest.fixture
async def make_client(target: str) -> AsyncIterator[Callable[..., Client]]:
    """Factory of clients (fresh keys unless given); all closed after the test."""
    clients: list[Client] = []

    def make(key: SigningKey | None = None) -> Client:
        client = Client(target, key=key or SigningKey.generate())
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
def figure(pytestconfig: pytest.Config) -> Callable[[str], None]:
    """Print a measured figure and repeat it under "measured figures" at the end of the
    run, where passing tests' output is otherwise hidden."""
    from .reliability.harness import report

    def show(line: str) -> None:
        report(pytestconfig, line.strip())

    return show
