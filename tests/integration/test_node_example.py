"""The Node.js lab example (examples/node) against a real server, and its shared test vectors.

The example is a lab client written from the protocol docs alone: it signs calls and
statements, negotiates, leases and verifies checkpoints and proofs with Node's own crypto. These
tests run it against a `coalition-server` process seeded through the Python SDK (members also
ratify through it when the policy asks them to), and check its C2SP checkpoint verifier refuses
tampered notes.

Without node/npm, or without `npm ci --prefix examples/node`, they skip with the reason; with
COALITION_REQUIRE_NODE=1 (set by CI) they fail instead.

``python -m tests.integration.test_node_example`` rewrites examples/node/test/fixtures.json,
the vectors the Node unit tests check against; :func:`test_fixtures_are_current` keeps them true.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coalition import merkle
from coalition.auth import call_message
from coalition.checkpoint import Checkpoint, sign_checkpoint
from coalition.client import Client, covered_items_root, price_floor
from coalition.keys import SigningKey
from coalition.note import NoteSigner, NoteVerifier
from coalition.statements import sign_statement, statement_id
from coalition.v1 import negotiation_pb2, party_pb2, terms_pb2

from .processes import ServerProcess, start_server

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "examples" / "node"
FIXTURES = NODE_DIR / "test" / "fixtures.json"
REQUIRE_NODE = os.environ.get("COALITION_REQUIRE_NODE") == "1"
NODE_TIMEOUT = 120.0
MIN_NODE_MAJOR = 18  # node:test, util.parseArgs, Ed25519 in node:crypto

MEMBERS = 6  # above the catalogue's default minimum group size (5)
ITEMS_PER_MEMBER = 3
TAG = "poetry"


# --- shared test vectors --------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def python_fixtures() -> dict[str, Any]:
    """Deterministic vectors computed by the Python SDK, for the Node unit tests."""
    party = SigningKey.from_seed(bytes(range(32)))
    log = SigningKey.from_seed(bytes(range(32, 64)))

    nonce = bytes(range(16))
    request = b"\x0a\x03abc"
    method = "/coalition.v1.PartyService/WhoAmI"
    timestamp_ms = 1_763_849_000_123
    message = call_message(method, timestamp_ms, nonce, request)

    # Every kind of field the lab signs: enums, packed repeated enums, int64, nested messages,
    # durations, bytes; the Node test adds explicit defaults that must not be encoded.
    statement = negotiation_pb2.NegotiationRequest(
        terms=terms_pb2.LicenceTerms(
            purposes=[terms_pb2.PURPOSE_TRAIN_GENAI, terms_pb2.PURPOSE_SEARCH],
            scope=terms_pb2.ItemFilter(tags=["poetry"], min_item_count=2),
            payment_model=terms_pb2.PAYMENT_MODEL_PURCHASE,
            price_per_item=terms_pb2.Money(currency_code="USD", micros=1_250_000),
        ),
        nonce=nonce,
    )
    statement.terms.licence_duration.seconds = 365 * 86400
    statement.terms.lease_duration.seconds = 86400
    statement.created_time.seconds = 1_763_849_000
    statement.created_time.nanos = 123_000_000
    envelope = sign_statement(statement, party)

    origin = "example.test/log"
    leaves = [f"leaf {i}".encode() for i in range(7)]
    tree = merkle.InMemoryTree(leaves)
    signer = NoteSigner(origin, log)
    note = sign_checkpoint(Checkpoint(origin, tree.size, tree.root()), signer)
    item_ids = [hashlib.sha256(bytes([i])).hexdigest()[:32] for i in range(5)]

    return {
        "_about": "Written by `python -m tests.integration.test_node_example`; do not edit.",
        "key": {
            "seed_hex": bytes(range(32)).hex(),
            "public_key_b64": _b64(party.public_key.raw),
            "key_id": party.key_id,
            "x25519_public_key_b64": _b64(party.encryption_public_key_raw()),
        },
        "call": {
            "method": method,
            "timestamp_ms": timestamp_ms,
            "nonce_b64": _b64(nonce),
            "request_b64": _b64(request),
            "message_b64": _b64(message),
            "signature_b64": _b64(party.sign(message)),
        },
        "statement": {
            "payload_type": envelope.payload_type,
            "payload_hex": envelope.payload.hex(),
            "statement_id": statement_id(envelope),
            "signature_b64": _b64(envelope.signatures[0].sig),
        },
        "note": {
            "origin": origin,
            "verifier_key": signer.verifier.verifier_key,
            "checkpoint": note,
            "tree_size": tree.size,
            "root_hash_b64": _b64(tree.root()),
            "other_verifier_key": NoteVerifier(
                origin, SigningKey.from_seed(bytes(32)).public_key
            ).verifier_key,
        },
        "inclusion": {
            "leaf_b64": _b64(leaves[3]),
            "index": 3,
            "tree_size": tree.size,
            "proof_b64": [_b64(h) for h in tree.inclusion_proof(3)],
        },
        "covered_items": {"item_ids": item_ids, "root_b64": _b64(covered_items_root(item_ids))},
    }


def test_fixtures_are_current() -> None:
    """The Node unit tests check against what the Python SDK computes today."""
    assert json.loads(FIXTURES.read_text()) == python_fixtures(), (
        "examples/node/test/fixtures.json is stale: run "
        "`.venv/bin/python -m tests.integration.test_node_example`"
    )


# --- running node ---------------------------------------------------------------------------


def _node() -> str:
    """The node executable, once examples/node's dependencies are installed; skip (or fail
    under COALITION_REQUIRE_NODE=1) otherwise."""
    node, npm = shutil.which("node"), shutil.which("npm")
    reason = ""
    if node is None or npm is None:
        reason = "node and npm are needed for the Node.js example (examples/node)"
    elif _node_major(node) < MIN_NODE_MAJOR:
        reason = f"the Node.js example needs node {MIN_NODE_MAJOR} or later"
    elif not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        reason = "examples/node has no node_modules: run `npm ci --prefix examples/node`"
    if reason:
        if REQUIRE_NODE:
            pytest.fail(f"{reason} (COALITION_REQUIRE_NODE=1)")
        pytest.skip(reason)
    assert node is not None
    return node


def _node_major(node: str) -> int:
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    try:
        return int(version.strip().lstrip("v").split(".")[0])
    except ValueError:
        return 0


def _inherited_env() -> dict[str, str]:
    # The example reads COALITION_SERVER, COALITION_KEY, COALITION_LOG_KEY...: only ours count.
    return {k: v for k, v in os.environ.items() if not k.startswith("COALITION_")}


def _run(
    args: list[str], *, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_node(), *args],
        cwd=NODE_DIR,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT,
        env={**_inherited_env(), **(env or {})},
        check=False,
    )


def _events(stdout: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = [json.loads(line) for line in stdout.splitlines() if line]
    return events


def _one(events: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [e for e in events if e["event"] == name]
    assert len(found) == 1, f"expected one {name!r} event in {events}"
    return found[0]


def test_node_unit_tests() -> None:
    """`node --test` offline: keys, call signing, canonical encoding, notes, proofs."""
    result = _run(["--test", "test/"], env={"COALITION_SERVER": ""})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# fail 0" in result.stdout


# --- against a live server ------------------------------------------------------------------


async def _seed(target: str) -> list[SigningKey]:
    """Members with stored items and consent for train-genai at floors from 0.50 to 1.00;
    returns their keys."""
    keys = [SigningKey.generate() for _ in range(MEMBERS)]
    for i, key in enumerate(keys):
        async with Client(target, key) as member:
            await member.register(party_pb2.ROLE_CONTRIBUTOR, f"member {i}")
            contents = [f"member {i}, poem {j}\n".encode() for j in range(ITEMS_PER_MEMBER)]
            registered = await member.register_items(
                [(hashlib.sha256(c).digest(), len(c), "text/plain", [TAG]) for c in contents]
            )
            for item, content in zip(registered.items, contents, strict=True):
                await member.upload(item.item_id, content)
            await member.grant_consent(
                tag=TAG,
                purposes=["train-genai"],
                floors=[price_floor("purchase", 500_000 + 100_000 * i)],
            )
    return keys


async def _approve(target: str, members: list[SigningKey], negotiation_id: str) -> int:
    """Every covered member approves the agreement; returns how many voted."""
    voted = 0
    for key in members:
        async with Client(target, key) as member:
            open_votes = [r.negotiation_id for r in await member.ratifications()]
            if negotiation_id in open_votes:
                await member.cast_ballot(negotiation_id, True)
                voted += 1
    return voted


async def _log(target: str) -> tuple[str, str]:
    async with Client(target) as auditor:
        info = await auditor.log_info()
        checkpoint = await auditor.checkpoint()
    return info.verifier_key, checkpoint.checkpoint


def _seeded_server(tmp: Path, policy: str | None = None) -> tuple[ServerProcess, list[SigningKey]]:
    """A `coalition-server` process on SQLite, port 0, with a seeded pool; ``policy`` is the
    YAML of its bargaining policy (default: the built-in one)."""
    with pytest.MonkeyPatch.context() as patch:
        if policy is not None:
            (tmp / "policy.yaml").write_text(policy)
            patch.setenv("COALITION_POLICY", str(tmp / "policy.yaml"))
        server = start_server(f"sqlite+aiosqlite:///{tmp / 'coalition.db'}", tmp / "data")
    try:
        return server, asyncio.run(_seed(server.target))
    except BaseException:
        server.stop()
        raise


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with the default policy (no ratification) and a seeded pool."""
    _node()
    server, _ = _seeded_server(tmp_path_factory.mktemp("node-example"))
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.slow
def test_node_lab_flow(live_server: ServerProcess, tmp_path: Path) -> None:
    """The example registers, reads the catalogue, negotiates to an agreement within its
    budget, signs it, leases, and verifies the checkpoint and the agreement's inclusion."""
    key = tmp_path / "lab.key"
    result = _run(
        ["src/cli.js", "run", "--server", live_server.target, "--key", str(key), "--budget", "1"]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    events = _events(result.stdout)
    assert [e for e in events if e["event"] == "error"] == []

    # Its key file is the Python SDK's format, and the server knows it as a lab.
    lab = SigningKey.load(key)
    assert _one(events, "key")["key_id"] == lab.key_id
    assert _one(events, "registered")["receipt_verified"] is True

    catalogue = _one(events, "catalogue")
    assert catalogue["rows"][0]["member_count"] == MEMBERS
    assert catalogue["rows"][0]["item_count"] == MEMBERS * ITEMS_PER_MEMBER

    lab_moves = [e for e in events if e["event"] == "move" and e["by"] == "lab"]
    assert lab_moves[-1]["kind"] == "accept"
    assert all(m["price_micros"] <= 1_000_000 for m in lab_moves)

    agreement = _one(events, "agreement")
    assert agreement["state"] == "NEGOTIATION_STATE_FINALIZED"
    assert 0 < agreement["price_micros"] <= 1_000_000
    assert 0 < agreement["covered_item_count"] <= MEMBERS * ITEMS_PER_MEMBER
    lease = _one(events, "lease")
    assert lease["agreement_id"] == agreement["agreement_id"]
    assert lease["covered_item_count"] == agreement["covered_item_count"]

    checkpoint = _one(events, "checkpoint_verified")
    assert checkpoint["origin"] == "coalition.test/log"
    inclusion = _one(events, "inclusion_verified")
    assert inclusion["index"] == agreement["index"]
    assert int(inclusion["tree_size"]) > int(agreement["index"])
    assert _one(events, "done")["agreement_id"] == agreement["agreement_id"]

    # A second run with the same key finds the lab registered and strikes another deal.
    again = _run(
        ["src/cli.js", "run", "--server", live_server.target, "--key", str(key), "--budget", "1"]
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert _one(_events(again.stdout), "registered")["already"] is True


@pytest.mark.slow
def test_node_flow_test_suite(live_server: ServerProcess) -> None:
    """`npm test` with COALITION_SERVER set: the unit tests and the flow test."""
    result = _run(["--test", "test/"], env={"COALITION_SERVER": live_server.target})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# skipped 0" in result.stdout
    assert "# fail 0" in result.stdout


@pytest.mark.slow
def test_node_rejects_tampered_checkpoints(live_server: ServerProcess, tmp_path: Path) -> None:
    verifier_key, note = asyncio.run(_log(live_server.target))
    verify = ["src/cli.js", "verify-checkpoint", "--log-key", verifier_key, "-"]

    genuine = _run(verify, stdin=note)
    assert genuine.returncode == 0, genuine.stdout + genuine.stderr
    verified = _one(_events(genuine.stdout), "checkpoint_verified")
    origin, size, root = note.split("\n")[:3]
    assert [verified[k] for k in ("origin", "tree_size", "root_hash")] == [origin, size, root]

    forged_root = _b64(hashlib.sha256(b"another tree").digest())
    other = NoteSigner(origin, SigningKey.generate())
    tampered = {
        "size": note.replace(f"\n{size}\n", f"\n{int(size) + 1}\n", 1),
        "root": note.replace(f"\n{root}\n", f"\n{forged_root}\n", 1),
        "re-signed by another key": other.sign(note.split("\n\n")[0] + "\n"),
        "signature removed": note.split("\n\n")[0] + "\n\n",
    }
    for what, bad in tampered.items():
        assert bad != note
        result = _run(verify, stdin=bad)
        assert result.returncode == 1, f"{what}: {result.stdout}{result.stderr}"
        assert _one(_events(result.stdout), "error")["message"], what

    # Pinning a log key the server does not have stops the lab before it does anything.
    wrong = NoteVerifier(origin, SigningKey.generate().public_key).verifier_key
    lab_key = str(tmp_path / "lab.key")
    pinned = _run(
        ["src/cli.js", "run", "--server", live_server.target, "--key", lab_key, "--log-key", wrong]
    )
    assert pinned.returncode == 1
    assert "pinned" in _one(_events(pinned.stdout), "error")["message"]


@pytest.mark.slow
def test_node_lab_waits_for_ratification(tmp_path: Path) -> None:
    """Under a policy where members ratify, the lab waits while they vote (here through the
    Python SDK), then leases and verifies as before."""
    _node()
    policy = "ratification:\n  required: true\n  basis: items\n  threshold: 0.5\n"
    server, members = _seeded_server(tmp_path, policy)
    command = ["src/cli.js", "run", "--server", server.target, "--key", str(tmp_path / "l.key")]
    process = subprocess.Popen(
        [_node(), *command, "--budget", "1", "--ratification-wait", "60"],
        cwd=NODE_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_inherited_env(),
    )
    try:
        assert process.stdout is not None
        lines: list[str] = []
        # Read up to the lab's 'ratifying' line: it prints nothing more until members vote,
        # so communicate() below misses nothing buffered here.
        for line in process.stdout:
            lines.append(line)
            if json.loads(line)["event"] == "ratifying":
                break
        ratifying = _one(_events("".join(lines)), "ratifying")
        assert asyncio.run(_approve(server.target, members, ratifying["negotiation_id"])) > 0
        out, err = process.communicate(timeout=NODE_TIMEOUT)
        assert process.returncode == 0, "".join(lines) + out + err
        events = _events("".join(lines) + out)
        agreement = _one(events, "agreement")
        assert agreement["negotiation_id"] == ratifying["negotiation_id"]
        assert agreement["state"] == "NEGOTIATION_STATE_FINALIZED"
        assert _one(events, "lease")["agreement_id"] == agreement["agreement_id"]
        assert _one(events, "inclusion_verified")["index"] == agreement["index"]
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        server.stop()


if __name__ == "__main__":
    FIXTURES.write_text(json.dumps(python_fixtures(), indent=2) + "\n")
    print(f"wrote {FIXTURES.relative_to(ROOT)}")
