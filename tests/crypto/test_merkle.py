"""RFC 6962/9162 Merkle trees: plans against the reference tree, frontier, verification."""

from __future__ import annotations

import functools
import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coalition.errors import ProofError, VerificationError
from coalition.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    CompactRange,
    InMemoryTree,
    NodeId,
    ProofPlan,
    consistency_plan,
    inclusion_plan,
    leaf_hash,
    node_hash,
    range_nodes,
    root_from_inclusion_proof,
    root_plan,
    verify_consistency,
    verify_inclusion,
)

MAX_SIZE = 300

# The eight RFC 6962 test leaves and the roots of their prefixes (from the CT reference
# implementation's tests, also used by transparency-dev/merkle).
RFC_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
]
RFC_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def _leaf(i: int) -> bytes:
    return f"leaf {i}".encode()


@functools.cache
def _world() -> tuple[InMemoryTree, dict[NodeId, bytes], list[bytes]]:
    """A reference tree of MAX_SIZE leaves, the hash of every perfect subtree as reported by
    CompactRange.append, and the frontier root after each append.

    Perfect subtrees never change, so this one store serves every smaller size too.
    """
    tree = InMemoryTree(_leaf(i) for i in range(MAX_SIZE))
    cr = CompactRange.empty()
    store: dict[NodeId, bytes] = {}
    roots = [cr.root()]
    for i in range(MAX_SIZE):
        for node, h in cr.append(leaf_hash(_leaf(i))):
            assert node not in store
            store[node] = h
        roots.append(cr.root())
    return tree, store, roots


sizes = st.integers(min_value=1, max_value=MAX_SIZE)


@st.composite
def size_and_index(draw: st.DrawFn) -> tuple[int, int]:
    size = draw(sizes)
    return size, draw(st.integers(min_value=0, max_value=size - 1))


@st.composite
def old_and_new(draw: st.DrawFn) -> tuple[int, int]:
    new = draw(sizes)
    return draw(st.integers(min_value=1, max_value=new)), new


# --- Hashing -----------------------------------------------------------------------------


def test_hashes_are_rfc6962() -> None:
    assert HASH_SIZE == 32
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert leaf_hash(b"").hex() == RFC_ROOTS[0]
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    assert node_hash(b"L", b"R") == hashlib.sha256(b"\x01LR").digest()


def test_rfc6962_roots_from_reference_and_frontier() -> None:
    tree = InMemoryTree()
    cr = CompactRange.empty()
    assert tree.root() == cr.root() == EMPTY_ROOT
    for leaf, want in zip(RFC_LEAVES, RFC_ROOTS, strict=True):
        tree.append(leaf)
        cr.append(leaf_hash(leaf))
        assert tree.root().hex() == want
        assert cr.root().hex() == want


# --- Stored nodes ------------------------------------------------------------------------


def test_node_id() -> None:
    n = NodeId(3, 2)
    assert (n.start, n.end) == (16, 24)
    assert sorted([NodeId(1, 0), NodeId(0, 5), NodeId(0, 1)]) == [
        NodeId(0, 1),
        NodeId(0, 5),
        NodeId(1, 0),
    ]
    for bad in [(-1, 0), (0, -1), (65, 0), (True, 0), (0, 1.0), (64, 1), (1, 2**63)]:
        with pytest.raises(ProofError):
            NodeId(*bad)  # type: ignore[arg-type]


def test_range_nodes() -> None:
    assert range_nodes(0, 0) == []
    assert range_nodes(0, 1) == [NodeId(0, 0)]
    assert range_nodes(0, 11) == [NodeId(3, 0), NodeId(1, 4), NodeId(0, 10)]
    assert range_nodes(8, 16) == [NodeId(3, 1)]
    assert range_nodes(3, 13) == [NodeId(0, 3), NodeId(2, 1), NodeId(2, 2), NodeId(0, 12)]
    with pytest.raises(ProofError):
        range_nodes(5, 4)
    with pytest.raises(ProofError):
        range_nodes(-1, 4)


def test_every_perfect_subtree_is_reported_once_with_its_hash() -> None:
    _, store, _ = _world()
    expected = {
        NodeId(level, index)
        for level in range(MAX_SIZE.bit_length())
        for index in range(MAX_SIZE >> level)
    }
    assert set(store) == expected
    leaves = [_leaf(i) for i in range(MAX_SIZE)]
    for node, h in store.items():
        assert h == InMemoryTree(leaves[node.start : node.end]).root(), node


def test_append_reports_leaf_then_parents() -> None:
    cr = CompactRange.empty()
    for i in range(7):
        cr.append(leaf_hash(_leaf(i)))
    completed = cr.append(leaf_hash(_leaf(7)))
    assert [n for n, _ in completed] == [NodeId(0, 7), NodeId(1, 3), NodeId(2, 1), NodeId(3, 0)]
    assert completed[0][1] == leaf_hash(_leaf(7))
    assert completed[-1][1] == cr.root()
    assert [n for n, _ in cr.append(leaf_hash(_leaf(8)))] == [NodeId(0, 8)]


def test_compact_range_root_matches_reference_at_every_size() -> None:
    tree, store, roots = _world()
    for size in range(MAX_SIZE + 1):
        assert roots[size] == tree.root(size), size
        ids = CompactRange.frontier_ids(size)
        assert len(ids) == size.bit_count()
        assert [n.level for n in ids] == sorted((n.level for n in ids), reverse=True)
        loaded = CompactRange(size, [store[n] for n in ids])
        assert loaded.size == size
        assert loaded.root() == tree.root(size)
        assert loaded.hashes == tuple(store[n] for n in ids)


def test_compact_range_reloaded_from_store_continues_identically() -> None:
    tree, store, _ = _world()
    for size in (0, 1, 5, 64, 127, 200):
        cr = CompactRange(size, [store[n] for n in CompactRange.frontier_ids(size)])
        for i in range(size, min(size + 40, MAX_SIZE)):
            for node, h in cr.append(leaf_hash(_leaf(i))):
                assert store[node] == h
        assert cr.root() == tree.root(cr.size)


def test_compact_range_copy_is_independent() -> None:
    cr = CompactRange.empty()
    cr.append(leaf_hash(b"a"))
    twin = cr.copy()
    assert twin == cr
    twin.append(leaf_hash(b"b"))
    assert cr.size == 1
    assert twin.size == 2
    assert twin != cr
    assert "size=1" in repr(cr)


@pytest.mark.parametrize(
    ("size", "hashes"),
    [
        (1, []),
        (0, [bytes(32)]),
        (3, [bytes(32)]),
        (1, [bytes(31)]),
        (1, ["x" * 32]),
        (-1, []),
        (2**64, []),
    ],
)
def test_compact_range_validates_on_construction(size: int, hashes: list[Any]) -> None:
    with pytest.raises(ProofError):
        CompactRange(size, hashes)


def test_compact_range_append_validates() -> None:
    cr = CompactRange.empty()
    with pytest.raises(ProofError):
        cr.append(b"short")
    assert cr.size == 0


# --- Plans -------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(size_and_index())
def test_inclusion_plan_matches_reference_and_verifies(case: tuple[int, int]) -> None:
    size, index = case
    tree, store, _ = _world()
    plan = inclusion_plan(index, size)
    proof = plan.assemble(store)
    assert proof == tree.inclusion_proof(index, size)
    root = tree.root(size)
    verify_inclusion(tree.leaf_hash(index), index, size, proof, root)
    assert root_from_inclusion_proof(tree.leaf_hash(index), index, size, proof) == root
    # O(log n) stored rows, distinct and sorted.
    assert list(plan.node_ids) == sorted(set(plan.node_ids))
    assert len(plan.node_ids) <= 2 * size.bit_length()
    # A plan from a mapping holding only its own nodes gives the same proof.
    assert plan.assemble({n: store[n] for n in plan.node_ids}) == proof


@settings(max_examples=400, deadline=None)
@given(old_and_new())
def test_consistency_plan_matches_reference_and_verifies(case: tuple[int, int]) -> None:
    old, new = case
    tree, store, _ = _world()
    plan = consistency_plan(old, new)
    proof = plan.assemble(store)
    assert proof == tree.consistency_proof(old, new)
    verify_consistency(old, new, tree.root(old), tree.root(new), proof)
    assert list(plan.node_ids) == sorted(set(plan.node_ids))
    assert len(plan.node_ids) <= 2 * new.bit_length() + 1
    assert plan.assemble({n: store[n] for n in plan.node_ids}) == proof


def test_all_small_proofs_exhaustively() -> None:
    tree, store, _ = _world()
    for size in range(1, 70):
        root = tree.root(size)
        assert root_plan(size).assemble(store) == [root]
        for index in range(size):
            proof = inclusion_plan(index, size).assemble(store)
            assert proof == tree.inclusion_proof(index, size)
            verify_inclusion(tree.leaf_hash(index), index, size, proof, root)
        for old in range(1, size + 1):
            proof = consistency_plan(old, size).assemble(store)
            assert proof == tree.consistency_proof(old, size)
            verify_consistency(old, size, tree.root(old), root, proof)


def test_root_plan() -> None:
    tree, store, _ = _world()
    empty = root_plan(0)
    assert empty.node_ids == ()
    assert empty.assemble({}) == [EMPTY_ROOT]
    for size in range(1, MAX_SIZE + 1):
        plan = root_plan(size)
        assert plan.node_ids == tuple(sorted(CompactRange.frontier_ids(size)))
        assert plan.assemble(store) == [tree.root(size)]


def test_equal_sizes_need_an_empty_consistency_proof() -> None:
    tree, store, _ = _world()
    plan = consistency_plan(5, 5)
    assert plan.node_ids == ()
    assert plan.assemble(store) == []
    verify_consistency(5, 5, tree.root(5), tree.root(5), [])


@pytest.mark.parametrize(("index", "size"), [(0, 0), (5, 5), (-1, 5), (2**64 - 1, 8), (0, -1)])
def test_inclusion_plan_rejects_bad_arguments(index: int, size: int) -> None:
    with pytest.raises(ProofError):
        inclusion_plan(index, size)


@pytest.mark.parametrize(("old", "new"), [(0, 0), (0, 5), (6, 5), (-1, 5), (1, 2**64)])
def test_consistency_plan_rejects_bad_arguments(old: int, new: int) -> None:
    with pytest.raises(ProofError):
        consistency_plan(old, new)


def test_plans_for_huge_trees_stay_logarithmic() -> None:
    size = 2**63 - 12345
    plan = inclusion_plan(2**62 + 7, size)
    assert len(plan.elements) == 63
    assert len(plan.node_ids) <= 128
    cplan = consistency_plan(2**40 + 3, size)
    assert len(cplan.node_ids) <= 129
    assert len(root_plan(2**64 - 1).node_ids) == 64


def test_assemble_reports_missing_or_bad_hashes() -> None:
    _, store, _ = _world()
    plan = inclusion_plan(3, 10)
    partial = dict(store)
    del partial[plan.node_ids[0]]
    with pytest.raises(ProofError, match="no hash"):
        plan.assemble(partial)
    bad = dict(store)
    bad[plan.node_ids[0]] = b"short"
    with pytest.raises(ProofError, match="32 bytes"):
        plan.assemble(bad)


def test_plan_assembles_from_bytes_like_rows() -> None:
    _, store, _ = _world()
    plan = inclusion_plan(3, 10)
    rows: dict[NodeId, Any] = {n: memoryview(store[n]) for n in plan.node_ids}
    assert plan.assemble(rows) == plan.assemble(store)


def test_plan_validates_elements() -> None:
    with pytest.raises(ProofError):
        ProofPlan(([(0, 1)],))  # type: ignore[arg-type]


# --- Verification rejects every modification ---------------------------------------------


def _flip(data: bytes, bit: int) -> bytes:
    b = bytearray(data)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


@settings(max_examples=200, deadline=None)
@given(size_and_index(), st.data())
def test_inclusion_rejects_every_modification(case: tuple[int, int], data: st.DataObject) -> None:
    size, index = case
    tree, _, _ = _world()
    proof = tree.inclusion_proof(index, size)
    leaf, root = tree.leaf_hash(index), tree.root(size)

    def rejected(*args: Any) -> None:
        with pytest.raises(ProofError):
            verify_inclusion(*args)

    bit = data.draw(st.integers(0, HASH_SIZE * 8 - 1), label="bit")
    rejected(_flip(leaf, bit), index, size, proof, root)
    rejected(leaf, index, size, proof, _flip(root, bit))
    for i in range(len(proof)):
        rejected(leaf, index, size, [*proof[:i], _flip(proof[i], bit), *proof[i + 1 :]], root)
    if proof:
        rejected(leaf, index, size, proof[:-1], root)
        rejected(leaf, index, size, proof[1:], root)
        rejected(leaf, index, size, [*proof[:-1], proof[-1][:-1]], root)
    rejected(leaf, index, size, [*proof, root], root)
    rejected(leaf, index, size, [leaf, *proof], root)
    for other in {index - 1, index + 1, index ^ 2} - {index}:
        # Only genuinely different positions: a proof can't be valid for two equal leaves.
        if 0 <= other < size and tree.leaf_hash(other) != leaf:
            rejected(leaf, other, size, proof, root)
    # A proof does not bind the tree size by itself (index 0 of size 3 and of size 4 have
    # paths of the same shape: the signed checkpoint binds the size). It must fail whenever
    # the claimed size implies a path of another length.
    for other_size in {size - 1, size + 1, size * 2, size // 2} - {size}:
        if not index < other_size <= MAX_SIZE:
            continue
        if len(tree.inclusion_proof(index, other_size)) != len(proof):
            rejected(leaf, index, other_size, proof, root)


@settings(max_examples=200, deadline=None)
@given(old_and_new(), st.data())
def test_consistency_rejects_every_modification(case: tuple[int, int], data: st.DataObject) -> None:
    old, new = case
    tree, _, _ = _world()
    proof = tree.consistency_proof(old, new)
    r1, r2 = tree.root(old), tree.root(new)

    def rejected(*args: Any) -> None:
        with pytest.raises(ProofError):
            verify_consistency(*args)

    bit = data.draw(st.integers(0, HASH_SIZE * 8 - 1), label="bit")
    rejected(old, new, _flip(r1, bit), r2, proof)
    rejected(old, new, r1, _flip(r2, bit), proof)
    for i in range(len(proof)):
        rejected(old, new, r1, r2, [*proof[:i], _flip(proof[i], bit), *proof[i + 1 :]])
    if proof:
        rejected(old, new, r1, r2, proof[:-1])
        rejected(old, new, r1, r2, proof[1:])
        rejected(old, new, r1, r2, [*proof[:-1], proof[-1][:-1]])
    rejected(old, new, r1, r2, [*proof, r1])
    rejected(old, new, r1, r2, [r1, *proof])
    if old != new:
        rejected(old, new, r2, r1, proof)
    for other_old in {old - 1, old + 1, old ^ 2} - {old}:
        if 0 < other_old <= new and tree.root(other_old) != r1:
            rejected(other_old, new, r1, r2, proof)
    for other_new in {new - 1, new + 1, new * 2} - {new}:
        if not old <= other_new <= MAX_SIZE:
            continue
        # As for inclusion: the sizes are bound by checkpoints, the shape by the proof.
        if len(tree.consistency_proof(old, other_new)) != len(proof):
            rejected(old, other_new, r1, r2, proof)


# --- Verification never crashes on garbage ------------------------------------------------

H = bytes(32)


@pytest.mark.parametrize(
    "args",
    [
        (H, 0, 0, [], H),
        (H, 1, 1, [], H),
        (H, -1, 5, [], H),
        (H, 2**64 - 1, 8, [H, H, H], H),
        (H, 0, 2**64, [], H),
        (H, 0, -5, [], H),
        (H, True, 5, [], H),
        (H, 0, 1.0, [], H),
        (H, "0", 1, [], H),
        (b"", 0, 1, [], H),
        (H, 0, 1, [], b""),
        (H, 0, 1, [], "root"),
        (H, 0, 2, [b"short"], H),
        (H, 0, 2, None, H),
        (H, 0, 2, b"x" * 32, H),
        (H, 0, 2, "proof", H),
        (H, 0, 2, [None], H),
        ("leaf", 0, 1, [], H),
        (H, 0, 1, [H], H),
        (H, 0, 2, [], H),
    ],
)
def test_verify_inclusion_rejects_garbage_cleanly(args: tuple[Any, ...]) -> None:
    with pytest.raises(ProofError):
        verify_inclusion(*args)


@pytest.mark.parametrize(
    "args",
    [
        (0, 0, H, H, []),
        (0, 1, H, H, []),
        (2, 1, H, H, []),
        (-1, 1, H, H, []),
        (1, 2**64, H, H, [H]),
        (2**64 - 1, 2**64, H, H, [H]),
        (1.0, 2, H, H, [H]),
        (1, 2, b"", H, [H]),
        (1, 2, H, b"x", [H]),
        (1, 2, H, H, []),
        (1, 2, H, H, None),
        (1, 2, H, H, [b"short"]),
        (1, 1, H, H, [H]),
        (1, 1, H, b"other", []),
        (1, 1, "root", "root", []),
        (3, 7, H, H, [H]),
        (3, 7, H, H, [H] * 10),
    ],
)
def test_verify_consistency_rejects_garbage_cleanly(args: tuple[Any, ...]) -> None:
    with pytest.raises(ProofError):
        verify_consistency(*args)


def test_huge_sizes_are_handled() -> None:
    # Largest uint64 tree: proofs are 64 hashes long at most, and checking is instant.
    size = 2**64 - 1
    with pytest.raises(ProofError, match="must have 64 hashes"):
        verify_inclusion(H, 0, size, [H], H)
    with pytest.raises(ProofError, match="does not lead"):
        verify_inclusion(H, 0, size, [H] * 64, H)
    with pytest.raises(ProofError):
        verify_consistency(2**63, size, H, H, [H] * 64)


def test_proof_error_is_a_verification_error() -> None:
    assert issubclass(ProofError, VerificationError)


# --- The reference tree ------------------------------------------------------------------


def test_in_memory_tree_basics() -> None:
    tree = InMemoryTree()
    assert tree.size == len(tree) == 0
    assert tree.append(b"a") == 0
    assert tree.append(b"b") == 1
    assert tree.leaf_hash(1) == leaf_hash(b"b")
    assert tree.root() == node_hash(leaf_hash(b"a"), leaf_hash(b"b"))
    assert tree.root(1) == leaf_hash(b"a")
    assert tree.root(0) == EMPTY_ROOT
    assert tree.inclusion_proof(0) == [leaf_hash(b"b")]
    assert tree.consistency_proof(1) == [leaf_hash(b"b")]
    assert tree.consistency_proof(2, 2) == []
    with pytest.raises(ProofError):
        tree.root(3)
    with pytest.raises(ProofError):
        tree.inclusion_proof(2)
    with pytest.raises(ProofError):
        tree.consistency_proof(0)
    with pytest.raises(ProofError):
        tree.leaf_hash(2)


def test_every_single_bit_flip_is_rejected_exhaustively() -> None:
    tree, _, _ = _world()
    size, index, old = 13, 5, 6
    leaf, root, old_root = tree.leaf_hash(index), tree.root(size), tree.root(old)
    inclusion = tree.inclusion_proof(index, size)
    consistency = tree.consistency_proof(old, size)
    assert len(inclusion) == 4
    assert len(consistency) == 4
    for bit in range(HASH_SIZE * 8):
        with pytest.raises(ProofError):
            verify_inclusion(_flip(leaf, bit), index, size, inclusion, root)
        with pytest.raises(ProofError):
            verify_inclusion(leaf, index, size, inclusion, _flip(root, bit))
        with pytest.raises(ProofError):
            verify_consistency(old, size, _flip(old_root, bit), root, consistency)
        with pytest.raises(ProofError):
            verify_consistency(old, size, old_root, _flip(root, bit), consistency)
        for i in range(4):
            bad = [*inclusion[:i], _flip(inclusion[i], bit), *inclusion[i + 1 :]]
            with pytest.raises(ProofError):
                verify_inclusion(leaf, index, size, bad, root)
            bad = [*consistency[:i], _flip(consistency[i], bit), *consistency[i + 1 :]]
            with pytest.raises(ProofError):
                verify_consistency(old, size, old_root, root, bad)


def test_push_folds_like_append() -> None:
    appended, pushed = CompactRange.empty(), CompactRange.empty()
    for i in range(300):
        leaf = leaf_hash(i.to_bytes(4, "big"))
        appended.append(leaf)
        pushed.push(leaf)
        assert pushed == appended
        assert pushed.root() == appended.root()
