"""Commit notices between replicas (PostgreSQL LISTEN/NOTIFY): heard by the others, not by
the announcer, and again after the listener's connection is cut."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from coalition_server.store.commit_notices import APPLICATION_NAME, CommitNotices
from coalition_server.store.database import normalise_url


class Woken:
    """Counts the wake-ups a :class:`CommitNotices` asks for; waits for the next ones."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = asyncio.Event()

    def __call__(self) -> None:
        self.count += 1
        self._changed.set()

    async def reach(self, count: int) -> None:
        """Return once woken ``count`` times in all (a test fails after 20 s without)."""
        async with asyncio.timeout(20):
            while self.count < count:
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
async def replicas(db_url: str) -> AsyncIterator[Callable[[], tuple[CommitNotices, Woken]]]:
    """Factory of started CommitNotices on the test database, all stopped afterwards."""
    started: list[CommitNotices] = []

    def make() -> tuple[CommitNotices, Woken]:
        woken = Woken()
        notices = CommitNotices(normalise_url(db_url), woken, retry_seconds=0.1)
        notices.start()
        started.append(notices)
        return notices, woken

    yield make
    for notices in started:
        await notices.stop()


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_an_announcement_wakes_the_other_replicas_not_the_announcer(
    replicas: Callable[[], tuple[CommitNotices, Woken]],
) -> None:
    (first, first_woken), (second, second_woken) = replicas(), replicas()
    # Each wakes its followers once on connecting: what was announced before, it missed.
    await first_woken.reach(1)
    await second_woken.reach(1)

    first.announce(7)
    await second_woken.reach(2)
    second.announce(9)
    await first_woken.reach(2)
    # A third announcement round trip: had either heard its own, it would show by now.
    first.announce(10)
    await second_woken.reach(3)
    assert (first.heard, second.heard) == (1, 2)
    assert (first_woken.count, second_woken.count) == (2, 3)


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_the_listener_reconnects_after_its_connection_is_cut(
    db_url: str, replicas: Callable[[], tuple[CommitNotices, Woken]]
) -> None:
    (first, first_woken), (second, second_woken) = replicas(), replicas()
    await first_woken.reach(1)
    await second_woken.reach(1)

    url = make_url(db_url)
    admin = await asyncpg.connect(
        host=url.host, port=url.port or 5432, user=url.username, database=url.database
    )
    try:
        cut = await admin.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = $1 AND datname = $2",
            APPLICATION_NAME,
            url.database,
        )
    finally:
        await admin.close()
    assert len(cut) == 2  # both listeners, and nothing else
    # Both come back (each wakes its followers once more on reconnecting) and hear again.
    await first_woken.reach(2)
    await second_woken.reach(2)
    first.announce(3)
    await second_woken.reach(3)
    assert second.heard == 1


async def test_sqlite_has_no_listener() -> None:
    woken = Woken()
    notices = CommitNotices(make_url("sqlite+aiosqlite:///:memory:"), woken)
    notices.start()
    notices.announce(1)
    await asyncio.sleep(0)
    assert not notices.listening.is_set()
    assert woken.count == 0
    await notices.stop()


async def test_an_unreachable_database_is_retried_less_and_less_often(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Nothing listens on port 1: every attempt is refused at once.
    url = make_url("postgresql+asyncpg://postgres@127.0.0.1:1/nowhere")
    notices = CommitNotices(url, Woken(), retry_seconds=0.05)
    with caplog.at_level(logging.WARNING, logger="coalition_server.store.commit_notices"):
        notices.start()
        async with asyncio.timeout(20):
            # The log records are what is observed here: nothing to wait on but them.
            while len(caplog.records) < 4:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        await notices.stop()
    delays = [float(r.getMessage().rsplit(" ", 2)[1]) for r in caplog.records[:4]]
    assert delays == [0.05, 0.1, 0.2, 0.4]
    assert not notices.listening.is_set()
