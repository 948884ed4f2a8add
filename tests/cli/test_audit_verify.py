"""``coalition audit verify``: the full replay against a real server, and its failures."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select, update

from coalition import merkle
from coalition.client import Client
from coalition.keys import SigningKey
from coalition.note import NoteSigner
from coalition.v1 import ledger_pb2, party_pb2
from coalition_server.config import Settings
from coalition_server.store import models
from coalition_server.store.database import Database
from tests.cli.helpers import Cli, assert_coalition_registration, json_out

COALITION = Path(sys.executable).parent / "coalition"


async def register(make_client: Callable[..., Client], n: int) -> list[SigningKey]:
    keys = []
    for i in range(n):
        client = make_client()
        await client.register(party_pb2.ROLE_CONTRIBUTOR, f"member {i}")
        assert client.key is not None
        keys.append(client.key)
    return keys


def files_in(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.is_file()]


def read_state(path: Path) -> dict[str, object]:
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data


async def tamper(
    settings: Settings, index: int, change: Callable[[bytes], bytes], *, rehash: bool
) -> None:
    """Rewrite one stored leaf behind the server's back (and its leaf hash if ``rehash``)."""
    db = Database.connect(settings.database_url())
    try:
        async with db.writer.begin() as conn:
            leaf = (
                await conn.execute(select(models.LogEntry.leaf).where(models.LogEntry.idx == index))
            ).scalar_one()
            new = change(bytes(leaf))
            values: dict[str, bytes] = {"leaf": new}
            if rehash:
                values["leaf_hash"] = merkle.leaf_hash(new)
            await conn.execute(
                update(models.LogEntry).where(models.LogEntry.idx == index).values(**values)
            )
    finally:
        await db.dispose()


def corrupt_signature(leaf: bytes) -> bytes:
    """Flip one bit of the envelope's signature inside the serialised leaf."""
    sig = ledger_pb2.LedgerLeaf.FromString(leaf).envelope.signatures[0].sig
    at = leaf.rindex(sig)
    return leaf[:at] + bytes([leaf[at] ^ 1]) + leaf[at + 1 :]


async def test_verify_first_run_then_proves_consistency_on_the_next(
    cli: Cli, anonymous: Client, make_client: Callable[..., Client], tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    await register(make_client, 3)
    result = await cli("audit", "verify", "--state", str(state))
    assert result.exit_code == 0, result.output
    info = await anonymous.log_info()
    assert f"trusting the log key {info.verifier_key} on first use" in result.stderr
    assert "ledger verified" in result.stdout
    # The coalition's own registration (entry 0) and the three parties'.
    assert "4 (PartyRegistration 4)" in result.stdout
    assert "entries/s" in result.stdout

    saved = read_state(state)
    cp = await anonymous.checkpoint()
    assert saved["log_verifier_key"] == info.verifier_key
    assert saved["origin"] == info.origin
    assert saved["tree_size"] == 4
    assert saved["root_hash"] == base64.b64encode(cp.root_hash).decode()
    assert saved["checkpoint"] == cp.checkpoint
    assert isinstance(saved["verified_at"], str)
    # No temporary file left behind by the atomic write.
    assert not [p for p in files_in(tmp_path) if p.name.startswith(".state.json")]

    await register(make_client, 2)
    result = await cli("audit", "verify", "--state", str(state), "--json")
    assert result.exit_code == 0, result.output
    assert "first use" not in result.stderr
    out = json_out(result)
    assert out["ok"] is True
    assert out["tree_size"] == out["entries"] == 6
    assert out["kinds"] == {"PartyRegistration": 6}
    assert out["parties"] == 6  # the coalition is a registered party too
    assert out["previous_tree_size"] == 4
    assert out["consistent_with_previous"] is True
    assert out["trusted_on_first_use"] is False
    assert out["entries_per_second"] >= 0
    assert read_state(state)["tree_size"] == 6

    # A third run with nothing new: equal sizes must still agree.
    result = await cli("audit", "verify", "--state", str(state), "--json")
    assert result.exit_code == 0, result.output
    assert json_out(result)["previous_tree_size"] == 6


async def test_verify_a_fresh_log_then_a_grown_one(
    cli: Cli, anonymous: Client, make_client: Callable[..., Client], tmp_path: Path
) -> None:
    # A fresh log holds exactly one entry: the coalition's registration of its own key.
    state = tmp_path / "state.json"
    result = await cli("audit", "verify", "--state", str(state), "--json")
    assert result.exit_code == 0, result.output
    out = json_out(result)
    assert out["tree_size"] == out["entries"] == 1
    assert out["kinds"] == {"PartyRegistration": 1}
    assert out["parties"] == 1
    entry = await anonymous.entry(0)
    assert_coalition_registration(entry.leaf, await anonymous.log_info())
    # The root of a one-entry tree is that entry's leaf hash.
    assert read_state(state)["root_hash"] == base64.b64encode(merkle.leaf_hash(entry.leaf)).decode()
    await register(make_client, 1)
    result = await cli("audit", "verify", "--state", str(state), "--json")
    assert result.exit_code == 0, result.output
    assert json_out(result)["previous_tree_size"] == 1
    assert json_out(result)["consistent_with_previous"] is True


async def test_verify_from_a_state_pinned_at_the_empty_tree(
    cli: Cli, make_client: Callable[..., Client], tmp_path: Path
) -> None:
    # The log is never empty any more, but the empty tree is a prefix of every tree: a state
    # pinned at size 0 (its root the empty root) must still verify as consistent.
    state = tmp_path / "state.json"
    await register(make_client, 1)
    assert (await cli("audit", "verify", "--state", str(state))).exit_code == 0
    saved = read_state(state)
    saved["tree_size"] = 0
    saved["root_hash"] = base64.b64encode(merkle.EMPTY_ROOT).decode()
    state.write_text(json.dumps(saved))
    result = await cli("audit", "verify", "--state", str(state), "--json")
    assert result.exit_code == 0, result.output
    out = json_out(result)
    assert out["previous_tree_size"] == 0
    assert out["consistent_with_previous"] is True
    assert read_state(state)["tree_size"] == 2


async def test_default_state_file_lives_under_the_config_dir(
    cli: Cli, make_client: Callable[..., Client], tmp_path: Path
) -> None:
    await register(make_client, 1)
    result = await cli("audit", "verify", "--json")
    assert result.exit_code == 0, result.output
    path = Path(json_out(result)["state_file"])
    assert path.parent == tmp_path / "config" / "coalition"
    assert path.name.startswith("audit-state-")
    assert path.name.endswith(".json")
    assert read_state(path)["tree_size"] == 2  # the coalition's entry and ours


async def test_verify_detects_a_rewritten_history(
    cli: Cli, make_client: Callable[..., Client], tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    await register(make_client, 3)
    assert (await cli("audit", "verify", "--state", str(state))).exit_code == 0
    # Simulate a fork: the root we verified at size 4 (the coalition's entry and three) is
    # not the one the log now has.
    saved = read_state(state)
    saved["root_hash"] = base64.b64encode(b"\x42" * 32).decode()
    state.write_text(json.dumps(saved))

    for grow in (0, 2):  # same size, and after more appends
        await register(make_client, grow)
        result = await cli("audit", "verify", "--state", str(state))
        assert result.exit_code == 1, result.output
        assert result.stderr.startswith(
            "error: log is not consistent with the checkpoint of size 4 you verified before"
        )
        # A failed audit never moves the pinned state forward.
        assert read_state(state) == saved


async def test_verify_detects_a_truncated_log(
    cli: Cli, make_client: Callable[..., Client], tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    await register(make_client, 2)
    assert (await cli("audit", "verify", "--state", str(state))).exit_code == 0
    saved = read_state(state)
    saved["tree_size"] = 10
    state.write_text(json.dumps(saved))
    result = await cli("audit", "verify", "--state", str(state))
    assert result.exit_code == 1
    assert "latest checkpoint has size 3" in result.stderr  # the coalition's entry and two
    assert "truncated or rolled back" in result.stderr


async def test_verify_rejects_a_different_log_key(
    cli: Cli, anonymous: Client, make_client: Callable[..., Client], tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    await register(make_client, 1)
    info = await anonymous.log_info()
    other = NoteSigner(info.origin, SigningKey.generate()).verifier.verifier_key
    result = await cli("audit", "verify", "--state", str(state), "--log-key", other)
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: the server's log key {info.verifier_key} differs from the trusted key "
        f"{other} (from --log-key)\n"
    )
    assert not state.exists()
    # The right key works, and is what gets pinned.
    result = await cli("audit", "verify", "--state", str(state), "--log-key", info.verifier_key)
    assert result.exit_code == 0, result.output
    assert "trusting the log key" not in result.stderr
    assert read_state(state)["log_verifier_key"] == info.verifier_key
    # Now the state pins it: another --log-key contradicts the state.
    result = await cli("audit", "verify", "--state", str(state), "--log-key", other)
    assert result.exit_code == 1
    assert "differs from the log key pinned in" in result.stderr


async def test_verify_rejects_a_server_whose_key_changed(
    cli: Cli, anonymous: Client, make_client: Callable[..., Client], tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    await register(make_client, 1)
    assert (await cli("audit", "verify", "--state", str(state))).exit_code == 0
    info = await anonymous.log_info()
    saved = read_state(state)
    saved["log_verifier_key"] = NoteSigner(info.origin, SigningKey.generate()).verifier.verifier_key
    state.write_text(json.dumps(saved))
    result = await cli("audit", "verify", "--state", str(state))
    assert result.exit_code == 1
    assert f"the server's log key {info.verifier_key} differs from the trusted key" in result.stderr
    assert "(from the state file" in result.stderr


async def test_verify_pins_the_coalition_key(
    cli: Cli, anonymous: Client, make_client: Callable[..., Client], tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    await register(make_client, 1)
    info = await anonymous.log_info()
    result = await cli("audit", "verify", "--state", str(state))
    assert result.exit_code == 0, result.output
    assert f"trusting the coalition key {info.coalition_key_id} on first use" in result.stderr
    saved = read_state(state)
    assert saved["coalition_public_key"] == base64.b64encode(info.coalition_public_key).decode()
    saved["coalition_public_key"] = base64.b64encode(SigningKey.generate().public_key.raw).decode()
    state.write_text(json.dumps(saved))
    result = await cli("audit", "verify", "--state", str(state))
    assert result.exit_code == 1
    assert result.stderr.startswith("error: the server's coalition key ")
    assert "differs from the key pinned in" in result.stderr


async def test_verify_detects_a_forged_signature_in_a_stored_entry(
    cli: Cli, settings: Settings, make_client: Callable[..., Client], tmp_path: Path
) -> None:
    keys = await register(make_client, 3)  # entries 1, 2 and 3
    await tamper(settings, 2, corrupt_signature, rehash=True)
    result = await cli("audit", "verify", "--state", str(tmp_path / "s.json"))
    assert result.exit_code == 1
    # (after the trust-on-first-use note)
    last = result.stderr.splitlines()[-1]
    assert last == f"error: entry 2: signature by {keys[1].key_id} does not verify"
    assert not (tmp_path / "s.json").exists()


async def test_verify_detects_a_leaf_that_does_not_match_its_hash(
    cli: Cli, settings: Settings, make_client: Callable[..., Client], tmp_path: Path
) -> None:
    await register(make_client, 2)
    await tamper(settings, 0, corrupt_signature, rehash=False)
    result = await cli("audit", "verify", "--state", str(tmp_path / "s.json"))
    assert result.exit_code == 1
    last = result.stderr.splitlines()[-1]
    assert last.startswith("error: entry 0: the server's leaf hash ")
    assert "is not the hash of the leaf it served (" in last


async def test_verify_rejects_a_malformed_state_file(cli: Cli, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text("{not json")
    result = await cli("audit", "verify", "--state", str(state))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: state file {state} is not valid: ")
    state.write_text(json.dumps({"version": 1, "tree_size": -1}))
    result = await cli("audit", "verify", "--state", str(state))
    assert result.exit_code == 2


async def test_verify_rejects_a_malformed_log_key(cli: Cli) -> None:
    result = await cli("audit", "verify", "--log-key", "nonsense")
    assert result.exit_code == 2
    assert "is not a valid verifier key" in result.stderr


async def run_binary(*args: str) -> tuple[int, str, str]:
    """Run the installed ``coalition`` script (a separate process, like a user would)."""
    proc = await asyncio.create_subprocess_exec(
        str(COALITION),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_verify_with_worker_processes(
    target: str, settings: Settings, make_client: Callable[..., Client], tmp_path: Path
) -> None:
    keys = await register(make_client, 5)  # entries 1..5, after the coalition's entry 0
    state = tmp_path / "state.json"
    code, out, err = await run_binary(
        "--server", target, "audit", "verify", "--state", str(state), "--jobs", "2", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["entries"] == 6
    # A bad signature found by a worker is reported exactly as in-process.
    await tamper(settings, 4, corrupt_signature, rehash=True)
    code, out, err = await run_binary(
        "--server", target, "audit", "verify", "--state", str(state), "--jobs", "2"
    )
    assert code == 1
    assert err.splitlines()[-1] == f"error: entry 4: signature by {keys[3].key_id} does not verify"
