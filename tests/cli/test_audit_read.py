"""``coalition audit`` read commands: log key, checkpoint, entries and proofs."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable

import pytest

from coalition import merkle
from coalition.checkpoint import verify_checkpoint
from coalition.client import Client
from coalition.keys import SigningKey
from coalition.note import NoteVerifier
from coalition.v1 import party_pb2
from tests.cli.helpers import Cli, assert_coalition_registration, json_out


async def register(make_client: Callable[..., Client], n: int) -> list[SigningKey]:
    keys = []
    for i in range(n):
        client = make_client()
        await client.register(party_pb2.ROLE_CONTRIBUTOR, f"member {i}")
        assert client.key is not None
        keys.append(client.key)
    return keys


@pytest.fixture
async def three(make_client: Callable[..., Client]) -> list[SigningKey]:
    """Three registered parties: entries 1, 2 and 3 (entry 0 is the coalition's own)."""
    return await register(make_client, 3)


async def test_log_key(cli: Cli, anonymous: Client) -> None:
    info = await anonymous.log_info()
    result = await cli("audit", "log-key")
    assert result.exit_code == 0, result.output
    assert result.stdout == info.verifier_key + "\n"
    assert NoteVerifier.parse(result.stdout.strip()).name == info.origin
    data = json_out(await cli("audit", "log-key", "--json"))
    assert data["verifier_key"] == info.verifier_key
    assert data["origin"] == info.origin
    assert data["coalition_key_id"] == info.coalition_key_id
    assert base64.b64decode(data["coalition_public_key"]) == info.coalition_public_key


async def test_checkpoint_is_printed_verbatim(
    cli: Cli, anonymous: Client, three: list[SigningKey]
) -> None:
    info = await anonymous.log_info()
    result = await cli("audit", "checkpoint")
    assert result.exit_code == 0, result.output
    assert result.stdout == (await anonymous.checkpoint()).checkpoint
    cp = verify_checkpoint(result.stdout, NoteVerifier.parse(info.verifier_key), info.origin)
    assert cp.size == 4
    data = json_out(await cli("audit", "checkpoint", "--json"))
    assert data["tree_size"] == 4
    assert base64.b64decode(data["root_hash"]) == cp.root_hash
    assert data["checkpoint"] == result.stdout


async def test_entries_table(cli: Cli, three: list[SigningKey]) -> None:
    # Entry 0 is the coalition's, entry 1 the first of ``three``: start past both.
    result = await cli("audit", "entries", "--start", "2", "--count", "5")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    for column in ("index", "time", "kind", "signer", "leaf hash"):
        assert column in lines[1]
    rows = [line for line in lines if "PartyRegistration" in line]
    assert len(rows) == 2
    for row, key in zip(rows, three[1:], strict=True):
        assert key.key_id[:16] in row
        assert key.key_id not in row  # short form only
    assert all(re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", row) for row in rows)


async def test_entries_json(cli: Cli, anonymous: Client, three: list[SigningKey]) -> None:
    result = await cli("audit", "entries", "--json")
    assert result.exit_code == 0, result.output
    data = json_out(result)
    assert [d["index"] for d in data] == [0, 1, 2, 3]
    # Entry 0: the coalition's registration of its own statement key, and nothing else's.
    info = await anonymous.log_info()
    first = data[0]
    raw = base64.b64decode(first["leaf"])
    assert raw == (await anonymous.entry(0)).leaf
    assert_coalition_registration(raw, info)
    assert base64.b64decode(first["leaf_hash"]) == merkle.leaf_hash(raw)
    assert first["leaf_hash_mismatch"] is False
    assert first["kind"] == "PartyRegistration"
    assert first["signers"] == [info.coalition_key_id]
    assert first["statement"]["role"] == "ROLE_COALITION"
    assert base64.b64decode(first["statement"]["signing_key"]) == info.coalition_public_key
    for d, key in zip(data[1:], three, strict=True):
        raw = base64.b64decode(d["leaf"])
        assert raw == (await anonymous.entry(d["index"])).leaf
        assert base64.b64decode(d["leaf_hash"]) == merkle.leaf_hash(raw)
        assert d["leaf_hash_mismatch"] is False
        assert d["kind"] == "PartyRegistration"
        assert d["payload_type"] == "application/vnd.coalition.v1.PartyRegistration+proto"
        assert d["signers"] == [key.key_id]
        assert d["integrated_time"].endswith("Z")
        assert d["statement"]["name"].startswith("member ")
        assert base64.b64decode(d["statement"]["signing_key"]) == key.public_key.raw
    # Paging within the range: start/count select exactly.
    assert [
        d["index"] for d in json_out(await cli("audit", "entries", "--start", "3", "--json"))
    ] == [3]
    assert [
        d["index"]
        for d in json_out(await cli("audit", "entries", "--start", "1", "--count", "2", "--json"))
    ] == [1, 2]
    assert json_out(await cli("audit", "entries", "--start", "9", "--json")) == []


async def test_prove_inclusion_verifies_against_the_checkpoint(
    cli: Cli, anonymous: Client, three: list[SigningKey]
) -> None:
    info = await anonymous.log_info()
    verifier = NoteVerifier.parse(info.verifier_key)
    for index in range(4):  # the coalition's entry 0 and the three parties'
        result = await cli("audit", "prove-inclusion", "--index", str(index))
        assert result.exit_code == 0, result.output
        data = json_out(result)
        assert data["index"] == index
        assert data["tree_size"] == 4
        leaf = base64.b64decode(data["leaf"])
        assert leaf == (await anonymous.entry(index)).leaf
        cp = verify_checkpoint(data["checkpoint"], verifier)
        merkle.verify_inclusion(
            merkle.leaf_hash(leaf),
            index,
            cp.size,
            [base64.b64decode(h) for h in data["proof"]],
            cp.root_hash,
        )


async def test_prove_inclusion_at_an_older_size(
    cli: Cli, make_client: Callable[..., Client], three: list[SigningKey]
) -> None:
    # Remember the root of size 4 (coalition + three), grow the log, then prove entry 1 in
    # the size-4 tree.
    cp4 = json_out(await cli("audit", "checkpoint", "--json"))
    assert cp4["tree_size"] == 4
    await register(make_client, 2)
    data = json_out(await cli("audit", "prove-inclusion", "--index", "1", "--tree-size", "4"))
    assert data["tree_size"] == 4
    assert "checkpoint" not in data  # only sent for the latest size
    merkle.verify_inclusion(
        merkle.leaf_hash(base64.b64decode(data["leaf"])),
        1,
        4,
        [base64.b64decode(h) for h in data["proof"]],
        base64.b64decode(cp4["root_hash"]),
    )


async def test_prove_consistency(
    cli: Cli, anonymous: Client, make_client: Callable[..., Client], three: list[SigningKey]
) -> None:
    old = await anonymous.checkpoint()
    await register(make_client, 2)
    new = await anonymous.checkpoint()
    assert old.tree_size == 4  # the coalition's entry and the three parties'
    result = await cli("audit", "prove-consistency", "--old-size", "4")
    assert result.exit_code == 0, result.output
    data = json_out(result)
    assert data["old_size"] == 4
    assert data["tree_size"] == new.tree_size == 6
    assert data["checkpoint"] == new.checkpoint
    merkle.verify_consistency(
        4, 6, old.root_hash, new.root_hash, [base64.b64decode(h) for h in data["proof"]]
    )
    explicit = json_out(
        await cli("audit", "prove-consistency", "--old-size", "4", "--tree-size", "5", "--json")
    )
    assert explicit["tree_size"] == 5
    assert "checkpoint" not in explicit


async def test_server_errors_are_reported_without_traceback(
    cli: Cli, three: list[SigningKey]
) -> None:
    result = await cli("audit", "prove-inclusion", "--index", "99")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: NOT_FOUND [")
    assert "Traceback" not in result.output
    # The log has 4 entries (the coalition's and three): an old size of 5 is past its end.
    result = await cli("audit", "prove-consistency", "--old-size", "5")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: INVALID_ARGUMENT [BAD_TREE_SIZES]: ")


@pytest.mark.parametrize(
    "args",
    [
        ["audit", "log-key"],
        ["audit", "checkpoint"],
        ["audit", "entries"],
        ["audit", "prove-inclusion", "--index", "0"],
        ["audit", "prove-consistency", "--old-size", "1"],
        ["audit", "verify"],
    ],
)
async def test_unreachable_server_exits_2(args: list[str]) -> None:
    # Port 9 (discard) on loopback: nothing listens there in the test environment.
    result = await Cli("127.0.0.1:9")(*args)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: UNAVAILABLE: ")
    assert "cannot reach the server at 127.0.0.1:9" in result.stderr
