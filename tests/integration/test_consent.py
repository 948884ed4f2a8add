"""Items, consent and withdrawal over real gRPC on both databases."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import timedelta

import grpc
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from coalition import merkle
from coalition.checkpoint import verify_checkpoint
from coalition.client import Client, ServerError
from coalition.statements import sign_statement
from coalition.v1 import consent_pb2, items_pb2, ledger_pb2, terms_pb2
from coalition_server.store import models

from . import builders
from .helpers import row_counts, verifier
from .world import CONSENT, ITEMS, lab, member

CODE = grpc.StatusCode


async def _rows(db_url: str, table: type[models.Base]) -> list[object]:
    engine = create_async_engine(db_url)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(select(table))).all())
    finally:
        await engine.dispose()


async def test_items_register_upload_and_are_encrypted_at_rest(
    make_client: Callable[..., Client], db_url: str
) -> None:
    alice = await member(make_client)
    content = b"my poem, line after line\n" * 5000
    (item_id,) = await alice.register([content], tags=["poetry"])
    listed = await alice.client.call(
        ITEMS + "ListItems", items_pb2.ListItemsRequest(), items_pb2.ListItemsResponse, sign=True
    )
    assert [i.item_id for i in listed.items] == [item_id]
    assert listed.items[0].state == items_pb2.ITEM_STATE_REGISTERED
    assert list(listed.items[0].tags) == ["poetry"]
    await alice.upload(item_id)
    got = await alice.client.call(
        ITEMS + "GetItem",
        items_pb2.GetItemRequest(item_id=item_id),
        items_pb2.GetItemResponse,
        sign=True,
    )
    assert got.item.state == items_pb2.ITEM_STATE_STORED
    segments = await _rows(db_url, models.ItemSegment)
    stored = b"".join(row.data for row in segments)  # type: ignore[attr-defined]
    assert len(stored) >= len(content)
    assert b"my poem" not in stored  # ciphertext only
    # The same content again is the same item.
    with pytest.raises(ServerError) as again:
        await alice.register([content])
    assert again.value.reason == "ITEM_ALREADY_REGISTERED"


async def test_upload_that_does_not_match_the_commitment_leaves_nothing(
    make_client: Callable[..., Client], db_url: str
) -> None:
    alice = await member(make_client)
    (item_id,) = await alice.register([b"the real content"])
    before = await row_counts(db_url)
    with pytest.raises(ServerError) as refused:
        await alice.upload(item_id, b"something else!!")
    assert (refused.value.code, refused.value.reason) == (CODE.INVALID_ARGUMENT, "CONTENT_MISMATCH")
    assert await row_counts(db_url) == before
    other = await member(make_client, "mallory")
    with pytest.raises(ServerError) as not_theirs:
        await other.upload(item_id, b"the real content")
    assert not_theirs.value.reason == "NOT_YOUR_ITEM"


async def test_consent_state_is_provable_and_follows_withdrawal(
    make_client: Callable[..., Client], anonymous: Client
) -> None:
    alice = await member(make_client)
    ids = await alice.add([b"a", b"b"])
    consent_id = await alice.grant(builders.consent_token(item_ids=ids))
    state = await anonymous.call(
        CONSENT + "GetConsentState",
        consent_pb2.GetConsentStateRequest(consent_id=consent_id),
        consent_pb2.GetConsentStateResponse,
        sign=False,
    )
    assert state.state == consent_pb2.CONSENT_STATE_GIVEN
    checkpoint = verify_checkpoint(state.checkpoint, await verifier(anonymous))
    evidence = state.token_entry
    merkle.verify_inclusion(
        merkle.leaf_hash(evidence.leaf),
        evidence.index,
        checkpoint.size,
        list(evidence.proof),
        checkpoint.root_hash,
    )
    response = await alice.withdraw(builders.withdrawal(consent_id=consent_id))
    assert sorted(response.shredded_item_ids) == sorted(ids)
    state = await anonymous.call(
        CONSENT + "GetConsentState",
        consent_pb2.GetConsentStateRequest(consent_id=consent_id),
        consent_pb2.GetConsentStateResponse,
        sign=False,
    )
    assert state.state == consent_pb2.CONSENT_STATE_WITHDRAWN
    assert state.withdrawal_entry.index == response.receipt.index
    checkpoint = verify_checkpoint(state.checkpoint, await verifier(anonymous))
    for evidence in (state.token_entry, state.withdrawal_entry):
        merkle.verify_inclusion(
            merkle.leaf_hash(evidence.leaf),
            evidence.index,
            checkpoint.size,
            list(evidence.proof),
            checkpoint.root_hash,
        )
    listed = await alice.client.call(
        CONSENT + "ListConsents",
        consent_pb2.ListConsentsRequest(),
        consent_pb2.ListConsentsResponse,
        sign=True,
    )
    assert [(c.consent_id, c.state) for c in listed.consents] == [
        (consent_id, consent_pb2.CONSENT_STATE_WITHDRAWN)
    ]
    # Withdrawing again is refused and writes nothing.
    with pytest.raises(ServerError) as twice:
        await alice.withdraw(builders.withdrawal(consent_id=consent_id))
    assert (twice.value.code, twice.value.reason) == (CODE.FAILED_PRECONDITION, "CONSENT_NOT_GIVEN")


async def test_withdrawal_shreds_only_items_without_remaining_consent(
    make_client: Callable[..., Client], db_url: str, anonymous: Client
) -> None:
    alice = await member(make_client)
    shared, alone = await alice.add([b"shared item", b"only in the first token"])
    first = await alice.grant(builders.consent_token(item_ids=[shared, alone]))
    await alice.grant(builders.consent_token(item_ids=[shared]))
    response = await alice.withdraw(builders.withdrawal(consent_id=first))
    assert list(response.shredded_item_ids) == [alone]
    remaining = {row.item_id for row in await _rows(db_url, models.ItemContent)}  # type: ignore[attr-defined]
    assert remaining == {shared}
    # The shredding is itself in the ledger, signed by the coalition, right after.
    entry = await anonymous.entry(response.receipt.index + 1)
    leaf = ledger_pb2.LedgerLeaf.FromString(entry.leaf)
    assert leaf.envelope.payload_type.endswith("ShreddingRecord+proto")


async def test_consent_refusals(make_client: Callable[..., Client], db_url: str) -> None:
    alice = await member(make_client)
    bob = await member(make_client, "bob")
    (mine,) = await alice.add([b"alice's"])
    (theirs,) = await bob.add([b"bob's"])
    expired = builders.consent_token(item_ids=[mine], valid_days=-1)
    future = builders.consent_token(item_ids=[mine], not_before=builders.now() + timedelta(days=2))
    bad_purpose = builders.consent_token(
        item_ids=[mine], purposes=[terms_pb2.Purpose.ValueType(99)]
    )
    negative = builders.consent_token(item_ids=[mine], purchase_floor=-5)
    cases = [
        (builders.consent_token(item_ids=[theirs]), CODE.PERMISSION_DENIED, "NOT_YOUR_ITEM"),
        (builders.consent_token(item_ids=["0" * 32]), CODE.NOT_FOUND, "ITEM_NOT_FOUND"),
        (expired, CODE.FAILED_PRECONDITION, "TOKEN_EXPIRED"),
        (bad_purpose, CODE.INVALID_ARGUMENT, "UNKNOWN_PURPOSE"),
        (negative, CODE.INVALID_ARGUMENT, "NEGATIVE_PRICE"),
        (builders.consent_token(tag="Bad Tag"), CODE.INVALID_ARGUMENT, "BAD_TAG"),
        (future, CODE.FAILED_PRECONDITION, "TOKEN_NOT_YET_VALID"),
    ]
    for token, code, reason in cases:
        before = await row_counts(db_url)
        with pytest.raises(ServerError) as refused:
            await alice.grant(token)
        assert (refused.value.code, refused.value.reason) == (code, reason), token
        assert await row_counts(db_url) == before
    # A token signed by another key than the caller's.
    token = builders.consent_token(item_ids=[mine])
    with pytest.raises(ServerError) as forged:
        await alice.client.call(
            CONSENT + "GrantConsent",
            consent_pb2.GrantConsentRequest(tokens=[sign_statement(token, bob.key).to_proto()]),
            consent_pb2.GrantConsentResponse,
            sign=True,
        )
    assert forged.value.reason == "BAD_STATEMENT_SIGNATURE"
    # A reused nonce in a different token.
    first = builders.consent_token(item_ids=[mine])
    await alice.grant(first)
    clone = builders.consent_token(tag="x")
    clone.nonce = first.nonce
    with pytest.raises(ServerError) as replayed:
        await alice.grant(clone)
    assert (replayed.value.code, replayed.value.reason) == (CODE.ALREADY_EXISTS, "DUPLICATE_NONCE")
    # Withdrawing someone else's consent.
    bobs = await bob.grant(builders.consent_token(item_ids=[theirs]))
    with pytest.raises(ServerError) as not_mine:
        await alice.withdraw(builders.withdrawal(consent_id=bobs))
    assert (not_mine.value.code, not_mine.value.reason) == (
        CODE.PERMISSION_DENIED,
        "NOT_YOUR_CONSENT",
    )
    # A lab cannot grant consent at all.
    acme = await lab(make_client)
    with pytest.raises(ServerError) as wrong_role:
        await acme.client.call(
            CONSENT + "GrantConsent",
            consent_pb2.GrantConsentRequest(tokens=[sign_statement(token, acme.key).to_proto()]),
            consent_pb2.GrantConsentResponse,
            sign=True,
        )
    assert (wrong_role.value.code, wrong_role.value.reason) == (
        CODE.PERMISSION_DENIED,
        "ROLE_NOT_ALLOWED",
    )


async def test_export_consent_as_odrl_and_rsl(make_client: Callable[..., Client]) -> None:
    alice = await member(make_client)
    ids = await alice.add([b"x"])
    consent_id = await alice.grant(
        builders.consent_token(
            item_ids=ids, purposes=[terms_pb2.PURPOSE_TRAIN_AI, terms_pb2.PURPOSE_SEARCH]
        )
    )
    for fmt, media_type in (
        (consent_pb2.EXPORT_FORMAT_ODRL, "application/ld+json"),
        (consent_pb2.EXPORT_FORMAT_RSL, "application/rsl+xml"),
    ):
        exported = await alice.client.call(
            CONSENT + "ExportConsent",
            consent_pb2.ExportConsentRequest(consent_id=consent_id, format=fmt),
            consent_pb2.ExportConsentResponse,
            sign=True,
        )
        assert exported.media_type == media_type
        assert consent_id in exported.document
        assert hashlib.sha256(exported.document.encode()).digest()


async def test_a_token_whose_items_are_all_withdrawn_is_invalidated(
    make_client: Callable[..., Client],
) -> None:
    alice = await member(make_client)
    first, second = await alice.add([b"first", b"second"])
    consent_id = await alice.grant(builders.consent_token(item_ids=[first, second]))
    await alice.withdraw(builders.withdrawal(item_ids=[first]))
    state = await alice.client.call(
        CONSENT + "GetConsentState",
        consent_pb2.GetConsentStateRequest(consent_id=consent_id),
        consent_pb2.GetConsentStateResponse,
        sign=False,
    )
    assert state.state == consent_pb2.CONSENT_STATE_GIVEN  # one item still named
    response = await alice.withdraw(builders.withdrawal(item_ids=[second]))
    state = await alice.client.call(
        CONSENT + "GetConsentState",
        consent_pb2.GetConsentStateRequest(consent_id=consent_id),
        consent_pb2.GetConsentStateResponse,
        sign=False,
    )
    assert state.state == consent_pb2.CONSENT_STATE_INVALIDATED
    assert state.withdrawal_entry.index == response.receipt.index
