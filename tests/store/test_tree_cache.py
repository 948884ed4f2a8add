"""The tree cache: proofs from memory equal the reference plans, it grows from commits and from
the database (another replica's appends), and past its budget it reads the low levels."""

from __future__ import annotations

import os
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from coalition import merkle
from coalition.keys import SigningKey
from coalition.v1 import ledger_pb2
from coalition_server.config import Settings
from coalition_server.server import CoalitionServer
from coalition_server.store.database import Database
from coalition_server.store.ledger import LedgerStore
from coalition_server.store.sequencer import Group, Sequencer
from coalition_server.store.tree_cache import (
    TreeCache,
    consistency_proof,
    inclusion_proof,
)

from .test_sequencer import _statement


def _tree(size: int) -> tuple[dict[merkle.NodeId, bytes], dict[tuple[int, int], bytes]]:
    """Every perfect subtree hash of a tree of ``size`` random leaves."""
    hashes: dict[merkle.NodeId, bytes] = {}
    compact = merkle.CompactRange(0, [])
    for _ in range(size):
        hashes.update(compact.append(merkle.leaf_hash(os.urandom(8))))
    return hashes, {(node.level, node.index): digest for node, digest in hashes.items()}


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 300), st.data())
def test_proofs_equal_the_reference_plans(size: int, data: st.DataObject) -> None:
    nodes, flat = _tree(size)

    def lookup(level: int, index: int) -> bytes:
        return flat[(level, index)]

    index = data.draw(st.integers(0, size - 1))
    old = data.draw(st.integers(1, size))
    assert inclusion_proof(index, size, lookup) == merkle.inclusion_plan(index, size).assemble(
        nodes
    )
    assert consistency_proof(old, size, lookup) == merkle.consistency_plan(old, size).assemble(
        nodes
    )


def test_extend_takes_only_a_contiguous_commit() -> None:
    _, flat = _tree(37)
    cache = TreeCache()
    cache.extend(0, 20, flat)
    assert cache.size == 20
    cache.extend(25, 37, flat)  # another replica's entries 20..24 are not known: ignored
    assert cache.size == 20
    cache.extend(20, 37, flat)
    assert cache.size == 37
    assert cache.get(0, 36) == flat[(0, 36)]
    assert cache.get(5, 0) == flat[(5, 0)]
    assert cache.get(5, 1) is None  # not a complete subtree of 37 leaves


def _no_response(receipts: Sequence[ledger_pb2.Receipt]) -> bytes:
    return b""


async def test_proofs_from_the_cache_follow_another_replicas_appends(settings: Settings) -> None:
    """A second sequencer in this process stands for another replica: the server's cache
    misses its batches, catches up from the database, and its proofs verify."""
    server = CoalitionServer(settings)
    await server.start()
    other = Database.connect(settings.database_url())
    try:
        assert server.tree is not None
        key = SigningKey.generate()
        signer = server.context.sequencer._signer  # the replica shares the log key
        replica = Sequencer(other, signer, max_batch=4)
        replica.start()
        for _ in range(5):
            await replica.submit(Group(tuple(_statement(key) for _ in range(7)), _no_response))
        await replica.stop()
        # A tiny budget forces every level below the top few to be read per proof.
        for tree in (server.tree, TreeCache(budget_bytes=256)):
            ledger = LedgerStore(server.context.database, tree, head_ttl=0)
            head = await ledger.latest_checkpoint()
            for index in range(head.tree_size):
                size, path, latest = await ledger.inclusion_proof(index, 0)
                assert size == head.tree_size == latest.tree_size
                entry = await ledger.entry(index=index)
                merkle.verify_inclusion(entry.leaf_hash, index, size, path, latest.root_hash)
            for first in range(1, head.tree_size + 1):
                old = await _root_at(ledger, first)
                _, proof, _ = await ledger.consistency_proof(first, 0)
                merkle.verify_consistency(first, size, old, latest.root_hash, proof)
            assert tree.size == head.tree_size
            assert (tree.min_level > 0) == (tree is not server.tree)
    finally:
        await other.dispose()
        await server.stop()


async def _root_at(ledger: LedgerStore, size: int) -> bytes:
    """The root of the tree's first ``size`` leaves, from the leaves themselves."""
    compact = merkle.CompactRange(0, [])
    for entry in await ledger.entries(0, size, size):
        compact.append(entry.leaf_hash)
    return compact.root()
