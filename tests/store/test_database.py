"""The database engines, on both databases: errors never carry row values into logs."""

from __future__ import annotations

import pytest
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError

from coalition_server.store import migrate, models
from coalition_server.store.database import Database

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
