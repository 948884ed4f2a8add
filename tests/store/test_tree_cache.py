"""The tree cache: proofs from memory equal the reference plans, it grows from commits and from
the database (another replica's appends), its chunked levels hold every node exactly once, its
right-edge memo holds one tree size, and past its budget it reads the low levels."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncConnection

from coalition import merkle
from coalition.keys import SigningKey
from coalition.v1 import ledger_pb2
from coalition_server.config import Settings
from coalition_server.server import CoalitionServer
from coalition_server.store.database import Database
from coalition_server.store.ledger import LedgerStore
from coalition_server.store.sequencer import Group, Sequencer
from coalition_server.store.tree_cache import (
    CHUNK,
    HASH,
    TreeCache,
    consistency_proof,
    inclusion_proof,
    inclusion_proofs,
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


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 300), st.data())
def test_a_batch_of_proofs_equals_one_proof_per_leaf(size: int, data: st.DataObject) -> None:
    _, flat = _tree(size)

    def lookup(level: int, index: int) -> bytes:
        return flat[(level, index)]

    first = data.draw(st.integers(0, size - 1))
    end = data.draw(st.integers(first, size))
    expected = [inclusion_proof(index, size, lookup) for index in range(first, end)]
    assert inclusion_proofs(first, end, size, lookup) == expected
    assert inclusion_proofs(first, end, size, lookup, {}) == expected


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


def _held(size: int) -> int:
    """Bytes of every perfect subtree of a tree of ``size``."""
    return HASH * sum(size >> level for level in range(size.bit_length()))


def test_chunked_levels_hold_every_node_once() -> None:
    """Commits of uneven sizes across chunk boundaries: every node is found where a lookup
    looks, as ``bytes`` (protobuf takes no ``bytearray``), and ``held_bytes`` counts exactly
    the hashes held (the memory budget relies on it)."""
    size = 3 * CHUNK + 77
    nodes, flat = _tree(size)
    cache = TreeCache()
    at = 0
    for step in (1, CHUNK - 2, 3, CHUNK, 1, 2 * CHUNK):
        end = min(size, at + step)
        cache.extend(at, end, flat)
        at = end
        assert cache.held_bytes == _held(end)
    assert cache.size == size
    node = cache.lookup({})
    for (level, index), digest in flat.items():
        assert cache.get(level, index) == digest
        found = node(level, index)
        assert found == digest
        assert type(found) is bytes
    for level in range(size.bit_length()):
        assert cache.get(level, size >> level) is None
    for old in (1, CHUNK, CHUNK + 1, size - 1, size):
        assert consistency_proof(old, size, node) == merkle.consistency_plan(old, size).assemble(
            nodes
        )


class _Pages:
    """Stands for a database connection: answers catch-up's queries with the given pages of
    hashes, in order, then fails like a lost connection."""

    def __init__(self, pages: list[list[bytes]]) -> None:
        self._pages = pages
        self._page: list[bytes] = []

    async def execute(self, query: object) -> _Pages:
        if not self._pages:
            raise OSError("connection lost")
        self._page = self._pages.pop(0)
        return self

    def scalars(self) -> _Pages:
        return self

    def all(self) -> list[bytes]:
        return self._page


async def test_a_failed_catch_up_leaves_the_cache_as_it_was() -> None:
    """A read failing half-way (here at level 2, levels 0 and 1 read) cuts every level back to
    the old size, partial chunks included, so the cache can still grow from there."""
    old, new = 2 * CHUNK + 88, 4 * CHUNK + 3
    _, flat = _tree(new)
    cache = TreeCache()
    cache.extend(0, old, flat)
    pages = [
        [flat[(level, index)] for index in range(old >> level, new >> level)] for level in (0, 1)
    ]
    with pytest.raises(OSError, match="connection lost"):
        await cache.catch_up(cast(AsyncConnection, _Pages(pages)), new)
    assert cache.size == old
    assert cache.held_bytes == _held(old)
    assert cache.get(0, old - 1) == flat[(0, old - 1)]
    assert cache.get(0, old) is None
    cache.extend(old, new, flat)
    assert cache.held_bytes == _held(new)
    assert all(cache.get(level, index) == digest for (level, index), digest in flat.items())


def test_the_edge_memo_holds_one_tree_size() -> None:
    """Proofs against one size share its right-edge range hashes (one per split of the right
    edge at most); when proofs move on to a grown tree, the old size's are dropped."""
    _, flat = _tree(300)
    cache = TreeCache()
    node = cache.lookup({})
    for size in (200, 300):  # neither is a power of two: the right edge needs folds
        cache.extend(cache.size, size, flat)
        for old in range(1, size):
            proof = consistency_proof(old, size, node, cache.edge_memo(size))
            assert proof == consistency_proof(old, size, node)
        memo = cache.edge_memo(size)
        assert {end for _, end in memo} == {size}  # and not empty
        assert len(memo) <= size.bit_length()


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
        for count in (7, 7, 7, 7, 7, 3):
            await replica.submit(Group(tuple(_statement(key) for _ in range(count)), _no_response))
        await replica.stop()
        # A tiny budget forces every level below the top few to be read per proof.
        for tree in (server.tree, TreeCache(budget_bytes=256)):
            ledger = LedgerStore(server.context.database, tree, head_ttl=0)
            head = await ledger.latest_checkpoint()
            # Three or more one bits: the right edge is no perfect subtree, so proofs fold
            # ranges there, shared through the cache's edge memo.
            assert head.tree_size.bit_count() >= 3
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
            # Each path (from memory, and reading the low levels) fills the edge memo: dropped
            # (as proofs of another size would), then one proof that folds [2**k, size).
            tree.edge_memo(0)
            await ledger.consistency_proof(1, 0)
            assert {end for _, end in tree.edge_memo(size)} == {size}
    finally:
        await other.dispose()
        await server.stop()


async def _root_at(ledger: LedgerStore, size: int) -> bytes:
    """The root of the tree's first ``size`` leaves, from the leaves themselves."""
    compact = merkle.CompactRange(0, [])
    for entry in await ledger.entries(0, size, size):
        compact.append(entry.leaf_hash)
    return compact.root()
