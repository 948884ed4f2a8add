"""Driver-level bulk inserts store exactly what SQLAlchemy's ``insert`` stores, on both
databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, insert, select
from sqlalchemy.exc import IntegrityError

from coalition_server.store import bulk, migrate, models
from coalition_server.store.database import Database

COLUMNS = (
    "consent_id",
    "contributor_key_id",
    "idx",
    "payload",
    "state",
    "not_before",
    "not_after",
    "nonce",
)
AT = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


def _entry(index: int) -> dict[str, object]:
    return {
        "idx": index,
        "leaf_hash": index.to_bytes(2, "big") * 16,
        "leaf": b"leaf %d" % index,
        "statement_hash": b"s" + index.to_bytes(31, "big"),
        "kind": "ConsentToken",
        "signer_key_id": "a" * 64,
        "integrated_time": AT,
    }


def _consent(index: int) -> tuple[object, ...]:
    return (
        f"{index:032x}",
        "a" * 64,
        index,
        b"\x00signed payload\xff",
        1,
        AT,
        AT + timedelta(days=365),
        index.to_bytes(2, "big") * 8,
    )


async def test_insert_rows_stores_what_insert_stores(db_url: str) -> None:
    database = Database.connect(db_url)
    try:
        await migrate.upgrade(database)
        async with database.writer.begin() as conn:
            await conn.execute(insert(models.LogEntry), [_entry(0), _entry(1)])
            first = dict(zip(COLUMNS, _consent(0), strict=True))
            await conn.execute(insert(models.ConsentRow), [first])
            await bulk.insert_rows(conn, models.ConsentRow, COLUMNS, [_consent(1)])
            await bulk.insert_rows(conn, models.ConsentRow, COLUMNS, [])
        async with database.reader.connect() as conn:
            # Plain SQL: the values as the driver returns them (SQLite's datetimes as text).
            stored = (
                await conn.exec_driver_sql(
                    "SELECT payload, state, not_before, not_after, withdrawal_idx, "
                    "contributor_key_id FROM consents ORDER BY idx"
                )
            ).all()
        assert len(stored) == 2
        assert tuple(stored[0]) == tuple(stored[1])
    finally:
        await database.dispose()


async def test_insert_rows_refuses_columns_out_of_table_order(db_url: str) -> None:
    database = Database.connect(db_url)
    try:
        await migrate.upgrade(database)
        async with database.writer.begin() as conn:
            with pytest.raises(ValueError, match="table order"):
                await bulk.insert_rows(
                    conn, models.ConsentItem, ("item_id", "consent_id"), [("a", "b")]
                )
    finally:
        await database.dispose()


async def test_insert_rows_chunks_large_inserts_into_multi_row_statements(db_url: str) -> None:
    database = Database.connect(db_url)
    statements: list[tuple[str, bool]] = []

    def seen(*args: Any) -> None:
        statement, executemany = args[2], args[5]
        if statement.startswith("INSERT INTO merkle_nodes"):
            statements.append((statement, executemany))

    event.listen(database.writer.sync_engine, "before_cursor_execute", seen)
    rows = [(level, index, bytes([index % 256]) * 32) for level in (0, 1) for index in range(1250)]
    rows += [(2, index, bytes([index % 256]) * 32) for index in range(10_000)]
    try:
        await migrate.upgrade(database)
        async with database.writer.begin() as conn:
            await bulk.insert_rows(conn, models.MerkleNode, ("level", "idx", "hash"), rows)
        async with database.reader.connect() as conn:
            stored = (
                await conn.execute(
                    select(models.MerkleNode.level, models.MerkleNode.idx, models.MerkleNode.hash)
                )
            ).all()
        assert sorted(tuple(row) for row in stored) == rows
        if database.is_sqlite:
            # VALUES lists of as many rows as one statement may bind: one round trip to the
            # driver's thread (and one GIL release) per statement, not per row.
            per_statement = database.writer.dialect.insertmanyvalues_max_parameters // 3
            assert [executemany for _, executemany in statements] == [False, False]
            assert [statement.count("(?, ?, ?)") for statement, _ in statements] == [
                per_statement,
                2 * 1250 + 10_000 - per_statement,
            ]
        else:
            assert [executemany for _, executemany in statements] == [True]
    finally:
        await database.dispose()


async def test_present_finds_exactly_the_stored_values(db_url: str) -> None:
    database = Database.connect(db_url)
    try:
        await migrate.upgrade(database)
        async with database.writer.begin() as conn:
            await conn.execute(insert(models.LogEntry), [_entry(0), _entry(1)])
        stored = [_entry(0)["statement_hash"], _entry(1)["statement_hash"]]
        # More values than one query asks about, the stored ones among them.
        count = 1200 if not database.is_sqlite else 33_000
        asked = [bytes([n % 256, n // 256]) * 16 for n in range(count)] + stored
        async with database.reader.connect() as conn:
            found = await bulk.present(conn, models.LogEntry, "statement_hash", asked)
            assert await bulk.present(conn, models.LogEntry, "statement_hash", []) == set()
        assert found == set(stored)
    finally:
        await database.dispose()


async def test_a_refused_bulk_insert_raises_integrity_error_and_the_transaction_goes_on(
    db_url: str,
) -> None:
    # Enough rows for PostgreSQL's COPY path (fewer go as an executemany).
    size = bulk._COPY_MIN_ROWS
    database = Database.connect(db_url)
    try:
        await migrate.upgrade(database)
        async with database.writer.begin() as conn:
            await conn.execute(insert(models.LogEntry), [_entry(i) for i in range(2 * size)])
            first = [_consent(i) for i in range(size)]
            second = [_consent(i) for i in range(size, 2 * size)]
            await bulk.insert_rows(conn, models.ConsentRow, COLUMNS, first)
            with pytest.raises(IntegrityError):
                async with conn.begin_nested():
                    # A clash with a row already in the transaction, at the end.
                    await bulk.insert_rows(
                        conn, models.ConsentRow, COLUMNS, [*second[1:], first[0]]
                    )
            await bulk.insert_rows(conn, models.ConsentRow, COLUMNS, second)
        async with database.reader.connect() as conn:
            stored = (
                await conn.execute(select(models.ConsentRow.idx).order_by(models.ConsentRow.idx))
            ).all()
        assert [row.idx for row in stored] == list(range(2 * size))
    finally:
        await database.dispose()
