"""``coalition join``: registration over a real server, with the receipt verified."""

from __future__ import annotations

import base64
from pathlib import Path

from coalition import merkle
from coalition.checkpoint import verify_checkpoint
from coalition.client import Client
from coalition.keys import SigningKey
from coalition.note import NoteSigner, NoteVerifier
from coalition.v1 import ledger_pb2
from tests.cli.helpers import Cli, assert_coalition_registration, json_out


def new_key(tmp_path: Path, name: str = "me.key") -> tuple[Path, SigningKey]:
    path = tmp_path / name
    key = SigningKey.generate()
    key.save(path)
    return path, key


async def test_join_registers_and_verifies_the_receipt(
    cli: Cli, anonymous: Client, tmp_path: Path
) -> None:
    path, key = new_key(tmp_path)
    result = await cli("join", "--role", "contributor", "--name", "Ada", "--json", key=path)
    assert result.exit_code == 0, result.output
    out = json_out(result)
    party, receipt = out["party"], out["receipt"]
    assert party["key_id"] == key.key_id
    assert party["role"] == "contributor"
    assert party["name"] == "Ada"
    # Entry 0 is the coalition's own registration: the first party to join gets entry 1.
    assert party["registration_index"] == receipt["index"] == 1
    assert receipt["tree_size"] == 2
    assert receipt["verified"] is True
    info = await anonymous.log_info()
    assert_coalition_registration((await anonymous.entry(0)).leaf, info)
    # The printed receipt is checkable by anyone holding the log key.
    cp = verify_checkpoint(receipt["checkpoint"], NoteVerifier.parse(info.verifier_key))
    leaf = base64.b64decode(receipt["leaf"])
    merkle.verify_inclusion(
        merkle.leaf_hash(leaf),
        receipt["index"],
        cp.size,
        [base64.b64decode(h) for h in receipt["inclusion_proof"]],
        cp.root_hash,
    )
    assert ledger_pb2.LedgerLeaf.FromString(leaf).envelope.signatures[0].keyid == key.key_id
    # And the server now knows the party.
    assert (await anonymous.party(key.key_id)).name == "Ada"


async def test_join_text_output(cli: Cli, tmp_path: Path) -> None:
    path, key = new_key(tmp_path)
    result = await cli("join", "--role", "lab", "--name", "Lab X", key=path)
    assert result.exit_code == 0, result.output
    assert key.key_id in result.stdout
    assert "lab" in result.stdout
    assert "entry 1 of a tree of size 2" in result.stdout  # after the coalition's entry 0
    assert "inclusion proof and checkpoint signature" in result.stdout


async def test_join_with_a_pinned_log_key(cli: Cli, anonymous: Client, tmp_path: Path) -> None:
    info = await anonymous.log_info()
    path, _ = new_key(tmp_path)
    result = await cli(
        "join", "--role", "auditor", "--name", "Aud", "--log-key", info.verifier_key, key=path
    )
    assert result.exit_code == 0, result.output


async def test_join_refuses_a_receipt_signed_by_another_log_key(
    cli: Cli, anonymous: Client, tmp_path: Path
) -> None:
    info = await anonymous.log_info()
    impostor = NoteSigner(info.origin, SigningKey.generate()).verifier.verifier_key
    path, _ = new_key(tmp_path)
    result = await cli(
        "join", "--role", "auditor", "--name", "Aud", "--log-key", impostor, key=path
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("error: the server's receipt does not verify: ")


async def test_join_twice_reports_the_server_error(cli: Cli, tmp_path: Path) -> None:
    path, _ = new_key(tmp_path)
    assert (await cli("join", "--role", "contributor", "--name", "Ada", key=path)).exit_code == 0
    result = await cli("join", "--role", "contributor", "--name", "Ada", key=path)
    assert result.exit_code == 1
    assert result.stderr == (
        "error: ALREADY_EXISTS [PARTY_ALREADY_REGISTERED]: this key is already registered\n"
    )
    assert "Traceback" not in result.output


async def test_join_rejects_a_bad_name_with_the_server_reason(cli: Cli, tmp_path: Path) -> None:
    path, _ = new_key(tmp_path)
    result = await cli("join", "--role", "contributor", "--name", "x" * 200, key=path)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: INVALID_ARGUMENT [BAD_NAME]: ")


async def test_join_needs_a_key_and_a_valid_role(cli: Cli) -> None:
    result = await cli("join", "--role", "contributor", "--name", "Ada")
    assert result.exit_code == 2
    assert "needs a key" in result.stderr
    result = await cli("join", "--role", "king", "--name", "Ada")
    assert result.exit_code == 2
