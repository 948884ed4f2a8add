"""The database engines, on both databases: errors never carry row values into logs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, insert
from sqlalchemy.exc import IntegrityError

from coalition_server.store import migrate, models
from coalition_server.store.database import WAL_AUTOCHECKPOINT, Database, sqlite_url

SECRET = b"\x13\x37 not for any log \x13\x37"


async def _insert_again(database: Database, row: dict[str, object]) -> None:
    async with database.writer.begin() as conn:
        await conn.execute(insert(models.ItemSegment), [row])  # the same primary key


async def test_database_errors_hide_the_rows_parameters(db_url: str) -> None:
    database = Database.connect(db_url)
    try:
        await migrate.upgrade(database)
        row = {"item_id": "f" * 32, "seq": 0, "data": SECRET}
        async with database.writer.begin() as conn:
            await conn.execute(insert(models.ItemSegment), [row])
        with pytest.raises(IntegrityError) as failed:
            await _insert_again(database, row)
        text = str(failed.value)
        assert "hidden due to hide_parameters" in text
        assert "not for any log" not in text
        assert SECRET.hex() not in text
    finally:
        await database.dispose()


async def test_sqlite_checkpoints_the_wal_in_large_steps(tmp_path: Path) -> None:
    database = Database.connect(sqlite_url(str(tmp_path / "coalition.db")))
    try:
        for engine in (database.writer, database.reader):
            async with engine.connect() as conn:
                pages = (await conn.exec_driver_sql("PRAGMA wal_autocheckpoint")).scalar_one()
                synchronous = (await conn.exec_driver_sql("PRAGMA synchronous")).scalar_one()
            assert pages == WAL_AUTOCHECKPOINT
            assert synchronous == 2  # FULL: checkpoints are rarer, commits no less durable
    finally:
        await database.dispose()


async def test_sqlite_executemany_inserts_go_as_values_lists(tmp_path: Path) -> None:
    database = Database.connect(sqlite_url(str(tmp_path / "coalition.db")))
    statements: list[tuple[str, bool]] = []

    def seen(*args: Any) -> None:
        statement, executemany = args[2], args[5]  # executemany: what SQLAlchemy was asked
        if statement.startswith("INSERT INTO item_segments"):
            statements.append((statement, executemany))

    event.listen(database.writer.sync_engine, "before_cursor_execute", seen)
    try:
        await migrate.upgrade(database)
        rows = [{"item_id": "f" * 32, "seq": seq, "data": b"segment"} for seq in range(3)]
        async with database.writer.begin() as conn:
            await conn.execute(insert(models.ItemSegment), rows)
        # One statement for the three rows (the sqlite3 module releases the GIL per
        # statement it steps), not an executemany of three single-row statements.
        assert [statement.count("(?, ?, ?)") for statement, _ in statements] == [3]
    finally:
        await database.dispose()
