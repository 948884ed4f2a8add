"""The sequencer's batch contract, on both databases: prefetched duplicate and request_id
checks, entry rows written before the effects that point at them, and group effects."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiosqlite
import pytest
from google.protobuf import descriptor_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from coalition import merkle, statements
from coalition.keys import SigningKey
from coalition.v1 import items_pb2, ledger_pb2
from coalition_server.domain.errors import (
    AlreadyExistsError,
    DomainError,
    FailedPreconditionError,
)
from coalition_server.server import CoalitionServer
from coalition_server.store import models
from coalition_server.store.sequencer import (
    EffectContext,
    Group,
    GroupContext,
    IdempotencyKey,
    Receipts,
    RunContext,
    RunRequest,
    Sequencer,
    Submission,
    _Edge,
    length_delimited,
)

from ..integration.builders import now, ts


def _statement(key: SigningKey) -> Submission:
    registration = items_pb2.ItemRegistration(
        commitment=hashlib.sha256(os.urandom(16)).digest(),
        size_bytes=1,
        media_type="text/plain",
        created_time=ts(now()),
        nonce=os.urandom(16),
    )
    return Submission(statements.sign_statement(registration, key), key.public_key.key_id)


def _respond(receipts: Sequence[ledger_pb2.Receipt]) -> bytes:
    return b"".join(receipt.index.to_bytes(8, "big") for receipt in receipts)


def _sequencer(server: CoalitionServer) -> Sequencer:
    return server.context.sequencer


async def _entries(server: CoalitionServer) -> int:
    async with server.context.database.reader.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(models.LogEntry))).scalar_one()


async def test_effects_see_their_own_entry_and_a_group_effect_gets_every_index(
    server: CoalitionServer,
) -> None:
    key = SigningKey.generate()
    seen: dict[str, object] = {}

    async def effect(ctx: EffectContext) -> None:
        row = (
            await ctx.conn.execute(
                select(models.LogEntry.idx).where(models.LogEntry.idx == ctx.index)
            )
        ).one_or_none()
        seen["own entry"] = row is not None

    async def group_effect(ctx: GroupContext) -> None:
        rows = await ctx.conn.execute(
            select(models.LogEntry.idx).where(models.LogEntry.idx.in_(ctx.indices))
        )
        seen["indices"] = ctx.indices
        seen["rows"] = sorted(row.idx for row in rows)

    first = _statement(key)
    group = Group(
        (Submission(first.envelope, first.signer_key_id, effect=effect), _statement(key)),
        _respond,
        effect=group_effect,
    )
    result = await _sequencer(server).submit(group)
    indices = tuple(receipt.index for receipt in result.receipts)
    assert seen == {"own entry": True, "indices": indices, "rows": list(indices)}
    assert indices[1] == indices[0] + 1


async def test_a_refusing_group_effect_leaves_nothing_behind(server: CoalitionServer) -> None:
    key = SigningKey.generate()

    async def refuse(ctx: GroupContext) -> None:
        raise FailedPreconditionError("NO", "refused after the entries were written")

    before = await _entries(server)
    with pytest.raises(FailedPreconditionError):
        await _sequencer(server).submit(
            Group(tuple(_statement(key) for _ in range(3)), _respond, effect=refuse)
        )
    assert await _entries(server) == before
    # The indices were not consumed: the next append takes the next free one.
    result = await _sequencer(server).submit(Group((_statement(key),), _respond))
    assert result.receipts[0].index == before


async def test_duplicates_are_caught_within_a_batch_and_against_the_ledger(
    server: CoalitionServer,
) -> None:
    key = SigningKey.generate()
    sequencer = _sequencer(server)
    logged = _statement(key)
    await sequencer.submit(Group((logged,), _respond))
    fresh = _statement(key)
    await asyncio.sleep(0.1)  # let the sequencer finish counting the batch above
    batches = server.sequencer_batches
    # Queued together, so they land in one batch: the second copy of ``fresh`` and the
    # already logged statement are refused, the first copy goes in.
    outcomes = await asyncio.gather(
        sequencer.submit(Group((fresh,), _respond)),
        sequencer.submit(Group((fresh,), _respond)),
        sequencer.submit(Group((_statement(key), logged), _respond)),
        return_exceptions=True,
    )
    assert server.sequencer_batches == batches + 1
    assert not isinstance(outcomes[0], BaseException)
    for refused in outcomes[1:]:
        assert isinstance(refused, AlreadyExistsError)
        assert refused.reason == "DUPLICATE_STATEMENT"


async def test_request_ids_are_answered_once_within_a_batch_and_across_batches(
    server: CoalitionServer,
) -> None:
    key = SigningKey.generate()
    sequencer = _sequencer(server)
    request = IdempotencyKey(key.public_key.key_id, "req-1", "/test/Append", b"d" * 32)
    statement = _statement(key)
    before = await _entries(server)
    first, again = await asyncio.gather(
        sequencer.submit(Group((statement,), _respond, request)),
        sequencer.submit(Group((statement,), _respond, request)),
    )
    assert again.response == first.response
    assert await _entries(server) == before + 1
    # A later retry gets the stored answer; the same id for other content is refused.
    later = await sequencer.submit(Group((_statement(key),), _respond, request))
    assert later.response == first.response
    other = IdempotencyKey(key.public_key.key_id, "req-1", "/test/Append", b"e" * 32)
    with pytest.raises(AlreadyExistsError) as reused:
        await sequencer.submit(Group((_statement(key),), _respond, other))
    assert reused.value.reason == "REQUEST_ID_REUSED"
    assert await _entries(server) == before + 1


async def test_a_run_is_decided_in_one_call_and_split_at_a_repeated_statement(
    server: CoalitionServer,
) -> None:
    key = SigningKey.generate()
    sequencer = _sequencer(server)
    calls: list[list[str]] = []

    @dataclasses.dataclass
    class Plan:
        outcomes: list[Sequence[Submission] | DomainError]

        async def record(self, conn: object) -> None:
            return None

    async def runner(ctx: RunContext, requests: Sequence[object]) -> Plan:
        names = [str(r) for r in requests]
        calls.append(names)
        return Plan(
            [
                FailedPreconditionError("NO", "refused") if name == "refuse" else [_statement(key)]
                for name in names
            ]
        )

    def group(name: str, submission: Submission | None = None) -> Group:
        return Group((submission or _statement(key),), _respond, run=RunRequest(runner, name))

    twice = _statement(key)
    await asyncio.sleep(0.1)  # let the sequencer finish counting earlier batches
    batches = server.sequencer_batches
    outcomes = await asyncio.gather(
        sequencer.submit(group("a")),
        sequencer.submit(group("refuse")),
        sequencer.submit(group("b", twice)),
        sequencer.submit(group("c", twice)),  # the same statement: starts a new run
        return_exceptions=True,
    )
    assert server.sequencer_batches == batches + 1
    # The repeated statement is refused before its run's runner is asked.
    assert calls == [["a", "refuse", "b"]]
    first, refused, third, duplicate = outcomes
    assert isinstance(refused, FailedPreconditionError)
    assert isinstance(duplicate, AlreadyExistsError)
    assert duplicate.reason == "DUPLICATE_STATEMENT"
    assert not isinstance(first, BaseException)
    assert not isinstance(third, BaseException)
    # Each accepted statement is followed by its follow-up; the refused one took no index.
    a = first.receipts[0].index
    assert [r.index for r in first.receipts] == [a, a + 1]
    assert [r.index for r in third.receipts] == [a + 2, a + 3]


@pytest.mark.parametrize("size", [0, 1, 127, 128, 300, 16383, 16384, 2**21 + 5])
def test_a_length_delimited_field_is_encoded_as_protobuf_does(size: int) -> None:
    body = "a" * size
    # Fields 1 and 11 have one-byte tags (the written-out cases), 36 a two-byte tag.
    for number, message in [
        (1, descriptor_pb2.FieldDescriptorProto(name=body)),
        (11, descriptor_pb2.FileOptions(go_package=body)),
        (36, descriptor_pb2.FileOptions(objc_class_prefix=body)),
    ]:
        assert length_delimited(number, body.encode()) == message.SerializeToString()


async def test_leaves_are_the_ledger_leaf_as_protobuf_encodes_it(server: CoalitionServer) -> None:
    key = SigningKey.generate()
    plain, given = _statement(key), _statement(key)
    # The encoding a caller may hand in: its request's message, which protobuf encodes alike.
    encoded = given.envelope.to_proto().SerializeToString(deterministic=True)
    group = Group(
        (plain, Submission(given.envelope, given.signer_key_id, encoded=encoded)), _respond
    )
    result = await _sequencer(server).submit(group)
    for receipt, submission in zip(result.receipts, (plain, given), strict=True):
        stamp = ledger_pb2.LedgerLeaf.FromString(receipt.leaf).integrated_time
        assert receipt.leaf == ledger_pb2.LedgerLeaf(
            integrated_time=stamp, envelope=submission.envelope.to_proto()
        ).SerializeToString(deterministic=True)
        assert receipt.leaf_hash == merkle.leaf_hash(receipt.leaf)
    # Each receipt is encoded as protobuf encodes it.
    assert isinstance(result.receipts, Receipts)
    for receipt, encoded in zip(result.receipts, result.receipts.encoded, strict=True):
        assert receipt.SerializeToString() == encoded
        assert (
            ledger_pb2.Receipt(
                index=receipt.index,
                leaf_hash=receipt.leaf_hash,
                checkpoint=receipt.checkpoint,
                inclusion_proof=list(receipt.inclusion_proof),
                tree_size=receipt.tree_size,
                leaf=receipt.leaf,
            ).SerializeToString()
            == encoded
        )
    assert list(result.receipts.indices) == [receipt.index for receipt in result.receipts]
    assert [r.index for r in result.receipts[1:]] == [result.receipts[1].index]


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 70), st.integers(1, 70))
def test_the_batch_edge_grows_as_a_compact_range_does(old: int, added: int) -> None:
    compact = merkle.CompactRange(0, [])
    for _ in range(old):
        compact.push(merkle.leaf_hash(os.urandom(8)))
    edge = _Edge(compact.copy())
    expected = {
        (node.level, node.index): digest
        for node, digest in zip(merkle.CompactRange.frontier_ids(old), compact.hashes, strict=True)
    }
    completed = []
    for _ in range(added):
        digest = merkle.leaf_hash(os.urandom(8))
        edge.append(digest)
        completed.extend(compact.append(digest))
    expected.update({(node.level, node.index): digest for node, digest in completed})
    assert edge.compact() == compact
    assert edge.nodes == expected
    assert edge.added == [(node.level, node.index, digest) for node, digest in completed]


async def test_a_batch_hands_sqlite_one_round_trip_per_group_besides_opening_and_closing(
    server: CoalitionServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BEGIN IMMEDIATE with the head and the batch's request_id and duplicate checks; each
    group's entries; the closing writes; the commit (and the pool's reset of the returned
    connection). Each hand-over to the driver's thread makes the batch wait for a turn of
    the event loop (round_trip); through SQLAlchemy a statement takes three."""
    key = SigningKey.generate()
    sequencer = _sequencer(server)
    database = server.context.database
    await sequencer.submit(Group((_statement(key),), _respond))  # the frontier is cached
    await asyncio.sleep(0.1)  # let the sequencer finish counting the batch above
    batches = server.sequencer_batches
    writer: list[object] = []
    async with database.writer.connect() as conn:
        writer.append((await conn.get_raw_connection()).driver_connection)
    hand_overs: list[str] = []
    if database.is_sqlite:
        passed_on: Callable[..., Awaitable[Any]] = aiosqlite.Connection._execute  # untyped

        async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kw: Any) -> Any:
            if self is writer[0]:
                hand_overs.append(getattr(fn, "__name__", repr(fn)))
            return await passed_on(self, fn, *args, **kw)

        monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    requests = [
        IdempotencyKey(key.public_key.key_id, f"req-{n}", "/test/Append", bytes([n]) * 32)
        for n in range(3)
    ]
    answers = await asyncio.gather(
        *(sequencer.submit(Group((_statement(key),), _respond, r)) for r in requests),
        sequencer.submit(Group((_statement(key), _statement(key)), _respond)),
    )
    await asyncio.sleep(0.1)  # let the sequencer finish counting the batch
    monkeypatch.undo()
    assert server.sequencer_batches == batches + 1
    assert len({answer.response for answer in answers}) == 4
    if database.is_sqlite:
        assert hand_overs == ["run_all"] * (1 + len(answers) + 1) + ["commit", "rollback"]
    # Replayed: the request_ids' stored answers, found by the opening round trip.
    again = await sequencer.submit(Group((_statement(key),), _respond, requests[1]))
    assert again.response == answers[1].response
