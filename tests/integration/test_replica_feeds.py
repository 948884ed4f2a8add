"""Feeds across replicas: a withdrawal sequenced by one replica reaches a lab following the
withdrawal feed on another, woken by the commit's announcement (PostgreSQL), not by its poll."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest

from coalition.client import Client
from coalition.keys import SigningKey
from coalition.v1 import access_pb2, party_pb2
from coalition_server.config import Settings
from coalition_server.server import CoalitionServer
from tests.access_helpers import leased, stored_items


@pytest.fixture
async def two_replicas(settings: Settings) -> AsyncIterator[tuple[CoalitionServer, ...]]:
    """Two server processes' worth of servers on one database and one set of keys, whose
    feeds would wait a minute between reads of the log if nothing woke them."""
    settings = dataclasses.replace(settings, follow_poll_seconds=60.0)
    first = CoalitionServer(settings)
    await first.start()
    second = CoalitionServer(settings)
    try:
        await second.start()
        yield first, second
    finally:
        await second.stop(grace=1.0)
        await first.stop(grace=1.0)


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_a_withdrawal_on_one_replica_reaches_a_feed_on_the_other(
    two_replicas: tuple[CoalitionServer, CoalitionServer],
) -> None:
    first, second = two_replicas
    assert second.commit_notices is not None
    await asyncio.wait_for(second.commit_notices.listening.wait(), 20)
    member_key, lab_key = SigningKey.generate(), SigningKey.generate()
    async with (
        Client(f"127.0.0.1:{first.port}", key=member_key) as member,
        Client(f"127.0.0.1:{first.port}", key=lab_key) as lab_on_first,
        Client(f"127.0.0.1:{second.port}", key=lab_key) as lab_on_second,
    ):
        await member.register(party_pb2.ROLE_CONTRIBUTOR, "Ada")
        await lab_on_first.register(party_pb2.ROLE_LAB, "Lab One")
        ids = await stored_items(member, [b"one", b"two"])
        async for _ in lab_on_first.fetch_items(await leased(first, lab_on_first, ids)):
            pass

        async def first_notice() -> access_pb2.WatchWithdrawalsResponse:
            async for notice in lab_on_second.watch_withdrawals(0):
                return notice
            raise AssertionError("the feed ended")

        watching = asyncio.create_task(first_notice())
        await asyncio.sleep(0.3)  # the feed has read the log and waits for a commit
        heard = second.commit_notices.heard
        withdrawn = await member.withdraw(item_ids=ids[:1])
        assert withdrawn.notified_labs == 1
        # The second replica committed nothing; its feed waits up to a minute for its own
        # commits or its poll, so only the first replica's announcement brings the notice.
        notice = await asyncio.wait_for(watching, 20)
        assert second.commit_notices.heard > heard
        statement = access_pb2.WithdrawalNotice.FromString(notice.notice.payload)
        assert list(statement.item_ids) == ids[:1]
        assert statement.lab_key_id == lab_key.key_id
