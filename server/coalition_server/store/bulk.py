"""Bulk inserts at the driver level: a thousand rows without a thousand rounds of Python.

``conn.execute(insert(model), [dict, ...])`` builds each row's parameters in Python (the
compiled statement's ``construct_params`` and every bind processor, row by row); for a batch
of consent tokens that was most of what recording them cost the event loop. :func:`insert_rows`
sends the same INSERT (compiled by SQLAlchemy for the connection's dialect) with the rows as
plain tuples, so only the columns whose type has a bind processor on that dialect (SQLite
stores datetimes as text) are touched per row.

On PostgreSQL, in the caller's transaction, the rows go as one ``COPY`` (asyncpg's
``copy_records_to_table``): against an executemany of the same rows, a batch of a thousand
tokens cost the event loop half the CPU (14 against 28 ms) and the database 70 ms less.
Fewer than :data:`_COPY_MIN_ROWS` go as asyncpg's ``executemany``, below SQLAlchemy's
execution layer (``round_trip.run_many``). Errors are raised as SQLAlchemy raises the
driver's (an integrity error as ``IntegrityError``, a lost connection invalidated first).
On SQLite the rows go as multi-row ``VALUES``
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

from collections import namedtuple
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import LargeBinary, Table, bindparam, insert, update
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

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
        if not round_trip.below_sqlalchemy(conn):
            await conn.exec_driver_sql(sql, params)
        elif len(params) >= _COPY_MIN_ROWS:
            table = model.__table__
            assert isinstance(table, Table)
            await _copy(conn, table, columns, params)
        else:
            await round_trip.run_many(conn, sql, params)
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

    On PostgreSQL, in a transaction, consecutive writes to different tables go as one
    statement of data-modifying ``WITH`` queries (inserts from ``unnest`` of one array per
    column), on asyncpg's connection (``round_trip``): asyncpg has no pipeline for
    statements with parameters, and each statement is a round trip while the batch's
    callers wait. A table written twice starts a new statement (the queries of one
    statement see the same snapshot, and one row may not be changed twice in it); an insert
    of :data:`_COPY_MIN_ROWS` rows or more goes alone, as a COPY.

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
            if not round_trip.below_sqlalchemy(conn):
                for write in writes:
                    if isinstance(write, _Insert):
                        await insert_rows(conn, write.model, write.columns, write.rows)
                    else:
                        await conn.exec_driver_sql(*_update_statement(write, dialect))
                return
            together: list[_Insert | _Update] = []
            for write in writes:
                alone = isinstance(write, _Insert) and len(write.rows) >= _COPY_MIN_ROWS
                if alone or any(other.model is write.model for other in together):
                    await _send_together(conn, together)
                    together = []
                if alone:
                    assert isinstance(write, _Insert)
                    await insert_rows(conn, write.model, write.columns, write.rows)
                else:
                    together.append(write)
            await _send_together(conn, together)
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


async def _send_together(conn: AsyncConnection, writes: Sequence[_Insert | _Update]) -> None:
    """PostgreSQL: ``writes`` (to different tables) as one statement, in one round trip."""
    if not writes:
        return
    dialect = conn.dialect
    if len(writes) == 1:
        (write,) = writes
        if isinstance(write, _Insert):
            await insert_rows(conn, write.model, write.columns, write.rows)
        else:
            await round_trip.run(conn, [_update_statement(write, dialect)])
        return
    shape = tuple(
        (write.model, "insert", write.columns)
        if isinstance(write, _Insert)
        else (write.model, "update", (*write.values, *(f"key_{name}" for name in write.keys)))
        for write in writes
    )
    params: list[Any] = []
    for write in writes:
        if isinstance(write, _Insert):
            _, processors = _compiled(write.model, write.columns, dialect)
            rows = _processed(write.rows, processors)
            params.extend(list(column) for column in zip(*rows, strict=True))
        else:
            _, _, by_name = _compiled_update(
                write.model, tuple(write.keys), tuple(write.values), dialect
            )
            given = {**write.values, **{f"key_{name}": v for name, v in write.keys.items()}}
            for name in (*write.values, *(f"key_{name}" for name in write.keys)):
                value = given[name]
                params.append(by_name[name](value) if name in by_name else value)
    await round_trip.run(conn, [(_together_sql(shape, dialect), tuple(params))])


@lru_cache(maxsize=32)
def _together_sql(
    shape: tuple[tuple[type[Base], str, tuple[str, ...]], ...], dialect: Dialect
) -> str:
    """The one statement for writes of this ``shape``: per write its model, whether it is an
    insert (its columns) or an update (its values' columns, then ``key_``-prefixed keys)."""
    # Identifiers from the tables' metadata, quoted by the dialect; the values are bound.
    preparer = dialect.identifier_preparer
    queries: list[str] = []
    number = 0
    for model, kind, names in shape:
        table = model.__table__
        assert isinstance(table, Table)

        def cast_type(name: str, table: Table = table) -> str:
            return table.c[name].type.compile(dialect=dialect)

        target = preparer.format_table(table)
        if kind == "insert":
            arrays = []
            for name in names:
                number += 1
                arrays.append(f"${number}::{cast_type(name)}[]")
            columns = ", ".join(preparer.quote(table.c[name].name) for name in names)
            unnest = ", ".join(arrays)
            queries.append(f"INSERT INTO {target} ({columns}) SELECT * FROM unnest({unnest})")  # noqa: S608
        else:
            sets: list[str] = []
            wheres: list[str] = []
            for name in names:
                number += 1
                column = name.removeprefix("key_")
                quoted = preparer.quote(table.c[column].name)
                clause = f"{quoted} = ${number}::{cast_type(column)}"
                (wheres if name.startswith("key_") else sets).append(clause)
            where = " AND ".join(wheres)
            queries.append(f"UPDATE {target} SET {', '.join(sets)} WHERE {where}")  # noqa: S608
    ctes = ", ".join(f"w{position} AS ({query})" for position, query in enumerate(queries))
    return f"WITH {ctes} SELECT 1"


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
    queries = presence_queries(conn.dialect, model, column, values)
    if conn.dialect.name == "sqlite" or not conn.in_transaction():
        found: set[Any] = set()
        for sql, params in queries:
            found.update(row[0] for row in await conn.exec_driver_sql(sql, params))
        return found
    return {row[0] for rows in await round_trip.run(conn, queries) for row in rows}


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


@lru_cache(maxsize=64)
def _compiled_many(
    statement: Executable, dialect: Dialect
) -> tuple[str, tuple[str, ...], tuple[tuple[int, Processor], ...]]:
    """``statement`` for ``dialect``: its SQL, the names its parameters bind in order, and
    the (position, bind processor) of each parameter whose type has one there."""
    compiled = cast(SQLCompiler, cast(ClauseElement, statement).compile(dialect=dialect))
    order = tuple(compiled.positiontup or ())
    processors = tuple(
        (position, processor)
        for position, name in enumerate(order)
        if not isinstance(param_type := compiled.binds[name].type, LargeBinary)
        and (processor := param_type.dialect_impl(dialect).bind_processor(dialect)) is not None
    )
    return str(compiled), order, processors


async def execute_many(
    conn: AsyncConnection, statement: Executable, rows: Sequence[Mapping[str, Any]]
) -> None:
    """Run the write ``statement`` (built once, with a parameter per name in ``rows``) for
    each of ``rows``, as ``conn.execute(statement, rows)`` would, below SQLAlchemy's
    execution layer where the connection is in a transaction: one round trip (on SQLite
    one hand-over), without SQLAlchemy's per-row parameter handling (decision 42)."""
    if not rows:
        return
    dialect = conn.dialect
    if not round_trip.below_sqlalchemy(conn):
        await conn.execute(statement, list(rows))
        return
    sql, order, processors = _compiled_many(statement, dialect)
    params = _processed([tuple(row[name] for name in order) for row in rows], processors)
    if dialect.name == "sqlite":
        await round_trip.run(conn, [(sql, row) for row in params])
    else:
        await round_trip.run_many(conn, sql, params)


_IN_LIST_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 500)
"""The lengths :func:`select_in` pads its IN lists to (by repeating a value): a statement
per length is prepared and cached by the driver, and a list as long as the batch's made a
new one for every length (a round trip to prepare it, and PostgreSQL's cache of them is
as small as a hundred)."""


@lru_cache(maxsize=256)
def _select_in(
    model: type[Base],
    columns: tuple[str, ...],
    key: str,
    order_by: str | None,
    count: int,
    dialect: Dialect,
) -> tuple[str, Any, tuple[tuple[int, Processor], ...]]:
    """The SELECT of ``columns`` of ``model``'s rows whose ``key`` is one of ``count``
    values, for ``dialect``; the named tuple its rows become, and the result processor of
    each column that has one there."""
    table = model.__table__
    assert isinstance(table, Table)
    preparer = dialect.identifier_preparer
    names = ", ".join(preparer.quote(table.c[name].name) for name in columns)
    sqlite = dialect.name == "sqlite"
    marks = ", ".join("?" if sqlite else f"${n}" for n in range(1, count + 1))
    order = f" ORDER BY {preparer.quote(table.c[order_by].name)}" if order_by else ""
    # Identifiers from the table's metadata, quoted by the dialect; the values are bound.
    sql = (
        f"SELECT {names} FROM {preparer.format_table(table)} "  # noqa: S608
        f"WHERE {preparer.quote(table.c[key].name)} IN ({marks}){order}"
    )
    processors = tuple(
        (position, processor)
        for position, name in enumerate(columns)
        if (processor := table.c[name].type.dialect_impl(dialect).result_processor(dialect, None))
        is not None
    )
    return sql, namedtuple(f"{table.name}_row", columns), processors


async def select_in(
    conn: AsyncConnection,
    model: type[Base],
    key: str,
    values: Iterable[str],
    *,
    columns: Sequence[str] | None = None,
    order_by: str | None = None,
) -> list[Any]:
    """The rows of ``model``'s table whose ``key`` column holds one of ``values`` (plain
    strings: no bind processing), as named tuples of ``columns`` (default: all, in table
    order) with the columns' result processing, ordered by ``order_by`` within each 500
    values (callers that need one order across more sort them).

    The SQL is rendered once per shape and run below SQLAlchemy's execution layer where
    the connection is in a transaction (``round_trip.run``): building ``select(...)
    .where(column.in_(values))`` and executing it cost the event loop about 400 us a
    query, sending the same statement to the driver about 50 (decision 42).
    """
    wanted = sorted(set(values))
    if not wanted:
        return []
    table = model.__table__
    assert isinstance(table, Table)
    names = tuple(columns) if columns is not None else tuple(c.key for c in table.columns)
    dialect = conn.dialect
    statements: list[round_trip.Statement] = []
    shapes = []
    for start in range(0, len(wanted), _IN_LIST_SIZES[-1]):
        chunk = wanted[start : start + _IN_LIST_SIZES[-1]]
        size = next(size for size in _IN_LIST_SIZES if size >= len(chunk))
        sql, row_type, processors = _select_in(model, names, key, order_by, size, dialect)
        statements.append((sql, tuple(chunk) + (chunk[-1],) * (size - len(chunk))))
        shapes.append((row_type, processors))
    if round_trip.below_sqlalchemy(conn):
        found = await round_trip.run(conn, statements)
    else:
        found = [
            [tuple(row) for row in await conn.exec_driver_sql(sql, params)]
            for sql, params in statements
        ]
    rows: list[Any] = []
    for chunk_rows, (row_type, processors) in zip(found, shapes, strict=True):
        for row in chunk_rows:
            if processors:
                values_ = list(row)
                for position, processor in processors:
                    values_[position] = processor(values_[position])
                row = tuple(values_)
            rows.append(row_type._make(row))
    return rows


async def _copy(
    conn: AsyncConnection, table: Table, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    """``rows`` into ``table`` by asyncpg's ``COPY``, in the connection's transaction."""
    driver = await round_trip.asyncpg_in_transaction(conn)
    try:
        await driver.copy_records_to_table(
            table.name, records=rows, columns=list(columns), schema_name=table.schema
        )
    except Exception as error:
        await round_trip.raise_as_sqlalchemy(conn, driver, error, f"COPY {table.name}")
