"""Database engines: SQLite (embedded default) and PostgreSQL (production).

Two engines per database. The *writer* carries the sequencer's transactions: on SQLite it
opens them with ``BEGIN IMMEDIATE`` so that the write lock is taken before the tree head is
read (two processes can never both extend the same head); on PostgreSQL the sequencer locks
the head row instead. The *reader* serves queries without ever waiting for that lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from coalition_server.store import round_trip


def normalise_url(url: str | URL) -> URL:
    """Map plain ``sqlite:`` and ``postgresql:`` URLs onto the async drivers we use."""
    parsed = make_url(url)
    if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    if parsed.drivername not in ("sqlite+aiosqlite", "postgresql+asyncpg"):
        raise ValueError(f"unsupported database URL scheme {parsed.drivername!r}")
    return parsed


def sqlite_url(path: str) -> URL:
    """URL of a SQLite database file."""
    return URL.create("sqlite+aiosqlite", database=path)


def is_sqlite(url: URL) -> bool:
    """Whether ``url`` names a SQLite database."""
    return url.get_backend_name() == "sqlite"


WAL_AUTOCHECKPOINT = 10_000
"""SQLite pages (4 KiB) of WAL after which a commit checkpoints it (~40 MiB)."""


CALLER_BEGINS = "coalition_caller_begins"
"""Execution option of a SQLite connection whose caller sends its transaction's BEGIN
itself, as the first statement of its first round trip (the sequencer: see
``round_trip``): SQLAlchemy then begins without emitting it. Nothing may run on such a
connection between ``begin()`` and that round trip: it would run outside the transaction."""


def caller_begins(conn: AsyncConnection) -> bool:
    """Whether ``conn`` has :data:`CALLER_BEGINS` set."""
    options = conn.sync_connection.get_execution_options() if conn.sync_connection else {}
    return bool(options.get(CALLER_BEGINS))


def _sqlite_pragmas(immediate: bool):  # type: ignore[no-untyped-def]
    def on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy, not the driver, emit BEGIN, so savepoints and IMMEDIATE work.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        # FULL: a committed (acknowledged) append survives power loss, not only a crash.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=30000")
        # Checkpoint the WAL into the database every WAL_AUTOCHECKPOINT pages, not SQLite's
        # default 1000: a batch of 1000 consent tokens dirties 800-2600 pages of the random-keyed
        # indexes, so nearly every commit also ran a checkpoint; with fewer, larger ones a page
        # rewritten by several batches is copied once. Commits still sync the WAL (FULL).
        cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT}")
        cursor.close()

    def on_begin(conn: Any) -> None:
        if conn.get_execution_options().get(CALLER_BEGINS):
            return
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return on_connect, on_begin


CONNECT_TIMEOUT_SECONDS = 10


def _make_engine(url: URL, *, writer: bool, pool_size: int) -> AsyncEngine:
    if is_sqlite(url):
        # hide_parameters: an error's text never carries row values (statements, key
        # material, ciphertext) into logs.
        engine = create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=0,
            hide_parameters=True,
            # sqlite3 caches 128 prepared statements per connection, and SQLAlchemy writes
            # each IN-list length as new SQL: the cache filled with large statements and the
            # server grew by ~25 MiB over a 2-minute soak. 16 keeps the hot statements.
            # Each statement in one hand-over to the driver's thread, not three or four.
            async_creator=round_trip.connector(
                url, "writer" if writer else "reader", cached_statements=16
            ),
        )
        # Executemany INSERTs go as multi-row VALUES statements (SQLAlchemy's
        # "insertmanyvalues", by default only for INSERT .. RETURNING): the sqlite3 module
        # releases the GIL around each statement it steps, so a thousand-row executemany took
        # the GIL back a thousand times, each time queueing behind the threads verifying
        # signatures (the sequencer's log entries took ~100 ms of a 1000-token batch, ~25 ms so).
        engine.sync_engine.dialect.use_insertmanyvalues_wo_returning = True
        on_connect, on_begin = _sqlite_pragmas(immediate=writer)
        event.listen(engine.sync_engine, "connect", on_connect)
        event.listen(engine.sync_engine, "begin", on_begin)
        return engine
    return create_async_engine(
        url,
        hide_parameters=True,
        pool_size=pool_size,
        max_overflow=0,
        pool_pre_ping=True,
        # A dead connection after a database restart is replaced, not reused.
        pool_recycle=3600,
        # A host that drops packets fails a call in seconds (UNAVAILABLE), not asyncpg's 60.
        connect_args={"timeout": CONNECT_TIMEOUT_SECONDS},
    )


@dataclass
class Database:
    """The writer and reader engines of one database."""

    url: URL
    writer: AsyncEngine
    reader: AsyncEngine

    @classmethod
    def connect(cls, url: str | URL, *, reader_pool_size: int = 8) -> Database:
        """Create (lazily connecting) engines for ``url``."""
        parsed = normalise_url(url)
        return cls(
            url=parsed,
            writer=_make_engine(parsed, writer=True, pool_size=1),
            reader=_make_engine(parsed, writer=False, pool_size=reader_pool_size),
        )

    @property
    def read_write(self) -> AsyncEngine:
        """The engine for short transactions that read, then write, outside the sequencer.

        On SQLite that is the writer (BEGIN IMMEDIATE): a deferred transaction that read
        first cannot take the write lock once another write has committed meanwhile
        (SQLITE_BUSY at once; the busy timeout does not apply), so concurrent uploads
        failed. On PostgreSQL it is the reader pool: row locks and MVCC need no such care.
        """
        return self.writer if self.is_sqlite else self.reader

    @property
    def is_sqlite(self) -> bool:
        """Whether this is the embedded SQLite store."""
        return is_sqlite(self.url)

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.writer.dispose()
        await self.reader.dispose()


# SQLSTATEs of a server that cannot serve right now, though nothing is wrong with the call:
# class 08 (connection exceptions), 57P01-57P03 (terminated by a shutdown, crash recovery,
# "the database system is starting up / shutting down") and 53300 (too many connections).
_UNAVAILABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300")


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database cannot be reached (retryable), not a bug."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    if isinstance(exc, OperationalError | InterfaceError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, ConnectionError | OSError | TimeoutError):
        return True
    # asyncpg's server errors reach us as a plain DBAPIError whose driver error carries the
    # SQLSTATE: a restarting PostgreSQL refuses connections with 57P03, which is retryable.
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        error = pending.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        sqlstate = getattr(error, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(_UNAVAILABLE_SQLSTATES):
            return True
        orig = getattr(error, "orig", None)
        pending += [orig if isinstance(orig, BaseException) else None, error.__cause__]
    return False
