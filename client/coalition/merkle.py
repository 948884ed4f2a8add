"""RFC 6962 / RFC 9162 (section 2.1) Merkle trees: hashing, proofs and their verification.

The ledger is a Merkle tree exactly as RFC 9162 defines it. This module serves three users:

* the **server** stores the hash of every *perfect* subtree (a :class:`NodeId`). Appends go
  through a :class:`CompactRange` (the right-edge frontier), which reports each subtree an
  append completes. A proof is a :class:`ProofPlan`: first the set of stored nodes it needs
  (one database read of O(log n) rows), then :meth:`ProofPlan.assemble` from those hashes.
* **verifiers** (members, labs, auditors) call :func:`verify_inclusion` and
  :func:`verify_consistency`: pure functions, no I/O, that raise :class:`ProofError` on any
  failure, including garbage input.
* **tests and auditors** get :class:`InMemoryTree`, a direct transcription of the RFC's
  recursive definitions, to check everything else against.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from coalition.errors import ProofError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MAX_TREE_SIZE",
    "CompactRange",
    "InMemoryTree",
    "NodeId",
    "ProofPlan",
    "consistency_plan",
    "inclusion_plan",
    "leaf_hash",
    "node_hash",
    "range_nodes",
    "root_from_inclusion_proof",
    "root_plan",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE: Final = 32
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()
# Tree sizes and indices are uint64 in RFC 9162 (and in every other implementation).
MAX_TREE_SIZE: Final = 2**64 - 1

_LEAF_PREFIX: Final = b"\x00"
_NODE_PREFIX: Final = b"\x01"


def leaf_hash(leaf: bytes) -> bytes:
    """RFC 9162 leaf hash: SHA-256(0x00 || leaf)."""
    return hashlib.sha256(_LEAF_PREFIX + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 interior node hash: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


# --- Stored nodes and proof plans --------------------------------------------------------


@dataclass(frozen=True, order=True)
class NodeId:
    """The perfect subtree of ``2**level`` leaves covering ``[index << level, (index+1) << level)``.

    Level 0 nodes are leaf hashes. Only perfect subtrees are ever stored: they never change
    once complete, whereas the right edge of the tree changes with every append.
    """

    level: int
    index: int

    def __post_init__(self) -> None:
        if not _is_int(self.level) or not 0 <= self.level <= 64:
            raise ProofError(f"node level must be an int in [0, 64], got {self.level!r}")
        if not _is_int(self.index) or self.index < 0:
            raise ProofError(f"node index must be a non-negative int, got {self.index!r}")
        if (self.index + 1) << self.level > MAX_TREE_SIZE + 1:
            raise ProofError(f"node {self} lies beyond the largest possible tree")

    @property
    def start(self) -> int:
        """First leaf index covered."""
        return self.index << self.level

    @property
    def end(self) -> int:
        """One past the last leaf index covered."""
        return (self.index + 1) << self.level


def range_nodes(start: int, end: int) -> list[NodeId]:
    """The aligned perfect subtrees that exactly cover leaves ``[start, end)``, left to right.

    Each block is the largest one that starts at the current position, is aligned to its own
    size and fits. For the ranges the RFC's recursion visits (``start`` aligned to a power of
    two at least ``end - start``), the blocks strictly decrease in size, and the range's MTH
    is their right fold with :func:`node_hash`.
    """
    _check_size(start, "start")
    _check_size(end, "end")
    if start > end:
        raise ProofError(f"range start {start} is after its end {end}")
    nodes: list[NodeId] = []
    while start < end:
        size_level = (end - start).bit_length() - 1
        if start:
            align_level = (start & -start).bit_length() - 1
            level = min(align_level, size_level)
        else:
            level = size_level
        nodes.append(NodeId(level, start >> level))
        start += 1 << level
    return nodes


@dataclass(frozen=True)
class ProofPlan:
    """The stored nodes a proof (or root) needs, and how to assemble it from their hashes.

    ``elements[i]`` describes proof element ``i``: the right fold of the hashes of those
    perfect subtrees (one node for a perfect subtree; several for an incomplete range at the
    right edge of the tree; none for the empty tree, whose hash is :data:`EMPTY_ROOT`).
    """

    elements: tuple[tuple[NodeId, ...], ...]
    node_ids: tuple[NodeId, ...] = field(init=False)
    """Every distinct node needed, sorted: what the server must read."""

    def __post_init__(self) -> None:
        if not isinstance(self.elements, tuple) or not all(
            isinstance(e, tuple) and all(isinstance(n, NodeId) for n in e) for e in self.elements
        ):
            raise ProofError("plan elements must be tuples of NodeId")
        ids = sorted({n for e in self.elements for n in e})
        object.__setattr__(self, "node_ids", tuple(ids))

    def assemble(self, hashes: Mapping[NodeId, bytes]) -> list[bytes]:
        """The proof, from a mapping that holds (at least) the hash of every node in node_ids.

        Raises ProofError if a hash is missing or is not HASH_SIZE bytes.
        """
        out: list[bytes] = []
        for element in self.elements:
            if not element:
                out.append(EMPTY_ROOT)
                continue
            # Right-to-left fold: MTH of an unbalanced range is node_hash(left, MTH(rest)).
            acc = _stored_hash(hashes, element[-1])
            for node in reversed(element[:-1]):
                acc = node_hash(_stored_hash(hashes, node), acc)
            out.append(acc)
        return out


def inclusion_plan(index: int, size: int) -> ProofPlan:
    """Plan of the RFC 9162 2.1.3.1 inclusion proof (audit path) of leaf ``index``.

    Elements are in the RFC's order: from the leaf's sibling up to the root's child.
    """
    _check_size(size, "tree size")
    if not _is_int(index) or not 0 <= index < size:
        raise ProofError(f"leaf index {index!r} is not in a tree of size {size}")
    elements: list[tuple[NodeId, ...]] = []
    lo, hi = 0, size
    # PATH(m, D[lo:hi]) top-down; the RFC appends the sibling after the sub-path, so the
    # siblings found top-down are the proof in reverse.
    while hi - lo > 1:
        k = _split_point(hi - lo)
        if index < lo + k:
            elements.append(tuple(range_nodes(lo + k, hi)))
            hi = lo + k
        else:
            elements.append(tuple(range_nodes(lo, lo + k)))
            lo += k
    elements.reverse()
    return ProofPlan(tuple(elements))


def consistency_plan(old_size: int, new_size: int) -> ProofPlan:
    """Plan of the RFC 9162 2.1.4.1 consistency proof between two tree sizes.

    Requires ``0 < old_size <= new_size``; the proof is empty when the sizes are equal.
    """
    _check_size(old_size, "old size")
    _check_size(new_size, "new size")
    if not 0 < old_size <= new_size:
        raise ProofError(f"no consistency proof from size {old_size} to size {new_size}")
    elements: list[tuple[NodeId, ...]] = []
    lo, hi, whole_old_tree = 0, new_size, True
    # SUBPROOF(m, D[lo:hi], b) top-down, as in inclusion_plan.
    while True:
        if old_size == hi:
            if not whole_old_tree:
                elements.append(tuple(range_nodes(lo, hi)))
            break
        k = _split_point(hi - lo)
        if old_size <= lo + k:
            elements.append(tuple(range_nodes(lo + k, hi)))
            hi = lo + k
        else:
            elements.append(tuple(range_nodes(lo, lo + k)))
            lo += k
            whole_old_tree = False
    elements.reverse()
    return ProofPlan(tuple(elements))


def root_plan(size: int) -> ProofPlan:
    """Plan whose assembly is ``[root]`` of the tree of ``size`` leaves (``EMPTY_ROOT`` if 0)."""
    _check_size(size, "tree size")
    return ProofPlan((tuple(range_nodes(0, size)),))


# --- Appending ---------------------------------------------------------------------------


class CompactRange:
    """The right-edge frontier of a tree: enough to append leaves and compute the root.

    It holds the hashes of the perfect subtrees of the binary decomposition of ``size``,
    largest (leftmost) first; :meth:`frontier_ids` names them, so the server can load them.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self, size: int, hashes: Sequence[bytes]) -> None:
        _check_size(size, "tree size")
        hashes = list(hashes)
        if len(hashes) != size.bit_count():
            raise ProofError(
                f"a tree of size {size} has {size.bit_count()} frontier hashes, got {len(hashes)}"
            )
        self._size = size
        self._hashes = [_as_hash(h, "frontier hash") for h in hashes]

    @classmethod
    def empty(cls) -> CompactRange:
        """The frontier of the empty tree."""
        return cls(0, [])

    @staticmethod
    def frontier_ids(size: int) -> list[NodeId]:
        """The NodeIds whose hashes make up the frontier of a tree of ``size``, in order."""
        _check_size(size, "tree size")
        return range_nodes(0, size)

    @property
    def size(self) -> int:
        """Number of leaves."""
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        """The frontier hashes, largest subtree first."""
        return tuple(self._hashes)

    def append(self, leaf_hash: bytes) -> list[tuple[NodeId, bytes]]:
        """Append one leaf hash; return every perfect subtree this completes, leaf first."""
        completed: list[tuple[NodeId, bytes]] = []
        self._fold(_as_hash(leaf_hash, "leaf hash"), completed)
        return completed

    def push(self, leaf_hash: bytes) -> None:
        """Append one leaf hash, as :meth:`append` does, without listing the subtrees it
        completes: what a verifier replaying a log needs, at half the cost."""
        self._fold(_as_hash(leaf_hash, "leaf hash"), None)

    def _fold(self, h: bytes, completed: list[tuple[NodeId, bytes]] | None) -> None:
        if self._size >= MAX_TREE_SIZE:
            raise ProofError("tree is full")
        level, index = 0, self._size
        if completed is not None:
            completed.append((NodeId(0, index), h))
        # Each trailing 1 bit of the old size is a same-sized left sibling to merge with.
        while (self._size >> level) & 1:
            h = node_hash(self._hashes.pop(), h)
            level += 1
            index >>= 1
            if completed is not None:
                completed.append((NodeId(level, index), h))
        self._hashes.append(h)
        self._size += 1

    def root(self) -> bytes:
        """The tree's root hash (``EMPTY_ROOT`` when empty)."""
        if not self._hashes:
            return EMPTY_ROOT
        acc = self._hashes[-1]
        for h in reversed(self._hashes[:-1]):
            acc = node_hash(h, acc)
        return acc

    def copy(self) -> CompactRange:
        """An independent copy."""
        return CompactRange(self._size, self._hashes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompactRange):
            return NotImplemented
        return self._size == other._size and self._hashes == other._hashes

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"CompactRange(size={self._size})"


# --- Verification ------------------------------------------------------------------------


def root_from_inclusion_proof(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes]
) -> bytes:
    """The root implied by an RFC 9162 inclusion proof (2.1.3.2); ProofError if malformed."""
    _check_size(size, "tree size")
    if not _is_int(index) or index < 0:
        raise ProofError(f"leaf index must be a non-negative int, got {index!r}")
    if index >= size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    r = _as_hash(leaf_hash, "leaf hash")
    path = _as_proof(proof)
    inner, border = _decompose_inclusion(index, size)
    if len(path) != inner + border:
        raise ProofError(
            f"inclusion proof for leaf {index} in a tree of size {size} must have "
            f"{inner + border} hashes, got {len(path)}"
        )
    fn, sn = index, size - 1
    for p in path:
        if sn == 0:
            raise ProofError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is too short")
    return r


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Raise ProofError unless ``proof`` shows leaf ``index`` of a ``size`` tree has this hash.

    ``leaf_hash`` is the RFC 9162 leaf hash (see :func:`leaf_hash`), not the leaf data.
    """
    expected = _as_hash(root, "root")
    computed = root_from_inclusion_proof(leaf_hash, index, size, proof)
    if not hmac.compare_digest(computed, expected):
        raise ProofError(f"inclusion proof for leaf {index} does not lead to the given root")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Raise ProofError unless ``proof`` shows the ``old_size`` tree is a prefix of the new.

    RFC 9162 2.1.4.2. Equal sizes need an empty proof and equal roots. A consistency proof
    from the empty tree proves nothing, so ``old_size == 0`` is always an error.
    """
    _check_size(old_size, "old size")
    _check_size(new_size, "new size")
    path = _as_proof(proof)
    if old_size > new_size:
        raise ProofError(f"old size {old_size} is larger than new size {new_size}")
    if old_size == 0:
        raise ProofError("a consistency proof from the empty tree proves nothing")
    if old_size == new_size:
        if path:
            raise ProofError("sizes are equal, so the consistency proof must be empty")
        # Any byte strings may be given here; they are consistent iff identical.
        if not isinstance(old_root, bytes) or not isinstance(new_root, bytes):
            raise ProofError("roots must be bytes")
        if not hmac.compare_digest(old_root, new_root):
            raise ProofError("sizes are equal but the roots differ")
        return
    first = _as_hash(old_root, "old root")
    second = _as_hash(new_root, "new root")

    # Expected length: the old tree's root is a perfect subtree at `level`; above it the
    # proof is an inclusion proof of that subtree, plus its own hash unless it is the root
    # of a power-of-two old tree (then the verifier already knows it: old_root).
    level = (old_size & -old_size).bit_length() - 1
    node_index = (old_size - 1) >> level
    inner, border = _decompose_inclusion(node_index, ((new_size - 1) >> level) + 1)
    start = 0 if node_index == 0 else 1
    if len(path) != start + inner + border:
        raise ProofError(
            f"consistency proof from size {old_size} to {new_size} must have "
            f"{start + inner + border} hashes, got {len(path)}"
        )

    if old_size & (old_size - 1) == 0:
        path = [first, *path]
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is too short")
    if not hmac.compare_digest(fr, first):
        raise ProofError(f"consistency proof does not lead to the old root (size {old_size})")
    if not hmac.compare_digest(sr, second):
        raise ProofError(f"consistency proof does not lead to the new root (size {new_size})")


# --- Reference implementation ------------------------------------------------------------


class InMemoryTree:
    """A Merkle tree in memory, computing everything by the RFC's recursive definitions.

    Slow (proofs are O(n)) and simple on purpose: it is the reference the efficient code is
    tested against, and a convenient tree for auditors' tests.
    """

    __slots__ = ("_leaf_hashes",)

    def __init__(self, leaves: Iterable[bytes] = ()) -> None:
        self._leaf_hashes: list[bytes] = [leaf_hash(leaf) for leaf in leaves]

    @property
    def size(self) -> int:
        """Number of leaves."""
        return len(self._leaf_hashes)

    def __len__(self) -> int:
        return len(self._leaf_hashes)

    def append(self, leaf: bytes) -> int:
        """Append the leaf *data* ``leaf``; return its index."""
        self._leaf_hashes.append(leaf_hash(leaf))
        return len(self._leaf_hashes) - 1

    def leaf_hash(self, index: int) -> bytes:
        """The leaf hash at ``index``."""
        if not 0 <= index < self.size:
            raise ProofError(f"no leaf {index} in a tree of size {self.size}")
        return self._leaf_hashes[index]

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` leaves (default: all)."""
        return self._mth(0, self._size_arg(size))

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[0:size]) of RFC 9162 2.1.3.1."""
        n = self._size_arg(size)
        if not 0 <= index < n:
            raise ProofError(f"leaf index {index} is not in a tree of size {n}")
        return self._path(index, 0, n)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """PROOF(old_size, D[0:new_size]) of RFC 9162 2.1.4.1 (requires 0 < old <= new)."""
        n = self._size_arg(new_size)
        if not 0 < old_size <= n:
            raise ProofError(f"no consistency proof from size {old_size} to size {n}")
        return self._subproof(old_size, 0, n, True)

    def _size_arg(self, size: int | None) -> int:
        if size is None:
            return self.size
        if not 0 <= size <= self.size:
            raise ProofError(f"tree size {size} is not in [0, {self.size}]")
        return size

    def _mth(self, lo: int, hi: int) -> bytes:
        n = hi - lo
        if n == 0:
            return EMPTY_ROOT
        if n == 1:
            return self._leaf_hashes[lo]
        k = _split_point(n)
        return node_hash(self._mth(lo, lo + k), self._mth(lo + k, hi))

    def _path(self, m: int, lo: int, hi: int) -> list[bytes]:
        n = hi - lo
        if n == 1:
            return []
        k = _split_point(n)
        if m < k:
            return [*self._path(m, lo, lo + k), self._mth(lo + k, hi)]
        return [*self._path(m - k, lo + k, hi), self._mth(lo, lo + k)]

    def _subproof(self, m: int, lo: int, hi: int, b: bool) -> list[bytes]:
        n = hi - lo
        if m == n:
            return [] if b else [self._mth(lo, hi)]
        k = _split_point(n)
        if m <= k:
            return [*self._subproof(m, lo, lo + k, b), self._mth(lo + k, hi)]
        return [*self._subproof(m - k, lo + k, hi, False), self._mth(lo, lo + k)]


# --- Helpers -----------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    # bool is an int subclass; True as a tree size is a bug, not a size.
    return isinstance(value, int) and not isinstance(value, bool)


def _check_size(value: object, what: str) -> None:
    if not _is_int(value):
        raise ProofError(f"{what} must be an int, got {type(value).__name__}")
    assert isinstance(value, int)
    if not 0 <= value <= MAX_TREE_SIZE:
        raise ProofError(f"{what} {value} is outside [0, 2**64-1]")


def _as_hash(value: object, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise ProofError(f"{what} must be bytes, got {type(value).__name__}")
    h = bytes(value)
    if len(h) != HASH_SIZE:
        raise ProofError(f"{what} must be {HASH_SIZE} bytes, got {len(h)}")
    return h


def _as_proof(proof: object) -> list[bytes]:
    if isinstance(proof, str | bytes) or not isinstance(proof, Sequence):
        raise ProofError("proof must be a sequence of hashes")
    return [_as_hash(p, f"proof hash {i}") for i, p in enumerate(proof)]


def _stored_hash(hashes: Mapping[NodeId, bytes], node: NodeId) -> bytes:
    try:
        value = hashes[node]
    except KeyError:
        raise ProofError(f"no hash given for {node}") from None
    return _as_hash(value, f"hash of {node}")


def _split_point(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (n >= 2): the RFC's k."""
    return 1 << ((n - 1).bit_length() - 1)


def _decompose_inclusion(index: int, size: int) -> tuple[int, int]:
    """Lengths of the inner (below the split from the right edge) and border proof parts."""
    inner = (index ^ (size - 1)).bit_length()
    border = (index >> inner).bit_count()
    return inner, border
