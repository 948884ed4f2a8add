"""Several SQLite statements in one hand-over to the driver's thread.

aiosqlite runs every statement on its connection's own thread: each one is a hand-over to
that thread and back, and the coroutine that sent it then waits for its turn of the event
loop behind the calls that arrived meanwhile. The sequencer sends a batch's statements one
after another while every caller in the batch waits, so each statement adds that wait to
the batch's time. Sending the statements a batch knows in advance together made
negotiation rounds on SQLite 9% faster twice over (the closing writes, then the opening
reads; docs/benchmarks.md).

aiosqlite has no public way to run several statements in one hand-over (its
``executescript`` commits first and binds no parameters), so :func:`run` uses its
``_execute``, the method its own calls go through, with the ``sqlite3`` connection it
wraps. On another driver the statements go one at a time.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import aiosqlite
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
        found: list[Rows] = []
        for sql, params in statements:
            result = await conn.exec_driver_sql(sql, params)
            found.append([tuple(row) for row in result] if result.returns_rows else [])
        return found
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
