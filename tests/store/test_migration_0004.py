"""Migration 0004 keeps ballots cast before it: they read back with no reasons."""

from __future__ import annotations

from datetime import UTC, datetime

from alembic import command
from sqlalchemy import Connection, insert

from coalition_server.store import migrate
from coalition_server.store import negotiation as store
from coalition_server.store.database import Database
from coalition_server.store.models import BallotRow, LogEntry, NegotiationRow

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def _to_0003(connection: Connection) -> None:
    command.upgrade(migrate._config(connection), "0003")


async def test_ballots_cast_before_0004_have_no_reasons(db_url: str) -> None:
    database = Database.connect(db_url)
    try:
        async with database.writer.begin() as conn:
            await conn.run_sync(_to_0003)
        async with database.writer.begin() as conn:
            # Only the columns 0003 knows (not BallotRow.reasons).
            await conn.execute(
                insert(LogEntry).values(
                    idx=0,
                    leaf_hash=b"\x01" * 32,
                    leaf=b"",
                    statement_hash=b"\x02" * 32,
                    kind="Ballot",
                    signer_key_id="m" * 64,
                    integrated_time=NOW,
                )
            )
            await conn.execute(
                insert(NegotiationRow).values(
                    negotiation_id="n" * 32,
                    lab_key_id="l" * 64,
                    idx=0,
                    state=5,
                    round=2,
                    current_terms=b"",
                    coalition_offered_last=True,
                    opened_at=NOW,
                    deadline=NOW,
                    max_rounds=20,
                )
            )
            await conn.execute(
                insert(BallotRow).values(
                    negotiation_id="n" * 32,
                    member_key_id="m" * 64,
                    approve=False,
                    item_count=3,
                    idx=0,
                )
            )
        await migrate.upgrade(database)
        async with database.reader.connect() as conn:
            votes = await store.ballots(conn, "n" * 32)
        assert votes == {"m" * 64: store.Vote(approve=False, items=3, reasons=())}
    finally:
        await database.dispose()
