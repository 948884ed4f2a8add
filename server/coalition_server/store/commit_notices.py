"""Commit notices between replicas, over PostgreSQL's LISTEN/NOTIFY.

A process wakes its own followers (a lab's feed of withdrawal notices, a negotiation's
watchers) as soon as its own sequencer commits. Replicas of one log (decision 3) also append
batches that a process does not commit itself, and a follower on a replica would otherwise
see them only when its poll comes round (``Settings.follow_poll_seconds``): behind a gateway
that balances per call, as ``docker-compose.yml`` deploys two replicas, a member's withdrawal
and the lab following it are on different replicas half the time.

So after each commit a process announces the new tree size on :data:`CHANNEL`, and every
process listening there wakes its followers when another one announces. Announcements are an
optimisation, never a source of truth: a follower always reads the log itself, and its poll
still catches anything whose announcement was lost (a listener reconnecting, a process that
crashed between its commit and its announcement). Announcements made while one is being sent
are merged into the next (only the latest size matters).

SQLite has no such channel; replicas on one SQLite file rely on the poll alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

from coalition_server.store.database import CONNECT_TIMEOUT_SECONDS, is_sqlite

log = logging.getLogger(__name__)

CHANNEL = "coalition_log_commits"
"""The notification channel every replica of a log listens on (one database, one log)."""
MAX_RETRY_SECONDS = 30.0
"""Longest wait between two attempts to reconnect the listener."""
APPLICATION_NAME = "coalition commit notices"
"""The listener's connection's name in ``pg_stat_activity``."""


class CommitNotices:
    """Announces this process's commits to the other replicas and hears theirs.

    ``on_notice`` is called (on the event loop) when another process announces a commit,
    and once each time the listener (re)connects, since announcements may have been missed
    while it was away. A lost connection is retried after ``retry_seconds``, then twice as
    long each time, up to :data:`MAX_RETRY_SECONDS`. On SQLite :meth:`start` does nothing and
    :meth:`announce` is a no-op.
    """

    def __init__(
        self, url: URL, on_notice: Callable[[], None], *, retry_seconds: float = 1.0
    ) -> None:
        self._url = url
        self._on_notice = on_notice
        self._retry_seconds = retry_seconds
        self.instance = secrets.token_hex(8)
        """Tells this process's announcements apart from other processes' (its own are
        delivered back to it too)."""
        self._announced: int | None = None
        self._pending = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()
        """Set while the listener is connected (tests wait for it)."""
        self.heard = 0
        """Announcements heard from other processes."""

    def start(self) -> None:
        """Connect and listen in the background (reconnecting after failures)."""
        if self._task is None and not is_sqlite(self._url):
            self._task = asyncio.get_running_loop().create_task(self._run(), name="commit-notices")

    async def stop(self) -> None:
        """Stop listening and close the connection."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    def announce(self, tree_size: int) -> None:
        """Tell the other replicas that this process committed up to ``tree_size``."""
        if self._task is not None:
            self._announced = tree_size
            self._pending.set()

    async def _run(self) -> None:
        # NullPool: the listener's connection is its own, never one of the pools' slots.
        engine = create_async_engine(
            self._url,
            poolclass=NullPool,
            connect_args={
                "timeout": CONNECT_TIMEOUT_SECONDS,
                # How an operator tells it apart in pg_stat_activity.
                "server_settings": {"application_name": APPLICATION_NAME},
            },
        )
        delay = self._retry_seconds
        try:
            while True:
                try:
                    async with engine.connect() as conn:
                        await self._serve(conn)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the database went away: retry, followers poll
                    if self.listening.is_set():
                        delay = self._retry_seconds  # it had worked: start over
                    log.warning(
                        "commit notices unavailable (%s); retrying in %.3g s",
                        type(exc).__name__,
                        delay,
                    )
                finally:
                    self.listening.clear()
                await asyncio.sleep(delay)
                # Doubling up to half a minute: one line a minute or so in a long outage.
                delay = min(delay * 2, MAX_RETRY_SECONDS)
        finally:
            await engine.dispose()

    async def _serve(self, conn: AsyncConnection) -> None:
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        lost = asyncio.Event()

        def closed(_connection: Any) -> None:
            lost.set()
            self._pending.set()  # wake the sender, which finds the connection gone

        raw.add_termination_listener(closed)
        await raw.add_listener(CHANNEL, self._heard_from)
        self.listening.set()
        # Whatever was announced while nobody here was listening: followers read once more.
        self._on_notice()
        while True:
            await self._pending.wait()
            self._pending.clear()
            if lost.is_set() or raw.is_closed():
                raise ConnectionError("the listener's connection was closed")
            if self._announced is not None:
                payload = f"{self.instance} {self._announced}"
                await raw.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)

    def _heard_from(self, _connection: Any, _pid: int, _channel: str, payload: object) -> None:
        instance, _, _size = str(payload).partition(" ")
        if instance != self.instance:
            self.heard += 1
            self._on_notice()


__all__ = ["APPLICATION_NAME", "CHANNEL", "CommitNotices"]
