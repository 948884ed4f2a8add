"""Items through the SDK: ids, registration, upload from every kind of source, listing."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from coalition import client as sdk
from coalition.client import Client, NewItem, ServerError, item_id
from coalition.keys import SigningKey
from coalition.v1 import items_pb2, party_pb2
from coalition_server.domain.items import item_id as server_item_id
from tests.sdk.conftest import MakeParty


async def test_item_id_is_the_servers() -> None:
    for _ in range(20):
        key = SigningKey.generate()
        commitment = hashlib.sha256(os.urandom(32)).digest()
        assert item_id(key.key_id, commitment) == server_item_id(key.key_id, commitment)
    async with Client("127.0.0.1:1", key=key) as client:
        assert client.item_id_for(commitment) == server_item_id(key.key_id, commitment)


def commitment(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


async def test_upload_from_path_bytes_and_iterators(member: Client, tmp_path: Path) -> None:
    blobs = [b"from a path" * 1000, b"from bytes", os.urandom(2_500_000), b"sync chunks" * 7]
    path = tmp_path / "a.txt"
    path.write_bytes(blobs[0])
    response = await member.register_items(
        [NewItem(commitment(b), len(b), "text/plain", ["t"]) for b in blobs]
    )
    ids = [i.item_id for i in response.items]
    assert ids == [member.item_id_for(commitment(b)) for b in blobs]
    assert [r.index for r in response.receipts] == [i.registration_index for i in response.items]

    async def chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
        for start in range(0, len(data), size):
            yield data[start : start + size]

    seen: list[int] = []
    await member.upload(ids[0], path)
    await member.upload(ids[1], blobs[1])
    # Chunks larger than 1 MiB are split; progress counts bytes sent so far.
    uploaded = await member.upload(ids[2], chunks(blobs[2], 1_700_000), progress=seen.append)
    assert uploaded.size_bytes == len(blobs[2])
    assert seen == sorted(seen)
    assert seen[-1] == len(blobs[2])
    assert len(seen) == 3  # 1 MiB + 0.6 MiB + rest
    await member.upload(ids[3], [blobs[3][:5], blobs[3][5:]])
    for item in [await member.item(i) for i in ids]:
        assert item.state == items_pb2.ITEM_STATE_STORED


async def test_upload_refuses_content_that_is_not_the_commitment(member: Client) -> None:
    data = b"the real content"
    (item,) = (await member.register_items([(commitment(data), len(data), "text/plain", [])])).items
    with pytest.raises(ServerError) as error:
        await member.upload(item.item_id, b"something else!!")
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.reason == "CONTENT_MISMATCH"
    assert (await member.item(item.item_id)).state == items_pb2.ITEM_STATE_REGISTERED
    await member.upload(item.item_id, data)
    with pytest.raises(ServerError) as again:
        await member.upload(item.item_id, data)
    assert again.value.reason == "CONTENT_ALREADY_STORED"


async def test_register_files_guesses_media_types_and_tags(member: Client, tmp_path: Path) -> None:
    names = {"a.txt": b"text", "b.json": b"{}", "c.weird-extension": b"?", "d": b""}
    paths = []
    for name, data in names.items():
        (tmp_path / name).write_bytes(data)
        paths.append(tmp_path / name)
    registered = await member.register_files(paths, tags=["x", "y"])
    assert [r.item.media_type for r in registered] == [
        "text/plain",
        "application/json",
        "application/octet-stream",
        "application/octet-stream",
    ]
    assert all(list(r.item.tags) == ["x", "y"] for r in registered)
    assert all(r.item.state == items_pb2.ITEM_STATE_REGISTERED for r in registered)
    # An empty file uploads as empty content.
    empty = registered[-1].item
    assert (await member.upload(empty.item_id, paths[-1])).size_bytes == 0
    (tmp_path / "notes").write_bytes(b"# notes")
    (forced,) = await member.register_files([tmp_path / "notes"], media_type="text/markdown")
    assert forced.item.media_type == "text/markdown"


async def test_items_page_through_and_large_batches_split(
    member: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sdk, "MAX_BATCH", 2)
    specs = [(commitment(bytes([n])), 1, "text/plain", ()) for n in range(5)]
    response = await member.register_items(specs, request_id="batch-1")
    assert len(response.items) == len(response.receipts) == 5
    listed = [item.item_id async for item in member.items(page_size=2)]
    assert listed == [i.item_id for i in response.items]


async def test_only_contributors_have_items(make_party: MakeParty) -> None:
    lab = await make_party(party_pb2.ROLE_LAB, "Lab")
    with pytest.raises(ServerError) as error:
        await lab.register_items([(commitment(b"x"), 1, "text/plain", ())])
    assert error.value.reason == "ROLE_NOT_ALLOWED"
