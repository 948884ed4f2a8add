"""Bulk inserts at the driver level: a thousand rows without a thousand rounds of Python.

``conn.execute(insert(model), [dict, ...])`` builds each row's parameters in Python (the
compiled statement's ``construct_params`` and every bind processor, row by row); for a batch
of consent tokens that was most of what recording them cost the event loop. :func:`insert_rows`
sends the same INSERT (compiled by SQLAlchemy for the connection's dialect) with the rows as
plain tuples, so only the columns whose type has a bind processor on that dialect (SQLite
stores datetimes as text) are touched per row.

On PostgreSQL the rows go as one executemany (asyncpg pipelines it). On SQLite they go as
multi-row ``VALUES`` statements, as SQLAlchemy's own inserts do there (see ``database``):
the sqlite3 module releases the GIL around each statement it steps, so an executemany took
the GIL back once per row, each time queueing behind the threads verifying signatures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

from sqlalchemy import Table, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from coalition_server.store.models import Base

Processor = Callable[[Any], Any]


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
        if (processor := table.c[name].type.dialect_impl(dialect).bind_processor(dialect))
        is not None
    )
    return str(compiled), processors


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
        converted = []
        for row in rows:
            values = list(row)
            for position, processor in processors:
                values[position] = processor(values[position])
            converted.append(tuple(values))
        params = converted
    if dialect.name != "sqlite":
        await conn.exec_driver_sql(sql, params)
        return
    head, _, one_row = sql.rpartition(" VALUES ")
    # As many rows per statement as SQLAlchemy's insertmanyvalues would put in one.
    per_statement = max(
        1,
        min(
            dialect.insertmanyvalues_page_size,
            dialect.insertmanyvalues_max_parameters // len(columns),
        ),
    )
    for start in range(0, len(params), per_statement):
        chunk = params[start : start + per_statement]
        rows_sql = ", ".join([one_row] * len(chunk))
        await conn.exec_driver_sql(
            f"{head} VALUES {rows_sql}", tuple(value for row in chunk for value in row)
        )
