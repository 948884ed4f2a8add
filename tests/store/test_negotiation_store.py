"""The negotiation rows and the encoded answers of a lab's move: the shortcuts taken for the
sequencer's batch (statements built once, one upsert, the response written from its parts)
give exactly what the plain ways give, on both databases."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from sqlalchemy import event, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from coalition import statements
from coalition.keys import SigningKey
from coalition.v1 import ledger_pb2, negotiation_pb2, terms_pb2
from coalition_server.api.negotiation import _LabMove
from coalition_server.context import ServerContext
from coalition_server.store import migrate, models, round_trip
from coalition_server.store import negotiation as store
from coalition_server.store.database import Database
from coalition_server.store.sequencer import Receipts

AT = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
OFFERED = negotiation_pb2.NEGOTIATION_STATE_OFFERED
COUNTERED = negotiation_pb2.NEGOTIATION_STATE_COUNTERED
TERMINATED = negotiation_pb2.NEGOTIATION_STATE_TERMINATED


def _terms(micros: int) -> terms_pb2.LicenceTerms:
    return terms_pb2.LicenceTerms(
        purposes=[terms_pb2.PURPOSE_TRAIN_AI],
        payment_model=terms_pb2.PAYMENT_MODEL_PURCHASE,
        price_per_item=terms_pb2.Money(currency_code="USD", micros=micros),
    )


def _entry(index: int, **changes: Any) -> store.NegotiationEntry:
    entry = store.NegotiationEntry(
        negotiation_id=f"{index:032x}",
        lab_key_id="b" * 64,
        index=index,
        state=OFFERED,
        round=1,
        current_terms=_terms(1_000_000),
        coalition_offered_last=True,
        opened_at=AT,
        deadline=AT + timedelta(days=7),
        max_rounds=20,
        agreement_draft=None,
        agreement_id=None,
        termination_reason=None,
    )
    return dataclasses.replace(entry, **changes)


async def _log_entries(conn: AsyncConnection, count: int) -> None:
    """Ledger entries 0 to count - 1, for negotiations to point at."""
    await conn.execute(
        insert(models.LogEntry),
        [
            {
                "idx": i,
                "leaf_hash": bytes([i]) * 32,
                "leaf": b"leaf",
                "statement_hash": bytes([i + 100]) * 32,
                "kind": "NegotiationRequest",
                "signer_key_id": "b" * 64,
                "integrated_time": AT,
            }
            for i in range(count)
        ],
    )


async def test_rows_read_back_as_written(db_url: str) -> None:
    database = Database.connect(db_url)
    try:
        await migrate.upgrade(database)
        entries = [_entry(i) for i in range(3)]
        async with database.writer.begin() as conn:
            await _log_entries(conn, 3)
            await store.record_moves(conn, entries, [])
        moved = [
            dataclasses.replace(entries[0], state=COUNTERED, round=2, current_terms=_terms(7)),
            dataclasses.replace(
                entries[2], state=TERMINATED, round=4, termination_reason="DEADLINE"
            ),
        ]
        async with database.writer.begin() as conn:
            await store.save_all(conn, moved)
        async with database.reader.connect() as conn:
            found = await store.negotiations(conn, [e.negotiation_id for e in entries] + ["f" * 32])
            assert await store.negotiations(conn, []) == {}
            one = await store.negotiation(conn, entries[1].negotiation_id)
        assert found == {e.negotiation_id: e for e in (moved[0], entries[1], moved[1])}
        assert one == entries[1]
    finally:
        await database.dispose()


def test_move_response_is_protobufs_encoding() -> None:
    key = SigningKey.generate()
    answer = statements.sign_statement(
        negotiation_pb2.NegotiationMove(
            negotiation_id="a" * 32,
            round=2,
            kind=negotiation_pb2.MOVE_KIND_OFFER,
            terms=_terms(3_000_000),
            nonce=b"n" * 16,
        ),
        key,
    )
    receipt = ledger_pb2.Receipt(
        index=300,
        leaf_hash=b"h" * 32,
        checkpoint="origin\n301\nroot\n",
        inclusion_proof=[b"p" * 32, b"q" * 32],
        tree_size=301,
        leaf=b"leaf bytes",
    )
    entry = _entry(0, ratification_closes_at=AT, agreement_draft=b"draft")
    for move_answer in (answer.to_proto(), None):
        effect = _LabMove(cast(ServerContext, None), entry.negotiation_id, entry.lab_key_id)
        effect.entry = entry
        if move_answer is not None:
            effect.answer = move_answer.SerializeToString(deterministic=True)
        for receipts in (Receipts((300,), (receipt.SerializeToString(),)), [receipt]):
            wire = effect.response(receipts)
            for cls in (negotiation_pb2.MoveResponse, negotiation_pb2.OpenNegotiationResponse):
                expected = cls(
                    negotiation=entry.to_proto(), receipt=receipt, coalition_move=move_answer
                )
                assert wire == expected.SerializeToString()
                assert cls.FromString(wire) == expected


async def test_a_run_of_moves_is_recorded_in_one_statement(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One upsert over the run's rows, sent below SQLAlchemy (decision 42): on SQLite in one
    hand-over, on PostgreSQL as one executemany."""
    database = Database.connect(db_url)
    executed: list[str] = []
    sends: list[tuple[str, int]] = []

    def seen(*args: Any) -> None:
        if "negotiations" in args[2]:
            executed.append(args[2])

    run, run_many = round_trip.run, round_trip.run_many

    async def one_hand_over(conn: AsyncConnection, statements: Any) -> Any:
        sends.extend((sql, 1) for sql, _ in statements)
        return await run(conn, statements)

    async def executemany(conn: AsyncConnection, sql: str, rows: Any) -> None:
        sends.append((sql, len(rows)))
        await run_many(conn, sql, rows)

    monkeypatch.setattr(round_trip, "run", one_hand_over)
    monkeypatch.setattr(round_trip, "run_many", executemany)

    try:
        await migrate.upgrade(database)
        existing = [_entry(i) for i in range(2)]
        async with database.writer.begin() as conn:
            await _log_entries(conn, 4)
            await store.record_moves(conn, existing, [])
        opened = [
            _entry(2, round=1),
            _entry(3, state=TERMINATED, round=1, termination_reason="NO_QUORUM_POSSIBLE"),
        ]
        moved = [
            dataclasses.replace(
                existing[0],
                state=COUNTERED,
                round=2,
                current_terms=_terms(9),
                coalition_offered_last=False,
                agreement_draft=b"draft",
            ),
        ]
        event.listen(database.writer.sync_engine, "before_cursor_execute", seen)
        sends.clear()
        async with database.writer.begin() as conn:
            await store.record_moves(conn, opened, moved)
            await store.record_moves(conn, [], [])
        event.remove(database.writer.sync_engine, "before_cursor_execute", seen)
        assert executed == []  # nothing through SQLAlchemy's cursor
        upserts = {sql for sql, _ in sends}
        assert len(upserts) == 1
        assert "ON CONFLICT" in upserts.pop()
        assert sum(rows for _, rows in sends) == 3
        if not database.is_sqlite:
            assert len(sends) == 1
        async with database.reader.connect() as conn:
            found = await store.negotiations(conn, [f"{i:032x}" for i in range(4)])
        # What an insert of the new rows and save_all of the moved ones would have left.
        assert found == {e.negotiation_id: e for e in (*moved, existing[1], *opened)}
    finally:
        await database.dispose()
