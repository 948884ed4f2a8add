"""Checkpoints and proofs verify with an independent implementation: Go's sumdb note and tlog.

The Go program in ``go/interop.go`` uses ``golang.org/x/mod/sumdb/note`` to open the signed
checkpoint and ``golang.org/x/mod/sumdb/tlog`` (CheckRecord, CheckTree) to check inclusion
and consistency proofs built here with CompactRange and proof plans. It is built once per
session, offline, in GOPATH mode against the Debian package golang-golang-x-mod-dev (or any
GOPATH named by COALITION_GOPATH). Tests skip, saying why, where Go or x/mod is missing.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from coalition.checkpoint import Checkpoint, sign_checkpoint, verify_checkpoint
from coalition.keys import SigningKey
from coalition.merkle import (
    CompactRange,
    NodeId,
    consistency_plan,
    inclusion_plan,
    leaf_hash,
    root_plan,
)
from coalition.note import NoteSigner, NoteVerifier, verify_note

GO_SOURCE = Path(__file__).resolve().parent / "go" / "interop.go"
GOPATH = Path(os.environ.get("COALITION_GOPATH", "/usr/share/gocode"))
XMOD = GOPATH / "src" / "golang.org" / "x" / "mod" / "sumdb"
ORIGIN = "coalition.example/log"
SIZES = (1, 7, 8, 33, 100)


@pytest.fixture(scope="session")
def interop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of the compiled Go checker."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("Go toolchain not found on PATH (install golang-go)")
    if not (XMOD / "note" / "note.go").is_file() or not (XMOD / "tlog" / "tlog.go").is_file():
        pytest.skip(f"golang.org/x/mod sources not found under {GOPATH} (golang-golang-x-mod-dev)")
    work = tmp_path_factory.mktemp("go-interop")
    binary = work / "interop"
    env = {
        **os.environ,
        # GOPATH mode and no network: build only against the packaged sources.
        "GO111MODULE": "off",
        "GOPATH": str(GOPATH),
        "GOCACHE": str(work / "cache"),
        "GOFLAGS": "",
        "GOPROXY": "off",
        "CGO_ENABLED": "0",
    }
    result = subprocess.run(
        [go, "build", "-o", str(binary), str(GO_SOURCE)],
        cwd=GO_SOURCE.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"go build failed:\n{result.stderr}"
    return binary


def _run(binary: Path, request: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _accepts(binary: Path, request: dict[str, Any]) -> None:
    result = _run(binary, request)
    assert result.returncode == 0, f"Go rejected: {result.stderr}"
    assert result.stdout.strip() == "ok"


def _rejects(binary: Path, request: dict[str, Any], why: str) -> None:
    result = _run(binary, request)
    assert result.returncode == 1, f"Go accepted a tampered request ({why})"
    assert why in result.stderr, result.stderr


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _flip(data: bytes) -> bytes:
    return bytes([data[0] ^ 0x01]) + data[1:]


@dataclass
class Log:
    """A log built the way the server builds it: CompactRange appends and a node store."""

    signer: NoteSigner
    leaves: list[bytes]
    store: dict[NodeId, bytes]
    roots: list[bytes]  # roots[n] = root of the first n leaves, from root plans

    @classmethod
    def build(cls, size: int) -> Log:
        leaves = [f"statement {i}".encode() for i in range(size)]
        cr = CompactRange.empty()
        store: dict[NodeId, bytes] = {}
        for leaf in leaves:
            store.update(cr.append(leaf_hash(leaf)))
        roots = [root_plan(n).assemble(store)[0] for n in range(size + 1)]
        assert roots[size] == cr.root()
        return cls(NoteSigner(ORIGIN, SigningKey.generate()), leaves, store, roots)

    @property
    def size(self) -> int:
        return len(self.leaves)

    def checkpoint(self) -> str:
        cp = Checkpoint(ORIGIN, self.size, self.roots[self.size])
        return sign_checkpoint(cp, self.signer)

    def request(self) -> dict[str, Any]:
        """Every inclusion proof and every consistency proof into the current tree."""
        n = self.size
        return {
            "mode": "verify",
            "verifier_key": self.signer.verifier.verifier_key,
            "note": self.checkpoint(),
            "origin": ORIGIN,
            "inclusion": [
                {
                    "leaf": _b64(self.leaves[i]),
                    "index": i,
                    "proof": [_b64(h) for h in inclusion_plan(i, n).assemble(self.store)],
                }
                for i in range(n)
            ],
            "consistency": [
                {
                    "old_size": m,
                    "old_root": _b64(self.roots[m]),
                    "proof": [_b64(h) for h in consistency_plan(m, n).assemble(self.store)],
                }
                for m in range(1, n + 1)
            ],
        }


@pytest.fixture(scope="module", params=SIZES, ids=lambda n: f"size{n}")
def log(request: pytest.FixtureRequest) -> Log:
    return Log.build(request.param)


def test_go_verifies_checkpoint_and_all_proofs(interop: Path, log: Log) -> None:
    req = log.request()
    # Sanity: the same note verifies here too.
    verify_checkpoint(req["note"], log.signer.verifier, origin=ORIGIN)
    _accepts(interop, req)


def test_go_rejects_tampered_checkpoint(interop: Path, log: Log) -> None:
    req = log.request()
    note: str = req["note"]
    body = note.partition("\n\n")[0]
    root_line = body.split("\n")[2]
    forged_root = _b64(_flip(base64.b64decode(root_line)))
    _rejects(interop, {**req, "note": note.replace(root_line, forged_root)}, "note")
    grown = note.replace(f"\n{log.size}\n", f"\n{log.size + 1}\n")
    _rejects(interop, {**req, "note": grown}, "note")
    # A note signed under the same name by another key.
    impostor = NoteSigner(ORIGIN, SigningKey.generate())
    forged = sign_checkpoint(Checkpoint(ORIGIN, log.size, log.roots[log.size]), impostor)
    _rejects(interop, {**req, "note": forged}, "note")
    # Origin the verifier does not expect.
    _rejects(interop, {**req, "origin": "other.example/log"}, "origin")


def test_go_rejects_tampered_inclusion_proof(interop: Path, log: Log) -> None:
    req = log.request()
    inc = req["inclusion"][log.size // 2]
    base = {**req, "consistency": []}
    _rejects(interop, {**base, "inclusion": [{**inc, "leaf": _b64(b"forged")}]}, "inclusion")
    if inc["proof"]:
        first = base64.b64decode(inc["proof"][0])
        tampered = [_b64(_flip(first)), *inc["proof"][1:]]
        _rejects(interop, {**base, "inclusion": [{**inc, "proof": tampered}]}, "inclusion")
        _rejects(interop, {**base, "inclusion": [{**inc, "proof": inc["proof"][:-1]}]}, "inclusion")
    if log.size > 1:
        other = (inc["index"] + 1) % log.size
        _rejects(interop, {**base, "inclusion": [{**inc, "index": other}]}, "inclusion")


def test_go_rejects_tampered_consistency_proof(interop: Path, log: Log) -> None:
    req = log.request()
    base = {**req, "inclusion": []}
    if log.size == 1:
        c = req["consistency"][0]
        _rejects(interop, {**base, "consistency": [{**c, "old_root": _b64(bytes(32))}]}, "consist")
        return
    c = req["consistency"][log.size // 2 - 1]  # a proper prefix: non-empty proof
    assert c["proof"]
    tampered = [*c["proof"][:-1], _b64(_flip(base64.b64decode(c["proof"][-1])))]
    _rejects(interop, {**base, "consistency": [{**c, "proof": tampered}]}, "consistency")
    _rejects(interop, {**base, "consistency": [{**c, "proof": c["proof"][1:]}]}, "consistency")
    forged_old = _b64(_flip(base64.b64decode(c["old_root"])))
    _rejects(interop, {**base, "consistency": [{**c, "old_root": forged_old}]}, "consistency")


def test_python_verifies_go_signed_notes(interop: Path) -> None:
    log = Log.build(13)
    body = Checkpoint(ORIGIN, log.size, log.roots[log.size]).body()
    result = _run(interop, {"mode": "sign", "name": ORIGIN, "text": body})
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    verifier = NoteVerifier.parse(out["verifier_key"])
    assert verifier.name == ORIGIN
    cp = verify_checkpoint(out["note"], verifier, origin=ORIGIN)
    assert cp == Checkpoint(ORIGIN, 13, log.roots[13])
    # And a cosigned note: Python's signature appended to Go's, each verifier finds its own.
    ours = log.signer.sign(body).partition("\n\n")[2]
    cosigned = out["note"] + ours
    assert verify_note(cosigned, [verifier]) == body
    assert verify_note(cosigned, [log.signer.verifier]) == body
    _accepts(
        interop,
        {
            "mode": "verify",
            "verifier_key": log.signer.verifier.verifier_key,
            "note": cosigned,
            "origin": ORIGIN,
        },
    )
    _rejects(
        interop,
        {"mode": "verify", "verifier_key": log.signer.verifier.verifier_key, "note": out["note"]},
        "note",
    )
