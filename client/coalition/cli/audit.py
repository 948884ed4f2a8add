"""``coalition audit``: read the public ledger, fetch proofs, replay-verify the whole log,
report labs' compliance, and export a verified payout statement for a payment processor.

``audit verify`` is a monitor in the manner of Certificate Transparency monitors: it trusts
nothing the server says that it cannot check. It pins the log's key (given, or on first use),
replays every entry, recomputes the root and compares it with the signed checkpoint, and
proves that the log still extends the checkpoint it verified on its previous run.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import csv
import hashlib
import io
import json
import multiprocessing
import os
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Final, TextIO

import typer
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from coalition import dsse, merkle, payouts, statements
from coalition.audit import (
    AuditError,
    ExpectedKey,
    LedgerReplay,
    ReplayResult,
    TreeHead,
    find_signature_failure,
)
from coalition.checkpoint import Checkpoint, verify_checkpoint
from coalition.cli.common import (
    EXIT_FAILED,
    EXIT_UNUSABLE,
    JsonOpt,
    b64,
    check_output_options,
    console,
    fail,
    format_timestamp,
    globals_of,
    note,
    print_json,
    run,
)
from coalition.client import LEDGER, PAYMENT_MODELS, Client
from coalition.compliance import ComplianceReport, DisputeState, NoticeState, compliance_report
from coalition.errors import CoalitionError, KeyFormatError, ProofError, VerificationError
from coalition.keys import PUBLIC_KEY_SIZE, PublicKey, key_id
from coalition.note import NoteVerifier
from coalition.v1 import access_pb2, ledger_pb2, negotiation_pb2

app = typer.Typer(
    no_args_is_help=True,
    help="Read the ledger, fetch proofs, and verify the whole log as an auditor.",
)

PAGE_SIZE: Final = 1000
# Pages requested ahead of the one being replayed, so replay never waits for the network.
PAGES_AHEAD: Final = 2
STATEMENT_KINDS: Final = tuple(statements.kind(t) for t in statements.STATEMENT_TYPES)
STATE_VERSION: Final = 1
# Signature checks handed to a worker process at a time, and chunks kept in flight per
# worker: enough to keep every core busy while the next page downloads.
SIGNATURE_CHUNK: Final = 2000
CHUNKS_IN_FLIGHT_PER_JOB: Final = 2
# Below this many entries, starting worker processes costs more than it saves.
PARALLEL_MIN_ENTRIES: Final = 20_000

LogKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--log-key",
        envvar="COALITION_LOG_KEY",
        help="The log's verifier key (name+hash+key) to trust, instead of the state file's.",
    ),
]


# --- reading ---------------------------------------------------------------------------


@app.command("log-key")
def log_key(ctx: typer.Context, json_output: JsonOpt = False) -> None:
    """Print the log's verifier key in note form (and the coalition's statement key)."""

    async def fetch() -> ledger_pb2.GetLogInfoResponse:
        async with globals_of(ctx).client() as client:
            return await client.log_info()

    info = run(ctx, fetch())
    if json_output:
        print_json(
            {
                "origin": info.origin,
                "verifier_key": info.verifier_key,
                "coalition_key_id": info.coalition_key_id,
                "coalition_public_key": b64(info.coalition_public_key),
            }
        )
    else:
        typer.echo(info.verifier_key)


@app.command("checkpoint")
def checkpoint(ctx: typer.Context, json_output: JsonOpt = False) -> None:
    """Print the latest signed checkpoint, verbatim (a C2SP signed note)."""

    async def fetch() -> ledger_pb2.GetCheckpointResponse:
        async with globals_of(ctx).client() as client:
            return await client.checkpoint()

    response = run(ctx, fetch())
    if json_output:
        print_json(
            {
                "checkpoint": response.checkpoint,
                "tree_size": response.tree_size,
                "root_hash": b64(response.root_hash),
            }
        )
    else:
        # Verbatim: the exact bytes the signature covers, so it can be piped to a verifier.
        typer.echo(response.checkpoint, nl=False)


@app.command("entries")
def entries(
    ctx: typer.Context,
    start: Annotated[int, typer.Option(min=0, help="First index.")] = 0,
    count: Annotated[int, typer.Option(min=1, help="How many entries at most.")] = 100,
    kind: Annotated[
        str | None,
        typer.Option(
            "--kind",
            metavar="KIND",
            help="Only statements of this kind, e.g. Agreement, ConsentToken, Dispute "
            "(from the whole ledger, by the server's index).",
        ),
    ] = None,
    subject: Annotated[
        str | None,
        typer.Option(
            "--subject",
            metavar="KEYID",
            help="Only entries about this party (by the server's index): those it signed, "
            "and the coalition's statements addressed to it.",
        ),
    ] = None,
    json_output: JsonOpt = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="Print only each entry's statement id, one per line: the id other commands "
            "take (a consent's, an agreement's, a dispute's, ...).",
        ),
    ] = False,
) -> None:
    """List entries: index, time, kind, signer and leaf hash (--json: everything, with each
    statement's id). With --kind and/or --subject, the first --count matching entries from
    --start."""
    check_output_options(json_output, quiet)
    if kind is not None and kind not in STATEMENT_KINDS:
        fail(f"unknown --kind {kind!r}: use one of {', '.join(STATEMENT_KINDS)}", EXIT_UNUSABLE)

    async def fetch() -> list[ledger_pb2.Entry]:
        async with globals_of(ctx).client() as client:
            page = min(count, PAGE_SIZE)
            if kind is None and subject is None:
                return [e async for e in client.entries(start, start + count, page)]
            found: list[ledger_pb2.Entry] = []
            async for entry in client.entries_by_subject(subject or "", kind or "", page):
                if entry.index >= start:
                    found.append(entry)
                    if len(found) == count:
                        break
            return found

    described = [_describe_entry(e) for e in run(ctx, fetch())]
    for d in described:
        if d["leaf_hash_mismatch"]:
            note(f"warning: entry {d['index']}: the server's leaf hash is not its leaf's hash")
        if kind is not None and d["kind"] != kind:
            fail(f"the server listed entry {d['index']}, a {d['kind']}, as a {kind}")
    if json_output:
        print_json(described)
        return
    if quiet:
        for d in described:
            if d["statement_id"] is not None:
                typer.echo(d["statement_id"])
        return
    table = Table()
    table.add_column("index", justify="right")
    table.add_column("time")
    table.add_column("kind")
    table.add_column("signer")
    table.add_column("leaf hash")
    for d in described:
        signers = ",".join(k[:16] for k in d["signers"])
        table.add_row(
            str(d["index"]),
            d["integrated_time"] or "-",
            d["kind"],
            signers or "-",
            base64.b64decode(d["leaf_hash"]).hex(),
        )
    console().print(table)


@app.command("export-agreement")
def export_agreement(
    ctx: typer.Context,
    agreement_id: Annotated[str, typer.Argument(help="The agreement's id.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the document here instead.")
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Export an agreement as an ODRL 2.2 Agreement (JSON-LD): its covered items, terms and
    the lab's use declaration."""

    async def fetch() -> access_pb2.ExportAgreementResponse:
        async with globals_of(ctx).client() as client:
            return await client.export_agreement(agreement_id)

    response = run(ctx, fetch())
    if out is not None:
        try:
            out.write_text(response.document, encoding="utf-8")
        except OSError as exc:
            fail(f"cannot write {out}: {exc}", EXIT_UNUSABLE)
        note(f"wrote {response.media_type} to {out}")
    if json_output:
        print_json(
            {
                "media_type": response.media_type,
                "document": response.document,
                "index": response.index,
            }
        )
    elif out is None:
        typer.echo(response.document.rstrip("\n"))


@app.command("prove-inclusion")
def prove_inclusion(
    ctx: typer.Context,
    index: Annotated[int, typer.Option(min=0, help="The entry's index.")],
    tree_size: Annotated[
        int, typer.Option(min=0, help="Tree size to prove against (0 = latest checkpoint).")
    ] = 0,
    json_output: JsonOpt = False,
) -> None:
    """Print an entry's inclusion proof as JSON (always JSON; --json is accepted)."""
    del json_output  # the output is JSON either way, as the spec of this command says

    async def fetch() -> ledger_pb2.GetInclusionProofResponse:
        async with globals_of(ctx).client() as client:
            return await client.inclusion_proof(index, tree_size)

    response = run(ctx, fetch())
    out: dict[str, Any] = {
        "index": response.index,
        "tree_size": response.tree_size,
        "leaf": b64(response.leaf),
        "leaf_hash": b64(merkle.leaf_hash(response.leaf)),
        "proof": [b64(h) for h in response.proof],
    }
    if response.checkpoint:
        out["checkpoint"] = response.checkpoint
    print_json(out)


@app.command("prove-consistency")
def prove_consistency(
    ctx: typer.Context,
    old_size: Annotated[int, typer.Option(min=1, help="The older tree size.")],
    tree_size: Annotated[
        int, typer.Option(min=0, help="The newer tree size (0 = latest checkpoint).")
    ] = 0,
    json_output: JsonOpt = False,
) -> None:
    """Print a consistency proof between two tree sizes as JSON (always JSON)."""
    del json_output

    async def fetch() -> ledger_pb2.GetConsistencyProofResponse:
        async with globals_of(ctx).client() as client:
            return await client.consistency_proof(old_size, tree_size)

    response = run(ctx, fetch())
    out: dict[str, Any] = {
        "old_size": response.first_size,
        "tree_size": response.second_size,
        "proof": [b64(h) for h in response.proof],
    }
    if response.checkpoint:
        out["checkpoint"] = response.checkpoint
    print_json(out)


def _describe_entry(entry: ledger_pb2.Entry) -> dict[str, Any]:
    """Everything about an entry, decoded as far as it decodes (display, not verification)."""
    leaf = bytes(entry.leaf)
    computed = merkle.leaf_hash(leaf)
    out: dict[str, Any] = {
        "index": entry.index,
        "integrated_time": None,
        "kind": "?",
        "payload_type": None,
        "statement_id": None,
        "signers": [],
        "leaf_hash": b64(computed),
        "leaf_hash_mismatch": computed != entry.leaf_hash,
        "leaf": b64(leaf),
        "statement": None,
    }
    try:
        record = ledger_pb2.LedgerLeaf.FromString(leaf)
        if record.HasField("integrated_time"):
            out["integrated_time"] = format_timestamp(record.integrated_time)
        envelope = dsse.Envelope.from_proto(record.envelope)
        out["payload_type"] = envelope.payload_type
        out["kind"] = statements.kind(envelope.payload_type)
        out["statement_id"] = statements.statement_id(envelope)
        out["signers"] = [s.keyid for s in envelope.signatures]
        out["statement"] = json_format.MessageToDict(
            statements.decode_statement(envelope), preserving_proto_field_name=True
        )
    except (DecodeError, CoalitionError) as exc:
        out["error"] = str(exc)
    return out


# --- verifying -------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditState:
    """What a successful ``audit verify`` remembers for the next run."""

    log_verifier_key: str
    coalition_public_key: bytes
    origin: str
    tree_size: int
    root_hash: bytes
    checkpoint: str
    verified_at: str

    def to_json(self) -> str:
        """The state file's content."""
        return json.dumps(
            {
                "version": STATE_VERSION,
                "log_verifier_key": self.log_verifier_key,
                "coalition_public_key": b64(self.coalition_public_key),
                "origin": self.origin,
                "tree_size": self.tree_size,
                "root_hash": b64(self.root_hash),
                "checkpoint": self.checkpoint,
                "verified_at": self.verified_at,
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> AuditState:
        """Parse a state file strictly; ValueError says what is wrong."""
        obj = json.loads(text)
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
        if obj.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported version {obj.get('version')!r}")
        strings = (
            "log_verifier_key",
            "coalition_public_key",
            "origin",
            "root_hash",
            "checkpoint",
            "verified_at",
        )
        for name in strings:
            if not isinstance(obj.get(name), str):
                raise ValueError(f"{name} must be a string")
        size = obj.get("tree_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError("tree_size must be a non-negative integer")
        root = _b64_field(obj, "root_hash", (merkle.HASH_SIZE,))
        # Empty when the server named no coalition key (then nothing may sign as it).
        coalition_key = _b64_field(obj, "coalition_public_key", (0, PUBLIC_KEY_SIZE))
        return cls(
            log_verifier_key=obj["log_verifier_key"],
            coalition_public_key=coalition_key,
            origin=obj["origin"],
            tree_size=size,
            root_hash=root,
            checkpoint=obj["checkpoint"],
            verified_at=obj["verified_at"],
        )


def _b64_field(obj: dict[str, Any], name: str, sizes: tuple[int, ...]) -> bytes:
    try:
        value = base64.b64decode(obj[name], validate=True)
    except binascii.Error:
        raise ValueError(f"{name} is not base64") from None
    if len(value) not in sizes:
        raise ValueError(f"{name} must be {' or '.join(map(str, sizes))} bytes")
    return value


def default_state_path(origin: str) -> Path:
    """``$XDG_CONFIG_HOME/coalition/audit-state-<hash of origin>.json`` (~/.config default)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    digest = hashlib.sha256(origin.encode("utf-8")).hexdigest()[:16]
    return Path(base) / "coalition" / f"audit-state-{digest}.json"


def load_state(path: Path) -> AuditState | None:
    """The state at ``path``, None if there is none; exits 2 if it is unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        fail(f"cannot read state file {path}: {exc.strerror or exc}", EXIT_UNUSABLE)
    try:
        return AuditState.from_json(text)
    except ValueError as exc:
        fail(f"state file {path} is not valid: {exc}", EXIT_UNUSABLE)


def save_state(path: Path, state: AuditState) -> None:
    """Write the state atomically: a complete temporary file, then rename over the old one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(state.to_json() + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Never leave a half-written temporary behind, whatever went wrong.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # The rename is durable only once the directory entry is.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclass(frozen=True)
class _Outcome:
    result: ReplayResult
    checkpoint: Checkpoint
    note: str
    verifier_key: str
    coalition_key: bytes
    state_path: Path
    previous: AuditState | None
    first_use: bool
    seconds: float


@app.command("verify")
def verify(
    ctx: typer.Context,
    state: Annotated[
        Path | None,
        typer.Option(
            "--state",
            envvar="COALITION_AUDIT_STATE",
            help="State file (default: one per log, under ~/.config/coalition).",
        ),
    ] = None,
    trusted_log_key: LogKeyOpt = None,
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs",
            min=0,
            help=(
                "Processes verifying signatures: 1 = in this process; 0 = every core, "
                f"for logs of {PARALLEL_MIN_ENTRIES:,} entries or more."
            ),
        ),
    ] = 0,
    json_output: JsonOpt = False,
) -> None:
    """Replay and verify the whole ledger against the signed checkpoint; exit 1 on mismatch.

    Checks every entry's encoding and signatures, and who signed it: entry 0 must be the
    coalition's own self-signed registration, and its key (not the one the server announces)
    is the coalition key, which must match the one pinned in the state file and the server's;
    then each statement type has its signers (registrations self-signed; items, consent and
    withdrawals by one registered contributor; lease requests and deletion receipts by one
    registered lab; agreements by their lab and the coalition; key releases, withdrawal
    notices and shredding records by the coalition alone; negotiation and strike statements
    as their protos say, a negotiation's moves by the coalition or the lab that opened it,
    ballots only on a negotiation put to ratification earlier). Also checks that integration
    times never decrease, that the recomputed root equals the checkpoint's, and that the log
    extends the checkpoint verified on the previous run (state file), by replay and by proof.
    """
    pinned = _parse_vkey(trusted_log_key, "--log-key") if trusted_log_key else None
    try:
        outcome = run(ctx, _verify(ctx, state, pinned, jobs))
    except AuditError as exc:
        fail(exc.message, EXIT_FAILED)
    except BrokenProcessPool as exc:
        fail(
            f"a signature-checking worker process died ({exc}); retry with --jobs 1", EXIT_UNUSABLE
        )
    try:
        save_state(
            outcome.state_path,
            AuditState(
                log_verifier_key=outcome.verifier_key,
                coalition_public_key=outcome.coalition_key,
                origin=outcome.checkpoint.origin,
                tree_size=outcome.checkpoint.size,
                root_hash=outcome.checkpoint.root_hash,
                checkpoint=outcome.note,
                verified_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            ),
        )
    except OSError as exc:
        fail(f"verified, but cannot write state file {outcome.state_path}: {exc}", EXIT_UNUSABLE)
    _print_summary(outcome, json_output)


async def _verify(
    ctx: typer.Context,
    state_opt: Path | None,
    pinned: NoteVerifier | None,
    jobs: int,
) -> _Outcome:
    """The whole audit; raises AuditError on any mismatch."""
    async with globals_of(ctx).client() as client:
        info = await client.log_info()
        state_path = state_opt or default_state_path(info.origin)
        previous = load_state(state_path)

        trusted, expected, first_use = _trust(info, previous, pinned, state_path)
        origin = previous.origin if previous is not None else info.origin

        # The tree head to verify against: signed by the trusted key, for our log.
        response = await client.checkpoint()
        try:
            cp = verify_checkpoint(response.checkpoint, trusted, origin)
        except VerificationError as exc:
            raise AuditError(f"the latest checkpoint does not verify: {exc}") from None
        if cp.size != response.tree_size or cp.root_hash != response.root_hash:
            raise AuditError("the server's tree size or root differs from its signed checkpoint")

        head = None
        if previous is not None:
            head = TreeHead(previous.tree_size, previous.root_hash)
            await _check_consistency(client, head, cp)

        started = time.perf_counter()
        result = await _replay(client, cp, head, expected, jobs)
        seconds = time.perf_counter() - started
    # finish() guarantees it: a log that replays has the coalition's registration at entry 0.
    assert result.coalition_key is not None
    if previous is None or not previous.coalition_public_key:
        note(
            f"trusting the coalition key {result.coalition_key.key_id} on first use "
            f"(registered at entry 0 of the ledger); it will be pinned in {state_path}"
        )
    return _Outcome(
        result=result,
        checkpoint=cp,
        note=response.checkpoint,
        verifier_key=trusted.verifier_key,
        coalition_key=result.coalition_key.raw,
        state_path=state_path,
        previous=previous,
        first_use=first_use,
        seconds=seconds,
    )


def _trust(
    info: ledger_pb2.GetLogInfoResponse,
    previous: AuditState | None,
    pinned: NoteVerifier | None,
    state_path: Path,
) -> tuple[NoteVerifier, list[ExpectedKey], bool]:
    """The log key to trust, the coalition keys entry 0 must match, and whether first use.

    The log key is --log-key, else the state file's, else the server's (trust on first use);
    whatever is trusted must be what the server presents now. The coalition's statement
    key is taken from the ledger (entry 0) by the replay; the state file's and the server's
    must both be that key.
    """
    previous_key = (
        _parse_vkey(previous.log_verifier_key, "the state file's log key") if previous else None
    )
    if pinned is not None and previous_key is not None and previous_key != pinned:
        raise AuditError(
            f"--log-key {pinned.verifier_key} differs from the log key pinned in "
            f"{state_path}: {previous_key.verifier_key}"
        )
    first_use = False
    if pinned is not None:
        trusted, source = pinned, "--log-key"
    elif previous_key is not None:
        trusted, source = previous_key, f"the state file {state_path}"
    else:
        trusted = _parse_vkey(info.verifier_key, "the server's log key")
        source, first_use = "first use", True
        note(
            f"trusting the log key {info.verifier_key} on first use; it will be pinned "
            f"in {state_path}"
        )
    try:
        server_key = NoteVerifier.parse(info.verifier_key)
    except VerificationError as exc:
        raise AuditError(f"the server's log key is malformed: {exc}") from None
    if server_key != trusted:
        raise AuditError(
            f"the server's log key {info.verifier_key} differs from the trusted key "
            f"{trusted.verifier_key} (from {source})"
        )

    coalition_key = bytes(info.coalition_public_key)
    if previous is not None and previous.coalition_public_key != coalition_key:
        # Caught before replaying anything (the replay would catch it at entry 0 too).
        raise AuditError(
            f"the server's coalition key {b64(coalition_key) or '(none)'} differs from "
            f"the key pinned in {state_path}: {b64(previous.coalition_public_key) or '(none)'}"
        )
    return trusted, _expected_coalition_keys(info, previous, state_path), first_use


def _expected_coalition_keys(
    info: ledger_pb2.GetLogInfoResponse, previous: AuditState | None, state_path: Path
) -> list[ExpectedKey]:
    """The coalition keys the state file and GetLogInfo name, for the replay to compare.

    The ledger's entry 0 is what is trusted; these only have to agree with it.
    """
    server_key = bytes(info.coalition_public_key)
    if server_key and info.coalition_key_id:
        try:
            server_key_id = key_id(server_key)
        except KeyFormatError:
            server_key_id = "(not a 32-byte key)"
        if info.coalition_key_id != server_key_id:
            raise AuditError(
                f"the server's GetLogInfo contradicts itself: coalition_key_id "
                f"{info.coalition_key_id} is not the key id of its coalition_public_key "
                f"{b64(server_key)} ({server_key_id})"
            )
    expected = []
    if previous is not None and previous.coalition_public_key:
        expected.append(ExpectedKey(f"the state file {state_path}", previous.coalition_public_key))
    if server_key:
        expected.append(ExpectedKey("the server's GetLogInfo", server_key))
    return expected


async def _check_consistency(client: Client, head: TreeHead, cp: Checkpoint) -> None:
    """The server's proof that the log still extends ``head``, checked against ``cp``."""
    if cp.size < head.size:
        raise AuditError(
            f"log is not consistent with the checkpoint of size {head.size} you verified "
            f"before: the latest checkpoint has size {cp.size} (the log was truncated or "
            "rolled back)"
        )
    if head.size == 0:
        return  # the empty tree is a prefix of every tree: there is nothing to prove
    response = await client.consistency_proof(head.size, cp.size)
    try:
        if (response.first_size, response.second_size) != (head.size, cp.size):
            raise ProofError(
                f"the server proved sizes {response.first_size} to {response.second_size}"
            )
        merkle.verify_consistency(
            head.size, cp.size, head.root_hash, cp.root_hash, list(response.proof)
        )
    except ProofError as exc:
        raise AuditError(
            f"log is not consistent with the checkpoint of size {head.size} you verified "
            f"before: the server's consistency proof to size {cp.size} does not verify "
            f"({exc})"
        ) from None


async def _replay(
    client: Client,
    cp: Checkpoint,
    head: TreeHead | None,
    expected: list[ExpectedKey],
    jobs: int,
) -> ReplayResult:
    """Stream entries 0..size-1 through a LedgerReplay; signatures in ``jobs`` processes."""
    if jobs == 0:
        jobs = (os.cpu_count() or 1) if cp.size >= PARALLEL_MIN_ENTRIES else 1
    replay = LedgerReplay(head, expected_coalition_keys=expected, defer_signatures=jobs > 1)
    with _progress(cp.size) as progress:
        task = progress.add_task("replaying", total=cp.size)

        def advance(entries: int) -> None:
            progress.advance(task, entries)

        if jobs == 1:
            async for entry in _all_entries(client, cp.size):
                replay.feed(entry.index, entry.leaf, leaf_hash=entry.leaf_hash)
                if entry.index % PAGE_SIZE == PAGE_SIZE - 1:
                    advance(PAGE_SIZE)
        else:
            await _replay_in_pool(client, cp, replay, jobs, advance)
        progress.update(task, completed=cp.size)
        return replay.finish(cp)


async def _replay_in_pool(
    client: Client,
    cp: Checkpoint,
    replay: LedgerReplay,
    jobs: int,
    advance: Callable[[int], None],
) -> None:
    """Feed entries here, verify their signatures in worker processes, chunk by chunk."""
    loop = asyncio.get_running_loop()
    # spawn, not fork: forking a process that runs gRPC threads is unsafe.
    context = multiprocessing.get_context("spawn")
    in_flight: deque[asyncio.Future[tuple[int, str] | None]] = deque()

    async def settle(keep: int) -> None:
        # Chunks settle in index order, so the first failure found is the earliest one.
        while len(in_flight) > keep:
            failure = await in_flight.popleft()
            if failure is not None:
                raise AuditError(failure[1], index=failure[0])

    with ProcessPoolExecutor(jobs, mp_context=context) as pool:
        try:
            async for entry in _all_entries(client, cp.size):
                try:
                    replay.feed(entry.index, entry.leaf, leaf_hash=entry.leaf_hash)
                except AuditError:
                    # A signature failure in an earlier entry takes precedence.
                    in_flight.append(
                        loop.run_in_executor(pool, find_signature_failure, replay.take_deferred())
                    )
                    await settle(0)
                    raise
                if entry.index % PAGE_SIZE == PAGE_SIZE - 1:
                    advance(PAGE_SIZE)  # per page: a progress update costs as much as a feed
                if replay.deferred >= SIGNATURE_CHUNK:
                    chunk = replay.take_deferred()
                    in_flight.append(loop.run_in_executor(pool, find_signature_failure, chunk))
                    await settle(jobs * CHUNKS_IN_FLIGHT_PER_JOB)
            if replay.deferred:
                chunk = replay.take_deferred()
                in_flight.append(loop.run_in_executor(pool, find_signature_failure, chunk))
            await settle(0)
        finally:
            for future in in_flight:
                future.cancel()


async def _all_entries(client: Client, size: int) -> AsyncIterator[ledger_pb2.Entry]:
    """Entries 0..size-1 in order; the next pages download while this one is replayed."""
    # end=0 would mean "the current size" to the server: an empty tree has nothing to fetch.
    if size == 0:
        return
    ahead: deque[asyncio.Task[list[ledger_pb2.Entry]]] = deque()
    starts = iter(range(0, size, PAGE_SIZE))
    try:
        for start in starts:
            ahead.append(asyncio.create_task(_page(client, start, min(start + PAGE_SIZE, size))))
            if len(ahead) > PAGES_AHEAD:
                for entry in await ahead.popleft():
                    yield entry
        while ahead:
            for entry in await ahead.popleft():
                yield entry
    finally:
        for task in ahead:
            task.cancel()


async def _page(client: Client, start: int, end: int) -> list[ledger_pb2.Entry]:
    """Entries start..end-1 (in more than one call if the server sends fewer)."""
    found: list[ledger_pb2.Entry] = []
    while start < end:
        response = await client.call(
            LEDGER + "ListEntries",
            ledger_pb2.ListEntriesRequest(start=start, end=end, page_size=end - start),
            ledger_pb2.ListEntriesResponse,
            sign=False,
        )
        if not response.entries:
            raise AuditError(f"the server sent no entries from {start} (below its tree size)")
        found.extend(response.entries)
        start += len(response.entries)
    return found


def _progress(total: int) -> Progress:
    err = Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        # Only for a person watching: never in pipes, logs or tests.
        disable=not err.is_terminal or total < PAGE_SIZE,
    )


def _parse_vkey(vkey: str, what: str) -> NoteVerifier:
    try:
        return NoteVerifier.parse(vkey)
    except VerificationError as exc:
        fail(f"{what} {vkey!r} is not a valid verifier key: {exc}", EXIT_UNUSABLE)


def _print_summary(outcome: _Outcome, json_output: bool) -> None:
    result, cp = outcome.result, outcome.checkpoint
    rate = result.size / outcome.seconds if outcome.seconds > 0 else 0.0
    previous = outcome.previous
    last = result.last_integrated_time
    if json_output:
        print_json(
            {
                "ok": True,
                "origin": cp.origin,
                "log_verifier_key": outcome.verifier_key,
                "trusted_on_first_use": outcome.first_use,
                "tree_size": cp.size,
                "root_hash": b64(cp.root_hash),
                "entries": result.size,
                "kinds": dict(sorted(result.kinds.items())),
                "parties": result.parties,
                "last_integrated_time": last.isoformat() if last else None,
                "previous_tree_size": previous.tree_size if previous else None,
                "consistent_with_previous": result.previous_verified if previous else None,
                "seconds": round(outcome.seconds, 3),
                "entries_per_second": round(rate, 1),
                "state_file": str(outcome.state_path),
            }
        )
        return
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(result.kinds.items())) or "none"
    table = Table(show_header=False, box=None, title=f"ledger verified: {cp.origin}")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("entries", f"{result.size} ({kinds})")
    table.add_row("parties", str(result.parties))
    table.add_row("checkpoint", f"size {cp.size}, root {b64(cp.root_hash)}")
    if previous is not None:
        table.add_row(
            "consistent",
            f"with the checkpoint of size {previous.tree_size} verified {previous.verified_at}",
        )
    else:
        table.add_row("consistent", "first run: nothing verified before")
    if last is not None:
        table.add_row("last entry", last.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    table.add_row("time", f"{outcome.seconds:.2f} s ({rate:,.0f} entries/s)")
    table.add_row("state", str(outcome.state_path))
    console().print(table)


# --- compliance --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Compliance:
    report: ComplianceReport
    checkpoint: Checkpoint
    verifier_key: str


@app.command("compliance")
def compliance(
    ctx: typer.Context,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Exit 1 on any violation: a late receipt, a receipt missing past its "
            "deadline, or a key released after a withdrawal.",
        ),
    ] = False,
    now: Annotated[
        str | None,
        typer.Option(
            "--now",
            help="Judge deadlines at this time (ISO 8601), or 'ledger' for the last entry's "
            "time (default: the current time).",
        ),
    ] = None,
    state: Annotated[
        Path | None,
        typer.Option(
            "--state",
            envvar="COALITION_AUDIT_STATE",
            help="State file of `audit verify` whose pinned keys to trust (default: per log).",
        ),
    ] = None,
    trusted_log_key: LogKeyOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Each lab's compliance, computed from the ledger alone (replayed and verified first).

    For every lab: withdrawal notices received, deletion receipts in time and late,
    receipts missing past their deadline, and keys released after a withdrawal (which must
    be zero). Then, per agreement, the disputes its members filed: open or answered, and
    how long they have waited (allegations, shown but not counted as violations). Rules:
    see `coalition.compliance`.
    """
    when = _parse_now(now)
    pinned = _parse_vkey(trusted_log_key, "--log-key") if trusted_log_key else None
    try:
        outcome = run(ctx, _compliance(ctx, state, pinned, when))
    except AuditError as exc:
        fail(exc.message, EXIT_FAILED)
    except CoalitionError as exc:
        fail(str(exc), EXIT_FAILED)
    report = outcome.report
    if json_output:
        print_json(
            {
                **report.to_json(),
                "tree_size": outcome.checkpoint.size,
                "root_hash": b64(outcome.checkpoint.root_hash),
                "log_verifier_key": outcome.verifier_key,
            }
        )
    else:
        _print_compliance(report, outcome.checkpoint)
    if strict and not report.ok:
        raise typer.Exit(EXIT_FAILED)


def _parse_now(text: str | None) -> datetime | None:
    """The time to judge deadlines at; None for the ledger's last integration time."""
    if text is None:
        return datetime.now(UTC)
    if text.strip().lower() == "ledger":
        return None
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        fail(f"--now {text!r} is not an ISO 8601 time (or 'ledger')", EXIT_UNUSABLE)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


async def _compliance(
    ctx: typer.Context,
    state_opt: Path | None,
    pinned: NoteVerifier | None,
    when: datetime | None,
) -> _Compliance:
    async with globals_of(ctx).client() as client:
        info = await client.log_info()
        state_path = state_opt or default_state_path(info.origin)
        previous = load_state(state_path)
        trusted = pinned
        if trusted is None and previous is not None:
            trusted = _parse_vkey(previous.log_verifier_key, "the state file's log key")
        if trusted is None:
            trusted = _parse_vkey(info.verifier_key, "the server's log key")
            note(
                "trusting the server's log key (not pinned: run `coalition audit verify` to pin it)"
            )
        # The coalition key is entry 0's; the pinned one and the server's must agree with it.
        expected = _expected_coalition_keys(info, previous, state_path)
        response = await client.checkpoint()
        try:
            cp = verify_checkpoint(response.checkpoint, trusted, info.origin)
        except VerificationError as exc:
            raise AuditError(f"the latest checkpoint does not verify: {exc}") from None
        head = TreeHead(previous.tree_size, previous.root_hash) if previous is not None else None
        if head is not None and head.size > cp.size:
            raise AuditError(
                f"the checkpoint's size {cp.size} is smaller than the size {head.size} "
                "verified before: the log was truncated or rolled back"
            )
        replay = LedgerReplay(head, expected_coalition_keys=expected)
        leaves: list[tuple[int, bytes]] = []
        with _progress(cp.size) as progress:
            task = progress.add_task("reading the ledger", total=cp.size)
            async for entry in _all_entries(client, cp.size):
                replay.feed(entry.index, entry.leaf, leaf_hash=entry.leaf_hash)
                leaves.append((entry.index, bytes(entry.leaf)))
                progress.advance(task)
        result = replay.finish(cp)
    assert result.coalition_key is not None  # finish() requires entry 0's registration
    report = compliance_report(leaves, now=when, coalition_key_id=result.coalition_key.key_id)
    return _Compliance(report, cp, trusted.verifier_key)


def _print_compliance(report: ComplianceReport, cp: Checkpoint) -> None:
    out = console()
    when = report.now.strftime("%Y-%m-%dT%H:%M:%SZ") if report.now else "-"
    table = Table(title=f"lab compliance at {when} (ledger size {cp.size}, verified)")
    table.add_column("lab")
    table.add_column("name")
    table.add_column("agreements", justify="right")
    table.add_column("releases", justify="right")
    table.add_column("notices", justify="right")
    table.add_column("in time", justify="right")
    table.add_column("late", justify="right")
    table.add_column("missing", justify="right")
    table.add_column("pending", justify="right")
    table.add_column("released after withdrawal", justify="right")
    table.add_column("status")
    for lab in report.labs:
        table.add_row(
            lab.lab_key_id,
            lab.name or "-",
            str(lab.agreements),
            str(lab.releases),
            str(lab.notices),
            str(lab.receipts_in_time),
            str(lab.receipts_late),
            str(lab.missing),
            str(lab.pending),
            str(lab.releases_after_withdrawal),
            "ok" if lab.ok else "VIOLATION",
        )
    out.print(table)
    for notice in report.notices:
        if notice.state in (NoticeState.LATE, NoticeState.MISSING):
            out.print(
                f"{notice.state.value}: notice {notice.notice_id} (entry {notice.index}) to "
                f"{notice.lab_key_id}, respond by "
                f"{notice.respond_by.strftime('%Y-%m-%dT%H:%M:%SZ')}"
            )
    for v in report.violations:
        out.print(
            f"released after withdrawal: item {v.item_id} to {v.lab_key_id} at entry "
            f"{v.release_index}, withdrawn at entry {v.withdrawal_index} ({v.rule})"
        )
    _print_disputes(report)
    out.print("compliant" if report.ok else "NOT compliant")


def duration_text(value: timedelta | None) -> str:
    """A wait as ``3d 4h``, ``2h 5m``, ``40s``; ``-`` for None."""
    if value is None:
        return "-"
    seconds = int(value.total_seconds())
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {seconds}s" if minutes else f"{seconds}s"


def _print_disputes(report: ComplianceReport) -> None:
    """Disputes per agreement, then each open one (what it alleges, how long it waits)."""
    if not report.agreement_disputes:
        return
    out = console()
    table = Table(title="disputes by agreement (allegations, not violations)")
    table.add_column("agreement")
    table.add_column("lab")
    table.add_column("disputes", justify="right")
    table.add_column("open", justify="right")
    table.add_column("answered", justify="right")
    table.add_column("oldest open")
    table.add_column("slowest answer")
    for row in report.agreement_disputes:
        table.add_row(
            row.agreement_id,
            row.lab_key_id,
            str(row.disputes),
            str(row.open),
            str(row.answered),
            duration_text(row.longest_open),
            duration_text(row.slowest_answer),
        )
    out.print(table)
    for d in report.disputes:
        if d.state is DisputeState.OPEN:
            alleged = ", ".join((*d.norm_ids, *d.declaration_fields))
            waiting = f", open for {duration_text(d.open_for)}" if d.open_for is not None else ""
            out.print(
                f"open: dispute {d.dispute_id} (entry {d.index}) about agreement "
                f"{d.agreement_id} of {d.lab_key_id}: {alleged}{waiting}"
            )


# --- payouts -------------------------------------------------------------------------------

PAYOUT_CSV_COLUMNS: Final = (
    "agreement_id",
    "member_key_id",
    "item_count",
    "amount",
    "currency",
    "payment_model",
    "rule",
    "statement_index",
)
"""The columns of ``audit payouts --csv``, one row per member's line."""


def amount_text(amount_micros: int) -> str:
    """An amount in micros as an exact decimal with six places (``11.985000``), computed
    with Decimal: never floating point, so a payment processor gets the signed amount."""
    return f"{Decimal(amount_micros).scaleb(-6):f}"


def payment_model_name(model: int) -> str:
    """``purchase``, ``subscription``, ``per-use``; the number if unknown."""
    return next((name for name, value in PAYMENT_MODELS.items() if value == model), str(model))


def verify_payout_statement(
    response: negotiation_pb2.GetPayoutStatementResponse,
    coalition_key: PublicKey,
    agreement_id: str,
) -> negotiation_pb2.PayoutStatement:
    """The payout statement in a GetPayoutStatement response, checked for export.

    It must be a PayoutStatement signed by ``coalition_key``, canonically encoded, with its
    lines in member order and ``lines_root`` their Merkle root (:func:`payouts.open_statement`);
    for ``agreement_id``; one line per member; every line in the total's currency; and the
    lines must add up exactly to the total. Raises PayoutError (a VerificationError).
    """
    statement = payouts.open_statement(response.statement, coalition_key)
    if statement.agreement_id != agreement_id:
        raise payouts.PayoutError(
            f"the statement is for agreement {statement.agreement_id}, not {agreement_id}"
        )
    members = [line.member_key_id for line in statement.lines]
    if len(set(members)) != len(members):
        raise payouts.PayoutError("the statement has more than one line for a member")
    currency = statement.total.currency_code
    for line in statement.lines:
        if line.amount.currency_code != currency:
            raise payouts.PayoutError(
                f"the line of {line.member_key_id} is in {line.amount.currency_code!r}, "
                f"the total in {currency!r}"
            )
    paid = sum(line.amount.micros for line in statement.lines)
    if paid != statement.total.micros:
        raise payouts.PayoutError(
            f"the lines add up to {amount_text(paid)} {currency}, not the statement's total "
            f"{amount_text(statement.total.micros)} {currency}"
        )
    return statement


def payout_rows(
    statement: negotiation_pb2.PayoutStatement, statement_index: int
) -> list[dict[str, str]]:
    """The CSV rows of a verified statement, in its order (by member key id)."""
    model = payment_model_name(statement.payment_model)
    return [
        {
            "agreement_id": statement.agreement_id,
            "member_key_id": line.member_key_id,
            "item_count": str(line.item_count),
            "amount": amount_text(line.amount.micros),
            "currency": line.amount.currency_code,
            "payment_model": model,
            "rule": statement.rule,
            "statement_index": str(statement_index),
        }
        for line in statement.lines
    ]


def write_payout_csv(out: TextIO, rows: list[dict[str, str]]) -> None:
    """RFC 4180 CSV (CRLF line ends, a header row) of :func:`payout_rows`."""
    writer = csv.DictWriter(out, fieldnames=PAYOUT_CSV_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)


@dataclass(frozen=True)
class _Payouts:
    statement: negotiation_pb2.PayoutStatement
    index: int
    checkpoint: Checkpoint
    coalition_key_id: str


@app.command("payouts")
def payouts_export(
    ctx: typer.Context,
    agreement_id: Annotated[str, typer.Argument(help="The agreement whose payouts to export.")],
    csv_path: Annotated[
        str | None,
        typer.Option(
            "--csv",
            metavar="FILE|-",
            help="Write the lines as CSV for a payment processor, to FILE or (-) stdout.",
        ),
    ] = None,
    state: Annotated[
        Path | None,
        typer.Option(
            "--state",
            envvar="COALITION_AUDIT_STATE",
            help="State file of `audit verify` whose pinned keys to trust (default: per log).",
        ),
    ] = None,
    trusted_log_key: LogKeyOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Export an agreement's payout statement, verified, as a table, JSON or CSV.

    The statement must be the coalition's (its key is the ledger's entry 0, which must
    agree with the server's and any pinned key), logged at the entry the server names
    (inclusion proven against a checkpoint signed by the trusted log key), its lines
    committed by its lines_root, one per member, in one currency, adding up exactly to its
    total; otherwise exit 1 and nothing is written. CSV columns: agreement_id,
    member_key_id, item_count, amount (exact decimal, six places), currency, payment_model,
    rule, statement_index.
    """
    if csv_path == "-" and json_output:
        fail("--csv - and --json both write to stdout: choose one", EXIT_UNUSABLE)
    agreement_id = agreement_id.strip()
    pinned = _parse_vkey(trusted_log_key, "--log-key") if trusted_log_key else None
    try:
        found = run(ctx, _payouts(ctx, agreement_id, state, pinned))
    except AuditError as exc:
        fail(exc.message, EXIT_FAILED)
    except VerificationError as exc:
        fail(f"the payout statement of {agreement_id} does not verify: {exc}", EXIT_FAILED)
    rows = payout_rows(found.statement, found.index)
    if csv_path == "-":
        buffer = io.StringIO(newline="")
        write_payout_csv(buffer, rows)
        typer.echo(buffer.getvalue(), nl=False)
        return
    if csv_path is not None:
        _write_csv_file(Path(csv_path), rows)
        note(f"wrote {len(rows)} lines to {csv_path}")
    _print_payouts(found, rows, json_output)


async def _payouts(
    ctx: typer.Context, agreement_id: str, state_opt: Path | None, pinned: NoteVerifier | None
) -> _Payouts:
    async with globals_of(ctx).client() as client:
        info = await client.log_info()
        state_path = state_opt or default_state_path(info.origin)
        previous = load_state(state_path)
        trusted = pinned
        if trusted is None and previous is not None:
            trusted = _parse_vkey(previous.log_verifier_key, "the state file's log key")
        if trusted is None:
            trusted = _parse_vkey(info.verifier_key, "the server's log key")
            note(
                "trusting the server's log key (not pinned: run `coalition audit verify` to pin it)"
            )
        origin = previous.origin if previous is not None else info.origin
        expected = _expected_coalition_keys(info, previous, state_path)
        response = await client.payout_statement(agreement_id)

        # Entry 0, proven in the latest checkpoint: the coalition key is the ledger's own.
        zero = await client.inclusion_proof(0)
        try:
            cp = verify_checkpoint(zero.checkpoint, trusted, origin)
        except VerificationError as exc:
            raise AuditError(f"the latest checkpoint does not verify: {exc}") from None
        if previous is not None:
            await _check_consistency(client, TreeHead(previous.tree_size, previous.root_hash), cp)
        _check_inclusion(zero, 0, cp)
        replay = LedgerReplay(expected_coalition_keys=expected)
        replay.feed(0, bytes(zero.leaf))
        coalition = replay.coalition_key
        assert coalition is not None  # entry 0 replayed: it registered the coalition

        # The statement is the very envelope logged at the entry the server names.
        index = response.index
        if index >= cp.size:
            raise AuditError(
                f"the server says the payout statement is entry {index}, but its checkpoint "
                f"has only {cp.size} entries"
            )
        logged = await client.inclusion_proof(index, cp.size)
        _check_inclusion(logged, index, cp)
        envelope = ledger_pb2.LedgerLeaf.FromString(logged.leaf).envelope
        if envelope.SerializeToString(deterministic=True) != response.statement.SerializeToString(
            deterministic=True
        ):
            raise AuditError(
                f"the payout statement the server sent is not the envelope logged at entry {index}"
            )
    statement = verify_payout_statement(response, coalition, agreement_id)
    return _Payouts(statement, index, cp, coalition.key_id)


def _check_inclusion(
    proof: ledger_pb2.GetInclusionProofResponse, index: int, cp: Checkpoint
) -> None:
    """The entry's leaf is in the checkpoint's tree at ``index``; AuditError otherwise."""
    try:
        if proof.index != index or proof.tree_size != cp.size:
            raise ProofError(f"the server proved entry {proof.index} at size {proof.tree_size}")
        merkle.verify_inclusion(
            merkle.leaf_hash(bytes(proof.leaf)),
            index,
            cp.size,
            [bytes(h) for h in proof.proof],
            cp.root_hash,
        )
    except ProofError as exc:
        raise AuditError(
            f"entry {index}: its inclusion proof in the checkpoint of size {cp.size} does "
            f"not verify ({exc})",
            index=index,
        ) from None


def _write_csv_file(path: Path, rows: list[dict[str, str]]) -> None:
    """Write the CSV completely to a temporary file, then rename it into place."""
    directory = path.parent
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or exc}", EXIT_UNUSABLE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            write_payout_csv(f, rows)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fail(f"cannot write {path}: {exc.strerror or exc}", EXIT_UNUSABLE)


def _print_payouts(found: _Payouts, rows: list[dict[str, str]], json_output: bool) -> None:
    statement = found.statement
    total = statement.total
    if json_output:
        print_json(
            {
                "agreement_id": statement.agreement_id,
                "statement_index": found.index,
                "payment_model": payment_model_name(statement.payment_model),
                "rule": statement.rule,
                "total": {
                    "currency_code": total.currency_code,
                    "micros": total.micros,
                    "amount": amount_text(total.micros),
                },
                "lines_root": bytes(statement.lines_root).hex(),
                "lines": [
                    {
                        "member_key_id": line.member_key_id,
                        "item_count": line.item_count,
                        "currency_code": line.amount.currency_code,
                        "micros": line.amount.micros,
                        "amount": amount_text(line.amount.micros),
                    }
                    for line in statement.lines
                ],
                "coalition_key_id": found.coalition_key_id,
                "tree_size": found.checkpoint.size,
                "root_hash": b64(found.checkpoint.root_hash),
                "verified": True,
            }
        )
        return
    out = console()
    summary = Table(show_header=False, box=None, title=f"payouts of {statement.agreement_id}")
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("total", f"{amount_text(total.micros)} {total.currency_code}")
    summary.add_row("model", payment_model_name(statement.payment_model))
    summary.add_row("rule", statement.rule)
    summary.add_row("members", str(len(rows)))
    summary.add_row("statement", f"entry {found.index}, signed by {found.coalition_key_id}")
    summary.add_row(
        "verified",
        f"coalition signature, lines root, sum of lines; included in the checkpoint of "
        f"size {found.checkpoint.size}",
    )
    out.print(summary)
    table = Table()
    table.add_column("member")
    table.add_column("items", justify="right")
    table.add_column("amount", justify="right")
    table.add_column("currency")
    for row in rows:
        table.add_row(row["member_key_id"], row["item_count"], row["amount"], row["currency"])
    out.print(table)
