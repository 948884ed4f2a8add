"""Migrations: they build exactly the schema the models describe, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection

from coalition_server.store import migrate
from coalition_server.store.database import Database
from coalition_server.store.models import Base


def _diff(connection: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


async def test_migrations_match_models_and_are_idempotent(db_url: str) -> None:
    database = Database.connect(db_url)
    try:
        assert await migrate.current_revision(database) is None
        assert not await migrate.is_current(database)
        await migrate.upgrade(database)
        await migrate.upgrade(database)  # a second run is a no-op
        assert await migrate.is_current(database)
        async with database.reader.connect() as conn:
            assert await conn.run_sync(_diff) == []
    finally:
        await database.dispose()
