"""The sequencer: group commit of signed statements into the Merkle tree.

Callers submit *groups*: one or more statements that are appended together or not at all
(a registration; a batch of consent tokens; a strike's withdrawals). Groups queue up while
the previous batch commits; each batch is ONE database transaction that

1. locks the tree head (``FOR UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so any
   number of server processes extend one tree, in one order;
2. reads, in one query each, which of the batch's request_ids were answered before and which
   of its statements are in the ledger already (per-statement queries were most of the cost of
   a large batch);
3. for each group, in a savepoint: checks its idempotency key and duplicate statements and
   runs each statement's domain effect, which may refuse it (DomainError: the whole group is
   rolled back and consumes no index) or add follow-up statements (e.g. the coalition's notices
   for a withdrawal) that are appended right after it, in the same group; then the group's own
   effect, if any, which records the whole group at once (bulk writes for a batch of tokens).
   Each entry row is written before its effect runs;
4. writes subject index rows and the new perfect-subtree hashes, signs and stores a
   checkpoint, and moves the head.

Only after the commit returns are callers answered, each with receipts (index, checkpoint,
inclusion proof computed from the batch's own nodes, no extra reads). If the commit fails,
nobody is answered with success: nothing acknowledged is ever lost. A response stored for a
request_id is built in the transaction (it is written with the batch); the others are built
after the commit, while the next batch waits on the database.

The sequencer reports its work (append latency, committed batches) to an optional
:class:`SequencerMetrics` observer passed in by the server; the store itself does not depend
on a metrics library.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, NamedTuple, Protocol, cast, overload

from sqlalchemy import select, tuple_
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from coalition import dsse, merkle, statements
from coalition.checkpoint import Checkpoint, sign_checkpoint
from coalition.merkle import CompactRange, NodeId
from coalition.note import NoteSigner
from coalition.v1 import ledger_pb2
from coalition_server.domain.errors import AlreadyExistsError, DomainError, UnavailableError
from coalition_server.store import bulk, models, round_trip
from coalition_server.store.database import CALLER_BEGINS, Database, caller_begins, is_unavailable
from coalition_server.store.tree_cache import inclusion_proofs
from coalition_server.timeutil import as_utc, to_timestamp, utcnow

log = logging.getLogger(__name__)


@dataclass
class EffectContext:
    """What a domain effect sees: the open transaction, its index and the batch time.

    ``memo`` is shared by every effect of one batch, so effects can see what earlier
    statements of the same batch did before it is visible in the database. Effects replace
    values in it and never mutate them: a refused group's notes are rolled back with it.
    """

    conn: AsyncConnection
    index: int
    integrated_time: datetime
    memo: dict[str, Any]


Effect = Callable[[EffectContext], Awaitable["Sequence[Submission] | None"]]
"""A statement's domain effect, run inside the batch transaction.

It may read and write its own tables, raise DomainError to refuse its group, and return
follow-up submissions to append right after it (they may have effects of their own).
"""


@dataclass
class GroupContext:
    """What a group's own effect sees: the open transaction, the batch time, the shared memo,
    and the index each of the group's submissions got (in the group's order)."""

    conn: AsyncConnection
    indices: tuple[int, ...]
    integrated_time: datetime
    memo: dict[str, Any]


GroupEffect = Callable[[GroupContext], Awaitable[None]]
"""A group's effect, run after its statements' own effects, inside the same savepoint.

It records the group in bulk (one query for a thousand tokens instead of a thousand) and may
raise DomainError to refuse the whole group. It cannot add follow-up statements.
"""


@dataclass(frozen=True)
class RunContext:
    """What a runner sees: the open transaction, the index the run's first accepted statement
    gets, and the batch time."""

    conn: AsyncConnection
    first_index: int
    integrated_time: datetime


class RunPlan(Protocol):
    """A runner's decisions on a run of groups, and the writes that carry them out."""

    @property
    def outcomes(self) -> Sequence[Sequence[Submission] | DomainError]:
        """Per request, in order: its follow-up statements (appended right after the group's
        statement, with no effects of their own), or why the group is refused."""

    async def record(self, conn: AsyncConnection) -> None:
        """Write every accepted request's rows (called once, after the run's entries)."""


Runner = Callable[[RunContext, Sequence[Any]], Awaitable[RunPlan]]
"""Decides a *run* of consecutive groups of one kind together, in the run's order, without
writing; then records them all at once. The k-th follow-up of an accepted request at index
``i`` gets index ``i + 1 + k``, and the next accepted request comes after its follow-ups.
A refused request changes nothing and consumes no index."""


@dataclass(frozen=True)
class RunRequest:
    """Marks a single-statement group as one of a run: consecutive groups of a batch with the
    same ``runner`` are decided by one call (a fixed number of queries for the whole run,
    instead of a savepoint and a dozen queries each)."""

    runner: Runner
    request: Any


@dataclass(frozen=True)
class IdempotencyKey:
    """Identifies a mutation so a retry returns the first answer."""

    caller_key_id: str
    request_id: str
    method: str
    request_digest: bytes


@dataclass(frozen=True, slots=True)
class Submission:
    """A signed statement to append and what it concerns.

    ``encoded`` is the envelope's protobuf encoding (``envelope.to_proto()`` serialised), when
    the caller has it already, as a request's message: it is what the ledger leaf embeds.

    What its batch needs of it is computed once, when it is made: on the caller's task,
    while the batch before it may be waiting on the database, rather than in the transaction.
    """

    envelope: dsse.Envelope
    signer_key_id: str
    subjects: tuple[str, ...] = ()
    effect: Effect | None = None
    encoded: bytes | None = field(default=None, repr=False, compare=False)
    statement_hash: bytes = field(init=False, repr=False, compare=False)
    """SHA-256 of the signed bytes (:func:`statement_hash`)."""
    leaf_tail: bytes = field(init=False, repr=False, compare=False)
    """The ledger leaf's envelope field. Protobuf writes fields in number order, so a leaf is
    its batch's time field followed by this: the envelope is encoded once, not per leaf."""
    kind: str = field(init=False, repr=False, compare=False)
    """The statement's kind, as its entry row records it."""
    subject_ids: tuple[str, ...] = field(init=False, repr=False, compare=False)
    """The keys its entry is indexed under: its signer and its subjects, once each."""

    def __post_init__(self) -> None:
        envelope = self.encoded
        if envelope is None:
            envelope = self.envelope.to_proto().SerializeToString(deterministic=True)
        init = object.__setattr__  # frozen
        init(self, "statement_hash", statement_hash(self.envelope))
        init(self, "leaf_tail", length_delimited(_LEAF_ENVELOPE, envelope))
        init(self, "kind", statements.kind(self.envelope.payload_type))
        init(self, "subject_ids", tuple(sorted({self.signer_key_id, *self.subjects})))


Respond = Callable[[Sequence[ledger_pb2.Receipt]], bytes]
"""Builds the serialised response of a group from its receipts (in append order)."""


@dataclass(frozen=True)
class Group:
    """Statements appended atomically, answered with one response."""

    submissions: tuple[Submission, ...]
    respond: Respond
    idempotency: IdempotencyKey | None = None
    effect: GroupEffect | None = None
    run: RunRequest | None = None

    def __post_init__(self) -> None:
        if self.run is not None and (
            len(self.submissions) != 1 or self.effect is not None or self.submissions[0].effect
        ):
            raise ValueError("a group in a run is one statement without effects of its own")


class Receipts(Sequence[ledger_pb2.Receipt]):
    """A group's receipts, in append order, as the sequencer encodes them: each is decoded
    when asked for. A thousand Receipt messages per batch cost more to build than to encode,
    and as objects the garbage collector tracks they brought on full collections; a response
    that embeds them (GrantConsent's) takes :attr:`encoded` as it is."""

    __slots__ = ("encoded", "indices")

    def __init__(self, indices: tuple[int, ...], encoded: tuple[bytes, ...]) -> None:
        self.indices = indices
        """Each receipt's entry index."""
        self.encoded = encoded
        """Each receipt's protobuf encoding."""

    def __len__(self) -> int:
        return len(self.encoded)

    @overload
    def __getitem__(self, position: int) -> ledger_pb2.Receipt: ...

    @overload
    def __getitem__(self, position: slice) -> Sequence[ledger_pb2.Receipt]: ...

    def __getitem__(
        self, position: int | slice
    ) -> ledger_pb2.Receipt | Sequence[ledger_pb2.Receipt]:
        if isinstance(position, slice):
            return tuple(ledger_pb2.Receipt.FromString(e) for e in self.encoded[position])
        return ledger_pb2.Receipt.FromString(self.encoded[position])


@dataclass(frozen=True)
class AppendResult:
    """A group's serialised response, and its receipts (empty for a replayed answer)."""

    response: bytes
    receipts: Sequence[ledger_pb2.Receipt]


@dataclass
class _Pending:
    group: Group
    future: asyncio.Future[AppendResult]


class _Leaf(NamedTuple):
    """A statement's entry as its batch writes it. Plain values only: the garbage collector
    stops tracking such a tuple, where a thousand objects pointing at their submissions would
    outlive the batch's young collections and bring on full ones."""

    idx: int
    leaf: bytes
    leaf_hash: bytes
    statement_hash: bytes
    kind: str
    signer_key_id: str
    subject_ids: tuple[str, ...]

    @classmethod
    def of(cls, index: int, submission: Submission, time_field: bytes) -> _Leaf:
        """The ledger leaf of ``submission`` at ``index``, after its batch's ``time_field``
        (:func:`leaf_time_field`)."""
        leaf = time_field + submission.leaf_tail
        return cls(
            index,
            leaf,
            merkle.leaf_hash(leaf),
            submission.statement_hash,
            submission.kind,
            submission.signer_key_id,
            submission.subject_ids,
        )


_LEAF_ENVELOPE = 2
"""LedgerLeaf.envelope's field number (integrated_time is 1)."""


def varint(value: int) -> bytes:
    """``value`` (not negative) as a protobuf varint."""
    if value < 0x80:
        return bytes((value,))
    if value < 0x4000:  # a leaf's or a record's length
        return bytes((value & 0x7F | 0x80, value >> 7))
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def length_delimited(number: int, body: bytes) -> bytes:
    """Field ``number`` holding ``body`` (bytes, a string or a message), as protobuf encodes it."""
    tag, size = number << 3 | 2, len(body)
    # Written out for fields 1 to 15 and bodies under 16 KiB (every leaf, receipt and record):
    # ingest encodes several per token on the threads whose Python shares the GIL.
    if tag < 0x80:
        if size < 0x80:
            return bytes((tag, size)) + body
        if size < 0x4000:
            return bytes((tag, size & 0x7F | 0x80, size >> 7)) + body
    return varint(tag) + varint(size) + body


def leaf_time_field(integrated_time: datetime) -> bytes:
    """The first field of every ledger leaf of a batch integrated at ``integrated_time``."""
    return ledger_pb2.LedgerLeaf(integrated_time=to_timestamp(integrated_time)).SerializeToString(
        deterministic=True
    )


class _Edge:
    """The tree's right edge while a batch grows it: :class:`CompactRange`'s fold, keeping
    every perfect subtree it completes under a plain (level, index) key (a NodeId per node
    cost more than its hash), with the old frontier's for the receipts' proofs."""

    __slots__ = ("added", "hashes", "nodes", "size")

    def __init__(self, frontier: CompactRange) -> None:
        self.size = frontier.size
        self.hashes = list(frontier.hashes)
        self.nodes: dict[tuple[int, int], bytes] = {
            (node.level, node.index): digest
            for node, digest in zip(
                CompactRange.frontier_ids(frontier.size), frontier.hashes, strict=True
            )
        }
        self.added: list[tuple[int, int, bytes]] = []
        """The nodes the batch completed, as merkle_nodes rows."""

    def append(self, leaf_hash: bytes) -> None:
        """Append one leaf hash, keeping the perfect subtrees it completes."""
        size, hashes, nodes, added = self.size, self.hashes, self.nodes, self.added
        digest = leaf_hash
        nodes[(0, size)] = digest
        added.append((0, size, digest))
        level = 0
        # Each trailing 1 bit of the old size is a same-sized left sibling to merge with.
        while (size >> level) & 1:
            digest = merkle.node_hash(hashes.pop(), digest)
            level += 1
            nodes[(level, size >> level)] = digest
            added.append((level, size >> level, digest))
        hashes.append(digest)
        self.size = size + 1

    def compact(self) -> CompactRange:
        """The edge as a :class:`CompactRange` (what the next batch starts from)."""
        return CompactRange(self.size, self.hashes)


@dataclass
class _Accepted:
    pending: _Pending
    leaves: list[_Leaf]


@dataclass
class _Batch:
    accepted: list[_Accepted] = field(default_factory=list)
    replays: list[tuple[_Pending, IdempotencyKey]] = field(default_factory=list)
    failures: list[tuple[_Pending, BaseException]] = field(default_factory=list)


@dataclass
class _Known:
    """What the batch's prefetch found: answered request_ids, and statement hashes asked
    about (``checked``) with those already in the ledger (``logged``)."""

    answered: dict[tuple[str, str], bytes]
    checked: set[bytes]
    logged: set[bytes]


def statement_hash(envelope: dsse.Envelope) -> bytes:
    """SHA-256 of the signed bytes of a statement: equal statements are one statement."""
    return hashlib.sha256(envelope.pae()).digest()


@dataclass(frozen=True)
class Commit:
    """A batch this process committed: the tree grew from ``old_size`` to ``new_size``.

    ``nodes`` holds the hash of every perfect subtree the batch completed (and the old
    frontier's), keyed by (level, index).
    """

    old_size: int
    new_size: int
    root_hash: bytes
    note: str
    nodes: dict[tuple[int, int], bytes]


CommitListener = Callable[[Commit], None]
"""Told of each committed batch, before the callers are answered (it must not block)."""


class SequencerMetrics(Protocol):
    """What the sequencer reports (implemented by coalition_server.metrics)."""

    def append_acknowledged(self, seconds: float) -> None:
        """A group was acknowledged ``seconds`` after it was submitted."""

    def batch_committed(self, statements: int, tree_size: int) -> None:
        """A batch appending ``statements`` committed; the tree has ``tree_size`` entries."""


class Sequencer:
    """Batches groups of statements into durable, signed tree growth. One per process."""

    def __init__(
        self,
        database: Database,
        signer: NoteSigner,
        *,
        max_batch: int = 1024,
        max_queue: int = 100_000,
        metrics: SequencerMetrics | None = None,
        on_commit: CommitListener | None = None,
    ) -> None:
        self._db = database
        self._metrics = metrics
        self._on_commit = on_commit
        self._signer = signer
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=max_queue)
        self._task: asyncio.Task[None] | None = None
        # Cached right edge of the tree; valid only while the head still has its size.
        self._frontier: CompactRange | None = None
        self._committed = asyncio.Event()
        self.batches = 0

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="sequencer")

    async def stop(self) -> None:
        """Finish what is queued, then stop."""
        if self._task is None:
            return
        await self._queue.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    @property
    def queued(self) -> int:
        """Groups waiting for the next batch."""
        return self._queue.qsize()

    async def submit(self, group: Group) -> AppendResult:
        """Append a group; return once it is durable, integrated and signed over."""
        if not group.submissions:
            raise ValueError("a group needs at least one statement")
        if self._task is None:
            raise UnavailableError("SEQUENCER_STOPPED", "the server is shutting down")
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        submitted = time.perf_counter()
        try:
            self._queue.put_nowait(_Pending(group, future))
        except asyncio.QueueFull:
            raise UnavailableError("SEQUENCER_BUSY", "too many appends queued; retry") from None
        result = await future
        if self._metrics is not None:
            self._metrics.append_acknowledged(time.perf_counter() - submitted)
        return result

    async def submit_one(
        self,
        submission: Submission,
        respond: Callable[[ledger_pb2.Receipt], bytes],
        idempotency: IdempotencyKey | None = None,
    ) -> AppendResult:
        """Append one statement (its follow-ups, if any, come after it)."""
        return await self.submit(
            Group((submission,), lambda receipts: respond(receipts[0]), idempotency)
        )

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._run_batch(batch)
            except Exception as exc:  # never let the loop die: fail the batch instead
                if is_unavailable(exc):
                    # Expected while the database is down or restarting: one line per batch,
                    # not a traceback; callers are told to retry.
                    log.warning("sequencer batch failed, database unavailable: %s", _brief(exc))
                else:
                    log.exception("sequencer batch failed")
                self._fail_all(batch, exc)
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _fail_all(self, batch: Sequence[_Pending], exc: BaseException) -> None:
        self._frontier = None
        error: BaseException = exc
        if is_unavailable(exc):
            error = UnavailableError("DATABASE_UNAVAILABLE", "the database is unavailable; retry")
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(error)

    async def _run_batch(self, batch: list[_Pending]) -> None:
        async with self._db.writer.connect() as conn:
            if conn.dialect.name == "sqlite":
                # BEGIN IMMEDIATE goes with the batch's first reads (see _open).
                await conn.execution_options(**{CALLER_BEGINS: True})
            try:
                outcome = await self._sequence(conn, batch)
            except BaseException:
                self._frontier = None
                raise
        for pending, exc in outcome.failures:
            pending.future.set_exception(exc)
        for pending, key in outcome.replays:
            pending.future.set_result(await self._replay(key))
        self.batches += 1
        self.wake_followers()

    def wake_followers(self) -> None:
        """Wake everyone waiting in :meth:`wait_for_commit` (this process committed, or
        another replica announced a commit), and arm a fresh event for the next time."""
        self._committed.set()
        self._committed = asyncio.Event()

    async def wait_for_commit(self, seconds: float) -> None:
        """Return after this process commits its next batch, after another replica's commit
        is announced (:mod:`commit_notices`), or after ``seconds``, whichever comes first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._committed.wait(), seconds)

    async def _replay(self, key: IdempotencyKey) -> AppendResult:
        async with self._db.reader.connect() as conn:
            row = (
                await conn.execute(
                    select(models.IdempotentResponse.response).where(
                        models.IdempotentResponse.caller_key_id == key.caller_key_id,
                        models.IdempotentResponse.request_id == key.request_id,
                    )
                )
            ).one()
        return AppendResult(response=row.response, receipts=Receipts((), ()))

    async def _sequence(self, conn: AsyncConnection, batch: list[_Pending]) -> _Batch:
        outcome = _Batch()
        async with conn.begin():
            head, known = await self._open(conn, batch)
            edge = _Edge(await self._load_frontier(conn, head.size, head.root_hash))
            integrated_time = max(utcnow(), as_utc(head.last_integrated_time))
            time_field = leaf_time_field(integrated_time)
            memo: dict[str, Any] = {}
            seen_keys: set[tuple[str, str]] = set()
            seen_statements: set[bytes] = set()
            position = 0
            while position < len(batch):
                pending = batch[position]
                group = pending.group
                if group.run is not None:
                    run = _run_at(batch, position)
                    position += len(run)
                    await self._apply_run(
                        conn,
                        run,
                        edge,
                        integrated_time,
                        time_field,
                        seen_keys,
                        seen_statements,
                        known,
                        outcome,
                    )
                    continue
                position += 1
                key = group.idempotency
                memo_before = dict(memo)
                try:
                    if key is not None and self._check_request_id(key, known, seen_keys):
                        outcome.replays.append((pending, key))
                        continue
                    apply = self._apply_group(
                        conn,
                        group,
                        edge.size,
                        integrated_time,
                        time_field,
                        memo,
                        seen_statements,
                        known,
                    )
                    if group.effect is not None or any(
                        sub.effect is not None for sub in group.submissions
                    ):
                        # Effects write: a refused group must leave nothing behind.
                        async with conn.begin_nested():
                            leaves = await apply
                    else:
                        leaves = await apply
                except DomainError as exc:
                    memo.clear()
                    memo.update(memo_before)  # forget what the refused group's effects noted
                    outcome.failures.append((pending, exc))
                    continue
                # The group is in: grow the tree.
                for item in leaves:
                    edge.append(item.leaf_hash)
                    seen_statements.add(item.statement_hash)
                if key is not None:
                    seen_keys.add((key.caller_key_id, key.request_id))
                outcome.accepted.append(_Accepted(pending, leaves))
            if not outcome.accepted:
                return outcome
            all_leaves = [leaf for accepted in outcome.accepted for leaf in accepted.leaves]
            frontier = edge.compact()
            checkpoint = Checkpoint(self._signer.name, frontier.size, frontier.root())
            note = sign_checkpoint(checkpoint, self._signer)
            answers = _Answers(edge.nodes, head.size, frontier.size, note)
            # A response stored for its request_id is written with the batch; the others are
            # built once it has committed (below).
            stored = [
                (accepted, answers.result(accepted))
                for accepted in outcome.accepted
                if accepted.pending.group.idempotency is not None
            ]
            # The batch's closing writes need no answer: they go to the database together.
            # The entries themselves are in already (written as their groups were applied).
            writes = bulk.Writes()
            writes.insert(
                models.EntrySubject,
                ("subject", "idx"),
                [(subject, item.idx) for item in all_leaves for subject in item.subject_ids],
            )
            writes.insert(models.MerkleNode, ("level", "idx", "hash"), edge.added)
            writes.insert(
                models.SignedCheckpoint,
                ("tree_size", "root_hash", "note", "issued_at"),
                [(frontier.size, checkpoint.root_hash, note, integrated_time)],
            )
            writes.update(
                models.TreeHead,
                {"id": 1},
                {
                    "size": frontier.size,
                    "root_hash": checkpoint.root_hash,
                    "last_integrated_time": integrated_time,
                },
            )
            writes.insert(
                models.IdempotentResponse,
                _IDEMPOTENT_COLUMNS,
                [
                    (
                        key.caller_key_id,
                        key.request_id,
                        key.method,
                        key.request_digest,
                        result.response,
                        accepted.leaves[0].idx,
                    )
                    for accepted, result in stored
                    if (key := accepted.pending.group.idempotency) is not None
                ],
            )
            await writes.send(conn)
        # Committed: from here on every accepted append is durable and may be acknowledged.
        self._frontier = frontier
        if self._on_commit is not None:
            self._on_commit(
                Commit(head.size, frontier.size, checkpoint.root_hash, note, edge.nodes)
            )
        if self._metrics is not None:
            self._metrics.batch_committed(len(all_leaves), frontier.size)
        for accepted, result in stored:
            accepted.pending.future.set_result(result)
        rest = [item for item in outcome.accepted if item.pending.group.idempotency is None]
        if rest:
            # Receipts and responses (milliseconds for a thousand entries) are built by the
            # event loop once the next batch waits on the database: the next batch starts
            # now rather than after them.
            asyncio.get_running_loop().call_soon(answers.answer, rest)
        return outcome

    async def _apply_run(
        self,
        conn: AsyncConnection,
        run: Sequence[_Pending],
        edge: _Edge,
        integrated_time: datetime,
        time_field: bytes,
        seen_keys: set[tuple[str, str]],
        seen_statements: set[bytes],
        known: _Known,
        outcome: _Batch,
    ) -> None:
        """Decide a run of groups with one call of its runner, write its entries in one
        statement, then the runner's rows. The run holds no two groups with the same
        request_id or statement (see :func:`_run_at`), so checking each against what the
        batch accepted before the run is exact."""
        candidates: list[_Pending] = []
        for pending in run:
            group = pending.group
            key = group.idempotency
            try:
                if key is not None and self._check_request_id(key, known, seen_keys):
                    outcome.replays.append((pending, key))
                    continue
                await self._check_new_statement(
                    conn, group.submissions[0].statement_hash, seen_statements, known
                )
            except DomainError as exc:
                outcome.failures.append((pending, exc))
                continue
            candidates.append(pending)
        if not candidates:
            return
        runner = candidates[0].group.run
        assert runner is not None
        plan = await runner.runner(
            RunContext(conn, edge.size, integrated_time),
            [pending.group.run.request for pending in candidates if pending.group.run],
        )
        if len(plan.outcomes) != len(candidates):
            raise RuntimeError("a runner answered for a different number of requests")
        accepted: list[_Accepted] = []
        next_index = edge.size
        for pending, decided in zip(candidates, plan.outcomes, strict=True):
            if isinstance(decided, DomainError):
                outcome.failures.append((pending, decided))
                continue
            leaves: list[_Leaf] = []
            for submission in (pending.group.submissions[0], *decided):
                digest = submission.statement_hash
                if digest in seen_statements:
                    # Follow-ups name their statement (its id), so they are as new as it is.
                    raise RuntimeError("a run's follow-up statement is already in this batch")
                seen_statements.add(digest)
                leaves.append(_Leaf.of(next_index, submission, time_field))
                next_index += 1
            accepted.append(_Accepted(pending, leaves))
        await self._write_entries(
            conn, [leaf for item in accepted for leaf in item.leaves], integrated_time
        )
        await plan.record(conn)
        for item in accepted:
            for written in item.leaves:
                edge.append(written.leaf_hash)
            if (key := item.pending.group.idempotency) is not None:
                seen_keys.add((key.caller_key_id, key.request_id))
            outcome.accepted.append(item)

    async def _apply_group(
        self,
        conn: AsyncConnection,
        group: Group,
        next_index: int,
        integrated_time: datetime,
        time_field: bytes,
        memo: dict[str, Any],
        seen_statements: set[bytes],
        known: _Known,
    ) -> list[_Leaf]:
        """Run the group's effects in order (follow-ups right after their parent), then the
        group's own effect."""
        leaves: list[_Leaf] = []
        unwritten: list[_Leaf] = []
        in_group: set[bytes] = set()
        own_indices: list[int] = []
        todo = [(submission, True) for submission in group.submissions]
        while todo:
            submission, own = todo.pop(0)
            digest = submission.statement_hash
            if digest in in_group:
                raise AlreadyExistsError(
                    "DUPLICATE_STATEMENT", "the same statement appears twice in one request"
                )
            await self._check_new_statement(conn, digest, seen_statements, known)
            in_group.add(digest)
            index = next_index + len(leaves)
            leaves.append(_Leaf.of(index, submission, time_field))
            unwritten.append(leaves[-1])
            if own:
                own_indices.append(index)
            if submission.effect is not None:
                await self._write_entries(conn, unwritten, integrated_time)
                context = EffectContext(conn, index, integrated_time, memo)
                follow_ups = await submission.effect(context)
                if follow_ups:
                    todo[0:0] = [(follow_up, False) for follow_up in follow_ups]
        await self._write_entries(conn, unwritten, integrated_time)
        if group.effect is not None:
            await group.effect(GroupContext(conn, tuple(own_indices), integrated_time, memo))
        return leaves

    async def _write_entries(
        self, conn: AsyncConnection, leaves: list[_Leaf], integrated_time: datetime
    ) -> None:
        """Insert the entry rows of ``leaves`` (then forget them).

        Entries go in before the rows their effects write: the effects' rows point at them
        (deferred foreign keys), and SQLite checks each entry inserted while such pointers
        are outstanding against every referring table, a scan per entry without an index.
        """
        if not leaves:
            return
        await bulk.insert_rows(
            conn,
            models.LogEntry,
            _ENTRY_COLUMNS,
            [
                (
                    item.idx,
                    item.leaf_hash,
                    item.leaf,
                    item.statement_hash,
                    item.kind,
                    item.signer_key_id,
                    integrated_time,
                )
                for item in leaves
            ],
        )
        leaves.clear()

    async def _load_frontier(
        self, conn: AsyncConnection, size: int, root_hash: bytes
    ) -> CompactRange:
        cached = self._frontier
        if cached is not None and cached.size == size and cached.root() == root_hash:
            return cached.copy()
        # Another replica moved the head (or we just started): read its right edge.
        ids = CompactRange.frontier_ids(size)
        hashes = await read_nodes(conn, ids)
        frontier = CompactRange(size, [hashes[node] for node in ids])
        if frontier.root() != root_hash:
            raise RuntimeError("stored tree nodes do not match the tree head")
        return frontier

    async def _open(self, conn: AsyncConnection, batch: Sequence[_Pending]) -> tuple[_Head, _Known]:
        """Lock and read the tree head, and find which of the batch's request_ids were
        answered and which of its statements are logged already: per 500 request_ids one
        query, and the statements in as few as bind (per 500 on PostgreSQL).

        On SQLite the transaction's BEGIN IMMEDIATE and all of these go to the database in
        one round trip; on PostgreSQL they go one after another on asyncpg's connection
        (see ``round_trip``)."""
        keys = sorted(
            {
                (key.caller_key_id, key.request_id)
                for pending in batch
                if (key := pending.group.idempotency) is not None
            }
        )
        checked = {sub.statement_hash for pending in batch for sub in pending.group.submissions}
        hashes = sorted(checked)
        dialect = conn.dialect
        begins = caller_begins(conn)
        if dialect.name == "sqlite" and not begins:
            # SQLAlchemy sends BEGIN IMMEDIATE with its first statement: go through it.
            row = (
                await conn.execute(
                    select(*_HEAD_COLUMNS).where(models.TreeHead.id == 1).with_for_update()
                )
            ).one()
            answered: dict[tuple[str, str], bytes] = {}
            for start in range(0, len(keys), 500):
                sql, params = _answered_query(dialect, keys[start : start + 500])
                rows: Sequence[tuple[Any, ...]] = (await conn.exec_driver_sql(sql, params)).all()
                answered.update({(r[0], r[1]): r[2] for r in rows})
            logged = await bulk.present(conn, models.LogEntry, "statement_hash", hashes)
            head = _Head(row.size, row.root_hash, row.last_integrated_time)
            return head, _Known(answered, checked, logged)
        head_sql, time_of = _head_query(dialect)
        answered_queries = [
            _answered_query(dialect, keys[start : start + 500])
            for start in range(0, len(keys), 500)
        ]
        presence = bulk.presence_queries(dialect, models.LogEntry, "statement_hash", hashes)
        begin: list[round_trip.Statement] = [("BEGIN IMMEDIATE", ())] if begins else []
        statements = [*begin, (head_sql, ()), *answered_queries, *presence]
        found = (await round_trip.run(conn, statements))[len(begin) :]
        size, root_hash, last_time = found[0][0]
        answered = {
            (r[0], r[1]): r[2] for rows in found[1 : 1 + len(answered_queries)] for r in rows
        }
        logged = {r[0] for rows in found[1 + len(answered_queries) :] for r in rows}
        return _Head(size, root_hash, time_of(last_time)), _Known(answered, checked, logged)

    def _check_request_id(
        self, key: IdempotencyKey, known: _Known, seen: set[tuple[str, str]]
    ) -> bool:
        """True when this request_id was already answered (the caller gets that answer)."""
        if (key.caller_key_id, key.request_id) in seen:
            # A concurrent duplicate in this very batch: answer it after the commit.
            return True
        digest = known.answered.get((key.caller_key_id, key.request_id))
        if digest is None:
            return False
        if digest != key.request_digest:
            raise AlreadyExistsError(
                "REQUEST_ID_REUSED",
                "this request_id was already used for a different request",
                {"request_id": key.request_id},
            )
        return True

    async def _check_new_statement(
        self, conn: AsyncConnection, digest: bytes, seen: set[bytes], known: _Known
    ) -> None:
        if digest in known.checked:
            exists = digest in seen or digest in known.logged
        else:  # a follow-up statement, made during this batch: ask the database
            exists = (
                digest in seen
                or (
                    await conn.execute(
                        select(models.LogEntry.idx).where(models.LogEntry.statement_hash == digest)
                    )
                ).first()
                is not None
            )
        if exists:
            raise AlreadyExistsError(
                "DUPLICATE_STATEMENT", "this exact signed statement is already in the ledger"
            )


class _Answers:
    """A committed batch's receipts and responses: its tree's nodes, the index of its first
    entry, its size and checkpoint."""

    def __init__(
        self, nodes: dict[tuple[int, int], bytes], first: int, size: int, note: str
    ) -> None:
        self._nodes = nodes
        self._first = first
        self._size = size
        self._fields = _ReceiptFields(note, size)
        self._proofs: list[list[bytes]] | None = None

    def result(self, accepted: _Accepted) -> AppendResult:
        """The group's receipts, and its response built from them."""
        if self._proofs is None:
            # The batch's entries are [first, size): their proofs share their upper nodes,
            # so they are found in one walk.
            self._proofs = inclusion_proofs(
                self._first, self._size, self._size, _lookup(self._nodes), {}
            )
        proofs, first, fields = self._proofs, self._first, self._fields
        leaves = accepted.leaves
        receipts = Receipts(
            tuple(item.idx for item in leaves),
            tuple(fields.receipt(item, proofs[item.idx - first]) for item in leaves),
        )
        return AppendResult(response=accepted.pending.group.respond(receipts), receipts=receipts)

    def answer(self, accepted: Sequence[_Accepted]) -> None:
        """Answer each group (their entries are durable): with its result, or with why its
        response could not be built."""
        for item in accepted:
            future = item.pending.future
            try:
                result = self.result(item)
            except Exception as exc:
                log.exception("building the response of a committed append failed")
                if not future.done():
                    future.set_exception(exc)
                continue
            if not future.done():
                future.set_result(result)


class _ReceiptFields:
    """What every receipt of a batch holds alike, encoded once; and a receipt's encoding:
    its ledger_pb2.Receipt fields in field order (a test compares it with protobuf's)."""

    __slots__ = ("after_proof", "checkpoint")

    _INDEX, _LEAF_HASH, _PROOF_NODE, _LEAF = b"\x08", b"\x12\x20", b"\x22\x20", 6

    def __init__(self, note: str, tree_size: int) -> None:
        self.checkpoint = length_delimited(3, note.encode())
        self.after_proof = b"\x28" + varint(tree_size)  # tree_size (field 5), never 0 here

    def receipt(self, leaf: _Leaf, proof: list[bytes]) -> bytes:
        """The receipt of ``leaf`` (its hash and the proof's are SHA-256 digests, 32 bytes)."""
        proof_field = self._PROOF_NODE + self._PROOF_NODE.join(proof) if proof else b""
        return (
            (self._INDEX + varint(leaf.idx) if leaf.idx else b"")
            + self._LEAF_HASH
            + leaf.leaf_hash
            + self.checkpoint
            + proof_field
            + self.after_proof
            + length_delimited(self._LEAF, leaf.leaf)
        )


class _Head(NamedTuple):
    size: int
    root_hash: bytes
    last_integrated_time: datetime


_HEAD_COLUMNS = (
    models.TreeHead.size,
    models.TreeHead.root_hash,
    models.TreeHead.last_integrated_time,
)


@lru_cache(maxsize=4)
def _head_query(dialect: Dialect) -> tuple[str, Callable[[Any], datetime]]:
    """The tree head's query for ``dialect`` (no parameters), locking it where the database
    locks rows (``FOR UPDATE``; SQLite's BEGIN IMMEDIATE locks the whole database), and how
    its time column comes back from the driver as a datetime."""
    statement = select(*_HEAD_COLUMNS).where(models.TreeHead.id == 1).with_for_update()
    sql = str(statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    column_type = models.TreeHead.__table__.c.last_integrated_time.type
    processor = column_type.dialect_impl(dialect).result_processor(dialect, None)
    return sql, cast(Callable[[Any], datetime], processor or (lambda value: value))


def _answered_query(dialect: Dialect, keys: Sequence[tuple[str, str]]) -> round_trip.Statement:
    """Which of ``keys`` (caller, request_id) have a stored response, and its request's
    digest."""
    table = models.IdempotentResponse.__table__
    preparer = dialect.identifier_preparer
    caller, request, digest = (
        preparer.quote(table.c[name].name)
        for name in ("caller_key_id", "request_id", "request_digest")
    )
    if dialect.paramstyle == "qmark":
        pairs = ", ".join(["(?, ?)"] * len(keys))
    else:
        pairs = ", ".join(f"(${2 * n + 1}, ${2 * n + 2})" for n in range(len(keys)))
    # Identifiers from the table's metadata, quoted by the dialect; the values are bound.
    sql = (
        f"SELECT {caller}, {request}, {digest} FROM {preparer.format_table(table)} "  # noqa: S608
        f"WHERE ({caller}, {request}) IN (VALUES {pairs})"
    )
    return sql, tuple(value for key in keys for value in key)


_IDEMPOTENT_COLUMNS = (
    "caller_key_id",
    "request_id",
    "method",
    "request_digest",
    "response",
    "entry_idx",
)
_ENTRY_COLUMNS = (
    "idx",
    "leaf_hash",
    "leaf",
    "statement_hash",
    "kind",
    "signer_key_id",
    "integrated_time",
)


def _run_at(batch: Sequence[_Pending], start: int) -> list[_Pending]:
    """The run starting at ``start``: the following groups with the same runner, up to (not
    including) one whose request_id or statement another group of the run has already."""
    first = batch[start].group.run
    assert first is not None
    keys: set[tuple[str, str]] = set()
    digests: set[bytes] = set()
    run: list[_Pending] = []
    for pending in batch[start:]:
        group = pending.group
        if group.run is None or group.run.runner is not first.runner:
            break
        key = group.idempotency
        pair = (key.caller_key_id, key.request_id) if key is not None else None
        digest = group.submissions[0].statement_hash
        if (pair is not None and pair in keys) or digest in digests:
            break
        if pair is not None:
            keys.add(pair)
        digests.add(digest)
        run.append(pending)
    return run


def _lookup(nodes: dict[tuple[int, int], bytes]) -> Callable[[int, int], bytes]:
    def node(level: int, index: int) -> bytes:
        return nodes[(level, index)]

    return node


def _brief(exc: BaseException) -> str:
    """The exception's type and first line (no SQL, and never row values: hide_parameters)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first[:200]}"


async def read_nodes(conn: AsyncConnection, ids: Sequence[NodeId]) -> dict[NodeId, bytes]:
    """Read the hashes of the given perfect subtrees (one query)."""
    if not ids:
        return {}
    rows = await conn.execute(
        select(models.MerkleNode.level, models.MerkleNode.idx, models.MerkleNode.hash).where(
            tuple_(models.MerkleNode.level, models.MerkleNode.idx).in_(
                [(node.level, node.index) for node in ids]
            )
        )
    )
    found = {NodeId(row.level, row.idx): row.hash for row in rows}
    missing = [node for node in ids if node not in found]
    if missing:
        raise RuntimeError(f"tree nodes missing from the store: {missing[:3]}")
    return found
