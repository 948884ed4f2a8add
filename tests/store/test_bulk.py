"""Driver-level bulk inserts store exactly what SQLAlchemy's ``insert`` stores, on both
databases."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from coalition_server.store import bulk, migrate, models, round_trip
from coalition_server.store.database import Database
from coalition_server.timeutil import as_utc

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


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The SQL of each statement sent below SQLAlchemy (``round_trip.run`` and
    ``run_many``), as it is sent."""
    statements: list[str] = []
    run, run_many = round_trip.run, round_trip.run_many

    async def one_hand_over(conn: AsyncConnection, sent: Sequence[round_trip.Statement]) -> Any:
        statements.extend(sql for sql, _ in sent)
        return await run(conn, sent)

    async def executemany(conn: AsyncConnection, sql: str, rows: Any) -> None:
        statements.append(sql)
        await run_many(conn, sql, rows)

    monkeypatch.setattr(round_trip, "run", one_hand_over)
    monkeypatch.setattr(round_trip, "run_many", executemany)
    return statements


@pytest.fixture
def copies(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tables asyncpg's COPY writes to, as they are written."""
    tables: list[str] = []
    copy_records = asyncpg.Connection.copy_records_to_table

    async def copy(self: asyncpg.Connection, table: str, **kwargs: Any) -> Any:
        tables.append(table)
        return await copy_records(self, table, **kwargs)

    monkeypatch.setattr(asyncpg.Connection, "copy_records_to_table", copy)
    return tables


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


async def test_insert_rows_chunks_large_inserts_into_multi_row_statements(
    db_url: str, monkeypatch: pytest.MonkeyPatch, copies: list[str]
) -> None:
    database = Database.connect(db_url)
    statements: list[tuple[str, bool]] = []
    hand_overs: list[int] = []

    def seen(*args: Any) -> None:
        statement, executemany = args[2], args[5]
        if statement.startswith("INSERT INTO merkle_nodes"):
            statements.append((statement, executemany))

    event.listen(database.writer.sync_engine, "before_cursor_execute", seen)
    passed_on = round_trip.run

    async def run(conn: AsyncConnection, sent: Sequence[round_trip.Statement]) -> Any:
        hand_overs.append(len(sent))
        statements.extend((sql, False) for sql, _ in sent if sql.startswith("INSERT INTO merkle"))
        return await passed_on(conn, sent)

    monkeypatch.setattr(round_trip, "run", run)
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
            # VALUES lists of as many rows as one statement may bind (one GIL release per
            # statement, not per row), all in one hand-over to the driver's thread.
            assert hand_overs == [2]
            per_statement = database.writer.dialect.insertmanyvalues_max_parameters // 3
            assert [executemany for _, executemany in statements] == [False, False]
            assert [statement.count("(?, ?, ?)") for statement, _ in statements] == [
                per_statement,
                2 * 1250 + 10_000 - per_statement,
            ]
        else:
            # One COPY, even as the transaction's first statement (it begins it first).
            assert (statements, copies) == ([], ["merkle_nodes"])
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


def _utc(values: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(as_utc(value) if isinstance(value, datetime) else value for value in values)


def _head(size: int, at: datetime) -> dict[str, Any]:
    return {"size": size, "root_hash": bytes([size % 256]) * 32, "last_integrated_time": at}


async def test_writes_store_what_insert_and_update_store(db_url: str) -> None:
    database = Database.connect(db_url)
    later = AT + timedelta(minutes=3)
    try:
        await migrate.upgrade(database)
        async with database.writer.begin() as conn:
            await conn.execute(insert(models.TreeHead), [{"id": 1, **_head(0, AT)}])
        writes = bulk.Writes()
        writes.insert(
            models.LogEntry, tuple(_entry(0)), [tuple(_entry(i).values()) for i in (0, 1)]
        )
        writes.insert(models.ConsentRow, COLUMNS, [])  # nothing
        writes.insert(models.ConsentRow, COLUMNS, [_consent(0), _consent(1)])
        # In order: the update sees the head as the insert before it left it.
        writes.update(models.TreeHead, {"id": 1}, _head(2, AT))
        writes.update(models.TreeHead, {"id": 1}, {"last_integrated_time": later})
        writes.update(models.TreeHead, {"id": 2}, _head(9, AT))  # no such row: nothing
        assert len(writes) == 5
        async with database.writer.begin() as conn:
            await writes.send(conn)
        assert len(writes) == 0
        async with database.reader.connect() as conn:
            heads = (await conn.execute(select(models.TreeHead))).all()
            entries = (await conn.execute(select(models.LogEntry).order_by("idx"))).all()
            tokens = (await conn.execute(select(models.ConsentRow).order_by("idx"))).all()
        # SQLite gives datetimes back without their zone (stored as UTC).
        assert [_utc(tuple(row)) for row in heads] == [(1, 2, bytes([2]) * 32, later)]
        assert [dict(zip(row._fields, _utc(tuple(row)), strict=True)) for row in entries] == [
            _entry(0),
            _entry(1),
        ]
        assert [_utc(tuple(getattr(row, name) for name in COLUMNS)) for row in tokens] == [
            _consent(0),
            _consent(1),
        ]
    finally:
        await database.dispose()


async def test_writes_reach_sqlite_in_one_hand_over(tmp_path: Path, hand_overs: list[str]) -> None:
    database = Database.connect(f"sqlite+aiosqlite:///{tmp_path / 'coalition.db'}")
    try:
        await migrate.upgrade(database)
        writes = bulk.Writes()
        # More nodes than one statement binds: several statements, still one hand-over.
        nodes = [(0, index, bytes([index % 256]) * 32) for index in range(5000)]
        writes.insert(models.MerkleNode, ("level", "idx", "hash"), nodes)
        writes.insert(
            models.TreeHead,
            ("id", "size", "root_hash", "last_integrated_time"),
            [(1, 0, b"\0" * 32, AT)],
        )
        writes.update(models.TreeHead, {"id": 1}, _head(5000, AT))
        async with database.writer.begin() as conn:
            hand_overs.clear()
            await writes.send(conn)
            assert len(hand_overs) == 1
        async with database.reader.connect() as conn:
            assert (await conn.execute(select(models.TreeHead.size))).scalar_one() == 5000
            count = await conn.execute(select(func.count()).select_from(models.MerkleNode))
            assert count.scalar_one() == 5000
    finally:
        await database.dispose()


async def test_a_refused_write_raises_integrity_error_and_leaves_nothing(db_url: str) -> None:
    database = Database.connect(db_url)
    try:
        await migrate.upgrade(database)
        async with database.writer.begin() as conn:
            await conn.execute(insert(models.LogEntry), [_entry(0), _entry(1)])
            await bulk.insert_rows(conn, models.ConsentRow, COLUMNS, [_consent(0)])
            writes = bulk.Writes()
            writes.insert(models.ConsentRow, COLUMNS, [_consent(1)])
            writes.insert(models.ConsentRow, COLUMNS, [_consent(0)])  # already there
            writes.update(models.ConsentRow, {"consent_id": _consent(0)[0]}, {"state": 2})
            with pytest.raises(IntegrityError) as refused:
                async with conn.begin_nested():
                    await writes.send(conn)
            assert "consents" in str(refused.value.statement)
        async with database.reader.connect() as conn:
            stored = (
                await conn.execute(select(models.ConsentRow.idx, models.ConsentRow.state))
            ).all()
        # Neither the insert before the clash nor the update after it is left.
        assert [tuple(row) for row in stored] == [(0, 1)]
    finally:
        await database.dispose()


def test_an_update_needs_a_value() -> None:
    with pytest.raises(ValueError, match="at least one value"):
        bulk.Writes().update(models.TreeHead, {"id": 1}, {})


async def test_select_in_reads_the_listed_rows_in_and_out_of_a_transaction(
    db_url: str, sent: list[str]
) -> None:
    database = Database.connect(db_url)
    try:
        await migrate.upgrade(database)
        async with database.writer.begin() as conn:
            await conn.execute(insert(models.LogEntry), [_entry(i) for i in range(620)])
            await bulk.insert_rows(
                conn, models.ConsentRow, COLUMNS, [_consent(i) for i in range(620)]
            )
        # 510 listed and 3 not there: two IN lists, of 500 and of 13 padded to 16.
        listed = [f"{i:032x}" for i in range(0, 620, 2)] + [f"{i:032x}" for i in range(1, 400, 2)]
        missing = ["f" * 32, "e" * 32, "d" * 32]
        async with database.writer.begin() as conn:
            sent.clear()
            rows = await bulk.select_in(conn, models.ConsentRow, "consent_id", listed + missing)
            assert [sql.count("?") + sql.count("$") for sql in sent] == [500, 16]
            narrow = await bulk.select_in(
                conn,
                models.ConsentRow,
                "contributor_key_id",
                ["a" * 64],
                columns=["idx", "consent_id"],
                order_by="idx",
            )
        assert sorted(row.consent_id for row in rows) == sorted(listed)
        # Every column, each as SQLAlchemy gives it back (datetimes parsed on SQLite).
        first = next(row for row in rows if row.consent_id == f"{0:032x}")
        assert first.payload == b"\x00signed payload\xff"
        assert (first.idx, first.state, first.withdrawn_items) == (0, 1, 0)
        assert as_utc(first.not_before) == AT
        assert as_utc(first.not_after) == AT + timedelta(days=365)
        assert [row.idx for row in narrow] == list(range(620))
        assert narrow[5]._fields == ("idx", "consent_id")
        # Outside a transaction (the read-only services) through SQLAlchemy, same rows.
        async with database.reader.connect() as conn:
            sent.clear()
            again = await bulk.select_in(conn, models.ConsentRow, "consent_id", listed + missing)
            assert sent == []
            assert await bulk.select_in(conn, models.ConsentRow, "consent_id", []) == []
        assert sorted(again) == sorted(rows)
    finally:
        await database.dispose()


@pytest.mark.postgres
async def test_writes_reach_postgresql_as_one_statement_per_run_of_tables(
    db_url: str, sent: list[str], copies: list[str]
) -> None:
    """Consecutive writes to different tables are one statement (one round trip); a table
    written again starts the next; an insert of COPY's size goes alone."""
    database = Database.connect(db_url)
    if database.is_sqlite:
        await database.dispose()
        pytest.skip("PostgreSQL's statements (SQLite's hand-overs: the test above)")
    try:
        await migrate.upgrade(database)
        async with database.writer.begin() as conn:
            await conn.execute(insert(models.TreeHead), [{"id": 1, **_head(0, AT)}])
        writes = bulk.Writes()
        writes.insert(
            models.LogEntry, tuple(_entry(0)), [tuple(_entry(i).values()) for i in (0, 1)]
        )
        writes.insert(models.ConsentRow, COLUMNS, [_consent(0), _consent(1)])
        writes.update(models.TreeHead, {"id": 1}, _head(2, AT))
        writes.update(models.TreeHead, {"id": 1}, {"size": 3})  # the head again: next one
        nodes = [(0, index, bytes([index % 256]) * 32) for index in range(300)]
        writes.insert(models.MerkleNode, ("level", "idx", "hash"), nodes)  # COPY, alone
        writes.insert(models.EntrySubject, ("subject", "idx"), [("s", 0), ("s", 1)])
        async with database.writer.begin() as conn:
            await writes.send(conn)
        assert [
            sql.split(" AS (")[0] if sql.startswith("WITH") else sql.split()[0] for sql in sent
        ] == [
            "WITH w0",  # entries, tokens and the head's first update
            "UPDATE",  # the head again, alone before the COPY
            "INSERT",  # the subjects after it
        ]
        assert sent[0].count(" AS (") == 3
        assert copies == ["merkle_nodes"]
        async with database.reader.connect() as conn:
            assert (await conn.execute(select(models.TreeHead.size))).scalar_one() == 3
            assert (
                await conn.execute(select(func.count()).select_from(models.ConsentRow))
            ).scalar_one() == 2
            assert (
                await conn.execute(select(func.count()).select_from(models.MerkleNode))
            ).scalar_one() == 300
            assert (
                await conn.execute(select(func.count()).select_from(models.EntrySubject))
            ).scalar_one() == 2
    finally:
        await database.dispose()
