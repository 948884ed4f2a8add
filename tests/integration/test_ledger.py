"""The ledger over real gRPC: receipts, group commit, idempotency, proofs, listings."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest

from coalition import dsse, merkle
from coalition.checkpoint import verify_checkpoint
from coalition.client import Client, ServerError
from coalition.dsse import Envelope
from coalition.keys import PublicKey
from coalition.receipts import verify_receipt
from coalition.statements import kind
from coalition.v1 import ledger_pb2, party_pb2
from coalition_server.server import CoalitionServer

from .helpers import row_counts, verifier

CONTRIBUTOR = party_pb2.ROLE_CONTRIBUTOR


async def test_a_new_log_opens_with_the_coalitions_own_registration(anonymous: Client) -> None:
    response = await anonymous.checkpoint()
    checkpoint = verify_checkpoint(response.checkpoint, await verifier(anonymous))
    assert checkpoint.size == 1 == response.tree_size
    assert checkpoint.origin == "coalition.test/log"
    # Auditors learn the coalition's statement key from the ledger, not from the operator.
    info = await anonymous.log_info()
    leaf = ledger_pb2.LedgerLeaf.FromString((await anonymous.entry(0)).leaf)
    envelope = Envelope.from_proto(leaf.envelope)
    registration = party_pb2.PartyRegistration.FromString(envelope.payload)
    assert registration.role == party_pb2.ROLE_COALITION
    assert registration.signing_key == info.coalition_public_key
    dsse.verify(envelope, PublicKey(registration.signing_key))
    assert checkpoint.root_hash == merkle.leaf_hash((await anonymous.entry(0)).leaf)


async def test_register_returns_a_verifiable_receipt(
    make_client: Callable[..., Client], anonymous: Client
) -> None:
    client = make_client()
    response = await client.register(CONTRIBUTOR, "Ada Lovelace")
    receipt = response.receipt
    checkpoint = verify_receipt(receipt, await verifier(anonymous))
    assert receipt.index == 1  # after the coalition's own registration
    assert checkpoint.size == 2
    # The leaf is the exact statement we signed, with the log's integration time.
    leaf = ledger_pb2.LedgerLeaf.FromString(receipt.leaf)
    envelope = Envelope.from_proto(leaf.envelope)
    assert party_pb2.PartyRegistration.FromString(envelope.payload).name == "Ada Lovelace"
    assert leaf.integrated_time.seconds > 0
    assert response.party.key_id == client.key.key_id if client.key else False
    assert (await client.who_am_i()).registration_index == 1
    assert (await anonymous.party(response.party.key_id)).name == "Ada Lovelace"
    entry = await anonymous.entry(1)
    assert entry.leaf == receipt.leaf
    assert entry.leaf_hash == receipt.leaf_hash


async def test_concurrent_appends_are_group_committed_into_one_consistent_tree(
    make_client: Callable[..., Client], anonymous: Client, server: CoalitionServer
) -> None:
    n = 40
    clients = [make_client() for _ in range(n)]
    responses = await asyncio.gather(
        *(c.register(CONTRIBUTOR, f"member {i}") for i, c in enumerate(clients))
    )
    log_verifier = await verifier(anonymous)
    assert sorted(r.receipt.index for r in responses) == list(range(1, n + 1))
    for response in responses:
        verify_receipt(response.receipt, log_verifier)
    # Group commit: fewer signed checkpoints (batches) than appends.
    assert server.sequencer_batches < n
    # Every checkpoint handed out is consistent with the final tree.
    final = await anonymous.checkpoint()
    for response in responses:
        old = verify_checkpoint(response.receipt.checkpoint, log_verifier)
        if old.size == final.tree_size:
            assert old.root_hash == final.root_hash
            continue
        proof = await anonymous.consistency_proof(old.size, final.tree_size)
        merkle.verify_consistency(
            old.size, final.tree_size, old.root_hash, final.root_hash, list(proof.proof)
        )


async def test_retry_with_request_id_returns_the_first_answer_and_appends_nothing(
    make_client: Callable[..., Client], anonymous: Client, db_url: str
) -> None:
    client = make_client()
    request = party_pb2.RegisterPartyRequest(
        registration=_signed_registration(client, "Grace").to_proto(), request_id="join-1"
    )
    first = await client.call(
        "/coalition.v1.PartyService/RegisterParty",
        request,
        party_pb2.RegisterPartyResponse,
        sign=True,
    )
    before = await row_counts(db_url)
    retries = await asyncio.gather(
        *(
            client.call(
                "/coalition.v1.PartyService/RegisterParty",
                request,
                party_pb2.RegisterPartyResponse,
                sign=True,
            )
            for _ in range(3)
        )
    )
    assert all(r == first for r in retries)
    assert await row_counts(db_url) == before
    # The same request_id with different content is refused, and writes nothing.
    other = party_pb2.RegisterPartyRequest(
        registration=_signed_registration(client, "Grace H").to_proto(), request_id="join-1"
    )
    with pytest.raises(ServerError) as refused:
        await client.call(
            "/coalition.v1.PartyService/RegisterParty",
            other,
            party_pb2.RegisterPartyResponse,
            sign=True,
        )
    assert (refused.value.code, refused.value.reason) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "REQUEST_ID_REUSED",
    )
    assert await row_counts(db_url) == before


async def test_duplicate_statement_and_second_registration_are_refused(
    make_client: Callable[..., Client], db_url: str
) -> None:
    client = make_client()
    envelope = _signed_registration(client, "Linus")
    request = party_pb2.RegisterPartyRequest(registration=envelope.to_proto())
    await client.call(
        "/coalition.v1.PartyService/RegisterParty",
        request,
        party_pb2.RegisterPartyResponse,
        sign=True,
    )
    before = await row_counts(db_url)
    with pytest.raises(ServerError) as duplicate:
        await client.call(
            "/coalition.v1.PartyService/RegisterParty",
            request,
            party_pb2.RegisterPartyResponse,
            sign=True,
        )
    assert duplicate.value.reason == "DUPLICATE_STATEMENT"
    with pytest.raises(ServerError) as again:
        await client.register(CONTRIBUTOR, "Linus again")
    assert (again.value.code, again.value.reason) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "PARTY_ALREADY_REGISTERED",
    )
    assert await row_counts(db_url) == before


async def test_proofs_for_every_entry_and_size(
    make_client: Callable[..., Client], anonymous: Client
) -> None:
    roots: dict[int, bytes] = {}
    log_verifier = await verifier(anonymous)
    for i in range(11):
        response = await make_client().register(CONTRIBUTOR, f"m{i}")
        checkpoint = verify_checkpoint(response.receipt.checkpoint, log_verifier)
        roots[checkpoint.size] = checkpoint.root_hash
    final = await anonymous.checkpoint()
    assert final.tree_size == 12
    for size, root in roots.items():
        for index in range(size):
            proof = await anonymous.inclusion_proof(index, size)
            merkle.verify_inclusion(
                merkle.leaf_hash(proof.leaf), index, size, list(proof.proof), root
            )
        if size < final.tree_size:
            consistency = await anonymous.consistency_proof(size)
            merkle.verify_consistency(
                size, final.tree_size, root, final.root_hash, list(consistency.proof)
            )
    latest = await anonymous.inclusion_proof(3)
    assert latest.tree_size == 12
    assert verify_checkpoint(latest.checkpoint, log_verifier).size == 12


async def test_proof_requests_beyond_the_tree_are_refused(
    make_client: Callable[..., Client], anonymous: Client
) -> None:
    await make_client().register(CONTRIBUTOR, "only")
    cases = [
        (
            anonymous.inclusion_proof(0, 5),
            grpc.StatusCode.FAILED_PRECONDITION,
            "TREE_SIZE_BEYOND_HEAD",
        ),
        (anonymous.inclusion_proof(7), grpc.StatusCode.NOT_FOUND, "ENTRY_NOT_FOUND"),
        (
            anonymous.consistency_proof(1, 9),
            grpc.StatusCode.FAILED_PRECONDITION,
            "TREE_SIZE_BEYOND_HEAD",
        ),
        (anonymous.consistency_proof(0, 1), grpc.StatusCode.INVALID_ARGUMENT, "BAD_TREE_SIZES"),
        (anonymous.entry(2**63), grpc.StatusCode.NOT_FOUND, "ENTRY_NOT_FOUND"),
    ]
    for call, code, why in cases:
        with pytest.raises(ServerError) as refused:
            await call
        assert (refused.value.code, refused.value.reason) == (code, why)


async def test_listing_pages_and_subject_queries(
    make_client: Callable[..., Client], anonymous: Client
) -> None:
    clients = [make_client() for _ in range(7)]
    for i, client in enumerate(clients):
        await client.register(CONTRIBUTOR, f"p{i}")
    entries = [e async for e in anonymous.entries(page_size=3)]
    assert [e.index for e in entries] == list(range(8))
    assert all(merkle.leaf_hash(e.leaf) == e.leaf_hash for e in entries)
    window = [e.index async for e in anonymous.entries(start=2, end=5, page_size=2)]
    assert window == [2, 3, 4]
    assert clients[4].key is not None
    mine = [e.index async for e in anonymous.entries_by_subject(clients[4].key.key_id)]
    assert mine == [5]
    registrations = [
        e.index
        async for e in anonymous.entries_by_subject(
            kind=kind("application/vnd.coalition.v1.PartyRegistration+proto"), page_size=2
        )
    ]
    assert registrations == list(range(8))


def _signed_registration(client: Client, name: str) -> Envelope:
    from coalition.statements import sign_statement

    assert client.key is not None
    return sign_statement(client.registration(CONTRIBUTOR, name), client.key)
