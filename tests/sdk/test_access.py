"""Labs through the SDK: leases, verified fetches (to a directory, a callback, memory, page
by page), refusing tampered streams, the withdrawal feed, deletion receipts, compliance."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from coalition import compliance
from coalition.client import (
    Client,
    FetchedContent,
    FetchError,
    FetchProgress,
    ServerError,
)
from coalition.errors import VerificationError
from coalition.v1 import access_pb2, ledger_pb2, party_pb2
from coalition_server.server import CoalitionServer
from tests.access_helpers import CONTENTS, leased, make_agreement, stored_items
from tests.sdk.conftest import MakeParty
from tests.sdk.proxy import Proxy


async def ledger(client: Client) -> list[tuple[int, ledger_pb2.LedgerLeaf]]:
    return [(e.index, ledger_pb2.LedgerLeaf.FromString(e.leaf)) async for e in client.entries()]


async def test_fetch_to_directory_callback_and_memory(
    server: CoalitionServer, member: Client, lab: Client, tmp_path: Path
) -> None:
    ids = await stored_items(member)
    lease_id = await leased(server, lab, ids)
    expected = {member.item_id_for(hashlib.sha256(c).digest()): c for c in CONTENTS}

    reports: list[FetchProgress] = []
    result = await lab.fetch(lease_id, tmp_path / "out", progress=reports.append)
    assert {f.item.item_id: f.path.read_bytes() for f in result.files} == expected
    assert all(f.path.name.startswith(f.item.item_id) for f in result.files)
    assert all(f.path.suffix == ".txt" for f in result.files)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".partial")]
    assert reports[-1].items_done == len(CONTENTS)
    assert reports[-1].total_bytes == sum(map(len, CONTENTS))
    assert [r.total_bytes for r in reports] == sorted(r.total_bytes for r in reports)
    assert sum(1 for r in reports if r.done) == len(CONTENTS)

    got: dict[str, bytes] = {}

    async def keep(content: FetchedContent) -> None:
        got[content.item.item_id] = content.data

    await lab.fetch(lease_id, keep)
    assert got == expected
    synced: list[str] = []
    await lab.fetch(lease_id, lambda content: synced.append(content.item.item_id))
    assert sorted(synced) == sorted(expected)

    # One release (and one logged KeyRelease) per page.
    paged = [c async for c in lab.fetch_items(lease_id, page_size=1)]
    assert {c.item.item_id: c.data for c in paged} == expected
    by_page = await lab.fetch(lease_id, tmp_path / "paged", page_size=3)
    assert len(by_page.releases) == 2
    releases = [e async for e in lab.entries_by_subject(kind="KeyRelease")]
    assert len(releases) == 1 + 1 + 1 + len(CONTENTS) + 2


@pytest.fixture
async def proxy(target: str) -> AsyncIterator[Proxy]:
    instance = Proxy(target)
    await instance.start()
    try:
        yield instance
    finally:
        await instance.stop()


def rewrite_first(kind: str, change: object) -> object:
    done = False

    def rewrite(position: int, raw: bytes) -> bytes:
        nonlocal done
        message = access_pb2.FetchResponse.FromString(raw)
        if not done and message.WhichOneof("part") == kind:
            done = True
            change(message)  # type: ignore[operator]
        return message.SerializeToString()

    return rewrite


def flip_segment(message: access_pb2.FetchResponse) -> None:
    data = bytearray(message.segment)
    data[0] ^= 1
    message.segment = bytes(data)


def flip_key(message: access_pb2.FetchResponse) -> None:
    data = bytearray(message.item.sealed_data_key)
    data[-1] ^= 1
    message.item.sealed_data_key = bytes(data)


def other_commitment(message: access_pb2.FetchResponse) -> None:
    message.item.commitment = hashlib.sha256(b"something else").digest()


def more_segments(message: access_pb2.FetchResponse) -> None:
    message.item.segment_count += 1


def other_size(message: access_pb2.FetchResponse) -> None:
    message.item.size_bytes += 1


@pytest.mark.parametrize(
    ("kind", "change", "error"),
    [
        ("segment", flip_segment, FetchError),
        ("item", flip_key, VerificationError),
        ("item", other_commitment, FetchError),
        ("item", more_segments, FetchError),
        ("item", other_size, FetchError),
    ],
)
async def test_fetch_refuses_a_tampered_stream(
    server: CoalitionServer,
    member: Client,
    lab: Client,
    proxy: Proxy,
    tmp_path: Path,
    kind: str,
    change: object,
    error: type[Exception],
) -> None:
    ids = await stored_items(member, [b"x" * 5000, b"y" * 10])
    lease_id = await leased(server, lab, ids)
    proxy.rewrite["Fetch"] = rewrite_first(kind, change)  # type: ignore[assignment]
    async with Client(f"127.0.0.1:{proxy.port}", key=lab.key) as through:
        with pytest.raises(error):
            await through.fetch(lease_id, tmp_path / "out")
    # Nothing unverified is left behind.
    assert all(not p.name.endswith(".partial") for p in (tmp_path / "out").iterdir())
    assert len(list((tmp_path / "out").iterdir())) <= 1


async def test_withdrawal_feed_receipts_and_compliance(
    server: CoalitionServer, member: Client, make_party: MakeParty
) -> None:
    good = await make_party(party_pb2.ROLE_LAB, "Good Lab")
    slow = await make_party(party_pb2.ROLE_LAB, "Slow Lab")
    ids = await stored_items(member)
    good_lease = await leased(server, good, ids)
    slow_lease = await leased(server, slow, ids[:2], deletion_deadline=timedelta(seconds=1))
    for lab, lease in ((good, good_lease), (slow, slow_lease)):
        async for _ in lab.fetch_items(lease):
            pass

    # A watcher started before the withdrawal sees the notice as it is sequenced.
    async def first_notice(lab: Client) -> access_pb2.WatchWithdrawalsResponse:
        async for notice in lab.watch_withdrawals(0):
            return notice
        raise AssertionError("the feed ended")

    watching = asyncio.create_task(first_notice(good))
    await asyncio.sleep(0.3)
    withdrawn = await member.withdraw(item_ids=ids[:3])
    assert withdrawn.notified_labs == 2
    notice = await asyncio.wait_for(watching, 10)
    statement = access_pb2.WithdrawalNotice.FromString(notice.notice.payload)
    assert list(statement.item_ids) == sorted(ids[:3])
    assert good.key is not None
    assert statement.lab_key_id == good.key.key_id

    # Resumable: from the notice's index on it is there again, after it nothing.
    again = [n async for n in good.watch_withdrawals(notice.index, idle_timeout=1)]
    assert [n.notice_id for n in again] == [notice.notice_id]
    assert [n async for n in good.watch_withdrawals(notice.index + 1, idle_timeout=1)] == []
    # Each lab sees only its own notices.
    (slow_notice,) = [n async for n in slow.watch_withdrawals(0, idle_timeout=1)]
    assert list(
        access_pb2.WithdrawalNotice.FromString(slow_notice.notice.payload).item_ids
    ) == sorted(ids[:2])
    assert slow_notice.notice_id != notice.notice_id

    found = await good.find_notice(notice.notice_id, idle_timeout=1)
    assert found is not None
    with pytest.raises(ServerError) as wrong_items:
        await good.acknowledge(notice.notice_id, item_ids=ids[:1])
    assert wrong_items.value.reason == "ITEMS_MISMATCH"
    with pytest.raises(ServerError) as not_theirs:
        await slow.acknowledge(notice)
    assert not_theirs.value.reason == "NOT_YOUR_NOTICE"
    ack = await good.acknowledge(notice.notice_id, item_ids=statement.item_ids)
    assert ack.in_time is True

    # Withdrawn items are never released again, to anyone.
    assert [c.item.item_id async for c in good.fetch_items(good_lease)] == [ids[3]]

    info = await member.log_info()
    entries = await ledger(member)
    assert slow.key is not None
    slow_id = slow.key.key_id
    at_issue = compliance.compliance_report(entries, coalition_key_id=info.coalition_key_id)
    good_row = at_issue.lab(good.key.key_id)
    assert good_row is not None
    assert (good_row.notices, good_row.receipts_in_time, good_row.receipts_late) == (1, 1, 0)
    assert (good_row.missing, good_row.releases_after_withdrawal) == (0, 0)
    assert good_row.releases == 2
    (slow_status,) = [n for n in at_issue.notices if n.lab_key_id == slow_id]
    later = compliance.compliance_report(
        entries,
        coalition_key_id=info.coalition_key_id,
        now=slow_status.respond_by + timedelta(seconds=1),
    )
    slow_later = later.lab(slow_id)
    assert slow_later is not None
    assert (slow_later.notices, slow_later.missing, slow_later.ok) == (1, 1, False)
    assert later.violations == ()
    assert not later.ok
    on_time = compliance.compliance_report(
        entries, coalition_key_id=info.coalition_key_id, now=slow_status.respond_by
    )
    slow_on_time = on_time.lab(slow_id)
    assert slow_on_time is not None
    assert slow_on_time.pending == 1
    assert on_time.ok


async def test_pages_agreements_and_skips_pages_with_nothing_left(
    server: CoalitionServer, member: Client, lab: Client
) -> None:
    ids = await stored_items(member, [b"1", b"2", b"3"])
    assert lab.key is not None
    first, _ = await make_agreement(server, lab.key, ids)
    second, _ = await make_agreement(server, lab.key, ids[1:])
    assert [a.agreement_id async for a in lab.agreements(page_size=1)] == [first, second]
    lease_id = (await lab.take_lease(first)).lease.lease_id
    await member.withdraw(item_ids=[min(ids)])
    # The first page (the smallest id) has nothing releasable: no release, next page.
    result = await lab.fetch(lease_id, lambda content: None, page_size=1)
    assert sorted(i.item_id for i in result.items) == sorted(set(ids) - {min(ids)})
    assert len(result.releases) == 2


async def test_expired_leases_release_nothing(
    server: CoalitionServer, member: Client, lab: Client
) -> None:
    ids = await stored_items(member, [b"short"])
    lease_id = await leased(server, lab, ids, lease_duration=timedelta(seconds=1))
    await asyncio.sleep(1.2)
    with pytest.raises(ServerError) as error:
        await lab.fetch(lease_id, lambda content: None)
    assert error.value.reason == "LEASE_EXPIRED"
