"""The whole path over real gRPC: a member registers, uploads and consents; a lab leases and
fetches; the member withdraws; the lab is notified and answers; the ledger shows it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from xml.etree import ElementTree

from coalition import compliance, dsse, statements
from coalition.client import Client, price_floor
from coalition.note import NoteVerifier
from coalition.receipts import verify_receipt
from coalition.v1 import access_pb2, consent_pb2, items_pb2, ledger_pb2
from coalition_server.server import CoalitionServer
from tests.access_helpers import make_agreement

PURCHASE_FLOOR = [price_floor("purchase", 1_000_000)]


def write_files(directory: Path, contents: dict[str, bytes]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in contents.items():
        path = directory / name
        path.write_bytes(data)
        paths.append(path)
    return paths


async def ledger_leaves(client: Client) -> list[tuple[int, ledger_pb2.LedgerLeaf]]:
    return [
        (entry.index, ledger_pb2.LedgerLeaf.FromString(entry.leaf))
        async for entry in client.entries()
    ]


async def test_register_upload_consent_fetch_withdraw_acknowledge(
    server: CoalitionServer, member: Client, lab: Client, tmp_path: Path
) -> None:
    contents = {
        "a.txt": b"alpha " * 1000,
        "b.bin": bytes(range(256)) * 9000,  # > 2 MiB: several segments and chunks
        "empty.txt": b"",
    }
    paths = write_files(tmp_path / "src", contents)
    registered = await member.register_files(paths, tags=["poems"])
    assert [r.path for r in registered] == paths
    for r, data in zip(registered, contents.values(), strict=True):
        assert r.item.item_id == member.item_id_for(hashlib.sha256(data).digest())
        assert r.item.state == items_pb2.ITEM_STATE_REGISTERED
        assert r.item.registration_index == r.receipt.index

    sent: list[int] = []
    for r in registered:
        response = await member.upload(r.item.item_id, r.path, progress=sent.append)
        assert response.item.state == items_pb2.ITEM_STATE_STORED
        assert response.size_bytes == r.path.stat().st_size
    assert sent[-1] == len(contents["empty.txt"]) or sent  # progress was reported
    listed = [item async for item in member.items()]
    assert [i.item_id for i in listed] == [r.item.item_id for r in registered]
    assert {i.state for i in listed} == {items_pb2.ITEM_STATE_STORED}
    assert (await member.item(registered[0].item.item_id)).tags == ["poems"]

    granted = await member.grant_consent(
        tag="poems", purposes=["train-ai", "search"], floors=PURCHASE_FLOOR
    )
    (record,) = granted.consents
    consent_id = record.consent_id
    consents = [c async for c in member.consents()]
    assert [(c.consent_id, c.state) for c in consents] == [
        (consent_id, consent_pb2.CONSENT_STATE_GIVEN)
    ]

    odrl = await member.export_consent(consent_id, "odrl")
    assert odrl.media_type == "application/ld+json"
    assert isinstance(json.loads(odrl.document), dict)
    rsl = await member.export_consent(consent_id, "rsl")
    ElementTree.fromstring(rsl.document)

    state = await member.verified_consent_state(consent_id)
    assert state.state == consent_pb2.CONSENT_STATE_GIVEN
    assert state.member_key_id == member.key.key_id if member.key else False

    ids = [r.item.item_id for r in registered]
    assert lab.key is not None
    agreement_id, _ = await make_agreement(server, lab.key, ids)
    assert [a.agreement_id async for a in lab.agreements()] == [agreement_id]
    lease = (await lab.take_lease(agreement_id)).lease
    assert lease.agreement_id == agreement_id

    progress: list[int] = []
    result = await lab.fetch(
        lease.lease_id, tmp_path / "out", progress=lambda p: progress.append(p.total_bytes)
    )
    assert sorted(i.item_id for i in result.items) == sorted(ids)
    assert result.agreement_id == agreement_id
    assert len(result.releases) == 1
    for fetched in result.files:
        data = fetched.path.read_bytes()
        assert hashlib.sha256(data).digest() == fetched.item.commitment
        assert len(data) == fetched.item.size_bytes
    assert progress[-1] == sum(len(c) for c in contents.values())

    withdrawn = await member.withdraw(consent_id=consent_id)
    assert sorted(withdrawn.shredded_item_ids) == sorted(ids)
    assert withdrawn.notified_labs == 1
    info = await member.log_info()
    verify_receipt(withdrawn.receipt, NoteVerifier.parse(info.verifier_key))

    notices = [n async for n in lab.watch_withdrawals(0, idle_timeout=1.5)]
    assert len(notices) == 1
    notice = access_pb2.WithdrawalNotice.FromString(notices[0].notice.payload)
    assert list(notice.item_ids) == sorted(ids)
    assert notice.agreement_id == agreement_id
    ack = await lab.acknowledge(notices[0])
    assert ack.in_time is True

    state = await member.verified_consent_state(consent_id)
    assert state.state == consent_pb2.CONSENT_STATE_WITHDRAWN
    assert state.withdrawal_index == withdrawn.receipt.index

    report = compliance.compliance_report(
        await ledger_leaves(member), coalition_key_id=info.coalition_key_id
    )
    row = report.lab(lab.key.key_id)
    assert row is not None
    assert (row.notices, row.receipts_in_time, row.missing, row.releases_after_withdrawal) == (
        1,
        1,
        0,
        0,
    )
    assert report.ok
    envelope = dsse.Envelope.from_proto(notices[0].notice)
    assert statements.statement_id(envelope) == notices[0].notice_id
