"""Large GrantConsent batches over real gRPC on both databases: opened on worker threads and
recorded in bulk, yet refused exactly as a token-by-token loop would refuse them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from coalition.client import Client, ServerError
from coalition.dsse import Envelope
from coalition.keys import SigningKey
from coalition.statements import sign_statement, statement_id
from coalition.v1 import consent_pb2, envelope_pb2, items_pb2, ledger_pb2
from coalition_server.api import consent as api
from coalition_server.api.mutations import MAX_PAYLOAD_BYTES, PARALLEL_BATCH
from coalition_server.store import models
from coalition_server.store.sequencer import Receipts

from . import builders
from .helpers import row_counts
from .world import CONSENT, Member, member

CODE = grpc.StatusCode
SIZE = 4 * PARALLEL_BATCH  # well past the size that is split across threads


async def _grant(alice: Member, envelopes: list[envelope_pb2.Envelope]) -> object:
    return await alice.client.call(
        CONSENT + "GrantConsent",
        consent_pb2.GrantConsentRequest(tokens=envelopes),
        consent_pb2.GrantConsentResponse,
        sign=True,
    )


def _envelopes(alice: Member, item_ids: list[str], count: int) -> list[envelope_pb2.Envelope]:
    return [
        sign_statement(
            builders.consent_token(item_ids=[item_ids[i % len(item_ids)]]), alice.key
        ).to_proto()
        for i in range(count)
    ]


def _wrong_type(alice: Member) -> envelope_pb2.Envelope:
    return sign_statement(builders.withdrawal(consent_id="0" * 32), alice.key).to_proto()


def _oversized(alice: Member) -> envelope_pb2.Envelope:
    envelope = sign_statement(builders.consent_token(tag="x"), alice.key).to_proto()
    envelope.payload = b"\0" * (MAX_PAYLOAD_BYTES + 1)
    return envelope


async def test_a_large_batch_is_recorded_in_order(
    make_client: Callable[..., Client],
) -> None:
    alice = await member(make_client)
    ids = await alice.add([b"one", b"two", b"three"])
    response = await _grant(alice, _envelopes(alice, ids, SIZE))
    assert isinstance(response, consent_pb2.GrantConsentResponse)
    indices = [receipt.index for receipt in response.receipts]
    assert indices == list(range(indices[0], indices[0] + SIZE))
    assert [record.index for record in response.consents] == indices
    listed = [record async for record in alice.client.consents()]
    assert len(listed) == SIZE


@pytest.mark.parametrize(
    ("first", "later", "code", "reason"),
    [
        (_wrong_type, _oversized, CODE.INVALID_ARGUMENT, "WRONG_STATEMENT_TYPE"),
        (_oversized, _wrong_type, CODE.RESOURCE_EXHAUSTED, "PAYLOAD_TOO_LARGE"),
    ],
)
async def test_the_first_bad_token_of_a_batch_is_the_one_reported(
    make_client: Callable[..., Client],
    db_url: str,
    first: Callable[[Member], envelope_pb2.Envelope],
    later: Callable[[Member], envelope_pb2.Envelope],
    code: grpc.StatusCode,
    reason: str,
) -> None:
    alice = await member(make_client)
    ids = await alice.add([b"one"])
    envelopes = _envelopes(alice, ids, SIZE)
    # The later fault sits in an earlier-finishing position range only if ranges were
    # reported out of order; either way the lowest position must win.
    envelopes[5] = first(alice)
    envelopes[SIZE - 5] = later(alice)
    before = await row_counts(db_url)
    with pytest.raises(ServerError) as refused:
        await _grant(alice, envelopes)
    assert (refused.value.code, refused.value.reason) == (code, reason)
    assert await row_counts(db_url) == before


async def test_a_forged_token_deep_in_a_batch_refuses_the_whole_batch(
    make_client: Callable[..., Client], db_url: str
) -> None:
    alice = await member(make_client)
    mallory = await member(make_client, "mallory")
    ids = await alice.add([b"one"])
    envelopes = _envelopes(alice, ids, SIZE)
    envelopes[SIZE - 1] = sign_statement(
        builders.consent_token(item_ids=ids), mallory.key
    ).to_proto()
    before = await row_counts(db_url)
    with pytest.raises(ServerError) as refused:
        await _grant(alice, envelopes)
    assert (refused.value.code, refused.value.reason) == (
        CODE.UNAUTHENTICATED,
        "BAD_STATEMENT_SIGNATURE",
    )
    assert await row_counts(db_url) == before


async def test_bulk_recording_refuses_reused_nonces_and_others_items(
    make_client: Callable[..., Client], db_url: str
) -> None:
    alice = await member(make_client)
    bob = await member(make_client, "bob")
    ids = await alice.add([b"one"])
    (bobs,) = await bob.add([b"bob's"])
    granted = builders.consent_token(item_ids=ids)
    await alice.grant(granted)
    # The same nonce twice in one batch; a nonce used by an earlier token; bob's item named
    # in the middle of a batch. Each refuses the batch and writes nothing.
    twin = builders.consent_token(item_ids=ids)
    twin.nonce = granted.nonce
    in_batch = _envelopes(alice, ids, SIZE)
    clone = builders.consent_token(tag="x")
    repeat = consent_pb2.ConsentToken()
    repeat.CopyFrom(clone)
    repeat.items.tag = "y"
    in_batch[3] = sign_statement(clone, alice.key).to_proto()
    in_batch[SIZE - 3] = sign_statement(repeat, alice.key).to_proto()
    earlier = _envelopes(alice, ids, SIZE)
    earlier[SIZE // 2] = sign_statement(twin, alice.key).to_proto()
    foreign = _envelopes(alice, ids, SIZE)
    foreign[SIZE // 2] = sign_statement(
        builders.consent_token(item_ids=[bobs]), alice.key
    ).to_proto()
    for envelopes, code, reason in [
        (in_batch, CODE.ALREADY_EXISTS, "DUPLICATE_NONCE"),
        (earlier, CODE.ALREADY_EXISTS, "DUPLICATE_NONCE"),
        (foreign, CODE.PERMISSION_DENIED, "NOT_YOUR_ITEM"),
    ]:
        before = await row_counts(db_url)
        with pytest.raises(ServerError) as refused:
            await _grant(alice, envelopes)
        assert (refused.value.code, refused.value.reason) == (code, reason)
        assert await row_counts(db_url) == before


async def test_a_large_item_batch_is_recorded_in_bulk_and_refuses_repeated_content(
    make_client: Callable[..., Client], db_url: str
) -> None:
    alice = await member(make_client)
    contents = [f"item {i}".encode() for i in range(SIZE)]
    ids = await alice.register(contents)
    assert len(set(ids)) == SIZE
    listed = [item async for item in alice.client.items()]
    assert [item.item_id for item in listed] == ids
    indices = [item.registration_index for item in listed]
    assert indices == list(range(indices[0], indices[0] + SIZE))
    # Content registered before, deep in a batch; the same new content twice in one batch.
    for batch in (
        [f"new {i}".encode() for i in range(SIZE - 1)] + [contents[7]],
        [f"newer {i}".encode() for i in range(SIZE)] + [b"newer 3"],
    ):
        before = await row_counts(db_url)
        with pytest.raises(ServerError) as refused:
            await alice.register(batch)
        assert (refused.value.code, refused.value.reason) == (
            CODE.ALREADY_EXISTS,
            "ITEM_ALREADY_REGISTERED",
        )
        assert await row_counts(db_url) == before


async def test_concurrent_uploads_all_succeed(make_client: Callable[..., Client]) -> None:
    # Each upload ends in a read-then-write transaction; on SQLite a deferred one failed
    # with "database is locked" whenever another upload committed in between.
    members = [await member(make_client, f"uploader {i}") for i in range(8)]
    registered = [
        await m.register([f"{i} {j}".encode() for j in range(3)]) for i, m in enumerate(members)
    ]
    await asyncio.gather(
        *(m.upload(item_id) for m, ids in zip(members, registered, strict=True) for item_id in ids)
    )
    for m, ids in zip(members, registered, strict=True):
        states = {item.item_id: item.state async for item in m.client.items()}
        assert all(states[i] == items_pb2.ITEM_STATE_STORED for i in ids)


async def test_a_batch_answers_and_stores_each_token_as_signed(
    make_client: Callable[..., Client], db_url: str
) -> None:
    alice = await member(make_client)
    ids = await alice.add([b"one"])
    envelopes = _envelopes(alice, ids, SIZE)
    # An envelope carrying a field this version does not know: the server keeps (and
    # answers with) the DSSE envelope it verified, never the extra bytes.
    padded = envelope_pb2.Envelope.FromString(
        envelopes[7].SerializeToString() + b"\xf8\x07\x01"  # field 127, varint 1
    )
    assert padded.SerializeToString() != envelopes[7].SerializeToString()
    envelopes[7] = padded
    response = await _grant(alice, envelopes)
    assert isinstance(response, consent_pb2.GrantConsentResponse)
    clean = [Envelope.from_proto(envelope).to_proto() for envelope in envelopes]
    answered = [record.token.SerializeToString() for record in response.consents]
    assert answered == [envelope.SerializeToString() for envelope in clean]
    # The ledger leaves embed the same envelopes, and the ids are the statements' ids.
    for record, receipt, envelope in zip(response.consents, response.receipts, clean, strict=True):
        stamp = ledger_pb2.LedgerLeaf.FromString(receipt.leaf).integrated_time
        assert receipt.leaf == ledger_pb2.LedgerLeaf(
            integrated_time=stamp, envelope=envelope
        ).SerializeToString(deterministic=True)
        assert record.consent_id == statement_id(Envelope.from_proto(envelope))
    engine = create_async_engine(db_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(select(models.ConsentRow.idx, models.ConsentRow.payload))
            stored = {row.idx: row.payload for row in rows}
    finally:
        await engine.dispose()
    assert [stored[record.index] for record in response.consents] == [
        envelope.payload for envelope in clean
    ]


@pytest.mark.parametrize("first_index", [0, 1, 127, 128, 2**40])
def test_the_response_is_encoded_as_protobuf_encodes_it(first_index: int) -> None:
    key = SigningKey.generate()
    member = key.public_key.key_id
    tokens = [
        sign_statement(builders.consent_token(item_ids=["ab" * 16]), key).to_proto()
        for _ in range(3)
    ]
    ids = [statement_id(Envelope.from_proto(token)) for token in tokens]
    receipts = [
        ledger_pb2.Receipt(
            index=first_index + n,
            leaf_hash=bytes([n]) * 32,
            checkpoint="origin\n3\nroot\n\n— sig\n",
            inclusion_proof=[bytes([n + 1]) * 32] * n,
            tree_size=first_index + 3,
            leaf=b"leaf %d" % n,
        )
        for n in range(3)
    ]
    heads = [
        api._record_head(consent_id, api._record_member(member), token.SerializeToString())
        for consent_id, token in zip(ids, tokens, strict=True)
    ]
    expected = consent_pb2.GrantConsentResponse(
        consents=[
            consent_pb2.ConsentRecord(
                consent_id=consent_id,
                contributor_key_id=member,
                token=token,
                state=consent_pb2.CONSENT_STATE_GIVEN,
                index=receipt.index,
            )
            for consent_id, token, receipt in zip(ids, tokens, receipts, strict=True)
        ],
        receipts=receipts,
    ).SerializeToString(deterministic=True)
    assert api._grant_response(heads, receipts) == expected
    # As the sequencer hands them over: encoded.
    encoded = Receipts(
        tuple(r.index for r in receipts), tuple(r.SerializeToString() for r in receipts)
    )
    assert api._grant_response(heads, encoded) == expected
