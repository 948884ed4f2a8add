"""Alembic migrations, run programmatically on an existing async connection."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from coalition_server.store.database import Database

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest migration revision this code knows."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def _upgrade(connection: Connection) -> None:
    command.upgrade(_config(connection), "head")


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def upgrade(database: Database) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    async with database.writer.begin() as conn:
        await conn.run_sync(_upgrade)


async def current_revision(database: Database) -> str | None:
    """The schema revision of the database, or None when it was never migrated."""
    async with database.reader.connect() as conn:
        return await conn.run_sync(_current)


async def is_current(database: Database) -> bool:
    """Whether the database schema is exactly at this code's head revision."""
    return await current_revision(database) == head_revision()
