"""Round trips below SQLAlchemy's execution layer: to SQLite's thread, one hand-over per
statement through SQLAlchemy and several statements in one hand-over; to asyncpg's
connection directly; always in the caller's transaction."""

from __future__ import annotations

import dataclasses
import sqlite3
import time
import tomllib
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from packaging.requirements import Requirement
from sqlalchemy import func, insert, select, update
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from coalition_server.store import migrate, models, round_trip
from coalition_server.store.database import Database


def _node(index: int) -> tuple[int, int, bytes]:
    return (0, index, bytes([index]) * 32)


async def test_statements_run_in_order_in_one_hand_over(
    tmp_path: Path, hand_overs: list[str]
) -> None:
    database = Database.connect(f"sqlite+aiosqlite:///{tmp_path / 'coalition.db'}")
    try:
        await migrate.upgrade(database)
        insert = "INSERT INTO merkle_nodes (level, idx, hash) VALUES (?, ?, ?)"
        count = "SELECT count(*) FROM merkle_nodes"
        async with database.writer.begin() as conn:
            hand_overs.clear()
            found = await round_trip.run(
                conn, [(count, ()), (insert, _node(1)), (insert, _node(2)), (count, ())]
            )
            assert len(hand_overs) == 1
            assert await round_trip.run(conn, []) == []
            assert len(hand_overs) == 1  # nothing to send: no hand-over
        # Each statement's rows (a write's: none), each seeing the ones before it.
        assert found == [[(0,)], [], [], [(2,)]]
        async with database.reader.connect() as conn:
            stored = (await conn.execute(select(models.MerkleNode.idx))).scalars().all()
        assert sorted(stored) == [1, 2]  # in the caller's transaction, committed with it
    finally:
        await database.dispose()


async def test_a_failing_statement_raises_as_sqlalchemy_does_and_rolls_back(
    tmp_path: Path,
) -> None:
    database = Database.connect(f"sqlite+aiosqlite:///{tmp_path / 'coalition.db'}")
    insert = "INSERT INTO merkle_nodes (level, idx, hash) VALUES (?, ?, ?)"
    try:
        await migrate.upgrade(database)
        async with database.writer.begin() as conn:
            with pytest.raises(IntegrityError) as clash:
                async with conn.begin_nested():
                    await round_trip.run(
                        conn, [(insert, _node(1)), (insert, _node(1)), (insert, _node(2))]
                    )
            # The failing statement, not the first one, and no row values (hide_parameters).
            assert clash.value.statement == insert
            assert "UNIQUE" in str(clash.value.orig)
            assert "parameters hidden" in str(clash.value)
            assert repr(bytes([1]) * 32) not in str(clash.value)
            with pytest.raises(OperationalError):
                await round_trip.run(conn, [("SELECT nothing FROM nowhere", ())])
            await round_trip.run(conn, [(insert, _node(3))])
        async with database.reader.connect() as conn:
            stored = (await conn.execute(select(models.MerkleNode.idx))).scalars().all()
        assert stored == [3]
    finally:
        await database.dispose()


async def test_statements_run_in_the_callers_transaction_on_both_databases(db_url: str) -> None:
    """On PostgreSQL the statements go to asyncpg directly: the first one begins the
    transaction SQLAlchemy has not begun yet, and it commits or rolls back with the caller's."""
    database = Database.connect(db_url)
    mark = "?" if database.is_sqlite else "$"
    marks = ", ".join(f"{mark}{n}" if mark == "$" else "?" for n in (1, 2, 3))
    insert = f"INSERT INTO merkle_nodes (level, idx, hash) VALUES ({marks})"
    count = "SELECT count(*) FROM merkle_nodes"
    try:
        await migrate.upgrade(database)
        async with database.writer.connect() as conn:
            if not database.is_sqlite:
                with pytest.raises(ValueError, match="transaction"):
                    await round_trip.run(conn, [(count, ())])
            async with conn.begin():
                if database.is_sqlite:
                    await conn.execute(select(1))  # SQLAlchemy's BEGIN (not the caller's)
                assert await round_trip.run(conn, [(insert, _node(1)), (count, ())]) == [
                    [],
                    [(1,)],
                ]
                if not database.is_sqlite:
                    await round_trip.run_many(conn, insert, [_node(2), _node(3)])
                    assert await round_trip.run(conn, [(count, ())]) == [[(3,)]]
                await conn.rollback()
            async with conn.begin():
                await round_trip.run(conn, [(insert, _node(4))])
        async with database.reader.connect() as conn:
            stored = (await conn.execute(select(models.MerkleNode.idx))).scalars().all()
        assert stored == [4]  # the rolled-back ones are gone, the committed one is in
    finally:
        await database.dispose()


@pytest.mark.postgres
async def test_asyncpg_errors_are_raised_as_sqlalchemy_does(db_url: str) -> None:
    database = Database.connect(db_url)
    if database.is_sqlite:
        await database.dispose()
        pytest.skip("asyncpg's errors (SQLite's: test_a_failing_statement_raises_...)")
    insert = "INSERT INTO merkle_nodes (level, idx, hash) VALUES ($1, $2, $3)"
    try:
        await migrate.upgrade(database)
        async with database.writer.begin() as conn:
            with pytest.raises(IntegrityError) as clash:
                await round_trip.run_many(conn, insert, [_node(1), _node(1)])
            assert clash.value.statement == insert
            assert clash.value.params is None  # never the row values
            assert repr(bytes([1]) * 32) not in str(clash.value)
            await conn.rollback()
        async with database.writer.begin() as conn:
            with pytest.raises(ProgrammingError):
                await round_trip.run(conn, [("SELECT nothing FROM nowhere", ())])
    finally:
        await database.dispose()


async def test_each_statement_through_sqlalchemy_takes_one_hand_over(
    tmp_path: Path, hand_overs: list[str]
) -> None:
    database = Database.connect(f"sqlite+aiosqlite:///{tmp_path / 'coalition.db'}")
    nodes = [{"level": 0, "idx": i, "hash": bytes([i]) * 32} for i in range(5)]
    try:
        await migrate.upgrade(database)
        async with database.writer.begin() as conn:
            hand_overs.clear()
            await conn.execute(insert(models.MerkleNode), nodes)  # an executemany
            changed = await conn.execute(
                update(models.MerkleNode)
                .where(models.MerkleNode.idx >= 3)
                .values(hash=b"\xff" * 32)
            )
            result = await conn.execute(
                select(models.MerkleNode.idx, models.MerkleNode.hash).order_by(
                    models.MerkleNode.idx
                )
            )
            first, rest = result.fetchone(), result.fetchmany(2)
            last = result.fetchall()
            assert hand_overs == ["_execute"] * 3
        assert changed.rowcount == 2
        assert first == (0, bytes([0]) * 32)
        assert [tuple(row) for row in rest] == [(1, bytes([1]) * 32), (2, bytes([2]) * 32)]
        assert [tuple(row) for row in last] == [(3, b"\xff" * 32), (4, b"\xff" * 32)]
        async with database.reader.connect() as conn:
            count = await conn.execute(select(func.count()).select_from(models.MerkleNode))
            assert count.scalar_one() == 5
            with pytest.raises(OperationalError):
                await conn.execute(
                    select(func.count())
                    .select_from(models.MerkleNode)
                    .where(models.MerkleNode.idx == func.no_such_function())
                )
    finally:
        await database.dispose()


def _declared(name: str) -> Requirement:
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    found = [Requirement(r) for r in extras["server"] if Requirement(r).name == name]
    assert len(found) == 1
    return found[0]


def test_the_declared_aiosqlite_range_admits_only_the_layout_round_trip_uses() -> None:
    declared = _declared("aiosqlite")
    assert declared.specifier.contains(version("aiosqlite"))
    # 0.21's connection was itself the thread (no _thread): it would fail at connect.
    assert not declared.specifier.contains("0.21.0")
    assert not declared.specifier.contains("0.23.0")  # unchecked until someone checks it


def test_aiosqlite_has_the_private_parts_round_trip_uses() -> None:
    connection = aiosqlite.Connection(lambda: sqlite3.connect(":memory:"), iter_chunk_size=64)
    assert callable(getattr(connection, "_execute", None))
    assert hasattr(connection, "_thread")
    assert isinstance(type(connection).__dict__.get("_conn"), property)


def test_the_declared_sqlalchemy_range_and_the_adapter_parts_round_trip_uses() -> None:
    declared = _declared("sqlalchemy")
    assert declared.specifier.contains(version("sqlalchemy"))
    assert not declared.specifier.contains("2.2.0")  # unchecked until someone checks it
    adapter = AsyncAdapt_asyncpg_connection
    assert callable(getattr(adapter, "_start_transaction", None))
    assert callable(getattr(adapter, "_handle_exception", None))


async def test_statements_go_below_sqlalchemy_only_in_a_transaction(db_url: str) -> None:
    database = Database.connect(db_url)
    try:
        async with database.reader.connect() as conn:
            # The read-only services' connections: no transaction, through SQLAlchemy.
            assert not round_trip.below_sqlalchemy(conn)
        async with database.writer.begin() as conn:
            assert round_trip.below_sqlalchemy(conn)
    finally:
        await database.dispose()


async def test_each_hand_over_is_timed_under_its_pool(tmp_path: Path) -> None:
    database = Database.connect(f"sqlite+aiosqlite:///{tmp_path / 'coalition.db'}")
    try:
        await migrate.upgrade(database)
        async with database.reader.connect() as conn:
            await conn.execute(select(func.count()).select_from(models.MerkleNode))
        reader = dataclasses.replace(round_trip.HAND_OVERS["reader"])
        async with database.writer.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            assert isinstance(driver, round_trip.Connection)
            before = dataclasses.replace(round_trip.HAND_OVERS["writer"])
            on_thread: Callable[..., Awaitable[Any]] = driver._execute
            assert await on_thread(_sleep_and_name, 0.05) == "slept"
            after = round_trip.HAND_OVERS["writer"]
            assert after.count == before.count + 1
            # The work itself is on the thread: at least its 50 ms.
            assert after.on_thread - before.on_thread >= 0.05
            assert after.to_thread >= before.to_thread
            assert after.to_loop >= before.to_loop
        # The reader's pool counts its own, and the writer's hand-over was not one of them.
        assert round_trip.HAND_OVERS["reader"] == reader
    finally:
        await database.dispose()


def _sleep_and_name(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"
