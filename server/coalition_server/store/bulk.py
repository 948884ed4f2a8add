"""Bulk inserts at the driver level: a thousand rows without a thousand rounds of Python.

``conn.execute(insert(model), [dict, ...])`` builds each row's parameters in Python (the
compiled statement's ``construct_params`` and every bind processor, row by row); for a batch
of consent tokens that was most of what recording them cost the event loop. :func:`insert_rows`
sends the same INSERT (compiled by SQLAlchemy for the connection's dialect) with the rows as
plain tuples, so only the columns whose type has a bind processor on that dialect (SQLite
stores datetimes as text) are touched per row.

On PostgreSQL the rows go as one ``COPY`` (asyncpg's ``copy_records_to_table``), inside the
caller's transaction: against an executemany of the same rows, a batch of a thousand tokens
cost the event loop half the CPU (14 against 28 ms) and the database 70 ms less. Its errors
are raised as SQLAlchemy raises the driver's (an integrity error as ``IntegrityError``, a
lost connection invalidated first). On SQLite the rows go as multi-row ``VALUES``
statements, as SQLAlchemy's own inserts do there (see ``database``): the sqlite3 module
releases the GIL around each statement it steps, so an executemany took the GIL back once
per row, each time queueing behind the threads verifying signatures.

Binary columns skip their bind processor (both drivers bind ``bytes`` as they are; SQLite's
would wrap each value in a ``memoryview``), and a value that is the same object as the row
before's is converted once (a batch's entries share one integration time).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import asyncpg
from sqlalchemy import LargeBinary, Table, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError
from sqlalchemy.ext.asyncio import AsyncConnection

from coalition_server.store.models import Base

Processor = Callable[[Any], Any]
_NOTHING = object()


@lru_cache(maxsize=64)
def _compiled(
    model: type[Base], columns: tuple[str, ...], dialect: Dialect
) -> tuple[str, tuple[tuple[int, Processor], ...]]:
    """The INSERT's SQL for ``dialect``, and the (position, bind processor) of each column
    that has one there."""
    table = model.__table__
    assert isinstance(table, Table)
    compiled = insert(table).compile(dialect=dialect, column_keys=list(columns))
    # Both drivers' paramstyles are positional (SQLite's ?, asyncpg's $n) and bind in the
    # compiled order: the rows' tuples are in ``columns`` order, so the two must agree.
    if tuple(compiled.positiontup or ()) != columns:
        raise ValueError(f"{table.name}: give the columns in table order, not {columns}")
    processors = tuple(
        (position, processor)
        for position, name in enumerate(columns)
        if not isinstance(table.c[name].type, LargeBinary)
        and (processor := table.c[name].type.dialect_impl(dialect).bind_processor(dialect))
        is not None
    )
    return str(compiled), processors


_COPY_MIN_ROWS = 200
"""Fewer rows go as an executemany: asyncpg's COPY first asks the server for the table's
column types, a round trip that a single append's batch (tens of rows) does not repay."""


async def insert_rows(
    conn: AsyncConnection,
    model: type[Base],
    columns: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
) -> None:
    """Insert ``rows`` (tuples of values in ``columns``, which are in table order) into
    ``model``'s table; values go through the same bind processors as with ``insert(model)``."""
    if not rows:
        return
    dialect = conn.dialect
    sql, processors = _compiled(model, tuple(columns), dialect)
    params: Sequence[tuple[Any, ...]] = rows
    if processors:
        # Per processed column, the last value seen and what it became.
        last: list[tuple[Any, Any]] = [(_NOTHING, None)] * len(processors)
        converted = []
        for row in rows:
            values = list(row)
            for slot, (position, processor) in enumerate(processors):
                value = values[position]
                seen, done = last[slot]
                if value is not seen:
                    done = processor(value)
                    last[slot] = (value, done)
                values[position] = done
            converted.append(tuple(values))
        params = converted
    if dialect.name != "sqlite":
        if dialect.driver == "asyncpg" and len(params) >= _COPY_MIN_ROWS:
            table = model.__table__
            assert isinstance(table, Table)
            await _copy(conn, table, columns, params, sql)
        else:
            await conn.exec_driver_sql(sql, params)
        return
    head, _, one_row = sql.rpartition(" VALUES ")
    # As many rows per statement as SQLAlchemy lets one statement bind: each statement is a
    # round trip to the driver's thread, and under load each costs milliseconds waiting
    # for the GIL (SQLAlchemy's own inserts also stop at 1,000 rows).
    per_statement = max(1, dialect.insertmanyvalues_max_parameters // len(columns))
    for start in range(0, len(params), per_statement):
        chunk = params[start : start + per_statement]
        rows_sql = ", ".join([one_row] * len(chunk))
        await conn.exec_driver_sql(
            f"{head} VALUES {rows_sql}", tuple(value for row in chunk for value in row)
        )


async def present(
    conn: AsyncConnection, model: type[Base], column: str, values: Sequence[Any]
) -> set[Any]:
    """Which of ``values`` (plain ``bytes``, ``str`` or ``int``: no bind processing) are in
    ``column`` of ``model``'s table, asked with ``IN`` lists as SQLAlchemy's ``in_`` asks,
    without rendering the list anew for each execution (milliseconds of the event loop for
    a thousand values).

    On PostgreSQL at most 500 a query, and not as ``= ANY(array)``: past that, or with an
    array, its cached generic plan (made while the table was small) scans the whole table
    however large it grows. On SQLite as many as a statement may bind: one round trip.
    """
    table = model.__table__
    assert isinstance(table, Table)
    preparer = conn.dialect.identifier_preparer
    name = preparer.quote(table.c[column].name)
    # Identifiers from the table's metadata, quoted by the dialect; the values are bound.
    head = f"SELECT {name} FROM {preparer.format_table(table)} WHERE {name} IN "  # noqa: S608
    sqlite = conn.dialect.name == "sqlite"
    per_query = conn.dialect.insertmanyvalues_max_parameters if sqlite else 500
    found: set[Any] = set()
    for start in range(0, len(values), per_query):
        chunk = tuple(values[start : start + per_query])
        marks = ["?"] * len(chunk) if sqlite else [f"${n}" for n in range(1, len(chunk) + 1)]
        rows = await conn.exec_driver_sql(f"{head}({', '.join(marks)})", chunk)
        found.update(row[0] for row in rows)
    return found


async def _copy(
    conn: AsyncConnection,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
    sql: str,
) -> None:
    """``rows`` into ``table`` by asyncpg's ``COPY``, in the connection's transaction; the
    INSERT ``sql`` (same rows) when there is none yet (SQLAlchemy opens it with the first
    statement: a COPY before it would commit on its own)."""
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    if not isinstance(driver, asyncpg.Connection) or not driver.is_in_transaction():
        await conn.exec_driver_sql(sql, rows)
        return
    try:
        await driver.copy_records_to_table(
            table.name, records=rows, columns=list(columns), schema_name=table.schema
        )
    except Exception as error:
        # As SQLAlchemy's own execute would raise it: the caller (and is_unavailable) know
        # only its exceptions.
        closed = driver.is_closed()
        if closed:
            await conn.invalidate(error)
        statement = f"COPY {table.name}"
        if isinstance(error, asyncpg.IntegrityConstraintViolationError):
            raise IntegrityError(statement, None, error) from error
        if isinstance(error, asyncpg.PostgresError) and not closed:
            raise DBAPIError(statement, None, error) from error
        raise InterfaceError(statement, None, error, connection_invalidated=closed) from error
