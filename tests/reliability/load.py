"""Shared helpers of the load tests (soak, secrets): a real ``coalition-server`` process on
loopback, a coalition played through the public SDK only, and the bookkeeping of a run.

The workload is the demo's (:mod:`coalition.demo.scenario`) cut into small steps that can run
concurrently and repeatedly: members join, register and upload items and consent; labs read
the catalogue's what-if, negotiate automatically to an agreement, lease and fetch (every item
decrypted and checked against its commitment); members withdraw and labs answer the notices
with deletion receipts; an auditor follows the log (signed checkpoints, consistency and
inclusion proofs, and an incremental :class:`~coalition.audit.LedgerReplay` of every entry).

Every call's outcome is counted by kind in a :class:`Tally`. A refusal is *expected* only if
its (kind, reason) is on :data:`EXPECTED_REFUSALS`, each with the reason it can happen in a
correct run; anything else is recorded as unexpected, and the tests fail on any.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import re
import subprocess
import sys
import time
import traceback
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TypeVar

from coalition import hpke
from coalition.audit import ExpectedKey, LedgerReplay, ReplayResult
from coalition.checkpoint import Checkpoint, verify_checkpoint
from coalition.client import (
    Client,
    FetchResult,
    ServerError,
    consent_token,
    lab_strategy,
    price_floor,
)
from coalition.client import purpose as client_purpose
from coalition.demo.scenario import LAB_PLANS, lab_terms
from coalition.errors import CoalitionError
from coalition.keys import SigningKey
from coalition.merkle import leaf_hash, verify_consistency, verify_inclusion
from coalition.note import NoteVerifier
from coalition.v1 import access_pb2, negotiation_pb2, party_pb2

T = TypeVar("T")

SERVER: Final = [sys.executable, "-m", "coalition_server"]
ORIGIN: Final = "coalition.test/log"
USD: Final = 1_000_000
MEDIA_TYPE: Final = "application/octet-stream"
PURPOSES: Final = ("train-genai",)
LAB_PLAN: Final = LAB_PLANS[0]
"""The demo's open-weights lab: its declaration breaks no norm (members here set none)."""

EXPECTED_REFUSALS: Final[Mapping[str, frozenset[str]]] = {
    # Members withdraw while labs bargain: an item the coalition's agreed draft covers may
    # lose its consent before the lab signs, and the signature is then refused (nothing
    # may bind a withdrawn item); a negotiation may open on a pool just emptied.
    "negotiate": frozenset({"ITEM_NOT_CONSENTED", "NO_CONSENTED_ITEMS"}),
    # Renewing a lease on an older agreement whose covered items have all been withdrawn.
    "lease": frozenset({"NO_CONSENTED_ITEMS"}),
    # A release is re-checked against consent under the sequencer's lock; consent that
    # keeps changing during the re-check is a retryable refusal (the lab tries again later).
    # An item withdrawn after its key was released, while it streams, is shredded: the
    # stream ends with ITEM_WITHDRAWN (withdrawal wins over a fetch in flight).
    "fetch": frozenset({"CONSENT_CHANGING", "ITEM_WITHDRAWN"}),
}
"""Refusals a correct run may meet, by operation kind, with why; everything else fails."""


# --- the server process ---------------------------------------------------------------------


_LISTENING: Final = re.compile(r"^coalition-server listening on \S+:(\d+)$", re.MULTILINE)


@dataclass
class ServerProcess:
    """A ``coalition-server`` subprocess; its stdout and stderr go to files."""

    process: subprocess.Popen[bytes]
    target: str
    data_dir: Path
    stdout_path: Path
    stderr_path: Path
    metrics_port: int | None = None

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.process.pid

    def rss_bytes(self) -> int:
        """The server's resident set size now (VmRSS of /proc/PID/status), in bytes."""
        return rss_bytes(self.pid)

    def scrape(self) -> str:
        """The Prometheus text on its metrics endpoint."""
        assert self.metrics_port is not None, "the server was started without metrics"
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            body: bytes = response.read()
        return body.decode()

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (graceful: in-flight calls finish), then SIGKILL; its exit status."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def output(self) -> tuple[bytes, bytes]:
        """Everything it wrote so far: (stdout, stderr)."""
        return self.stdout_path.read_bytes(), self.stderr_path.read_bytes()


def rss_bytes(pid: int) -> int:
    """A process's resident set size from /proc (Linux), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            number, unit = line.split()[1:3]
            assert unit == "kB", line
            return int(number) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def listening_ports(pid: int) -> set[int]:
    """The TCP ports a process listens on (its sockets in /proc/net/tcp*, state LISTEN)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("tcp", "tcp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            listening = fields[3] == "0A"
            if listening and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without the developer's COALITION_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COALITION_")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def start_server(
    directory: Path, *flags: str, metrics: bool = False, timeout: float = 60.0
) -> ServerProcess:
    """Start ``coalition-server`` on 127.0.0.1, port 0, SQLite in ``directory/data``, and wait
    until it reports its port (and, with ``metrics``, its metrics port)."""
    data_dir = directory / "data"
    stdout_path, stderr_path = directory / "server.out", directory / "server.log"
    argv = [
        *SERVER,
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        str(data_dir),
        "--origin",
        ORIGIN,
        *(("--metrics-listen", "127.0.0.1:0") if metrics else ()),
        *flags,
    ]
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        process = subprocess.Popen(argv, stdout=out, stderr=err, env=clean_environment())
    server = ServerProcess(process, "", data_dir, stdout_path, stderr_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stdout, _ = server.output()
        port = _LISTENING.search(stdout.decode(errors="replace"))
        if port:
            grpc_port = int(port.group(1))
            server.target = f"127.0.0.1:{grpc_port}"
            # The metrics port is logged at INFO only: found as the other listening socket.
            others = listening_ports(process.pid) - {grpc_port}
            if not metrics:
                return server
            if len(others) == 1:
                server.metrics_port = others.pop()
                return server
        if process.poll() is not None:
            break
        time.sleep(0.05)
    server.stop()
    stdout, stderr = server.output()
    raise RuntimeError(f"the server did not start:\n{stdout.decode()}\n{stderr.decode()}")


# --- bookkeeping -----------------------------------------------------------------------------


@dataclass
class Tally:
    """Operations done, expected refusals met and unexpected errors, by kind."""

    done: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    errors: list[ServerError] = field(default_factory=list)
    """Every refusal the server sent, expected or not (their text is scanned for secrets)."""

    def ok(self, kind: str, count: int = 1) -> None:
        """``count`` more operations of ``kind`` succeeded."""
        self.done[kind] += count

    async def attempt(self, kind: str, action: Awaitable[T]) -> T | None:
        """Await ``action``; count it, or its refusal; None unless it succeeded."""
        try:
            result = await action
        except ServerError as exc:
            self.errors.append(exc)
            if exc.reason and exc.reason in EXPECTED_REFUSALS.get(kind, ()):
                self.refused[f"{kind}:{exc.reason}"] += 1
            else:
                self.unexpected.append(f"{kind}: {exc}")
            return None
        except (CoalitionError, AssertionError, OSError) as exc:
            # VerificationError (a bad proof, signature or item) is a CoalitionError too.
            self.unexpected.append(f"{kind}: {type(exc).__name__}: {exc}")
            return None
        self.ok(kind)
        return result

    def crash(self, worker: str, exc: BaseException) -> None:
        """A worker died of an exception nobody expected."""
        lines = traceback.format_exception(exc)
        self.unexpected.append(f"worker {worker} crashed: {''.join(lines[-3:]).strip()}")


@dataclass(frozen=True)
class Transport:
    """How clients connect: plaintext, TLS or mutual TLS (PEM bytes)."""

    target: str
    root_certificates: bytes | None = None
    client_cert: bytes | None = None
    client_key: bytes | None = None

    def client(self, key: SigningKey | None = None) -> Client:
        """A client of ``target`` acting as ``key``."""
        return Client(
            self.target,
            key=key,
            root_certificates=self.root_certificates,
            client_cert=self.client_cert,
            client_key=self.client_key,
        )


# --- members ---------------------------------------------------------------------------------


@dataclass
class Member:
    """A contributor: its key and what it brought. Like a person running the CLI now and
    then, it connects for each session (:meth:`connect`) and hangs up after."""

    key: SigningKey
    transport: Transport
    contents: dict[str, bytes] = field(default_factory=dict)
    consent_ids: list[str] = field(default_factory=list)
    withdrawn: bool = False

    def connect(self) -> Client:
        """A new connection acting as this member (use it with ``async with``)."""
        return self.transport.client(self.key)


async def join_member(
    transport: Transport,
    tally: Tally,
    rng: random.Random,
    *,
    items: int = 2,
    sizes: tuple[int, int] = (200, 3000),
    purposes: tuple[str, ...] = PURPOSES,
    name: str = "member",
) -> Member:
    """A new contributor registers, registers and uploads ``items`` items (random bytes,
    each of a size within ``sizes``), and consents to ``purposes`` (generative training)
    above a floor between 0.50 and 2.00 USD (as far as it got)."""
    member = Member(SigningKey.from_seed(rng.randbytes(32)), transport)
    contents = [rng.randbytes(rng.randint(*sizes)) for _ in range(items)]
    async with member.connect() as client:
        await _join(member, client, tally, rng, contents, purposes, name)
    return member


async def _join(
    member: Member,
    client: Client,
    tally: Tally,
    rng: random.Random,
    contents: list[bytes],
    purposes: tuple[str, ...],
    name: str,
) -> None:
    if await tally.attempt("join", client.register(party_pb2.ROLE_CONTRIBUTOR, name)) is None:
        return
    registered = await tally.attempt(
        "register_items",
        client.register_items(
            [(hashlib.sha256(c).digest(), len(c), MEDIA_TYPE, ["soak"]) for c in contents]
        ),
    )
    if registered is None:
        return
    for item, content in zip(registered.items, contents, strict=True):
        if await tally.attempt("upload", client.upload(item.item_id, content)) is not None:
            member.contents[item.item_id] = content
    if not member.contents:
        return
    floor = rng.randint(50, 200) * 10_000
    granted = await tally.attempt(
        "consent",
        client.grant_consent(
            consent_token(
                item_ids=sorted(member.contents),
                purposes=purposes,
                floors=[price_floor("purchase", floor)],
            )
        ),
    )
    if granted is not None:
        member.consent_ids.extend(record.consent_id for record in granted.consents)


async def withdraw(member: Member, tally: Tally, rng: random.Random) -> None:
    """The member withdraws: everything, or one of its items (then, later, the rest)."""
    ids = sorted(member.contents)
    async with member.connect() as client:
        if len(ids) > 1 and rng.random() < 0.5:
            one = rng.choice(ids)
            if await tally.attempt("withdraw", client.withdraw(item_ids=[one])) is not None:
                del member.contents[one]
            return
        if await tally.attempt("withdraw", client.withdraw(everything=True)) is not None:
            member.withdrawn = True


# --- labs ------------------------------------------------------------------------------------


@dataclass
class Lab:
    """A lab: its key, its client and what it got."""

    key: SigningKey
    client: Client
    agreements: list[str] = field(default_factory=list)
    fetched_items: int = 0
    fetched_bytes: int = 0
    receipts: int = 0
    releases: list[FetchResult] = field(default_factory=list)
    watcher: asyncio.Task[None] | None = None

    async def stop_answering(self) -> None:
        """Stop following the withdrawal feed: the lab appends no more deletion receipts."""
        if self.watcher is not None:
            self.watcher.cancel()
            await asyncio.gather(self.watcher, return_exceptions=True)
            self.watcher = None

    async def close(self) -> None:
        """Stop following the withdrawal feed and close the client."""
        await self.stop_answering()
        await self.client.close()


async def join_lab(transport: Transport, tally: Tally, name: str = "lab") -> Lab:
    """A new lab registers and starts answering its withdrawal notices."""
    key = SigningKey.generate()
    lab = Lab(key, transport.client(key))
    await tally.attempt("join", lab.client.register(party_pb2.ROLE_LAB, name))
    lab.watcher = asyncio.create_task(_answer_notices(lab, tally), name=f"{name} notices")
    return lab


async def _answer_notices(lab: Lab, tally: Tally) -> None:
    """Follow the withdrawal feed (verified) and answer each notice with a receipt."""
    since = 0
    while True:
        try:
            async for notice in lab.client.watch_withdrawals(since):
                since = notice.index + 1
                if await tally.attempt("receipt", lab.client.acknowledge(notice)) is not None:
                    lab.receipts += 1
            return
        except asyncio.CancelledError:
            raise
        except ServerError as exc:
            tally.errors.append(exc)
            tally.unexpected.append(f"withdrawal feed: {exc}")
            await asyncio.sleep(0.5)
        except Exception as exc:  # a notice that does not verify, or worse
            tally.crash("withdrawal feed", exc)
            return


async def negotiate(lab: Lab, tally: Tally, purpose: str = PURPOSES[0]) -> str | None:
    """Read the what-if for ``purpose``, bargain automatically (opening at half the
    reservation shown, budget twice it) and sign; the agreement id, or None if no deal."""
    terms = lab_terms(LAB_PLAN)
    terms.purposes[:] = [client_purpose(purpose)]
    what_if = await tally.attempt("estimate", lab.client.estimate_supply(terms))
    if what_if is None:
        return None
    reservation = (
        what_if.reservation_price_micros if what_if.HasField("reservation_price_micros") else USD
    )
    reservation = max(reservation, 10_000)
    strategy = lab_strategy("conceder", reservation // 2, reservation * 2, max_rounds=20)
    final = await tally.attempt("negotiate", lab.client.negotiate_auto(terms, strategy))
    if final is None:
        return None
    if final.state == negotiation_pb2.NEGOTIATION_STATE_FINALIZED and final.agreement_id:
        tally.ok("agreement")
        lab.agreements.append(final.agreement_id)
        return final.agreement_id
    # The coalition may walk away (its deadline, the lab's budget): an outcome, not an error.
    tally.ok(f"no deal ({negotiation_pb2.NegotiationState.Name(final.state)})")
    return None


async def lease_and_fetch(lab: Lab, agreement_id: str, tally: Tally) -> FetchResult | None:
    """Lease the agreement and fetch what it releases, every item verified."""
    lease = await tally.attempt("lease", lab.client.take_lease(agreement_id))
    if lease is None:
        return None
    result = FetchResult(lease.lease.lease_id)

    async def fetch() -> FetchResult:
        async for content in lab.client.fetch_items(lease.lease.lease_id, result=result):
            lab.fetched_items += 1
            lab.fetched_bytes += len(content.data)
        return result

    fetched = await tally.attempt("fetch", fetch())
    if fetched is not None:
        lab.releases.append(fetched)
        tally.ok("items fetched", len(fetched.items))
    return fetched


# --- the auditor -----------------------------------------------------------------------------


class Auditor:
    """Follows the log as an auditor with no account: each round verifies the signed
    checkpoint, its consistency with the previous one, one entry's inclusion proof, and
    replays every new entry (signatures, signer rules) up to the checkpoint's root."""

    def __init__(self, client: Client, rng: random.Random) -> None:
        self.client = client
        self.rng = rng
        self.verifier: NoteVerifier | None = None
        self.origin = ""
        self.replay: LedgerReplay | None = None
        self.checkpoint: Checkpoint | None = None
        self.rounds = 0

    async def _start(self) -> tuple[NoteVerifier, LedgerReplay]:
        if self.verifier is None or self.replay is None:
            info = await self.client.log_info()
            self.verifier = NoteVerifier.parse(info.verifier_key)
            self.origin = info.origin
            coalition = ExpectedKey("GetLogInfo", bytes(info.coalition_public_key))
            self.replay = LedgerReplay(expected_coalition_keys=[coalition])
        return self.verifier, self.replay

    async def audit(self) -> Checkpoint:
        """One round; raises (VerificationError, AuditError, ProofError) if anything fails."""
        verifier, replay = await self._start()
        response = await self.client.checkpoint()
        checkpoint = verify_checkpoint(response.checkpoint, verifier, self.origin)
        previous = self.checkpoint
        if previous is not None:
            if checkpoint.size < previous.size:
                raise CoalitionError(f"the log shrank from {previous.size} to {checkpoint.size}")
            proof = await self.client.consistency_proof(previous.size, checkpoint.size)
            verify_consistency(
                previous.size,
                checkpoint.size,
                previous.root_hash,
                checkpoint.root_hash,
                list(proof.proof),
            )
        index = self.rng.randrange(checkpoint.size)
        inclusion = await self.client.inclusion_proof(index, checkpoint.size)
        verify_inclusion(
            leaf_hash(bytes(inclusion.leaf)),
            index,
            checkpoint.size,
            list(inclusion.proof),
            checkpoint.root_hash,
        )
        async for entry in self.client.entries(replay.size, checkpoint.size):
            replay.feed(entry.index, bytes(entry.leaf), leaf_hash=bytes(entry.leaf_hash))
        if replay.root() != checkpoint.root_hash:
            raise CoalitionError(f"the replayed root differs at size {checkpoint.size}")
        self.checkpoint = checkpoint
        self.rounds += 1
        return checkpoint

    async def finish(self) -> ReplayResult:
        """A last round, then the replay's verdict against that checkpoint."""
        checkpoint = await self.audit()
        assert self.replay is not None
        return self.replay.finish(checkpoint)


async def full_replay(client: Client) -> ReplayResult:
    """Replay the whole ledger from entry 0 against the latest signed checkpoint."""
    info = await client.log_info()
    response = await client.checkpoint()
    checkpoint = verify_checkpoint(
        response.checkpoint, NoteVerifier.parse(info.verifier_key), info.origin
    )
    replay = LedgerReplay(
        expected_coalition_keys=[ExpectedKey("GetLogInfo", bytes(info.coalition_public_key))]
    )
    async for entry in client.entries(0, checkpoint.size):
        replay.feed(entry.index, bytes(entry.leaf), leaf_hash=bytes(entry.leaf_hash))
    return replay.finish(checkpoint)


# --- running workers -------------------------------------------------------------------------


async def repeat(
    name: str,
    tally: Tally,
    deadline: float,
    step: Callable[[], Awaitable[object]],
    period: float = 0.0,
) -> None:
    """Run ``step`` until the loop's clock passes ``deadline``, starting one at most every
    ``period`` seconds (a paced rate, so the load is the same on a fast machine as on this
    one; a slower machine does less); a crash is recorded (and ends this worker), never
    raised, so the others run on and the run still reports."""
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        started = loop.time()
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            tally.crash(name, exc)
            return
        rest = min(period - (loop.time() - started), deadline - loop.time())
        if rest > 0:
            await asyncio.sleep(rest)


def data_key_of(lab_key: SigningKey, release: FetchResult, item: access_pb2.FetchedItem) -> bytes:
    """The data key a lab opened for ``item`` (HPKE to its X25519 key, bound to the release)."""
    return hpke.open_data_key(
        lab_key.encryption_private_key(),
        bytes(item.sealed_data_key),
        hpke.release_info(release.agreement_id, release.lease_id, item.item_id),
    )
