"""Round trips to the database below SQLAlchemy's execution layer, for the statements the
sequencer sends on every batch while every caller in the batch waits.

SQLite: aiosqlite runs every statement on its connection's own thread: each call is a
hand-over to that thread and back, and the coroutine that made it then waits for its turn
of the event loop behind the calls that arrived meanwhile. The sequencer sends a batch's
statements one after another, so each hand-over adds that wait to the batch's time.

- :class:`Connection` is aiosqlite's connection with cursors that run a statement, fetch
  its rows and close in one hand-over. Through aiosqlite's own cursors SQLAlchemy takes
  three or four (open the cursor, execute, fetch, close). The database's engines connect
  through it (``connector``).
- :func:`run` sends several statements in one hand-over: the ones a batch knows in
  advance (its opening reads, its closing writes, bulk inserts).

Each step made negotiation rounds on SQLite faster (docs/benchmarks.md). aiosqlite has no
public way to run work of our own on its thread (its ``executescript`` commits first and
binds no parameters), so both use its ``_execute``, the method its own calls go through,
with the ``sqlite3`` connection it wraps. Those private parts are as aiosqlite 0.22 has
them, so pyproject.toml admits 0.22 only (tests/store/test_round_trip.py holds both).

PostgreSQL: asyncpg has no pipeline for statements with parameters, so :func:`run` and
:func:`run_many` send each statement on asyncpg's connection directly, in the caller's
transaction. Through SQLAlchemy's ``exec_driver_sql`` a statement cost the event loop about
140 us (its execution context, the adapter's lock and greenlet, its result); on asyncpg
directly about 60 us (decision 42). SQLAlchemy begins a transaction on asyncpg lazily, at
its first statement, so a transaction that starts here is begun through the adapter's
``_start_transaction`` (as its own statements begin it; SQLAlchemy then commits or rolls
it back as usual). Errors are raised as SQLAlchemy raises the driver's.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NoReturn, cast

import aiosqlite
import asyncpg
from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

Statement = tuple[str, tuple[Any, ...]]
"""SQL in the driver's paramstyle, and its parameters."""
Rows = list[tuple[Any, ...]]

_OnThread = Callable[
    [Callable[[sqlite3.Connection], list[Rows]], sqlite3.Connection], Awaitable[list[Rows]]
]


async def run(conn: AsyncConnection, statements: Sequence[Statement]) -> list[Rows]:
    """Run ``statements`` (in the driver's paramstyle) in order on the connection, and so
    in the transaction, ``conn`` holds; the rows each returned (none for a write). On SQLite
    in one hand-over to the driver's thread; on PostgreSQL one after another on asyncpg's
    connection (it must be in a transaction).

    A failing statement raises as SQLAlchemy raises the driver's errors (``IntegrityError``,
    ``OperationalError``, ...; its parameters hidden, as the engines hide them); the ones
    before it stay in the caller's transaction, which then rolls them back.
    """
    if not statements:
        return []
    if conn.dialect.name != "sqlite":
        driver = await asyncpg_in_transaction(conn)
        found: list[Rows] = []
        for sql, params in statements:
            try:
                rows = await driver.fetch(sql, *params)
            except Exception as error:
                await raise_as_sqlalchemy(conn, driver, error, sql)
            found.append([tuple(row) for row in rows])
        return found
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    if not isinstance(driver, aiosqlite.Connection):
        raise TypeError("one hand-over for several statements needs aiosqlite's connection")
    failed: list[Statement] = []

    def run_all(connection: sqlite3.Connection) -> list[Rows]:
        cursor = connection.cursor()
        found = []
        try:
            for statement in statements:
                failed[:] = [statement]
                cursor.execute(*statement)
                found.append(cursor.fetchall())
            failed.clear()
        finally:
            cursor.close()
        return found

    on_thread = cast(_OnThread, driver._execute)  # untyped in aiosqlite
    try:
        return await on_thread(run_all, driver._conn)
    except sqlite3.Error as error:
        sql, params = failed[0] if failed else ("", ())
        # Without the row values, as the engines raise theirs (hide_parameters).
        raise DBAPIError.instance(
            sql, params, error, sqlite3.Error, hide_parameters=True
        ) from error


def below_sqlalchemy(conn: AsyncConnection) -> bool:
    """Whether statements on ``conn`` may go below SQLAlchemy (:func:`run`, :func:`run_many`):
    it is in a transaction, on aiosqlite or asyncpg. Elsewhere (the read-only services'
    connections, another driver) they go through SQLAlchemy."""
    return conn.in_transaction() and conn.dialect.driver in ("aiosqlite", "asyncpg")


async def run_many(conn: AsyncConnection, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """Run the PostgreSQL write ``sql`` once per row of ``rows``, in one round trip
    (asyncpg's ``executemany``), in the transaction ``conn`` holds."""
    if not rows:
        return
    driver = await asyncpg_in_transaction(conn)
    try:
        await driver.executemany(sql, rows)
    except Exception as error:
        await raise_as_sqlalchemy(conn, driver, error, sql)


async def asyncpg_in_transaction(conn: AsyncConnection) -> asyncpg.Connection:
    """The asyncpg connection under ``conn``, in the transaction ``conn`` has begun."""
    if not conn.in_transaction():
        raise ValueError("statements sent below SQLAlchemy need the caller's transaction")
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    if not isinstance(driver, asyncpg.Connection):
        raise TypeError("statements sent below SQLAlchemy need asyncpg's connection")
    if not driver.is_in_transaction():
        # SQLAlchemy has not sent its BEGIN yet (it does at its first statement).
        start = cast(Callable[[], Awaitable[None]], raw.dbapi_connection._start_transaction)  # type: ignore[union-attr]
        await start()
    return driver


async def raise_as_sqlalchemy(
    conn: AsyncConnection, driver: asyncpg.Connection, error: Exception, sql: str
) -> NoReturn:
    """Raise asyncpg's ``error`` as SQLAlchemy's execute would: translated by its asyncpg
    adapter (``UndefinedTableError`` as ``ProgrammingError``, a unique violation as
    ``IntegrityError``, ...), without the parameters, a lost connection invalidated first;
    the callers, and ``is_unavailable``, know only SQLAlchemy's exceptions."""
    raw = await conn.get_raw_connection()
    dialect = conn.dialect
    dbapi_error = cast(type[Exception], dialect.loaded_dbapi.Error)
    try:
        raw.dbapi_connection._handle_exception(error)  # type: ignore[union-attr]
    except Exception as translated:
        if not isinstance(translated, dbapi_error):
            raise
        lost = driver.is_closed() or dialect.is_disconnect(
            cast(Any, translated), raw.dbapi_connection, None
        )
        if lost:
            await conn.invalidate(translated)
        raise DBAPIError.instance(
            sql,
            None,
            translated,
            dbapi_error,
            hide_parameters=True,
            connection_invalidated=lost,
            dialect=dialect,
        ) from error
    raise error  # pragma: no cover - the adapter always raises


@dataclass(frozen=True)
class _Done:
    """What one statement left: the cursor's description, rows, row count and last row id."""

    description: Any
    rows: Rows
    rowcount: int
    lastrowid: int | None


def _execute(connection: sqlite3.Connection, sql: str, parameters: Any, many: bool) -> _Done:
    """On the driver's thread: run one statement and fetch everything it returns."""
    cursor = connection.cursor()
    try:
        if many:
            cursor.executemany(sql, parameters)
        else:
            cursor.execute(sql, () if parameters is None else parameters)
        rows = cursor.fetchall() if cursor.description else []
        return _Done(cursor.description, rows, cursor.rowcount, cursor.lastrowid)
    finally:
        cursor.close()


class _Cursor:
    """The part of aiosqlite's cursor SQLAlchemy uses, one hand-over per statement: the
    rows come back with the statement (SQLAlchemy fetches them all at once anyway: no
    server-side cursors here)."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._done = _Done(None, [], -1, None)
        self._next = 0
        self.arraysize = 1

    async def __aenter__(self) -> _Cursor:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    @property
    def description(self) -> Any:
        return self._done.description

    @property
    def rowcount(self) -> int:
        return self._done.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._done.lastrowid

    async def execute(self, sql: str, parameters: Any = None) -> _Cursor:
        return await self._run(sql, parameters, many=False)

    async def executemany(self, sql: str, parameters: Iterable[Any]) -> _Cursor:
        return await self._run(sql, list(parameters), many=True)

    async def _run(self, sql: str, parameters: Any, *, many: bool) -> _Cursor:
        connection = self._connection
        on_thread = cast(Callable[..., Awaitable[_Done]], connection._execute)  # untyped
        self._done = await on_thread(_execute, connection._conn, sql, parameters, many)
        self._next = 0
        return self

    async def fetchone(self) -> tuple[Any, ...] | None:
        rows = await self.fetchmany(1)
        return rows[0] if rows else None

    async def fetchmany(self, size: int | None = None) -> Rows:
        end = self._next + (self.arraysize if size is None else size)
        rows = self._done.rows[self._next : end]
        self._next += len(rows)
        return rows

    async def fetchall(self) -> Rows:
        rows = self._done.rows[self._next :]
        self._next = len(self._done.rows)
        return rows

    async def close(self) -> None:
        self._done = _Done(self._done.description, [], self._done.rowcount, None)


@dataclass
class HandOverTimes:
    """The hand-overs of one pool's SQLite connections to their driver threads so far: how
    many, and the seconds they spent in each phase, summed.

    Each hand-over's time splits three ways, and which part grows tells what bounds the
    sequencer on SQLite (docs/benchmarks.md):

    - ``to_thread``: from queueing the work to the driver's thread starting it (the thread
      waking up and taking the GIL);
    - ``on_thread``: running it (SQLite's own work, and the GIL taken back after each of its
      steps);
    - ``to_loop``: from its end to the waiting coroutine resuming (a turn of the event loop,
      behind every callback that became ready meanwhile).
    """

    count: int = 0
    to_thread: float = 0.0
    on_thread: float = 0.0
    to_loop: float = 0.0

    def add(self, queued: float, started: float, finished: float, resumed: float) -> None:
        """Count one hand-over from its four ``perf_counter`` readings."""
        self.count += 1
        self.to_thread += started - queued
        self.on_thread += finished - started
        self.to_loop += resumed - finished


HAND_OVER_PHASES = ("to_thread", "on_thread", "to_loop")
"""The phases of a hand-over, as :class:`HandOverTimes` names its sums."""

HAND_OVERS: dict[str, HandOverTimes] = {}
"""This process's SQLite hand-overs by pool (``writer``, ``reader``), for its metrics
(``coalition_sqlite_hand_overs_total``); updated on the event loop only."""


class _Timed:
    """A hand-over's work, noting when the driver's thread started and finished it; named
    as the function it runs, for whoever inspects the queue (tests)."""

    __slots__ = ("__name__", "_args", "_fn", "_kwargs", "finished", "started")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]):
        self._fn = fn
        self._args = args
        self._kwargs = kwargs
        self.__name__: str = getattr(fn, "__name__", "work")
        self.started = self.finished = 0.0

    def __call__(self) -> Any:
        self.started = time.perf_counter()
        try:
            return self._fn(*self._args, **self._kwargs)
        finally:
            self.finished = time.perf_counter()


class Connection(aiosqlite.Connection):
    """aiosqlite's connection, whose cursors take one hand-over per statement, with each
    hand-over timed into :data:`HAND_OVERS` under its pool's name."""

    def __init__(self, connector: Callable[[], sqlite3.Connection], pool: str) -> None:
        super().__init__(connector, iter_chunk_size=64)
        self._times = HAND_OVERS.setdefault(pool, HandOverTimes())

    def cursor(self) -> _Cursor:  # type: ignore[override]
        """A cursor (made without a hand-over: the statement makes its own)."""
        return _Cursor(self)

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # Every hand-over goes through here: aiosqlite's own calls (commit, rollback, close)
        # as well as our cursors and run().
        work = _Timed(fn, args, kwargs)
        queued = time.perf_counter()
        try:
            return await super()._execute(work)  # type: ignore[no-untyped-call]
        finally:
            if work.finished:
                self._times.add(queued, work.started, work.finished, time.perf_counter())


def connector(url: URL, pool: str, **connect_args: Any) -> Callable[[], Awaitable[Connection]]:
    """An ``async_creator`` for ``create_async_engine``: connects to ``url`` as SQLAlchemy's
    aiosqlite dialect would (its ``create_connect_args``, then ``connect_args``), through
    :class:`Connection`, whose hand-overs count under ``pool``."""
    args, options = SQLiteDialect_aiosqlite().create_connect_args(url)
    connect = partial(sqlite3.connect, *args, **{**options, **connect_args})

    async def open_connection() -> Connection:
        connection = Connection(connect, pool)
        connection._thread.daemon = True  # as SQLAlchemy sets aiosqlite's: exit never waits
        await connection  # starts its thread and connects (aiosqlite returns it typed as its own)
        return connection

    return open_connection
