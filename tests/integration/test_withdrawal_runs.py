"""Withdrawals queued together are decided together (decision 35), with exactly the outcome
they have one at a time: a later withdrawal sees what an earlier one of the same batch did,
a refused one consumes no index, and every follow-up (shredding record, notice) lands right
after its withdrawal, where the notice rows say it is. On both databases, over gRPC."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import pytest
from alembic import command
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncConnection

from coalition.client import Client, ServerError
from coalition.statements import sign_statement
from coalition.v1 import consent_pb2, ledger_pb2
from coalition_server.server import CoalitionServer
from coalition_server.store import migrate, round_trip
from coalition_server.store.models import ConsentRow

from . import builders
from .helpers import held
from .world import CONSENT, Member, agree, lab, member

CODE = grpc.StatusCode


def _kinds(entries: Sequence[ledger_pb2.Entry]) -> list[str]:
    return [
        ledger_pb2.LedgerLeaf.FromString(e.leaf).envelope.payload_type.rsplit(".", 1)[-1]
        for e in entries
    ]


async def test_withdrawals_in_one_batch_see_each_other(
    make_client: Callable[..., Client], server: CoalitionServer, anonymous: Client
) -> None:
    alice, bob = await member(make_client, "alice"), await member(make_client, "bob")
    a, b, c = await alice.add([b"a", b"b", b"c"])
    (x,) = await bob.add([b"x"])
    only_a = await alice.grant(builders.consent_token(item_ids=[a]))
    b_and_c = await alice.grant(builders.consent_token(item_ids=[b, c]))
    bobs = await bob.grant(builders.consent_token(item_ids=[x]))
    acme = await lab(make_client, "acme")
    await agree(server, acme, [a, b, c, x])
    await asyncio.sleep(0.1)  # let the sequencer finish counting the batch above
    batches = server.sequencer_batches
    calls = [
        (alice, builders.withdrawal(item_ids=[a])),  # a shredded; only_a invalidated
        (alice, builders.withdrawal(item_ids=[a])),  # a is withdrawn already: refused
        (bob, builders.withdrawal(consent_id=bobs)),
        (alice, builders.withdrawal(consent_id=b_and_c)),
        (alice, builders.withdrawal()),  # nothing left in force: refused
    ]
    async with held(server) as until:
        tasks = []
        for position, (who, statement) in enumerate(calls):
            tasks.append(asyncio.create_task(who.withdraw(statement)))
            await until(position + 1)  # queued in this order
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert server.sequencer_batches == batches + 2  # the held batch, then all five at once

    refused = [(o.code, o.reason) for o in outcomes if isinstance(o, ServerError)]
    assert refused == [
        (CODE.FAILED_PRECONDITION, "ITEM_WITHDRAWN"),
        (CODE.FAILED_PRECONDITION, "NOTHING_TO_WITHDRAW"),
    ]
    first, third, fourth = (o for o in outcomes if isinstance(o, consent_pb2.WithdrawResponse))
    assert (list(first.shredded_item_ids), first.notified_labs) == ([a], 1)
    assert (list(third.shredded_item_ids), third.notified_labs) == ([x], 1)
    assert (list(fourth.shredded_item_ids), fourth.notified_labs) == (sorted([b, c]), 1)

    # Each withdrawal is followed by its shredding record and its notice; no gaps.
    start = first.receipt.index
    assert (third.receipt.index, fourth.receipt.index) == (start + 3, start + 6)
    entries = [e async for e in anonymous.entries(start=start)]
    each = ["Withdrawal+proto", "ShreddingRecord+proto", "WithdrawalNotice+proto"]
    assert _kinds(entries) == each * 3
    assert len(entries) == 9

    # The notice rows point at the notices' own entries.
    notices = await acme.notices(count=3)
    assert [n.index for n in notices] == [start + 2, start + 5, start + 8]
    for notice in notices:
        leaf = ledger_pb2.LedgerLeaf.FromString(entries[notice.index - start].leaf)
        assert leaf.envelope.payload == notice.notice.payload

    states: dict[str, int] = {}
    for who in (alice, bob):
        listed = await who.client.call(
            CONSENT + "ListConsents",
            consent_pb2.ListConsentsRequest(),
            consent_pb2.ListConsentsResponse,
            sign=True,
        )
        states.update((c.consent_id, c.state) for c in listed.consents)
    assert states == {
        only_a: consent_pb2.CONSENT_STATE_INVALIDATED,
        b_and_c: consent_pb2.CONSENT_STATE_WITHDRAWN,
        bobs: consent_pb2.CONSENT_STATE_WITHDRAWN,
    }


async def test_a_retried_withdrawal_in_the_same_batch_is_answered_once(
    make_client: Callable[..., Client], server: CoalitionServer
) -> None:
    copies = 3
    alice = await member(make_client, "alice")
    ids = await alice.add([b"one", b"two"])
    await alice.grant(builders.consent_token(item_ids=ids))
    request = consent_pb2.WithdrawRequest(
        withdrawal=sign_statement(builders.withdrawal(item_ids=ids[:1]), alice.key).to_proto(),
        request_id="retry-1",
    )
    async with held(server) as until:
        tasks = []
        for position in range(copies):
            tasks.append(
                asyncio.create_task(
                    alice.client.call(
                        CONSENT + "Withdraw", request, consent_pb2.WithdrawResponse, sign=True
                    )
                )
            )
            await until(position + 1)
    answers = await asyncio.gather(*tasks)
    assert all(answer == answers[0] for answer in answers)


async def _states(who: Member) -> dict[str, int]:
    listed = await who.client.call(
        CONSENT + "ListConsents",
        consent_pb2.ListConsentsRequest(),
        consent_pb2.ListConsentsResponse,
        sign=True,
    )
    return {c.consent_id: c.state for c in listed.consents}


async def test_an_item_withdrawal_does_not_read_the_members_withdrawal_history(
    make_client: Callable[..., Client], server: CoalitionServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deciding whether a token is left naming no item in force needs, of each of the
    member's tokens in force, how many of its items are withdrawn: a count kept on the
    token's row (decision 41). Neither every item the member ever withdrew nor the items a
    token names are read: either would grow with the member's history or the token's size."""
    alice = await member(make_client, "alice")
    old = await alice.register([b"old 1", b"old 2", b"old 3"])
    new = await alice.register([b"new 1", b"new 2"])
    old_token = await alice.grant(builders.consent_token(item_ids=old))
    new_token = await alice.grant(builders.consent_token(item_ids=new))
    for item_id in old:
        await alice.withdraw(builders.withdrawal(item_ids=[item_id]))

    reads: list[str] = []
    named: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if re.search(r"\b(FROM|JOIN) items\b", statement):
            reads.append(" ".join(statement.split()))
        if re.search(r"\b(FROM|JOIN) consent_items\b", statement):
            named.append(" ".join(statement.split()))

    engine = server.context.database.writer.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    passed_on = round_trip.run

    async def run(conn: AsyncConnection, sent: Sequence[round_trip.Statement]) -> Any:
        for sql, _ in sent:  # the statements sent below SQLAlchemy (decision 42)
            record(None, None, sql)
        return await passed_on(conn, sent)

    monkeypatch.setattr(round_trip, "run", run)
    try:
        await alice.withdraw(builders.withdrawal(item_ids=new[:1]))
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert reads, "the withdrawal read no items at all"
    for statement in reads:
        assert not re.search(r"\bcontributor_key_id IN\b", statement), statement
    # Of a token's items it reads nothing: the token's row counts the withdrawn ones.
    assert named == [], named
    assert await _states(alice) == {
        old_token: consent_pb2.CONSENT_STATE_INVALIDATED,
        new_token: consent_pb2.CONSENT_STATE_GIVEN,
    }

    # The last item of the second token still empties it.
    await alice.withdraw(builders.withdrawal(item_ids=new[1:]))
    assert (await _states(alice))[new_token] == consent_pb2.CONSENT_STATE_INVALIDATED


async def test_a_token_is_emptied_by_withdrawals_across_batches_and_within_one(
    make_client: Callable[..., Client], server: CoalitionServer
) -> None:
    """A token naming items becomes INVALIDATED when the last of its items is withdrawn,
    whether the others went in earlier batches (counted from the database) or earlier in the
    same batch (counted in memory); one naming an item still in use stays GIVEN."""
    alice = await member(make_client, "alice")
    a, b, c, d, e = await alice.register([b"a", b"b", b"c", b"d", b"e"])
    all_four = await alice.grant(builders.consent_token(item_ids=[a, b, c, d]))
    c_and_d = await alice.grant(builders.consent_token(item_ids=[c, d]))
    b_only = await alice.grant(builders.consent_token(item_ids=[b]))
    d_and_e = await alice.grant(builders.consent_token(item_ids=[d, e]))
    await alice.withdraw(builders.withdrawal(item_ids=[a]))
    assert set((await _states(alice)).values()) == {consent_pb2.CONSENT_STATE_GIVEN}

    async with held(server) as until:
        tasks = []
        for position, item_ids in enumerate([[c], [b], [d]]):
            statement = builders.withdrawal(item_ids=item_ids)
            tasks.append(asyncio.create_task(alice.withdraw(statement)))
            await until(position + 1)
    await asyncio.gather(*tasks)
    assert await _states(alice) == {
        all_four: consent_pb2.CONSENT_STATE_INVALIDATED,
        c_and_d: consent_pb2.CONSENT_STATE_INVALIDATED,
        b_only: consent_pb2.CONSENT_STATE_INVALIDATED,
        d_and_e: consent_pb2.CONSENT_STATE_GIVEN,
    }
    # Each token's row counts its withdrawn items (decision 41): what the next batch reads.
    assert await _withdrawn_items(server) == {all_four: 4, c_and_d: 2, b_only: 1, d_and_e: 1}


async def _withdrawn_items(server: CoalitionServer) -> dict[str, int]:
    async with server.context.database.reader.connect() as conn:
        rows = await conn.execute(select(ConsentRow.consent_id, ConsentRow.withdrawn_items))
        return {row.consent_id: row.withdrawn_items for row in rows}


async def test_the_migration_counts_withdrawn_items_as_withdrawals_keep_them(
    make_client: Callable[..., Client], server: CoalitionServer
) -> None:
    """Migration 0005 fills the count of a ledger written before it from the items the
    tokens name: the same counts the withdrawals kept, item by item, across batches."""
    alice, bob = await member(make_client, "alice"), await member(make_client, "bob")
    a, b, c, d = await alice.register([b"a", b"b", b"c", b"d"])
    (x,) = await bob.register([b"x"])
    three = await alice.grant(builders.consent_token(item_ids=[a, b, c]))
    overlapping = await alice.grant(builders.consent_token(item_ids=[c, d]))
    untouched = await alice.grant(builders.consent_token(item_ids=[d]))
    bobs = await bob.grant(builders.consent_token(item_ids=[x]))
    for item_id in (a, c):
        await alice.withdraw(builders.withdrawal(item_ids=[item_id]))
    await bob.withdraw(builders.withdrawal(item_ids=[x]))  # empties bob's token
    kept = await _withdrawn_items(server)
    assert kept == {three: 2, overlapping: 1, untouched: 0, bobs: 1}

    database = server.context.database
    async with database.writer.begin() as conn:
        await conn.run_sync(lambda sync: command.downgrade(migrate._config(sync), "0004"))
        await conn.run_sync(lambda sync: command.upgrade(migrate._config(sync), "head"))
    assert await migrate.is_current(database)
    assert await _withdrawn_items(server) == kept
