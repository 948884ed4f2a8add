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
per row, each time queueing behind the threads verifying signatures. An insert split
over several such statements reaches the driver's thread in one hand-over
(``round_trip.run``).

:class:`Writes` sends several such writes (and updates) at once: on SQLite in one hand-over
to the driver's thread, for the sequencer's closing writes of a batch.

Binary columns skip their bind processor (both drivers bind ``bytes`` as they are; SQLite's
would wrap each value in a ``memoryview``), and a value that is the same object as the row
before's is converted once (a batch's entries share one integration time).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import asyncpg
from sqlalchemy import LargeBinary, Table, bindparam, insert, update
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError
from sqlalchemy.ext.asyncio import AsyncConnection

from coalition_server.store import round_trip
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
    params = _processed(rows, processors)
    if dialect.name != "sqlite":
        if dialect.driver == "asyncpg" and len(params) >= _COPY_MIN_ROWS:
            table = model.__table__
            assert isinstance(table, Table)
            await _copy(conn, table, columns, params, sql)
        else:
            await conn.exec_driver_sql(sql, params)
        return
    await round_trip.run(conn, list(_values_lists(sql, len(columns), params, dialect)))


def _processed(
    rows: Sequence[tuple[Any, ...]], processors: tuple[tuple[int, Processor], ...]
) -> Sequence[tuple[Any, ...]]:
    """``rows`` with each processed column converted (a value that is the same object as
    the row before's, once)."""
    if not processors:
        return rows
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
    return converted


def _values_lists(
    sql: str, width: int, params: Sequence[tuple[Any, ...]], dialect: Dialect
) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """SQLite's statements for an INSERT of ``params``: multi-row ``VALUES`` lists of as
    many rows as SQLAlchemy lets one statement bind. Each statement is a round trip to the
    driver's thread, and under load each costs milliseconds waiting for the GIL
    (SQLAlchemy's own inserts also stop at 1,000 rows)."""
    head, _, one_row = sql.rpartition(" VALUES ")
    per_statement = max(1, dialect.insertmanyvalues_max_parameters // width)
    for start in range(0, len(params), per_statement):
        chunk = params[start : start + per_statement]
        rows_sql = ", ".join([one_row] * len(chunk))
        yield f"{head} VALUES {rows_sql}", tuple(value for row in chunk for value in row)


@lru_cache(maxsize=16)
def _compiled_update(
    model: type[Base], keys: tuple[str, ...], columns: tuple[str, ...], dialect: Dialect
) -> tuple[str, tuple[str, ...], dict[str, Processor]]:
    """The UPDATE of ``columns`` where ``keys`` equal given values, for ``dialect``: its
    SQL, the names its parameters bind in order (a key as ``key_<name>``), and the bind
    processor of each name whose column has one there."""
    table = model.__table__
    assert isinstance(table, Table)
    statement = (
        update(table)
        .where(*(table.c[name] == bindparam(f"key_{name}") for name in keys))
        .values({name: bindparam(name) for name in columns})
    )
    compiled = statement.compile(dialect=dialect)
    order = tuple(compiled.positiontup or ())
    if sorted(order) != sorted([*columns, *(f"key_{name}" for name in keys)]):
        raise ValueError(f"{table.name}: unexpected parameters {order}")
    processors: dict[str, Processor] = {}
    for name in order:
        column = table.c[name.removeprefix("key_")]
        if isinstance(column.type, LargeBinary):
            continue
        processor = column.type.dialect_impl(dialect).bind_processor(dialect)
        if processor is not None:
            processors[name] = processor
    return str(compiled), order, processors


@dataclass(frozen=True)
class _Insert:
    model: type[Base]
    columns: tuple[str, ...]
    rows: Sequence[tuple[Any, ...]]


@dataclass(frozen=True)
class _Update:
    model: type[Base]
    keys: dict[str, Any]
    values: dict[str, Any]


class Writes:
    """Writes that need no answer, sent to the database together and in their order.

    On SQLite they reach the driver's thread in one hand-over (:mod:`round_trip`).

    On PostgreSQL they run one after another, inserts as :func:`insert_rows` sends them:
    asyncpg has no pipeline for statements with parameters.

    Errors are raised as SQLAlchemy raises the driver's (``IntegrityError`` and so on); the
    caller's transaction then rolls back whatever was sent before the failing statement.
    """

    def __init__(self) -> None:
        self._writes: list[_Insert | _Update] = []

    def __len__(self) -> int:
        return len(self._writes)

    def insert(
        self, model: type[Base], columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
    ) -> None:
        """Add an insert of ``rows`` (as :func:`insert_rows` takes them); none: nothing."""
        if rows:
            self._writes.append(_Insert(model, tuple(columns), rows))

    def update(self, model: type[Base], keys: dict[str, Any], values: dict[str, Any]) -> None:
        """Add an update setting ``values`` (column: value) in the rows whose ``keys``
        columns have the given values."""
        if not values:
            raise ValueError("an update needs at least one value")
        self._writes.append(_Update(model, dict(keys), dict(values)))

    async def send(self, conn: AsyncConnection) -> None:
        """Run the writes on ``conn``, in order (then forget them)."""
        writes, self._writes = self._writes, []
        dialect = conn.dialect
        if dialect.name != "sqlite":
            for write in writes:
                if isinstance(write, _Insert):
                    await insert_rows(conn, write.model, write.columns, write.rows)
                else:
                    sql, params = _update_statement(write, dialect)
                    await conn.exec_driver_sql(sql, params)
            return
        statements: list[round_trip.Statement] = []
        for write in writes:
            if isinstance(write, _Insert):
                sql, processors = _compiled(write.model, write.columns, dialect)
                rows = _processed(write.rows, processors)
                statements.extend(_values_lists(sql, len(write.columns), rows, dialect))
            else:
                statements.append(_update_statement(write, dialect))
        await round_trip.run(conn, statements)


def _update_statement(write: _Update, dialect: Dialect) -> tuple[str, tuple[Any, ...]]:
    sql, order, processors = _compiled_update(
        write.model, tuple(write.keys), tuple(write.values), dialect
    )
    given = {**write.values, **{f"key_{name}": value for name, value in write.keys.items()}}
    return sql, tuple(
        processors[name](given[name]) if name in processors else given[name] for name in order
    )


async def present(
    conn: AsyncConnection, model: type[Base], column: str, values: Sequence[Any]
) -> set[Any]:
    """Which of ``values`` (plain ``bytes``, ``str`` or ``int``: no bind processing) are in
    ``column`` of ``model``'s table, asked with ``IN`` lists as SQLAlchemy's ``in_`` asks,
    without rendering the list anew for each execution (milliseconds of the event loop for
    a thousand values): the queries of :func:`presence_queries`."""
    found: set[Any] = set()
    for sql, params in presence_queries(conn.dialect, model, column, values):
        rows = await conn.exec_driver_sql(sql, params)
        found.update(row[0] for row in rows)
    return found


def presence_queries(
    dialect: Dialect, model: type[Base], column: str, values: Sequence[Any]
) -> list[round_trip.Statement]:
    """The queries :func:`present` runs: each returns the values it asks about that are in
    ``column``.

    On PostgreSQL at most 500 a query, and not as ``= ANY(array)``: past that, or with an
    array, its cached generic plan (made while the table was small) scans the whole table
    however large it grows. On SQLite as many as a statement may bind: one query.
    """
    table = model.__table__
    assert isinstance(table, Table)
    preparer = dialect.identifier_preparer
    name = preparer.quote(table.c[column].name)
    # Identifiers from the table's metadata, quoted by the dialect; the values are bound.
    head = f"SELECT {name} FROM {preparer.format_table(table)} WHERE {name} IN "  # noqa: S608
    sqlite = dialect.name == "sqlite"
    per_query = dialect.insertmanyvalues_max_parameters if sqlite else 500
    queries = []
    for start in range(0, len(values), per_query):
        chunk = tuple(values[start : start + per_query])
        marks = ["?"] * len(chunk) if sqlite else [f"${n}" for n in range(1, len(chunk) + 1)]
        queries.append((f"{head}({', '.join(marks)})", chunk))
    return queries


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
