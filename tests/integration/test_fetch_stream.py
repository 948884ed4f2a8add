"""How Fetch streams content: segments read a few items at a time (the next read while the
previous streams), sent in wire format, and taken off the wire by the SDK (both DBs)."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from coalition.client import Client, ServerError, _segment_payload
from coalition.content import SEGMENT_SIZE
from coalition.v1 import access_pb2, items_pb2
from coalition_server.api import access
from coalition_server.api.dispatch import Encoded
from coalition_server.keys.provider import WrappedKey
from coalition_server.server import CoalitionServer
from coalition_server.store import items as item_store

from . import builders
from .world import agree, lab, member

# Empty, short, 4 segments, exactly one full segment, 3 segments, short: items of 0 to 4
# segments, so that reads of 2 segments group whole items and split the big ones.
CONTENTS = [
    b"",
    b"short",
    os.urandom(3 * SEGMENT_SIZE + 17),
    os.urandom(SEGMENT_SIZE),
    os.urandom(2 * SEGMENT_SIZE + 1),
    b"x" * 100,
]


@pytest.mark.parametrize("per_read", [1, 2, 8])
async def test_fetch_streams_every_item_whatever_the_reads(
    make_client: Callable[..., Client],
    server: CoalitionServer,
    monkeypatch: pytest.MonkeyPatch,
    per_read: int,
) -> None:
    monkeypatch.setattr(access, "SEGMENTS_PER_READ", per_read)
    alice = await member(make_client)
    ids = await alice.add(CONTENTS)
    await alice.grant(builders.consent_token(item_ids=ids))
    acme = await lab(make_client)
    agreement_id = await agree(server, acme, ids)
    lease = (await acme.lease(agreement_id)).lease
    expected = {i: alice.contents[i] for i in ids}
    # Decoded as FetchResponse messages (protobuf) ...
    _, fetched = await acme.fetch(lease.lease_id, agreement_id, page_size=4)
    assert fetched == expected
    # ... and by the SDK, which takes segments off the wire itself.
    got = {c.item.item_id: c.data async for c in acme.client.fetch_items(lease.lease_id)}
    assert got == expected
    paged = [c async for c in acme.client.fetch_items(lease.lease_id, page_size=2)]
    assert {c.item.item_id: c.data for c in paged} == expected


async def test_an_item_shredded_while_the_fetch_streams_ends_it_item_withdrawn(
    make_client: Callable[..., Client],
    server: CoalitionServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One item a read: the last item's content is read long after the first is delivered.
    monkeypatch.setattr(access, "SEGMENTS_PER_READ", 1)
    alice = await member(make_client)
    ids = sorted(await alice.add([os.urandom(SEGMENT_SIZE) for _ in range(12)]))
    await alice.grant(builders.consent_token(item_ids=ids))
    acme = await lab(make_client)
    agreement_id = await agree(server, acme, ids)
    lease = (await acme.lease(agreement_id)).lease
    fetched: list[str] = []

    async def fetch_all() -> None:
        async for content in acme.client.fetch_items(lease.lease_id):
            assert content.data == alice.contents[content.item.item_id]
            fetched.append(content.item.item_id)
            if len(fetched) == 1:
                # Its key is released already; withdrawing shreds its content.
                await alice.withdraw(builders.withdrawal(item_ids=[ids[-1]]))

    with pytest.raises(ServerError) as raised:
        await fetch_all()
    assert raised.value.reason == "ITEM_WITHDRAWN"
    assert raised.value.metadata == {"item_id": ids[-1]}
    assert fetched == ids[:-1]


async def test_read_segments_returns_each_span_in_order(
    make_client: Callable[..., Client], server: CoalitionServer
) -> None:
    alice = await member(make_client)
    big, small = await alice.add([os.urandom(3 * SEGMENT_SIZE + 5), b"small"])
    database = server.context.database
    async with database.reader.connect() as conn:
        whole = await item_store.read_segments(
            conn, [item_store.SegmentSpan(big, 0, 4), item_store.SegmentSpan(small, 0, 1)]
        )
        middle = await item_store.read_segments(conn, [item_store.SegmentSpan(big, 1, 3)])
        partial = await item_store.read_segments(
            conn, [item_store.SegmentSpan(big, 2, 4), item_store.SegmentSpan(small, 0, 1)]
        )
        gone = await item_store.read_segments(conn, [item_store.SegmentSpan("0" * 32, 0, 2)])
    assert [len(s) for s in whole[big]] == [SEGMENT_SIZE + 16] * 3 + [5 + 16]
    assert len(whole[small]) == 1
    assert middle == {big: whole[big][1:3]}
    assert partial == {big: whole[big][2:4], small: whole[small]}
    assert gone == {"0" * 32: []}


def _released(item_id: str, segments: int) -> access._ReleasedItem:
    record = item_store.ItemRecord(
        item_id, "c" * 32, b"", 0, "", frozenset(), items_pb2.ITEM_STATE_STORED, 0
    )
    return access._ReleasedItem(record, WrappedKey("k", b"wrapped"), segments)


def test_segment_reads_group_whole_items_and_split_big_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(access, "SEGMENTS_PER_READ", 4)
    released = [
        _released("a", 1),
        _released("b", 0),
        _released("c", 3),
        _released("d", 2),
        _released("e", 9),
        _released("f", 4),
        _released("g", 1),
    ]
    reads = [
        [(s.item_id, s.start, s.stop) for s in read] for read in access._segment_reads(released)
    ]
    assert reads == [
        [("a", 0, 1), ("c", 0, 3)],
        [("d", 0, 2)],
        [("e", 0, 4)],
        [("e", 4, 8)],
        [("e", 8, 9)],
        [("f", 0, 4)],
        [("g", 0, 1)],
    ]


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16383, 16384, SEGMENT_SIZE + 16])
def test_segments_on_the_wire_are_fetch_responses(size: int) -> None:
    segment = os.urandom(size)
    wire = Encoded(access._segment_wire(segment)).SerializeToString()
    assert wire == access_pb2.FetchResponse(segment=segment).SerializeToString()
    assert _segment_payload(wire) == segment
    # Anything but exactly one segment field is left to the protobuf parser.
    assert _segment_payload(wire + b"\x1a\x00") is None
    assert _segment_payload(wire[:-1] if size else b"\x1a") is None
    item = access_pb2.FetchResponse(item=access_pb2.FetchedItem(item_id="a" * 32))
    assert _segment_payload(item.SerializeToString()) is None
