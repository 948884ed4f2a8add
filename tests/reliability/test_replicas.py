"""Replicas (issue #7, point 2): three server processes on one PostgreSQL database keep one tree.

Thirty contributors, ten on each replica, each register and then append twenty items, all at
once. Meanwhile a watcher reads every replica's latest checkpoint as fast as it is answered.
Afterwards every replica serves the same tree, of exactly one entry (the coalition's own
registration) plus the acknowledged statements, each present once at its receipt's index;
and every checkpoint any replica issued (in a receipt or on request) is consistent with every
other, proven by consistency proofs asked of the replicas in turn.
"""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path

import grpc
import pytest

from coalition.client import Client
from tests.integration.processes import ServerProcess, migrate, start_server

from .harness import Auditor, Load, Member, log_verifier, read_tree, report

REPLICAS = 3
CLIENTS = 30
APPENDS = 20
"""Items each client appends after its registration."""


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_three_replicas_keep_one_tree(
    db_url: str, tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    data_dir = tmp_path / "shared-keys"
    migrate(db_url, data_dir)
    started = time.monotonic()
    # The first process creates the log's keys; the others share its data directory.
    servers: list[ServerProcess] = [start_server(db_url, data_dir)]
    try:
        servers += [start_server(db_url, data_dir) for _ in range(REPLICAS - 1)]
        targets = [server.target for server in servers]
        verifier = await log_verifier(targets[0])
        auditor = Auditor(verifier)
        load = Load(auditor)
        members = [Member(f"c{i}") for i in range(CLIENTS)]
        issued: dict[str, set[int]] = collections.defaultdict(set)
        channels = [grpc.aio.insecure_channel(targets[i % REPLICAS]) for i in range(CLIENTS)]
        readers = [Client(target) for target in targets]
        done = asyncio.Event()

        async def watch() -> int:
            """Read every replica's checkpoint until the load is done; count the reads."""
            reads = 0
            while not done.is_set():
                heads = await asyncio.gather(*(reader.checkpoint() for reader in readers))
                for target, head in zip(targets, heads, strict=True):
                    issued[target].add(auditor.saw_checkpoint(head.checkpoint).size)
                reads += len(heads)
                await asyncio.sleep(0.01)
            return reads

        try:
            watcher = asyncio.create_task(watch())
            runs = asyncio.gather(
                *(
                    load.drive(member, channel, asyncio.Event(), appends=1 + APPENDS)
                    for member, channel in zip(members, channels, strict=True)
                )
            )
            await asyncio.wait_for(runs, 120)
            done.set()
            watcher_reads = await asyncio.wait_for(watcher, 30)
        finally:
            done.set()
            for channel in channels:
                await channel.close()
            for reader in readers:
                await reader.close()
        for position, member in enumerate(members):
            for ack in member.acks:
                for receipt in ack.receipts:
                    issued[targets[position % REPLICAS]].add(receipt.tree_size)

        # One tree: every replica serves the same head and the same entries.
        trees = [await read_tree(target, verifier) for target in targets]
        assert len({(tree.size, tree.checkpoint.root_hash) for tree in trees}) == 1
        assert len({tree.leaves for tree in trees}) == 1
        result = await auditor.audit(trees[0], targets)
        assert result.tree_size == 1 + CLIENTS * (1 + APPENDS)
        chain = await auditor.prove_chain(targets)
    except BaseException:
        for server in servers:
            print(f"server {server.target} output (last lines):\n{server.tail()}")
        raise
    finally:
        for server in servers:
            server.stop()
    elapsed = time.monotonic() - started
    per_replica = ", ".join(str(len(issued[target])) for target in targets)
    report(
        pytestconfig,
        f"replicas[postgres]: {REPLICAS} processes, {CLIENTS} clients, "
        f"{len(auditor.acks):,} acknowledged = tree size {result.tree_size:,} - 1, one tree on "
        f"every replica, {result.checkpoints:,} distinct checkpoints (served by each replica: "
        f"{per_replica}; {watcher_reads:,} checkpoint reads) all mutually consistent "
        f"({result.proofs + chain:,} consistency proofs), {elapsed:.1f} s",
    )
