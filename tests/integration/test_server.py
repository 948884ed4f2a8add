"""Server lifecycle over real gRPC: health, reflection, restart, replicas, shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from coalition import merkle
from coalition.checkpoint import verify_checkpoint
from coalition.client import Client, ServerError
from coalition.keys import SigningKey
from coalition.receipts import verify_receipt
from coalition.v1 import party_pb2
from coalition_server.config import Settings
from coalition_server.keys.server_keys import LOG_KEY_FILE
from coalition_server.server import CoalitionServer, NotMigratedError
from coalition_server.store.ledger import LogIdentityMismatchError

from .helpers import verifier
from .processes import migrate, start_server

CONTRIBUTOR = party_pb2.ROLE_CONTRIBUTOR


async def test_health_and_reflection(target: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "coalition.v1.LedgerService", "coalition.v1.PartyService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        services = set()
        async for reply in stub.ServerReflectionInfo(iter([request])):
            services = {s.name for s in reply.list_services_response.service}
        assert {"coalition.v1.LedgerService", "coalition.v1.PartyService"} <= services


async def test_graceful_shutdown_goes_not_serving_first(settings: Settings) -> None:
    server = CoalitionServer(settings)
    port = await server.start()
    statuses: list[int] = []
    first_status = asyncio.Event()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="coalition.v1.LedgerService")
        )

        async def follow() -> None:
            try:
                async for reply in watch:
                    statuses.append(reply.status)
                    first_status.set()
            except grpc.aio.AioRpcError:
                pass

        follower = asyncio.create_task(follow())
        await asyncio.wait_for(first_status.wait(), 5)
        await server.stop(grace=1.0)
        await asyncio.wait_for(follower, 5)
    assert statuses[0] == health_pb2.HealthCheckResponse.SERVING
    assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses


async def test_restart_keeps_the_tree_and_extends_it_consistently(settings: Settings) -> None:
    first = CoalitionServer(settings)
    port = await first.start()
    async with Client(f"127.0.0.1:{port}", key=SigningKey.generate()) as client:
        before = (await client.register(CONTRIBUTOR, "before")).receipt
    await first.stop()
    second = CoalitionServer(settings)
    port = await second.start()
    try:
        async with Client(f"127.0.0.1:{port}", key=SigningKey.generate()) as client:
            after = (await client.register(CONTRIBUTOR, "after")).receipt
            log_verifier = await verifier(client)
            old = verify_receipt(before, log_verifier)
            new = verify_receipt(after, log_verifier)
            assert (old.size, new.size) == (2, 3)
            proof = await client.consistency_proof(2, 3)
            merkle.verify_consistency(2, 3, old.root_hash, new.root_hash, list(proof.proof))
    finally:
        await second.stop()


async def test_a_server_with_another_log_key_refuses_the_database(settings: Settings) -> None:
    first = CoalitionServer(settings)
    await first.start()
    await first.stop()
    (settings.data_dir / LOG_KEY_FILE).unlink()
    with pytest.raises(LogIdentityMismatchError):
        await CoalitionServer(settings).start()


@pytest.mark.slow
async def test_two_processes_on_one_database_keep_one_tree(db_url: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "shared-keys"
    migrate(db_url, data_dir)
    # The first process creates the keys; the second shares the same data directory.
    servers = [start_server(db_url, data_dir)]
    servers.append(start_server(db_url, data_dir))
    try:
        per_server = 25
        clients = [
            Client(server.target, key=SigningKey.generate())
            for server in servers
            for _ in range(per_server)
        ]
        responses = await asyncio.gather(
            *(c.register(CONTRIBUTOR, f"m{i}") for i, c in enumerate(clients))
        )
        async with Client(servers[0].target) as auditor:
            log_verifier = await verifier(auditor)
            final = await auditor.checkpoint()
            # One tree: the coalition's entry, then every acknowledged append exactly once.
            assert final.tree_size == len(clients) + 1
            assert sorted(r.receipt.index for r in responses) == list(range(1, len(clients) + 1))
            entries = [e async for e in auditor.entries()]
            assert len(entries) == len(clients) + 1
            tree = merkle.CompactRange.empty()
            for entry in entries:
                tree.append(entry.leaf_hash)
            assert tree.root() == final.root_hash
            for response in responses:
                cp = verify_receipt(response.receipt, log_verifier)
                if cp.size < final.tree_size:
                    proof = await auditor.consistency_proof(cp.size, final.tree_size)
                    merkle.verify_consistency(
                        cp.size,
                        final.tree_size,
                        cp.root_hash,
                        final.root_hash,
                        list(proof.proof),
                    )
        # Both replicas sign checkpoints of the same tree.
        async with Client(servers[1].target) as other:
            assert (
                verify_checkpoint((await other.checkpoint()).checkpoint, log_verifier).root_hash
                == final.root_hash
            )
        for client in clients:
            await client.close()
    finally:
        for server in servers:
            server.stop()


async def test_unmigrated_database_is_refused_when_not_auto_migrating(settings: Settings) -> None:
    with pytest.raises(NotMigratedError):
        await CoalitionServer(dataclasses.replace(settings, auto_migrate=False)).start()


async def test_stop_lets_in_flight_appends_finish_and_loses_none(settings: Settings) -> None:
    server = CoalitionServer(settings)
    port = await server.start()
    clients = [Client(f"127.0.0.1:{port}", key=SigningKey.generate()) for _ in range(30)]
    calls = [asyncio.create_task(c.register(CONTRIBUTOR, f"m{i}")) for i, c in enumerate(clients)]
    await asyncio.sleep(0.05)  # let some of them reach the server
    await server.stop(grace=5.0)
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    for client in clients:
        await client.close()
    acknowledged = [o for o in outcomes if isinstance(o, party_pb2.RegisterPartyResponse)]
    refused = [o for o in outcomes if not isinstance(o, party_pb2.RegisterPartyResponse)]
    assert acknowledged, "no call completed before shutdown"
    # Calls that arrive once shutdown has begun are refused, never failed half-way.
    retryable = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    assert all(isinstance(o, ServerError) and o.code in retryable for o in refused), refused
    restarted = CoalitionServer(settings)
    port = await restarted.start()
    try:
        async with Client(f"127.0.0.1:{port}") as auditor:
            stored = {e.leaf_hash async for e in auditor.entries()}
        assert {o.receipt.leaf_hash for o in acknowledged} <= stored
    finally:
        await restarted.stop()


async def test_stop_leaves_no_background_job_running(settings: Settings) -> None:
    # Background jobs (KEK retention, negotiation sweeps) run back to back here, so a stop
    # usually lands mid-query. Each must have unwound before the database is disposed: a
    # job left pending hangs the event loop's shutdown for ever.
    fast = dataclasses.replace(
        settings, negotiation_sweep_seconds=0.001, retention_check_seconds=0.001
    )
    for _ in range(5):
        server = CoalitionServer(fast)
        await server.start()
        await asyncio.sleep(0.05)
        await server.stop(grace=0.1)
        jobs = {"kek-retention", "negotiation-deadlines", "metrics-refresh"}
        left = [t for t in asyncio.all_tasks() if t.get_name() in jobs and not t.done()]
        assert left == []
