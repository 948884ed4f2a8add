"""Reads of the ledger: entries, checkpoints and proofs, each in O(log n) indexed reads.

Nodes are immutable once written and written in the same transaction as the checkpoint
that first covers them, so any size up to the latest checkpoint can be proven.

A server process gives its store a :class:`~coalition_server.store.tree_cache.TreeCache`:
proofs are then assembled from memory, and "the latest checkpoint" is the newest one this
process has seen, read again from the database when it is older than ``head_ttl`` seconds
or when a request names a size or an entry beyond it (so a receipt from another replica is
always provable here). Without a cache every proof reads its nodes and the head.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from coalition import merkle
from coalition.checkpoint import Checkpoint, sign_checkpoint
from coalition.note import NoteSigner
from coalition_server.domain.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from coalition_server.store import models
from coalition_server.store.database import Database
from coalition_server.store.sequencer import read_nodes
from coalition_server.store.tree_cache import (
    Memo,
    NodeHash,
    TreeCache,
    consistency_proof,
    inclusion_proof,
    nodes_of,
)
from coalition_server.timeutil import utcnow

log = logging.getLogger(__name__)

# Indexes are stored as signed 64-bit integers; anything larger cannot exist.
MAX_INDEX = 2**63 - 1

Prover = Callable[[NodeHash, Memo | None], list[bytes]]
"""A proof over a node lookup, with a memo for its right-edge range hashes."""


@dataclass(frozen=True)
class StoredEntry:
    """A leaf as stored: its index, exact bytes and hash."""

    index: int
    leaf: bytes
    leaf_hash: bytes


@dataclass(frozen=True)
class StoredCheckpoint:
    """A checkpoint the log signed."""

    tree_size: int
    root_hash: bytes
    note: str


@dataclass(frozen=True)
class LogIdentity:
    """Who this log is: fixed at first start and shared by every replica."""

    origin: str
    verifier_key: str
    coalition_public_key: bytes


class LogIdentityMismatchError(Exception):
    """The database belongs to a log with another key or origin."""


class LedgerStore:
    """Read access to one ledger, plus its one-time initialisation."""

    def __init__(
        self, database: Database, tree: TreeCache | None = None, head_ttl: float = 0.1
    ) -> None:
        self._db = database
        self._tree = tree
        self._head_ttl = head_ttl
        self._head: StoredCheckpoint | None = None
        self._head_read = 0.0

    async def initialise(self, identity: LogIdentity, signer: NoteSigner) -> None:
        """Record the log's identity and its empty tree on first start; else check it."""
        try:
            async with self._db.writer.begin() as conn:
                existing = (
                    await conn.execute(select(models.LogIdentity).where(models.LogIdentity.id == 1))
                ).one_or_none()
                if existing is None:
                    now = utcnow()
                    empty = Checkpoint(identity.origin, 0, merkle.EMPTY_ROOT)
                    await conn.execute(
                        insert(models.LogIdentity),
                        [
                            {
                                "id": 1,
                                "origin": identity.origin,
                                "verifier_key": identity.verifier_key,
                                "coalition_public_key": identity.coalition_public_key,
                            }
                        ],
                    )
                    await conn.execute(
                        insert(models.TreeHead),
                        [
                            {
                                "id": 1,
                                "size": 0,
                                "root_hash": merkle.EMPTY_ROOT,
                                "last_integrated_time": now,
                            }
                        ],
                    )
                    await conn.execute(
                        insert(models.SignedCheckpoint),
                        [
                            {
                                "tree_size": 0,
                                "root_hash": merkle.EMPTY_ROOT,
                                "note": sign_checkpoint(empty, signer),
                                "issued_at": now,
                            }
                        ],
                    )
                    return
        except IntegrityError:
            pass  # another replica initialised it at the same moment: compare below
        stored = await self.identity()
        if stored != identity:
            raise LogIdentityMismatchError(
                f"this database holds the log {stored.verifier_key!r} (origin "
                f"{stored.origin!r}); this server has {identity.verifier_key!r} "
                f"(origin {identity.origin!r}): every replica needs the same keys"
            )

    async def identity(self) -> LogIdentity:
        """The log's identity as recorded in the database."""
        async with self._db.reader.connect() as conn:
            row = (
                await conn.execute(select(models.LogIdentity).where(models.LogIdentity.id == 1))
            ).one()
        return LogIdentity(row.origin, row.verifier_key, row.coalition_public_key)

    async def latest_checkpoint(self) -> StoredCheckpoint:
        """The newest signed checkpoint."""
        async with self._db.reader.connect() as conn:
            row = (
                await conn.execute(
                    select(models.SignedCheckpoint)
                    .order_by(models.SignedCheckpoint.tree_size.desc())
                    .limit(1)
                )
            ).one()
        return StoredCheckpoint(row.tree_size, row.root_hash, row.note)

    async def entries(self, start: int, end: int, limit: int) -> list[StoredEntry]:
        """Entries with start <= index < end, at most ``limit`` of them."""
        async with self._db.reader.connect() as conn:
            rows = await conn.execute(
                select(models.LogEntry.idx, models.LogEntry.leaf, models.LogEntry.leaf_hash)
                .where(models.LogEntry.idx >= start, models.LogEntry.idx < end)
                .order_by(models.LogEntry.idx)
                .limit(limit)
            )
            return [StoredEntry(row.idx, row.leaf, row.leaf_hash) for row in rows]

    async def entry(
        self, *, index: int | None = None, leaf_hash: bytes | None = None
    ) -> StoredEntry:
        """One entry by index or leaf hash; NotFoundError if absent."""
        query = select(models.LogEntry.idx, models.LogEntry.leaf, models.LogEntry.leaf_hash)
        if index is not None:
            if index >= MAX_INDEX:
                raise NotFoundError("ENTRY_NOT_FOUND", "no such entry in the ledger")
            query = query.where(models.LogEntry.idx == index)
        elif leaf_hash is not None:
            if len(leaf_hash) != merkle.HASH_SIZE:
                raise InvalidArgumentError("BAD_LEAF_HASH", "leaf_hash must be 32 bytes")
            query = query.where(models.LogEntry.leaf_hash == leaf_hash)
        else:
            raise InvalidArgumentError("MISSING_SELECTOR", "give an index or a leaf_hash")
        async with self._db.reader.connect() as conn:
            row = (await conn.execute(query)).one_or_none()
        if row is None:
            raise NotFoundError("ENTRY_NOT_FOUND", "no such entry in the ledger")
        return StoredEntry(row.idx, row.leaf, row.leaf_hash)

    async def warm(self) -> None:
        """Fill the tree cache up to the latest checkpoint (a server does this at start).

        A failure is logged, not raised: the first proof then catches up instead."""
        if self._tree is None:
            return
        try:
            head = await self.latest_checkpoint()
            async with self._db.reader.connect() as conn:
                await self._tree.catch_up(conn, head.tree_size)
        except Exception as exc:
            log.warning("tree cache warm-up failed (%s); proofs will read what they need", exc)

    def saw_checkpoint(self, checkpoint: StoredCheckpoint) -> None:
        """Note a checkpoint this process just committed (the newest, until another replica
        commits)."""
        if self._head is None or checkpoint.tree_size > self._head.tree_size:
            self._head = checkpoint
            self._head_read = time.monotonic()

    def _fresh_head(self, at_least: int) -> StoredCheckpoint | None:
        """The newest checkpoint this process knows, if younger than ``head_ttl`` and covering
        ``at_least``; else None (and always without a tree cache: then every proof reads it).

        Like :meth:`_from_memory`, not a coroutine: a proof from memory takes ~10 µs, and the
        coroutine layers it used to go through (head, size, proof) added ~1.5 µs to it."""
        head = self._head
        if (
            self._tree is None
            or head is None
            or head.tree_size < at_least
            or time.monotonic() - self._head_read > self._head_ttl
        ):
            return None
        return head

    async def _read_head(self) -> StoredCheckpoint:
        """The newest checkpoint, read (and remembered, with a tree cache)."""
        read = time.monotonic()
        head = await self.latest_checkpoint()
        if self._tree is not None:
            self._head, self._head_read = head, read
        return head

    @staticmethod
    def _resolve_size(tree_size: int, latest: StoredCheckpoint) -> int:
        """The size a request names: ``tree_size``, or for 0 the latest checkpoint's."""
        if tree_size == 0:
            return latest.tree_size
        if tree_size > latest.tree_size:
            raise FailedPreconditionError(
                "TREE_SIZE_BEYOND_HEAD",
                f"tree size {tree_size} is beyond the latest checkpoint ({latest.tree_size})",
                {"tree_size": str(latest.tree_size)},
            )
        return tree_size

    async def inclusion_proof(
        self, index: int, tree_size: int
    ) -> tuple[int, list[bytes], StoredCheckpoint]:
        """(tree size, audit path, latest checkpoint) for entry ``index``."""
        at_least = max(tree_size, index + 1)
        latest = self._fresh_head(at_least) or await self._read_head()
        size = self._resolve_size(tree_size, latest)
        if index >= size:
            raise FailedPreconditionError(
                "INDEX_BEYOND_TREE_SIZE",
                f"entry {index} is not in a tree of size {size}",
                {"tree_size": str(size)},
            )
        if self._tree is not None:

            def prove(node: NodeHash, memo: Memo | None) -> list[bytes]:
                return inclusion_proof(index, size, node, memo)

            path = self._from_memory(prove, size)
            if path is None:
                path = await self._prove(prove, size)
            return size, path, latest
        plan = merkle.inclusion_plan(index, size)
        async with self._db.reader.connect() as conn:
            hashes = await read_nodes(conn, plan.node_ids)
        return size, plan.assemble(hashes), latest

    async def consistency_proof(
        self, first_size: int, second_size: int
    ) -> tuple[int, list[bytes], StoredCheckpoint]:
        """(second size, proof, latest checkpoint) between two tree sizes."""
        latest = self._fresh_head(second_size) or await self._read_head()
        size = self._resolve_size(second_size, latest)
        if first_size < 1 or first_size > size:
            raise InvalidArgumentError(
                "BAD_TREE_SIZES", f"need 1 <= first_size <= second_size ({size})"
            )
        if self._tree is not None:

            def prove(node: NodeHash, memo: Memo | None) -> list[bytes]:
                return consistency_proof(first_size, size, node, memo)

            proof = self._from_memory(prove, size)
            if proof is None:
                proof = await self._prove(prove, size)
            return size, proof, latest
        plan = merkle.consistency_plan(first_size, size)
        async with self._db.reader.connect() as conn:
            hashes = await read_nodes(conn, plan.node_ids)
        return size, plan.assemble(hashes), latest

    def _from_memory(self, proof: Prover, size: int) -> list[bytes] | None:
        """``proof`` from the tree cache alone, when it holds every level of the tree of
        ``size`` (the usual case); else None, and :meth:`_prove` reads what it lacks.

        With the cache's right-edge memo of ``size``, which every proof against it shares."""
        tree = self._tree
        if tree is None or tree.size < size or tree.min_level:
            return None
        return proof(tree.lookup({}), tree.edge_memo(size))

    async def _prove(self, proof: Prover, size: int) -> list[bytes]:
        """Run ``proof`` over the tree cache, first reading what it lacks of ``size``."""
        tree = self._tree
        assert tree is not None
        extra: dict[tuple[int, int], bytes] = {}
        async with self._db.reader.connect() as conn:
            await tree.catch_up(conn, size)
            memo = tree.edge_memo(size)
            if tree.min_level:
                # The recording run sees placeholder hashes: a copy of the memo keeps them
                # out of the real one (and its hits spare those ranges' reads).
                missing = tree.uncached(nodes_of(lambda node: proof(node, dict(memo))))
                if missing:
                    found = await read_nodes(conn, [merkle.NodeId(*node) for node in missing])
                    extra = {(node.level, node.index): digest for node, digest in found.items()}
        return proof(tree.lookup(extra), memo)

    async def entries_by_subject(
        self, subject: str, kind: str, start: int, limit: int
    ) -> list[StoredEntry]:
        """Entries about ``subject`` and/or of ``kind``, index >= start, in index order."""
        query = select(models.LogEntry.idx, models.LogEntry.leaf, models.LogEntry.leaf_hash)
        if subject:
            query = query.join(
                models.EntrySubject, models.EntrySubject.idx == models.LogEntry.idx
            ).where(models.EntrySubject.subject == subject)
        if kind:
            query = query.where(models.LogEntry.kind == kind)
        query = query.where(models.LogEntry.idx >= start).order_by(models.LogEntry.idx).limit(limit)
        async with self._db.reader.connect() as conn:
            return [StoredEntry(r.idx, r.leaf, r.leaf_hash) for r in await conn.execute(query)]
