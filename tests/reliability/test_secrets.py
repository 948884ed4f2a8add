"""Secrets (issue #7, point 9): no key material in logs, errors, metrics or the ledger.

A real ``coalition-server`` process on 127.0.0.1 (port 0) with everything that could leak
turned up: JSON logs at DEBUG to a file, Prometheus metrics, mutual TLS, and key-encryption
keys that rotate and are destroyed within seconds. A representative workload runs through
the SDK: parties of every role join, contributors register, upload and consent, a lab
negotiates to an agreement, leases and fetches (data keys released to it by HPKE), a member
withdraws and the lab answers the notice, keys rotate and are destroyed, and a dozen kinds of
refused calls produce error messages (some over raw gRPC, to keep the status details bytes).

Then every secret is collected: the server's two signing keys and its TLS key (from their PEM
files), every key-encryption key (captured from the KEK directory while it lived), every
data key (opened by the lab from its HPKE releases, and unwrapped from the database rows with
the captured KEKs), every party's Ed25519 seed and derived X25519 (HPKE) private key, the mTLS
client key, and the plaintext of every uploaded item. Each is searched for in every encoding
(raw; hex, lower and upper case; base64 standard and URL-safe, padded or not, and at either
other byte alignment inside a longer encoded blob; Python's bytes repr; for key files, the
lines of the PEM body) in: the server's log and standard output, every error returned to a
client, every metrics scrape, every ledger entry (read through the public API), and the
database (the SQLite file with its WAL, and a dump of every table). None may be found. A
self-check plants secrets in a copy of the log and requires the scanner to find each one, so
the test cannot pass vacuously.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from coalition.auth import SIGNATURE_HEADER, CallSigner
from coalition.keys import SigningKey
from coalition.v1 import party_pb2
from coalition_server.config import SQLITE_FILE
from coalition_server.keys.provider import FileKeyProvider, WrappedKey
from coalition_server.keys.server_keys import COALITION_KEY_FILE, LOG_KEY_FILE
from coalition_server.store.items import data_key_associated_data
from tests.integration.certificates import CertificateAuthority

from .load import (
    Lab,
    Member,
    ServerProcess,
    Tally,
    Transport,
    data_key_of,
    full_replay,
    join_lab,
    join_member,
    lease_and_fetch,
    negotiate,
    start_server,
)

KEK_MAGIC: Final = b"coalition-kek-v1\n"
KEK_SIZE: Final = 32
ROTATION_SECONDS: Final = 20.0
"""Most seconds to wait for the server to rotate and destroy key-encryption keys."""

# --- the scanner ------------------------------------------------------------------------------


def _b64_cores(secret: bytes, alphabet: str) -> dict[str, bytes]:
    """The base64 of ``secret`` as it appears inside a longer encoded blob, at each of the
    three byte alignments: only the characters that depend on the secret alone."""
    encode = base64.b64encode if alphabet == "std" else base64.urlsafe_b64encode
    cores = {}
    for shift in (0, 1, 2):
        text = encode(bytes(shift) + secret + bytes(3))
        # Character i holds bits [6i, 6i + 6): it depends on the secret alone when those lie
        # within the secret's bits [8 * shift, 8 * (shift + len)).
        first, end = (8 * shift + 5) // 6, 8 * (shift + len(secret)) // 6
        cores[f"base64 {alphabet} in a blob at +{shift}"] = text[first:end]
    return cores


def encodings(secret: bytes, pem_lines: Iterable[bytes] = ()) -> dict[str, bytes]:
    """Every form ``secret`` could take in a text or binary artefact, by name."""
    forms = {
        "raw": secret,
        "hex": secret.hex().encode(),
        "HEX": secret.hex().upper().encode(),
        "base64": base64.b64encode(secret),
        "base64 unpadded": base64.b64encode(secret).rstrip(b"="),
        "base64url": base64.urlsafe_b64encode(secret),
        "base64url unpadded": base64.urlsafe_b64encode(secret).rstrip(b"="),
        **_b64_cores(secret, "std"),
        **_b64_cores(secret, "url"),
        "repr": repr(secret)[2:-1].encode(),
    }
    for number, line in enumerate(pem_lines):
        forms[f"PEM line {number + 1}"] = line
    return forms


ENCODING_KINDS: Final = len(encodings(bytes(32)))


@dataclass
class Secrets:
    """Every secret, by name, with its encodings."""

    patterns: dict[str, dict[str, bytes]] = field(default_factory=dict)

    def add(self, name: str, secret: bytes, pem_lines: Iterable[bytes] = ()) -> None:
        """Add a secret (at least 16 bytes: shorter ones would match by chance)."""
        assert len(secret) >= 16, name
        assert name not in self.patterns, name
        self.patterns[name] = encodings(secret, pem_lines)

    def add_pem_key(self, name: str, pem: bytes) -> None:
        """A private key file: its DER (whose base64 is the PEM body, line by line) and the
        private scalar or seed itself."""
        key = serialization.load_pem_private_key(pem, password=None)
        der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        lines = [
            line
            for line in pem.splitlines()
            if line and not line.startswith(b"-----") and len(line) >= 16
        ]
        self.add(f"{name} (PKCS#8 DER)", der, lines)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            self.add(f"{name} (scalar)", key.private_numbers().private_value.to_bytes(32, "big"))
        else:
            raw = key.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
            self.add(f"{name} (seed)", raw)

    def add_party(self, name: str, key: SigningKey) -> None:
        """A party's Ed25519 seed and the X25519 (HPKE) private key derived from it."""
        self.add(f"{name} seed", key.private_bytes_raw())
        hpke = key.encryption_private_key().private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        self.add(f"{name} HPKE private key", hpke)

    @property
    def count(self) -> int:
        """How many secrets."""
        return len(self.patterns)

    def scan(self, corpus: bytes) -> list[tuple[str, str]]:
        """Every (secret, encoding) found in ``corpus``."""
        return [
            (name, form)
            for name, forms in self.patterns.items()
            for form, pattern in forms.items()
            if pattern in corpus
        ]


# --- capturing key-encryption keys while they live ---------------------------------------------


class KekWatcher:
    """Reads every KEK file in the server's KEK directory every few milliseconds, so that
    keys destroyed during the run are known too (each lives for seconds at least)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.keys: dict[str, bytes] = {}
        self.seen_destroyed: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kek watcher", daemon=True)

    def __enter__(self) -> KekWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            time.sleep(0.005)

    def poll(self) -> None:
        """Read the KEK files now there; note the ones known before and gone now."""
        present = set()
        if self.directory.is_dir():
            for path in self.directory.glob("*.kek"):
                kek_id = path.stem
                present.add(kek_id)
                if kek_id in self.keys:
                    continue
                try:
                    content = path.read_bytes()
                except OSError:
                    continue
                # Skip a file being written or being overwritten with zeros.
                if content.startswith(KEK_MAGIC) and len(content) > len(KEK_MAGIC) + 2:
                    owner = int.from_bytes(content[len(KEK_MAGIC) : len(KEK_MAGIC) + 2], "big")
                    if len(content) == len(KEK_MAGIC) + 2 + owner + KEK_SIZE:
                        self.keys[kek_id] = content[-KEK_SIZE:]
        self.seen_destroyed |= set(self.keys) - present


# --- the workload -------------------------------------------------------------------------------


@dataclass
class Run:
    """What the workload produced, for the scan."""

    tally: Tally = field(default_factory=Tally)
    parties: dict[str, SigningKey] = field(default_factory=dict)
    members: list[Member] = field(default_factory=list)
    labs: list[Lab] = field(default_factory=list)
    contents: dict[str, bytes] = field(default_factory=dict)
    """Every uploaded (or attempted) plaintext, by item id or a label."""
    data_keys: dict[str, bytes] = field(default_factory=dict)
    raw_errors: list[bytes] = field(default_factory=list)
    """Status details and trailing metadata of refused raw gRPC calls, byte for byte."""
    scrapes: list[str] = field(default_factory=list)
    ledger: list[bytes] = field(default_factory=list)


@dataclass(frozen=True)
class Pki:
    """Mutual TLS for the run: the server's CA and pair, the clients' CA and one client pair."""

    server_ca: Path
    server_cert: Path
    server_key: Path
    client_ca: Path
    client_cert: Path
    client_key: Path


def _pki(directory: Path) -> Pki:
    directory.mkdir()
    server_ca = CertificateAuthority(directory, "server-ca", "server CA")
    client_ca = CertificateAuthority(directory, "client-ca", "client CA")
    server, client = server_ca.issue_server(), client_ca.issue_client()
    return Pki(
        server_ca.cert_path, server.cert, server.key, client_ca.cert_path, client.cert, client.key
    )


async def _raw_refusals(transport: Transport, key: SigningKey, run: Run) -> None:
    """Refused calls made over raw gRPC, keeping every byte of the status the server sent."""
    assert transport.root_certificates is not None
    assert transport.client_cert is not None
    assert transport.client_key is not None
    credentials = grpc.ssl_channel_credentials(
        transport.root_certificates, transport.client_key, transport.client_cert
    )
    method = "/coalition.v1.PartyService/WhoAmI"
    async with grpc.aio.secure_channel(transport.target, credentials) as channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
        raw = b""
        signed = CallSigner(key).metadata(method, raw)
        forged = tuple(
            (name, base64.b64encode(bytes(64)).decode() if name == SIGNATURE_HEADER else value)
            for name, value in CallSigner(key).metadata(method, raw)
        )
        cases: list[tuple[bytes, tuple[tuple[str, str], ...]]] = [
            (raw, ()),  # unsigned
            (raw, forged),  # a signature that does not verify
            (raw, signed),
            (raw, signed),  # the same signed call again: a replay
            (b"\xff\xff\xff", CallSigner(key).metadata(method, b"\xff\xff\xff")),  # garbage
        ]
        for request, metadata in cases:
            try:
                await call(request, metadata=metadata, timeout=10)
            except grpc.aio.AioRpcError as exc:
                run.raw_errors.append((exc.details() or "").encode())
                for name, value in exc.trailing_metadata() or ():
                    data = value if isinstance(value, bytes) else str(value).encode()
                    run.raw_errors.append(name.encode() + b"=" + data)
                run.raw_errors.append(str(exc.code()).encode())


async def _refusals(transport: Transport, run: Run, rng: random.Random) -> None:
    """A dozen kinds of refused calls through the SDK; each must be refused."""
    member, other = run.members[0], run.members[1]
    lab, rival = run.labs
    stranger = SigningKey.from_seed(rng.randbytes(32))
    run.parties["unregistered stranger"] = stranger
    secret_content = rng.randbytes(700)
    run.contents["content refused as a mismatch"] = secret_content
    their_item = sorted(other.contents)[0]
    lease = await lab.client.take_lease(lab.agreements[0])
    async with member.connect() as client, transport.client(stranger) as unregistered:
        registered = await client.register_items(
            [(os.urandom(32), len(secret_content), "text/plain", ["mismatch"])]
        )
        mismatched = registered.items[0].item_id
        attempts = {
            "register again": client.register(party_pb2.ROLE_CONTRIBUTOR, "again"),
            "an unregistered key": unregistered.who_am_i(),
            "content that does not match its commitment": client.upload(mismatched, secret_content),
            "upload to another's item": client.upload(their_item, secret_content),
            "a lab's call by a contributor": client.take_lease(lab.agreements[0]),
            "a lease on no agreement": lab.client.take_lease("0" * 64),
            "a lease on another lab's agreement": rival.client.take_lease(lab.agreements[0]),
            "another lab's lease": _fetch_all(rival, lease.lease.lease_id),
            "a notice that does not exist": lab.client.acknowledge("0" * 64, item_ids=[their_item]),
            "an unknown party": client.party("0" * 64),
            "an entry beyond the log": client.entry(10**9),
        }
        for name, attempt in attempts.items():
            await _refused(run, name, attempt)
    await _raw_refusals(transport, member.key, run)


async def _refused(run: Run, name: str, attempt: Awaitable[object]) -> None:
    """``attempt`` must be refused; its error is kept for the scan."""
    tally = Tally()
    assert await tally.attempt(name, attempt) is None, f"{name} was not refused"
    assert tally.errors, f"{name} failed without an error from the server: {tally.unexpected}"
    run.tally.errors.extend(tally.errors)


async def _fetch_all(lab: Lab, lease_id: str) -> int:
    return len([item async for item in lab.client.fetch_items(lease_id)])


async def _until(condition: Callable[[], bool], seconds: float) -> None:
    """Poll ``condition`` (set by another task or thread) until it holds or time is up."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)


async def _workload(server: ServerProcess, pki: Pki, watcher: KekWatcher) -> Run:
    run = Run()
    rng = random.Random(9)
    transport = Transport(
        server.target,
        root_certificates=pki.server_ca.read_bytes(),
        client_cert=pki.client_cert.read_bytes(),
        client_key=pki.client_key.read_bytes(),
    )
    tally = run.tally
    auditor_key = SigningKey.from_seed(rng.randbytes(32))
    run.parties["auditor"] = auditor_key
    async with transport.client(auditor_key) as auditor:
        await tally.attempt("join", auditor.register(party_pb2.ROLE_AUDITOR, "auditor"))
        try:
            for number in range(6):
                member = await join_member(transport, tally, rng, items=2, name=f"m{number}")
                run.members.append(member)
            run.labs = [await join_lab(transport, tally, name) for name in ("lab", "rival")]
            lab = run.labs[0]
            agreement = await negotiate(lab, tally)
            assert agreement is not None, tally.unexpected
            fetched = await lease_and_fetch(lab, agreement, tally)
            assert fetched is not None, tally.unexpected
            assert fetched.items
            run.scrapes.append(await asyncio.to_thread(server.scrape))

            await _refusals(transport, run, rng)

            # A member withdraws: its KEK is retired, the lab is notified and answers.
            withdrawer = run.members[0]
            async with withdrawer.connect() as client:
                withdrawn = await tally.attempt("withdraw", client.withdraw(everything=True))
                assert withdrawn is not None
                assert withdrawn.notified_labs == 1
                await _refused(run, "withdraw again", client.withdraw(everything=True))
            await _until(lambda: lab.receipts >= 1, 15.0)
            assert lab.receipts == 1, tally.unexpected
            # Renewal re-checks consent: the withdrawn member's items are no longer released.
            await lease_and_fetch(lab, agreement, tally)

            # Keys rotate by age and are destroyed after retention; a member joins after.
            await _until(lambda: len(watcher.seen_destroyed) >= 2, ROTATION_SECONDS)
            run.members.append(await join_member(transport, tally, rng, items=1, name="late"))
            await asyncio.sleep(0.5)  # a metrics refresh and a retention pass after it
            run.scrapes.append(await asyncio.to_thread(server.scrape))

            replay = await full_replay(auditor)
            async for entry in auditor.entries(0, replay.size):
                run.ledger.append(bytes(entry.leaf) + bytes(entry.leaf_hash))
            info = await auditor.log_info()
            checkpoint = await auditor.checkpoint()
            run.ledger += [info.SerializeToString(), checkpoint.SerializeToString()]
        finally:
            for lab in run.labs:
                await lab.close()

    for member_number, member in enumerate(run.members):
        run.parties[f"member {member_number}"] = member.key
        run.contents.update(member.contents)
    for lab_number, lab in enumerate(run.labs):
        run.parties[f"lab {lab_number}"] = lab.key
        for release in lab.releases:
            for item in release.items:
                run.data_keys[f"data key {item.item_id} (HPKE release)"] = data_key_of(
                    lab.key, release, item
                )
    assert not tally.unexpected, tally.unexpected
    return run


def _database(data_dir: Path) -> tuple[bytes, str, list[tuple[str, str, str, bytes]], set[str]]:
    """The SQLite file and its WAL, a dump of every table, the wrapped data keys (item,
    owner, KEK, ciphertext) and the ids of every KEK ever made."""
    files = sorted(data_dir.glob(f"{SQLITE_FILE}*"))
    raw = b"".join(path.read_bytes() for path in files)
    with sqlite3.connect(f"file:{data_dir / SQLITE_FILE}?mode=ro", uri=True) as conn:
        dump = "\n".join(conn.iterdump())
        wrapped = [
            (str(item_id), str(owner), str(kek_id), bytes(blob))
            for item_id, owner, kek_id, blob in conn.execute(
                "SELECT c.item_id, k.owner_key_id, c.kek_id, c.wrapped_data_key "
                "FROM item_content c JOIN keks k ON k.kek_id = c.kek_id"
            )
        ]
        keks = {str(row[0]) for row in conn.execute("SELECT kek_id FROM keks")}
    return raw, dump, wrapped, keks


def _unwrap(
    captured: Mapping[str, bytes], wrapped: list[tuple[str, str, str, bytes]], directory: Path
) -> dict[str, bytes]:
    """The data keys in the database's rows, unwrapped with the captured KEKs."""
    provider = FileKeyProvider(directory)
    for kek_id, kek in captured.items():
        path = directory / f"{kek_id}.kek"
        owner = b"captured"
        path.write_bytes(KEK_MAGIC + len(owner).to_bytes(2, "big") + owner + kek)
        path.chmod(0o600)
    return {
        f"data key {item_id} (database)": provider.unwrap(
            WrappedKey(kek_id, blob), data_key_associated_data(item_id, owner)
        )
        for item_id, owner, kek_id, blob in wrapped
    }


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ServerProcess, Pki]]:
    pki = _pki(tmp_path / "pki")
    instance = start_server(
        tmp_path,
        "--log-format", "json",
        "--log-level", "DEBUG",
        "--tls-cert", str(pki.server_cert),
        "--tls-key", str(pki.server_key),
        "--tls-client-ca", str(pki.client_ca),
        "--kek-max-age", "3s",
        "--kek-retention", "1s",
        "--retention-check-seconds", "0.5",
        "--metrics-refresh-seconds", "0.2",
        metrics=True,
    )  # fmt: skip
    try:
        yield instance, pki
    finally:
        instance.stop()


async def test_no_secret_in_logs_errors_metrics_ledger_or_database(
    server: tuple[ServerProcess, Pki], tmp_path: Path, figure: Callable[[str], None]
) -> None:
    process, pki = server
    started = time.perf_counter()
    with KekWatcher(process.data_dir / "keks") as watcher:
        run = await _workload(process, pki, watcher)
        process.stop()
    watcher.poll()
    stdout, log = process.output()
    database, dump, wrapped, kek_ids = _database(process.data_dir)

    # Every KEK the server ever made was captured; at least two were destroyed meanwhile.
    assert kek_ids
    assert set(watcher.keys) == kek_ids
    assert len(watcher.seen_destroyed) >= 2
    unwrap_dir = tmp_path / "captured-keks"
    unwrap_dir.mkdir(mode=0o700)
    run.data_keys.update(_unwrap(watcher.keys, wrapped, unwrap_dir))
    # Every uploaded item's data key is known (from the lab's releases or the database).
    known = {name.split()[2] for name in run.data_keys}
    uploaded = {item_id for member in run.members for item_id in member.contents}
    assert uploaded <= known, uploaded - known

    secrets = Secrets()
    for name, path in (
        ("log signing key", process.data_dir / LOG_KEY_FILE),
        ("coalition signing key", process.data_dir / COALITION_KEY_FILE),
        ("server TLS key", pki.server_key),
        ("client TLS key", pki.client_key),
    ):
        secrets.add_pem_key(name, path.read_bytes())
    for kek_id, kek in sorted(watcher.keys.items()):
        secrets.add(f"KEK {kek_id}", kek)
    distinct = {data_key: name for name, data_key in sorted(run.data_keys.items(), reverse=True)}
    for data_key, name in sorted(distinct.items(), key=lambda pair: pair[1]):
        secrets.add(name, data_key)
    for name, key in sorted(run.parties.items()):
        secrets.add_party(name, key)
    for name, content in sorted(run.contents.items()):
        secrets.add(f"plaintext of {name}", content)

    errors = "\n".join(
        f"{e.code.name} {e.reason} {e.message} {sorted(e.metadata.items())} {e}"
        for e in run.tally.errors
    ).encode() + b"\n".join(run.raw_errors)
    metrics = "\n".join(run.scrapes).encode()
    ledger = b"".join(run.ledger)
    corpora = {
        "server log": log,
        "server stdout": stdout,
        "errors returned to clients": errors,
        "metrics": metrics,
        "ledger": ledger,
        "database file": database,
        "database dump": dump.encode(),
    }
    # The artefacts are what they should be: a scan of nothing would prove nothing.
    assert log.count(b'"level": "DEBUG"') > 50
    # The drivers' DEBUG lines print SQL parameters (row values): kept out at any level.
    assert b'"logger": "aiosqlite"' not in log
    assert b'"caller_key_id"' in log
    assert len(run.tally.errors) >= 12
    assert len(run.raw_errors) >= 10
    reasons = {e.reason for e in run.tally.errors}
    assert len(reasons) >= 10, reasons
    assert b"coalition_grpc_requests_total" in metrics
    assert len(run.ledger) > 40

    _self_check(secrets, log)
    found = {name: secrets.scan(corpus) for name, corpus in corpora.items()}
    seconds = time.perf_counter() - started
    sizes = ", ".join(f"{len(corpus):,} B of {name}" for name, corpus in corpora.items())
    hits = sum(len(h) for h in found.values())
    summary = (
        f"\nsecrets: {secrets.count} secrets × {ENCODING_KINDS} encodings (+ PEM lines) "
        f"scanned over {len(log) + len(stdout):,} bytes of logs, {len(ledger):,} of ledger, "
        f"{len(metrics):,} of metrics, {len(errors):,} of errors ({len(run.tally.errors)} "
        f"refusals, {len(reasons)} reasons) and {len(database) + len(dump):,} of database: "
        f"{hits} found"
        f"\nsecrets: {sizes}; {len(watcher.keys)} KEKs captured ({len(watcher.seen_destroyed)} "
        f"destroyed during the run), {len(distinct)} data keys; {seconds:.1f} s"
    )
    for line in summary.strip().splitlines():
        figure(line)

    leaks = [f"{secret} ({form}) in {where}" for where, h in found.items() for secret, form in h]
    assert not leaks, "secrets found:\n" + "\n".join(leaks[:50])


def _self_check(secrets: Secrets, log: bytes) -> None:
    """Planted in a copy of the log, each secret's every encoding is found, including base64
    of a blob the secret sits inside at each alignment."""
    rng = random.Random(3)
    name = "log signing key (seed)"
    forms = secrets.patterns[name]
    seed = forms["raw"]
    for form, pattern in forms.items():
        at = rng.randrange(len(log))
        planted = log[:at] + pattern + log[at:]
        assert (name, form) in secrets.scan(planted), f"the scanner missed {form}"
    for shift in (0, 1, 2):
        blob = os.urandom(shift) + seed + os.urandom(5)
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            planted = log + b'{"message": "' + encode(blob) + b'"}'
            assert any(n == name for n, _ in secrets.scan(planted)), f"missed a blob at +{shift}"
    assert not any(n == name for n, _ in secrets.scan(log + os.urandom(64)))
