"""Round trips to SQLite's thread: one per statement, and several statements in one.

aiosqlite runs every statement on its connection's own thread: each call is a hand-over to
that thread and back, and the coroutine that made it then waits for its turn of the event
loop behind the calls that arrived meanwhile. The sequencer sends a batch's statements one
after another while every caller in the batch waits, so each hand-over adds that wait to
the batch's time.

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
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import aiosqlite
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
    """Run SQLite ``statements`` in order on the connection (and so in the transaction)
    ``conn`` holds, in one hand-over; the rows each returned (none for a write).

    A failing statement raises as SQLAlchemy raises the driver's errors (``IntegrityError``,
    ``OperationalError``, ...; its parameters hidden, as the engines hide them); the ones
    before it stay in the caller's transaction, which then rolls them back.
    """
    if conn.dialect.name != "sqlite":
        raise ValueError("one hand-over for several statements is SQLite's")
    if not statements:
        return []
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    if not isinstance(driver, aiosqlite.Connection):
        raise TypeError("one hand-over for several statements needs aiosqlite's connection")
    failed: list[Statement] = []

    def run_all(connection: sqlite3.Connection) -> list[Rows]:
        cursor = connection.cursor()
        found: list[Rows] = []
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


class Connection(aiosqlite.Connection):
    """aiosqlite's connection, whose cursors take one hand-over per statement."""

    def cursor(self) -> _Cursor:  # type: ignore[override]
        """A cursor (made without a hand-over: the statement makes its own)."""
        return _Cursor(self)


def connector(url: URL, **connect_args: Any) -> Callable[[], Awaitable[Connection]]:
    """An ``async_creator`` for ``create_async_engine``: connects to ``url`` as SQLAlchemy's
    aiosqlite dialect would (its ``create_connect_args``, then ``connect_args``), through
    :class:`Connection`."""
    args, options = SQLiteDialect_aiosqlite().create_connect_args(url)
    connect = partial(sqlite3.connect, *args, **{**options, **connect_args})

    async def open_connection() -> Connection:
        connection = Connection(connect, iter_chunk_size=64)
        connection._thread.daemon = True  # as SQLAlchemy sets aiosqlite's: exit never waits
        await connection  # starts its thread and connects (aiosqlite returns it typed as its own)
        return connection

    return open_connection
