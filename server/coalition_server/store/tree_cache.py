"""An in-memory copy of the tree's stored hashes, and proofs assembled from it in microseconds.

Reading a proof's ~20 nodes from the database costs a query (hundreds of microseconds to
milliseconds); the same nodes held in memory cost a slice each. At 1,000,000 entries the whole
tree is 2,000,000 hashes, 64 MiB; past the cache's budget the lowest levels are left out (each
level halves the size) and the proof reads just those few nodes from the database.

Each level is a list of immutable ``bytes`` chunks of :data:`CHUNK` hashes, the last one
partial: a lookup is one ``bytes`` slice (a ``bytearray`` slice would need a second copy to
``bytes``, which protobuf requires), and an append rebuilds only the last chunk (at most
:data:`CHUNK` hashes), never a whole level, so a level is never held twice.

The cache holds perfect subtrees only, which never change once complete, so it is never
invalidated: it only grows, from this process's own commits (:meth:`TreeCache.extend`, no
I/O) and from the database for what other replicas appended (:meth:`TreeCache.catch_up`).
It also keeps the right-edge range hashes of one tree size (:meth:`TreeCache.edge_memo`):
every proof against the latest tree shares them, and they cost several hashes each.

The proof functions walk the RFC 9162 recursions (2.1.3.1, 2.1.4.1) on plain integers; they
compute the same proofs as :func:`coalition.merkle.inclusion_plan` and
:func:`coalition.merkle.consistency_plan` (a property test compares them) without building
plan objects, which cost more than the hashing itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from coalition import merkle
from coalition_server.store import models

HASH = merkle.HASH_SIZE
NodeHash = Callable[[int, int], bytes]
"""Hash of the perfect subtree (level, index): ``2**level`` leaves from ``index << level``."""
Memo = dict[tuple[int, int], bytes]
"""Right-edge range hashes already computed, by (start, end) leaf range."""

PAGE = 65_536
"""Nodes read per query when catching up."""
DEFAULT_BUDGET = 128 * 1024 * 1024
"""Bytes of hashes held by default: the whole tree up to about 2,000,000 entries."""
CHUNK = 256
"""Hashes per chunk of a level (8 KiB): small enough that rebuilding the last chunk on every
append is cheap, large enough that the chunks' own overhead is under 1%."""
_CHUNK_SHIFT = CHUNK.bit_length() - 1
_CHUNK_MASK = CHUNK - 1
_CHUNK_BYTES = CHUNK * HASH


def _range_hash(start: int, end: int, node: NodeHash, memo: Memo | None) -> bytes:
    """MTH of leaves ``[start, end)`` for a range the RFC recursion visits (``start`` aligned
    to a power of two at least ``end - start``): one stored node when the range is a perfect
    subtree, else the right fold of the perfect subtrees that cover it (remembered in
    ``memo``: a batch's receipts share these right-edge hashes)."""
    n = end - start
    if n & (n - 1) == 0:
        level = n.bit_length() - 1
        return node(level, start >> level)
    if memo is not None and (found := memo.get((start, end))) is not None:
        return found
    parts: list[bytes] = []
    at = start
    while at < end:
        level = (end - at).bit_length() - 1
        if at:
            level = min(level, (at & -at).bit_length() - 1)
        parts.append(node(level, at >> level))
        at += 1 << level
    acc = parts[-1]
    for left in reversed(parts[:-1]):
        acc = merkle.node_hash(left, acc)
    if memo is not None:
        memo[(start, end)] = acc
    return acc


def root(size: int, node: NodeHash) -> bytes:
    """The root of the tree's first ``size`` leaves (``size`` >= 1)."""
    return _range_hash(0, size, node, None)


def inclusion_proof(index: int, size: int, node: NodeHash, memo: Memo | None = None) -> list[bytes]:
    """RFC 9162 2.1.3.1 audit path of leaf ``index`` in the tree of ``size`` (0 <= index < size).

    PATH(m, D[lo:hi]) top-down: the RFC appends each sibling after the sub-path, so the
    siblings found top-down are the proof in reverse. A left sibling is always a perfect
    subtree; at most one right sibling (where the path leaves the tree's right edge) is not.
    """
    out: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = 1 << ((hi - lo - 1).bit_length() - 1)
        mid = lo + k
        if index < mid:
            out.append(_range_hash(mid, hi, node, memo))
            hi = mid
        else:
            level = k.bit_length() - 1
            out.append(node(level, lo >> level))
            lo = mid
    out.reverse()
    return out


def inclusion_proofs(
    first: int, end: int, size: int, node: NodeHash, memo: Memo | None = None
) -> list[list[bytes]]:
    """The :func:`inclusion_proof` of each leaf in ``[first, end)`` (``end <= size``), in order.

    One walk down the tree for them all: leaves next to each other share the upper part of
    their paths, which a proof per leaf would walk (and look up) again for each of them.
    """
    out: list[list[bytes]] = []
    path: list[bytes] = []  # the siblings from the root down to the current range

    def walk(lo: int, hi: int) -> None:
        if hi - lo == 1:
            out.append(path[::-1])
            return
        k = 1 << ((hi - lo - 1).bit_length() - 1)
        mid = lo + k
        if first < mid:
            path.append(_range_hash(mid, hi, node, memo))
            walk(lo, mid)
            path.pop()
        if end > mid:
            level = k.bit_length() - 1
            path.append(node(level, lo >> level))
            walk(mid, hi)
            path.pop()

    if first < end:
        walk(0, size)
    return out


def consistency_proof(
    old_size: int, new_size: int, node: NodeHash, memo: Memo | None = None
) -> list[bytes]:
    """RFC 9162 2.1.4.1 consistency proof between ``0 < old_size <= new_size``.

    SUBPROOF(m, D[lo:hi], b) top-down, in two stretches. While ``hi`` is ``new_size`` (the
    new tree's right edge) the split goes right whenever the old tree covers the left half,
    which is then a proof node; at the first split where it does not, the right half
    ``[mid, new_size)`` is one (a range hash, shared by every proof against ``new_size``).
    From there on ``[lo, mid)`` is a perfect subtree holding the old tree's last leaf
    ``last = old_size - 1``, so each further step's sibling is the perfect subtree
    ``(level, (last >> level) ^ 1)``, down to the first level where the old tree ends on the
    subtree's boundary (``last``'s trailing one bits); that subtree is the proof's first
    node unless it is the whole old tree (nothing of ``last`` above those bits). The
    siblings are a comprehension, not a branch per level: the walk's cost is its lookups.
    """
    if old_size == new_size:
        return []
    top: list[bytes] = []  # left halves along the right edge, top-down
    lo = 0
    while True:
        # old_size < new_size here, so new_size - lo >= 2 and the split exists.
        level = (new_size - lo - 1).bit_length() - 1
        mid = lo + (1 << level)
        if old_size <= mid:
            break
        top.append(node(level, lo >> level))
        lo = mid
    last = old_size - 1
    low = min((last ^ (last + 1)).bit_length() - 1, level)
    out = [node(low, last >> low)] if last >> low else []
    out += [node(at, (last >> at) ^ 1) for at in range(low, level)]
    out.append(_range_hash(mid, new_size, node, memo))
    top.reverse()
    out += top
    return out


def nodes_of(
    proof: Callable[[NodeHash], list[bytes]],
) -> list[tuple[int, int]]:
    """The perfect subtrees a proof reads, found by running it with a recording lookup."""
    seen: list[tuple[int, int]] = []

    def record(level: int, index: int) -> bytes:
        seen.append((level, index))
        return bytes(HASH)

    proof(record)
    return seen


class TreeCache:
    """Stored perfect-subtree hashes of one tree, in memory, levels ``min_level`` and up.

    ``size`` is the tree size the cache is complete for: every perfect subtree of a tree of
    that size at a cached level is held.
    """

    def __init__(self, budget_bytes: int = DEFAULT_BUDGET) -> None:
        self.budget_bytes = budget_bytes
        self.size = 0
        self.min_level = 0
        # Per level, its hashes in chunks of CHUNK (see the module docstring). This outer
        # list is only ever changed in place, so the lookup below stays valid as it grows.
        self._levels: list[list[bytes]] = []
        self._lock = asyncio.Lock()
        self._edge_size = 0
        self._edge_memo: Memo = {}
        levels = self._levels

        def cached(level: int, index: int) -> bytes:
            at = (index & _CHUNK_MASK) * HASH
            return levels[level][index >> _CHUNK_SHIFT][at : at + HASH]

        # Built once: the lookup when every level is cached, the case of every proof at
        # the default budget up to ~2,000,000 entries (a closure per proof costs ~0.1 µs).
        self._cached: NodeHash = cached

    @property
    def held_bytes(self) -> int:
        """Bytes of hashes held."""
        return sum(len(chunk) for chunks in self._levels for chunk in chunks)

    def get(self, level: int, index: int) -> bytes | None:
        """The hash of (level, index) if cached."""
        if level < self.min_level or level >= len(self._levels) or index >= self._count(level):
            return None
        return self._cached(level, index)

    def edge_memo(self, size: int) -> Memo:
        """A memo for the right-edge range hashes of the tree of ``size``, kept until a proof
        for another size asks (at most one per level: ``(start, size)`` for the ~log2(size)
        ranges the RFC walk visits along the tree's right edge).

        Every proof against the latest tree folds one of the same few ranges; kept, the fold
        (up to ~20 hashes) is done once per tree size instead of once per proof. Only one
        size is kept so the memo stays bounded as the tree grows."""
        if size != self._edge_size:
            self._edge_size, self._edge_memo = size, {}
        return self._edge_memo

    def extend(self, old_size: int, new_size: int, nodes: Mapping[tuple[int, int], bytes]) -> None:
        """Take this process's commit from ``old_size`` to ``new_size``; ``nodes`` holds every
        perfect subtree completed by it. Ignored unless the cache is at ``old_size``: another
        replica's entries came between, and :meth:`catch_up` will read them. Ignored too while
        a catch-up is reading (it fills the same levels; the next proof catches up again)."""
        if old_size != self.size or new_size <= old_size or self._lock.locked():
            return
        self._fit(new_size)
        for level in range(self.min_level, new_size.bit_length()):
            first, last = old_size >> level, new_size >> level
            if first != last:
                self._append(level, [nodes[(level, index)] for index in range(first, last)])
        self.size = new_size

    async def catch_up(self, conn: AsyncConnection, size: int) -> None:
        """Read from the database what the cache lacks of the tree of ``size``.

        In pages of :data:`PAGE` nodes, so a warm-up never holds more than one page of rows.
        """
        async with self._lock:
            if size <= self.size:
                return
            old = self.size
            self._fit(size)
            try:
                for level in range(self.min_level, size.bit_length()):
                    await self._read_level(conn, level, old >> level, size >> level)
            except BaseException:
                # Back to a consistent cache of ``old`` leaves (a read failed half-way).
                for level in range(self.min_level, len(self._levels)):
                    self._truncate(level, old >> level)
                raise
            self.size = size

    async def _read_level(self, conn: AsyncConnection, level: int, first: int, last: int) -> None:
        self._level(level)
        if self._count(level) != first:
            raise RuntimeError(f"tree cache level {level} is out of step")
        for start in range(first, last, PAGE):
            stop = min(start + PAGE, last)
            rows = (
                await conn.execute(
                    select(models.MerkleNode.hash)
                    .where(
                        models.MerkleNode.level == level,
                        models.MerkleNode.idx >= start,
                        models.MerkleNode.idx < stop,
                    )
                    .order_by(models.MerkleNode.idx)
                )
            ).scalars()
            self._append(level, rows.all())
            if self._count(level) != stop:
                raise RuntimeError(f"tree nodes of level {level} missing from the store")

    def lookup(self, extra: Mapping[tuple[int, int], bytes]) -> NodeHash:
        """A node lookup: the cache, else ``extra`` (nodes below ``min_level``, read for one
        proof)."""
        min_level = self.min_level
        if min_level == 0:
            return self._cached
        cached = self._cached

        def node(level: int, index: int) -> bytes:
            if level >= min_level:
                return cached(level, index)
            return extra[(level, index)]

        return node

    def uncached(self, wanted: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
        """Which of these nodes are below the cached levels."""
        return [(level, index) for level, index in wanted if level < self.min_level]

    def _level(self, level: int) -> list[bytes]:
        while len(self._levels) <= level:
            self._levels.append([])
        return self._levels[level]

    def _count(self, level: int) -> int:
        """Hashes held at ``level`` (every chunk but the last is full)."""
        chunks = self._levels[level]
        if not chunks:
            return 0
        return (len(chunks) - 1) * CHUNK + len(chunks[-1]) // HASH

    def _append(self, level: int, hashes: Sequence[bytes]) -> None:
        """Append ``hashes`` to ``level`` one chunk at a time: the partial last chunk is rebuilt
        with the first of them, the rest become new chunks. Never more than one chunk is
        copied at once, so a warm-up's page of hashes is not held twice more."""
        chunks = self._level(level)
        at = 0
        if chunks and len(chunks[-1]) < _CHUNK_BYTES:
            at = CHUNK - len(chunks[-1]) // HASH
            chunks[-1] += b"".join(hashes[:at])
        for start in range(at, len(hashes), CHUNK):
            chunks.append(b"".join(hashes[start : start + CHUNK]))

    def _truncate(self, level: int, count: int) -> None:
        """Keep the first ``count`` hashes of ``level``."""
        chunks = self._levels[level]
        full, rest = divmod(count, CHUNK)
        tail = chunks[full][: rest * HASH] if rest and full < len(chunks) else b""
        del chunks[full:]
        if tail:
            chunks.append(tail)

    def _fit(self, size: int) -> None:
        """Raise ``min_level`` until a tree of ``size`` fits the budget (dropping levels)."""
        while self.min_level < 63 and 2 * HASH * (size >> self.min_level) > self.budget_bytes:
            if self.min_level < len(self._levels):
                self._levels[self.min_level] = []
            self.min_level += 1
