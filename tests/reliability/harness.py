"""Load, fault and audit tools for the reliability tests (issue #7).

- :class:`Member` is a contributor that appends over raw gRPC: its registration, then one item
  per request, every request with its own ``request_id``, kept byte for byte so that it can be
  sent again (a retry) and its answer compared with the first one.
- :class:`Load` drives members against a server until told to stop, recording what was
  acknowledged and what failed (with the status code and ErrorInfo reason).
- :class:`Auditor` remembers everything clients were told (acknowledgements and every signed
  checkpoint) and checks it against the tree a server serves afterwards: each acknowledged
  statement present exactly once at its receipt's index, no other entry, and every checkpoint
  a prefix of the tree (local root recomputation, and the server's consistency proofs).
- :class:`PrivatePostgres` is a PostgreSQL instance of the test's own (initdb in a temporary
  directory, loopback only), which a test may stop and start without disturbing the shared
  server that other tests use.
- :func:`report` prints a line of figures and repeats it in pytest's terminal summary.

Everything targets 127.0.0.1 only, and every loop is bounded in count or time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import itertools
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from coalition import dsse, merkle
from coalition.auth import CallSigner
from coalition.checkpoint import Checkpoint, verify_checkpoint
from coalition.client import Client, _server_error
from coalition.keys import SigningKey
from coalition.note import NoteVerifier
from coalition.receipts import verify_receipt
from coalition.statements import sign_statement
from coalition.v1 import items_pb2, ledger_pb2, party_pb2

REGISTER_PARTY = "/coalition.v1.PartyService/RegisterParty"
REGISTER_ITEMS = "/coalition.v1.ItemService/RegisterItems"
CALL_TIMEOUT = 15.0
"""Seconds any one call may take: a load or fault test must stop by itself."""
REQUIRE_PG = os.environ.get("COALITION_REQUIRE_PG") == "1"


# --- figures ---------------------------------------------------------------------------


class Figures:
    """A pytest plugin (registered on first use) that repeats the figures in the summary."""

    NAME = "coalition-reliability-figures"

    def __init__(self) -> None:
        self.lines: list[str] = []

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        """Write every figures line under its own heading at the end of the run."""
        if self.lines:
            terminalreporter.section("measured figures")
            for line in self.lines:
                terminalreporter.write_line(line)


def report(config: pytest.Config, line: str) -> None:
    """Print ``line`` (shown with -s or on failure) and repeat it in the terminal summary."""
    print(line)
    plugin = config.pluginmanager.get_plugin(Figures.NAME)
    if not isinstance(plugin, Figures):
        plugin = Figures()
        config.pluginmanager.register(plugin, Figures.NAME)
    plugin.lines.append(line)


# --- members and their requests ---------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One mutation exactly as sent on the wire, so it can be sent again byte for byte."""

    method: str
    request_id: str
    raw: bytes
    statement_hashes: tuple[bytes, ...]


@dataclass(frozen=True)
class Ack:
    """An acknowledged request: the answer's bytes and its receipts (one per statement)."""

    request: Request
    response: bytes
    receipts: tuple[ledger_pb2.Receipt, ...]
    attempts: int
    """How many times the request was sent: more than once when earlier attempts failed."""


def statement_hash(envelope: dsse.Envelope) -> bytes:
    """SHA-256 of a statement's signed bytes: the server's notion of "the same statement"."""
    return hashlib.sha256(dsse.pae(envelope.payload_type, envelope.payload)).digest()


def receipts_of(method: str, response: bytes) -> tuple[ledger_pb2.Receipt, ...]:
    """The receipts in the serialised answer to a :class:`Member`'s request."""
    if method == REGISTER_PARTY:
        return (party_pb2.RegisterPartyResponse.FromString(response).receipt,)
    if method == REGISTER_ITEMS:
        return tuple(items_pb2.RegisterItemsResponse.FromString(response).receipts)
    raise ValueError(f"no receipts known for {method}")


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


class Member:
    """A contributor: registers first, then registers one fresh item per request.

    A request whose outcome is unknown (the call failed: the server died, the database was
    down) stays :attr:`outstanding` and is sent again, the same bytes with the same
    request_id, until it is answered: that is what a careful client does.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.key = SigningKey.generate()
        self._signer = CallSigner(self.key)
        self._sent = 0
        self.registered = False
        self.outstanding: Request | None = None
        self._attempts = 0
        self.acks: list[Ack] = []

    def next_request(self) -> Request:
        """The request in doubt if there is one, else a new one."""
        if self.outstanding is None:
            self.outstanding = self._item() if self.registered else self._registration()
            self._attempts = 0
        self._attempts += 1
        return self.outstanding

    def _request_id(self) -> str:
        self._sent += 1
        return f"{self.name}-{self._sent}"

    def _registration(self) -> Request:
        statement = party_pb2.PartyRegistration(
            role=party_pb2.ROLE_CONTRIBUTOR,
            name=self.name,
            signing_key=self.key.public_key.raw,
            encryption_key=self.key.encryption_public_key_raw(),
            created_time=_now(),
            nonce=os.urandom(16),
        )
        envelope = sign_statement(statement, self.key)
        request_id = self._request_id()
        raw = party_pb2.RegisterPartyRequest(
            registration=envelope.to_proto(), request_id=request_id
        ).SerializeToString()
        return Request(REGISTER_PARTY, request_id, raw, (statement_hash(envelope),))

    def _item(self) -> Request:
        statement = items_pb2.ItemRegistration(
            commitment=hashlib.sha256(os.urandom(32)).digest(),
            size_bytes=1024,
            media_type="text/plain",
            created_time=_now(),
            nonce=os.urandom(16),
        )
        envelope = sign_statement(statement, self.key)
        request_id = self._request_id()
        raw = items_pb2.RegisterItemsRequest(
            registrations=[envelope.to_proto()], request_id=request_id
        ).SerializeToString()
        return Request(REGISTER_ITEMS, request_id, raw, (statement_hash(envelope),))

    async def send(self, channel: grpc.aio.Channel, request: Request) -> bytes:
        """Send ``request`` (freshly call-signed) and return the answer's bytes."""
        stub: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(request.method)
        metadata = self._signer.metadata(request.method, request.raw)
        response: bytes = await stub(request.raw, metadata=metadata, timeout=CALL_TIMEOUT)
        return response

    def answered(self, request: Request, response: bytes) -> Ack:
        """Record the answer to the outstanding ``request``."""
        assert request is self.outstanding, "only the outstanding request can be answered"
        ack = Ack(request, response, receipts_of(request.method, response), self._attempts)
        self.outstanding = None
        if request.method == REGISTER_PARTY:
            self.registered = True
        self.acks.append(ack)
        return ack


# --- load -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """A call that failed: when (monotonic seconds), and with which status and reason."""

    sent: float
    failed: float
    code: grpc.StatusCode
    reason: str
    message: str


@dataclass
class Load:
    """Drives members against a server; every acknowledgement goes to the auditor."""

    auditor: Auditor
    failures: list[Failure] = field(default_factory=list)
    answered: list[tuple[float, float]] = field(default_factory=list)
    """(sent, answered) monotonic times of each acknowledged call."""

    async def drive(
        self,
        member: Member,
        channel: grpc.aio.Channel,
        stop: asyncio.Event,
        *,
        appends: int | None = None,
        retry_unavailable: bool = False,
        backoff: float = 0.05,
    ) -> None:
        """Append until ``stop`` is set (or ``appends`` were acknowledged).

        A failure once ``stop`` is set ends the member's run (the request stays in doubt);
        before that, UNAVAILABLE is retried with the same request when ``retry_unavailable``,
        and anything else fails the test.
        """
        while not stop.is_set() and (appends is None or len(member.acks) < appends):
            request = member.next_request()
            sent = time.monotonic()
            try:
                response = await member.send(channel, request)
            except grpc.aio.AioRpcError as exc:
                error = _server_error(exc)
                self.failures.append(
                    Failure(sent, time.monotonic(), error.code, error.reason, error.message)
                )
                if stop.is_set():
                    return
                if retry_unavailable and error.code == grpc.StatusCode.UNAVAILABLE:
                    await asyncio.sleep(backoff)
                    continue
                raise AssertionError(f"{member.name} {request.request_id}: {error}") from None
            self.answered.append((sent, time.monotonic()))
            self.auditor.acknowledged(member.answered(request, response))


async def settle(
    members: Iterable[Member], channel: grpc.aio.Channel, auditor: Auditor
) -> list[Ack]:
    """Send every request in doubt again (same bytes, same request_id) until answered.

    Returns their acknowledgements. A request that was committed before its answer was lost
    gets its original answer; one that never reached the database is appended now. Either
    way the audit then checks its statement is in the tree exactly once.
    """
    settled = []
    for member in members:
        if member.outstanding is None:
            continue
        request = member.next_request()
        response = await _send_retrying(member, channel, request)
        ack = member.answered(request, response)
        auditor.acknowledged(ack)
        settled.append(ack)
    return settled


async def replay_last_acks(members: Iterable[Member], channel: grpc.aio.Channel) -> int:
    """Send each member's last acknowledged request again; the answer must be the same bytes.

    Returns how many retries were answered identically.
    """
    replayed = 0
    for member in members:
        if not member.acks:
            continue
        ack = member.acks[-1]
        response = await _send_retrying(member, channel, ack.request)
        assert response == ack.response, (
            f"{ack.request.request_id}: a retry got a different answer than the original"
        )
        replayed += 1
    return replayed


async def _send_retrying(member: Member, channel: grpc.aio.Channel, request: Request) -> bytes:
    """Send, retrying UNAVAILABLE for a bounded time (a server or database just restarted)."""
    deadline = time.monotonic() + 30.0
    while True:
        try:
            return await member.send(channel, request)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise AssertionError(f"{request.request_id}: {_server_error(exc)}") from None
            await asyncio.sleep(0.1)


# --- the audit ------------------------------------------------------------------------


@dataclass(frozen=True)
class Tree:
    """The whole ledger as one server served it, checked against its signed checkpoint."""

    checkpoint: Checkpoint
    note: str
    leaves: tuple[bytes, ...]
    leaf_hashes: tuple[bytes, ...]
    statement_hashes: tuple[bytes, ...]

    @property
    def size(self) -> int:
        """The tree size."""
        return self.checkpoint.size


async def log_verifier(target: str) -> NoteVerifier:
    """The log's note verifier, as an auditor fetches it."""
    async with Client(target) as client:
        return NoteVerifier.parse((await client.log_info()).verifier_key)


async def read_tree(target: str, verifier: NoteVerifier) -> Tree:
    """Read the latest checkpoint and every entry up to it; check the leaves make its root."""
    async with Client(target, timeout=CALL_TIMEOUT) as client:
        head = await client.checkpoint()
        checkpoint = verify_checkpoint(head.checkpoint, verifier)
        entries = [e async for e in client.entries(0, checkpoint.size)]
    assert [e.index for e in entries] == list(range(checkpoint.size)), "entries out of order"
    tree = merkle.CompactRange.empty()
    statements = []
    for entry in entries:
        assert merkle.leaf_hash(entry.leaf) == entry.leaf_hash, f"entry {entry.index} hash"
        tree.append(entry.leaf_hash)
        leaf = ledger_pb2.LedgerLeaf.FromString(entry.leaf)
        statements.append(statement_hash(dsse.Envelope.from_proto(leaf.envelope)))
    assert tree.root() == checkpoint.root_hash, "the entries do not make the checkpoint's root"
    return Tree(
        checkpoint,
        head.checkpoint,
        tuple(e.leaf for e in entries),
        tuple(e.leaf_hash for e in entries),
        tuple(statements),
    )


def prefix_roots(leaf_hashes: Sequence[bytes], sizes: Iterable[int]) -> dict[int, bytes]:
    """The root of the first ``n`` leaves, for each wanted ``n`` (one pass)."""
    wanted = set(sizes)
    roots: dict[int, bytes] = {}
    tree = merkle.CompactRange.empty()
    for leaf_hash in leaf_hashes:
        if not wanted - roots.keys():
            break
        tree.append(leaf_hash)
        if tree.size in wanted:
            roots[tree.size] = tree.root()
    return roots


@dataclass(frozen=True)
class AuditResult:
    """What one audit established."""

    tree_size: int
    acknowledged: int
    """Acknowledged statements found exactly once, at their receipt's index."""
    checkpoints: int
    """Distinct checkpoints ever issued, each the root of a prefix of this tree."""
    proofs: int
    """Consistency proofs fetched and verified in this audit."""


class Auditor:
    """Everything clients were told, checked against the tree served later.

    Checkpoints are kept by size: two different roots for one size (a fork) fail at once.
    Each audit proves, with the server's consistency proofs, every checkpoint issued since
    the previous audit and the previous audit's tree head against the new head. Consistency
    is transitive, so after the last audit every checkpoint ever issued is proven consistent
    with the final tree; and each audit also recomputes, from the leaves, the root of every
    checkpoint ever issued (the same fact, without trusting any proof code).
    """

    def __init__(self, verifier: NoteVerifier) -> None:
        self.verifier = verifier
        self.acks: list[Ack] = []
        self.checkpoints: dict[int, bytes] = {}
        self._unproven: set[int] = set()
        self.proofs = 0

    @property
    def statements(self) -> int:
        """Statements acknowledged so far."""
        return sum(len(ack.receipts) for ack in self.acks)

    def saw_checkpoint(self, note: str) -> Checkpoint:
        """Record a checkpoint a client was given (its signature is checked)."""
        checkpoint = verify_checkpoint(note, self.verifier)
        known = self.checkpoints.setdefault(checkpoint.size, checkpoint.root_hash)
        assert known == checkpoint.root_hash, f"two different trees of size {checkpoint.size}"
        self._unproven.add(checkpoint.size)
        return checkpoint

    def acknowledged(self, ack: Ack) -> None:
        """Record an acknowledgement; its receipts must verify (signature and inclusion)."""
        assert len(ack.receipts) == len(ack.request.statement_hashes), "one receipt a statement"
        for receipt in ack.receipts:
            verify_receipt(receipt, self.verifier)
            self.saw_checkpoint(receipt.checkpoint)
        self.acks.append(ack)

    async def audit(self, tree: Tree, targets: Sequence[str], *, others: int = 1) -> AuditResult:
        """Check the tree against every acknowledgement and checkpoint so far.

        ``others``: entries not made by the members (the coalition's own registration);
        the tree must hold exactly those plus the acknowledged statements. Consistency
        proofs are asked of ``targets`` in turn (replicas must all answer for one tree).
        """
        counts = collections.Counter(tree.statement_hashes)
        duplicated = [digest.hex()[:16] for digest, n in counts.items() if n > 1]
        assert not duplicated, f"statements in the tree more than once: {duplicated[:5]}"
        where = {digest: index for index, digest in enumerate(tree.statement_hashes)}
        for ack in self.acks:
            for digest, receipt in zip(ack.request.statement_hashes, ack.receipts, strict=True):
                index = where.get(digest)
                assert index is not None, f"{ack.request.request_id}: acknowledged, then lost"
                assert index == receipt.index, f"{ack.request.request_id}: moved in the tree"
                assert tree.leaf_hashes[index] == receipt.leaf_hash
                assert tree.leaves[index] == receipt.leaf
        assert tree.size == others + self.statements, (
            f"tree has {tree.size} entries, expected {others} + {self.statements} acknowledged"
        )
        self.saw_checkpoint(tree.note)
        too_big = [size for size in self.checkpoints if size > tree.size]
        assert not too_big, f"checkpoints of sizes {too_big[:5]} beyond the tree ({tree.size})"
        roots = prefix_roots(tree.leaf_hashes, self.checkpoints)
        for size, root in self.checkpoints.items():
            assert roots[size] == root, f"checkpoint of size {size} is not a prefix of the tree"
        proofs = await self._prove(tree, targets)
        return AuditResult(tree.size, self.statements, len(self.checkpoints), proofs)

    async def prove_chain(self, targets: Sequence[str]) -> int:
        """Prove each checkpoint consistent with the next larger one, asking ``targets`` in
        turn; returns how many proofs were verified.

        With the per-size uniqueness of :meth:`saw_checkpoint`, this makes every checkpoint
        consistent with every other (consistency is transitive), whoever issued them.
        """
        pairs = list(itertools.pairwise(sorted(self.checkpoints)))
        await self._verify_consistency(pairs, targets)
        return len(pairs)

    async def _prove(self, tree: Tree, targets: Sequence[str]) -> int:
        sizes = sorted(self._unproven - {tree.size})
        await self._verify_consistency([(size, tree.size) for size in sizes], targets)
        self._unproven = {tree.size}
        return len(sizes)

    async def _verify_consistency(
        self, pairs: Sequence[tuple[int, int]], targets: Sequence[str]
    ) -> None:
        """Fetch and verify a consistency proof for each (old, new) pair of checkpoint sizes,
        asking ``targets`` in turn, a few at a time (bounded load on the servers)."""
        clients = [Client(target, timeout=CALL_TIMEOUT) for target in targets]
        try:

            async def prove(position: int, old: int, new: int) -> None:
                client = clients[position % len(clients)]
                response = await client.consistency_proof(old, new)
                merkle.verify_consistency(
                    old, new, self.checkpoints[old], self.checkpoints[new], list(response.proof)
                )

            for start in range(0, len(pairs), 16):
                chunk = pairs[start : start + 16]
                await asyncio.gather(
                    *(prove(start + i, old, new) for i, (old, new) in enumerate(chunk))
                )
        finally:
            for client in clients:
                await client.close()
        self.proofs += len(pairs)


# --- a PostgreSQL instance of our own ---------------------------------------------------


class PostgresUnavailable(Exception):
    """No way to run a private PostgreSQL here (the reason says why)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _postgres_bindir() -> Path:
    """Where initdb, pg_ctl and postgres are: PATH first, then Debian's layout."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1].parent
    raise PostgresUnavailable("initdb not found (install PostgreSQL's server binaries)")


@dataclass
class PrivatePostgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (trust auth, user postgres).

    initdb refuses to run as root: as root, the cluster belongs to the ``postgres`` user and
    every command runs through ``runuser`` (or ``su``), in a directory under /tmp that user
    can reach.
    """

    bindir: Path
    root: Path
    port: int
    as_user: tuple[str, ...]

    @property
    def data(self) -> Path:
        """The cluster's data directory."""
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        """The server's log."""
        return self.root / "postgres.log"

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the cluster's ``postgres`` database."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    @classmethod
    def create(cls) -> PrivatePostgres:
        """initdb a new cluster (not started) in a new directory under the temporary one."""
        bindir = _postgres_bindir()
        as_user: tuple[str, ...] = ()
        # A short path: the server's Unix socket lives in it (at most 107 bytes in all).
        parent: str | None = None
        owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable("running as root and there is no postgres user") from None
            # /tmp is reachable by everyone; pytest's own temporary tree is not (mode 0700).
            parent = "/tmp"
            as_user = (
                ("runuser", "-u", "postgres", "--")
                if shutil.which("runuser")
                else ("su", "-s", "/bin/sh", "postgres", "-c")
            )
        root = Path(tempfile.mkdtemp(prefix="coalition-pg-", dir=parent))
        (root / "socket").mkdir()
        if owner is not None:
            for path in (root, root / "socket"):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        instance = cls(bindir, root, free_port(), as_user)
        try:
            instance._run(
                "initdb", "-D", str(instance.data), "-U", "postgres", "-A", "trust", "--no-sync"
            )
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        return instance

    def _run(self, tool: str, *args: str, timeout: float = 60.0) -> None:
        command = [str(self.bindir / tool), *args]
        if self.as_user and self.as_user[0] == "su":
            full = [*self.as_user, shlex.join(command)]
        else:
            full = [*self.as_user, *command]
        result = subprocess.run(
            full, cwd=self.root, capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise PostgresUnavailable(
                f"{tool} failed ({result.returncode}): {result.stderr.strip()[-2000:]}"
            )

    def start(self) -> None:
        """Start the cluster on its port (loopback only) and wait until it accepts calls."""
        options = f"-p {self.port} -k {self.root / 'socket'} -c listen_addresses=127.0.0.1"
        self._run(
            "pg_ctl", "start", "-D", str(self.data), "-l", str(self.log_file), "-w",
            "-t", "60", "-o", options,
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """Stop the cluster: ``fast`` (disconnect everyone, clean) or ``immediate`` (a crash)."""
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w", "-t", "60")

    def destroy(self) -> None:
        """Stop the cluster if it runs, and delete it."""
        with contextlib.suppress(PostgresUnavailable, subprocess.TimeoutExpired):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's log (for failure messages)."""
        try:
            return "".join(self.log_file.read_text().splitlines(keepends=True)[-lines:])
        except OSError:
            return ""


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A started :class:`PrivatePostgres`, destroyed afterwards.

    Where none can be run it skips, with the reason, unless COALITION_REQUIRE_PG=1 (CI),
    where it fails.
    """
    try:
        instance = PrivatePostgres.create()
    except PostgresUnavailable as exc:
        if REQUIRE_PG:
            pytest.fail(f"cannot run a private PostgreSQL: {exc} (COALITION_REQUIRE_PG=1)")
        pytest.skip(f"cannot run a private PostgreSQL: {exc}")
    try:
        instance.start()
        yield instance
    finally:
        instance.destroy()


__all__ = [
    "Ack",
    "AuditResult",
    "Auditor",
    "Failure",
    "Load",
    "Member",
    "PrivatePostgres",
    "Request",
    "Tree",
    "log_verifier",
    "private_postgres",
    "read_tree",
    "replay_last_acks",
    "report",
    "settle",
]
