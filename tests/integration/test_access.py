"""Agreements, leases, fetching with HPKE key release, notices and receipts (both DBs)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from coalition.client import Client, ServerError
from coalition.keys import SigningKey
from coalition.statements import sign_statement
from coalition.v1 import access_pb2, ledger_pb2
from coalition_server.agreements import conclude_agreement
from coalition_server.config import Settings
from coalition_server.domain.errors import FailedPreconditionError
from coalition_server.keys.provider import FileKeyProvider, KeyNotFoundError, WrappedKey
from coalition_server.server import CoalitionServer
from coalition_server.store import items as item_store
from coalition_server.store import models

from . import builders
from .helpers import row_counts
from .world import ACCESS, agree, lab, member

CODE = grpc.StatusCode


async def test_lab_leases_fetches_and_decrypts_consented_items(
    make_client: Callable[..., Client], server: CoalitionServer, anonymous: Client
) -> None:
    alice = await member(make_client)
    contents = [os.urandom(3 * 1024 * 1024 + 17), b"short", b""]
    ids = await alice.add(contents)
    await alice.grant(builders.consent_token(item_ids=ids))
    acme = await lab(make_client)
    agreement_id = await agree(server, acme, ids)
    lease = (await acme.lease(agreement_id)).lease
    releases, fetched = await acme.fetch(lease.lease_id, agreement_id, page_size=2)
    assert fetched == {i: alice.contents[i] for i in ids}
    # Every page's release is in the ledger, signed by the coalition, naming the items.
    logged: set[str] = set()
    for release in releases:
        entry = await anonymous.entry(release.receipt.index)
        leaf = ledger_pb2.LedgerLeaf.FromString(entry.leaf)
        statement = access_pb2.KeyRelease.FromString(leaf.envelope.payload)
        assert statement.lease_id == lease.lease_id
        logged.update(statement.item_ids)
    assert logged == set(ids)


async def test_withdrawal_stops_release_notifies_the_lab_and_takes_its_receipt(
    make_client: Callable[..., Client], server: CoalitionServer
) -> None:
    alice = await member(make_client)
    keep, drop = await alice.add([b"keep me", b"drop me"])
    await alice.grant(builders.consent_token(item_ids=[keep]))
    dropped_token = await alice.grant(builders.consent_token(item_ids=[drop]))
    acme = await lab(make_client)
    agreement_id = await agree(server, acme, [keep, drop])
    lease = (await acme.lease(agreement_id)).lease
    response = await alice.withdraw(builders.withdrawal(consent_id=dropped_token))
    assert list(response.shredded_item_ids) == [drop]
    assert response.notified_labs == 1
    (notice,) = await acme.notices(since=0, count=1)
    statement = access_pb2.WithdrawalNotice.FromString(notice.notice.payload)
    assert list(statement.item_ids) == [drop]
    assert statement.agreement_id == agreement_id
    assert notice.index > response.receipt.index
    _, fetched = await acme.fetch(lease.lease_id, agreement_id)
    assert set(fetched) == {keep}
    ack = await acme.acknowledge(notice.notice_id, [drop])
    assert ack.in_time
    with pytest.raises(ServerError) as twice:
        await acme.acknowledge(notice.notice_id, [drop])
    assert twice.value.reason == "NOTICE_ALREADY_ACKNOWLEDGED"


async def test_access_refusals(make_client: Callable[..., Client], server: CoalitionServer) -> None:
    alice = await member(make_client)
    ids = await alice.add([b"one"])
    await alice.grant(builders.consent_token(item_ids=ids))
    acme = await lab(make_client)
    rival = await lab(make_client, "rival")
    agreement_id = await agree(server, acme, ids)
    cases = [
        (rival.lease(agreement_id), CODE.PERMISSION_DENIED, "NOT_YOUR_AGREEMENT"),
        (acme.lease("f" * 32), CODE.NOT_FOUND, "AGREEMENT_NOT_FOUND"),
        (acme.fetch("e" * 32, agreement_id), CODE.NOT_FOUND, "LEASE_NOT_FOUND"),
    ]
    for call, code, reason in cases:
        with pytest.raises(ServerError) as refused:
            await call
        assert (refused.value.code, refused.value.reason) == (code, reason)
    lease = (await acme.lease(agreement_id)).lease
    with pytest.raises(ServerError) as stolen:
        await rival.fetch(lease.lease_id, agreement_id)
    assert (stolen.value.code, stolen.value.reason) == (CODE.PERMISSION_DENIED, "NOT_YOUR_LEASE")
    # A contributor cannot use lab calls, and labs never see each other's agreements.
    with pytest.raises(ServerError) as wrong_role:
        await alice.client.call(
            ACCESS + "ListAgreements",
            access_pb2.ListAgreementsRequest(),
            access_pb2.ListAgreementsResponse,
            sign=True,
        )
    assert wrong_role.value.reason == "ROLE_NOT_ALLOWED"
    mine = await acme.client.call(
        ACCESS + "ListAgreements",
        access_pb2.ListAgreementsRequest(),
        access_pb2.ListAgreementsResponse,
        sign=True,
    )
    theirs = await rival.client.call(
        ACCESS + "ListAgreements",
        access_pb2.ListAgreementsRequest(),
        access_pb2.ListAgreementsResponse,
        sign=True,
    )
    assert [a.agreement_id for a in mine.agreements] == [agreement_id]
    assert list(theirs.agreements) == []
    # An agreement over items nobody consented to is never countersigned.
    (unconsented,) = await alice.add([b"never consented"])
    with pytest.raises(FailedPreconditionError) as refused_agreement:
        await conclude_agreement(
            server.context, server.parties, builders.agreement(acme.key, [unconsented])
        )
    assert refused_agreement.value.reason == "ITEM_NOT_CONSENTED"


async def test_fetch_after_the_lease_expires_is_refused(
    make_client: Callable[..., Client], server: CoalitionServer
) -> None:
    alice = await member(make_client)
    ids = await alice.add([b"one"])
    await alice.grant(builders.consent_token(item_ids=ids))
    acme = await lab(make_client)
    agreement_id = await agree(server, acme, ids, lease_duration=builders.seconds(1))
    lease = (await acme.lease(agreement_id)).lease
    await asyncio.sleep(1.2)
    with pytest.raises(ServerError) as expired:
        await acme.fetch(lease.lease_id, agreement_id)
    assert (expired.value.code, expired.value.reason) == (CODE.FAILED_PRECONDITION, "LEASE_EXPIRED")
    # Renewal re-checks consent: after withdrawal there is nothing to lease.
    await alice.withdraw(builders.withdrawal())
    with pytest.raises(ServerError) as nothing:
        await acme.lease(agreement_id)
    assert nothing.value.reason == "NO_CONSENTED_ITEMS"


async def test_receipt_from_another_lab_is_refused(
    make_client: Callable[..., Client], server: CoalitionServer
) -> None:
    alice = await member(make_client)
    ids = await alice.add([b"one"])
    await alice.grant(builders.consent_token(item_ids=ids))
    acme = await lab(make_client)
    rival = await lab(make_client, "rival")
    await agree(server, acme, ids)
    await alice.withdraw(builders.withdrawal(item_ids=ids))
    (notice,) = await acme.notices(count=1)
    # The other lab's feed shows nothing of it.
    with pytest.raises(ServerError) as quiet:
        await rival.notices(count=1, wait=1.0)
    assert quiet.value.code == CODE.DEADLINE_EXCEEDED
    with pytest.raises(ServerError) as impostor:
        await rival.acknowledge(notice.notice_id, ids)
    assert (impostor.value.code, impostor.value.reason) == (
        CODE.PERMISSION_DENIED,
        "NOT_YOUR_NOTICE",
    )
    with pytest.raises(ServerError) as wrong_items:
        await acme.acknowledge(notice.notice_id, ["a" * 32])
    assert wrong_items.value.reason == "ITEMS_MISMATCH"


async def test_shredded_content_cannot_be_decrypted_after_the_retention_window(
    settings: Settings, tmp_path: Path
) -> None:
    """An attacker keeps a copy of a wrapped data key from before the withdrawal; after the
    retention window nothing in the database or the data directory unwraps it, and the data
    key itself is nowhere on disk."""
    server = CoalitionServer(dataclasses.replace(settings, kek_retention=timedelta(0)))
    port = await server.start()
    engine = create_async_engine(settings.database_url())
    try:
        alice = await member(lambda key: Client(f"127.0.0.1:{port}", key=key))
        secret = b"the secret that must die " * 100
        item_id, kept = await alice.add([secret, b"this one stays"])
        await alice.grant(builders.consent_token(item_ids=[item_id, kept]))
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    select(models.ItemContent).where(models.ItemContent.item_id == item_id)
                )
            ).one()
        captured = WrappedKey(row.kek_id, bytes(row.wrapped_data_key))
        aad = item_store.data_key_associated_data(item_id, alice.key.key_id)
        data_key = server.context.key_provider.unwrap(captured, aad)
        await alice.withdraw(builders.withdrawal(item_ids=[item_id]))
        assert await server.destroy_retired_keys() == [row.kek_id]
        async with engine.connect() as conn:
            segments = (await conn.execute(select(models.ItemSegment.item_id))).all()
            content = (await conn.execute(select(models.ItemContent))).all()
        assert {row.item_id for row in segments} == {kept}
        # The item that stays was moved to a new KEK and still decrypts.
        (survivor,) = content
        assert survivor.kek_id != row.kek_id
        server.context.key_provider.unwrap(
            WrappedKey(survivor.kek_id, bytes(survivor.wrapped_data_key)),
            item_store.data_key_associated_data(kept, alice.key.key_id),
        )
        with pytest.raises(KeyNotFoundError):
            FileKeyProvider(settings.data_dir / "keks").unwrap(captured, aad)
        await alice.client.close()
    finally:
        await engine.dispose()
        await server.stop()
    for path, blob in await asyncio.to_thread(_files, tmp_path):
        assert data_key not in blob, path
        assert secret[:25] not in blob, path


def _files(root: Path) -> list[tuple[Path, bytes]]:
    return [(path, path.read_bytes()) for path in root.rglob("*") if path.is_file()]


async def test_receipt_without_a_deletion_time_is_refused(
    make_client: Callable[..., Client], server: CoalitionServer, db_url: str
) -> None:
    alice = await member(make_client)
    ids = await alice.add([b"one"])
    await alice.grant(builders.consent_token(item_ids=ids))
    acme = await lab(make_client)
    await agree(server, acme, ids)
    await alice.withdraw(builders.withdrawal(item_ids=ids))
    (notice,) = await acme.notices(count=1)
    receipt = builders.deletion_receipt(notice.notice_id, ids)
    receipt.ClearField("deleted_time")
    before = await row_counts(db_url)
    with pytest.raises(ServerError) as refused:
        await acme.client.call(
            ACCESS + "AcknowledgeWithdrawal",
            access_pb2.AcknowledgeWithdrawalRequest(
                receipt=sign_statement(receipt, acme.key).to_proto()
            ),
            access_pb2.AcknowledgeWithdrawalResponse,
            sign=True,
        )
    assert (refused.value.code, refused.value.reason) == (
        CODE.INVALID_ARGUMENT,
        "MISSING_DELETED_TIME",
    )
    assert await row_counts(db_url) == before


async def test_key_encryption_keys_rotate_by_age_and_content_stays_readable(
    settings: Settings, make_client: Callable[..., Client]
) -> None:
    server = CoalitionServer(
        dataclasses.replace(settings, kek_max_age=timedelta(0), kek_retention=timedelta(0))
    )
    port = await server.start()
    engine = create_async_engine(settings.database_url())
    try:

        def make(key: SigningKey | None = None) -> Client:
            return Client(f"127.0.0.1:{port}", key=key)

        alice = await member(make)
        ids = await alice.add([b"long lived content"])
        await alice.grant(builders.consent_token(item_ids=ids))
        async with engine.connect() as conn:
            before = (await conn.execute(select(models.ItemContent.kek_id))).scalar_one()
        destroyed = await server.destroy_retired_keys()
        async with engine.connect() as conn:
            after = (await conn.execute(select(models.ItemContent.kek_id))).scalar_one()
        assert destroyed == [before]
        assert after != before
        acme = await lab(make)
        agreement_id = await agree(server, acme, ids)
        lease = (await acme.lease(agreement_id)).lease
        _, fetched = await acme.fetch(lease.lease_id, agreement_id)
        assert fetched == {ids[0]: b"long lived content"}
    finally:
        await engine.dispose()
        await server.stop()
