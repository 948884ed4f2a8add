"""``coalition strike pledge|list|status|retract`` against the real server (SQLite and
PostgreSQL): pledges below their threshold stay active, the one that completes the set
executes them all together, progress is public, and an active pledge can be retracted."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from typer.testing import Result

from coalition.client import Client, price_floor
from coalition.keys import SigningKey
from coalition.strategy import linear
from coalition.v1 import negotiation_pb2, party_pb2, terms_pb2
from tests.cli.helpers import Cli, json_out

USD = 1_000_000


async def party(
    make_client: Callable[..., Client],
    tmp_path: Path,
    role: party_pb2.Role.ValueType,
    name: str,
) -> tuple[Client, Path]:
    """A registered party whose key is saved under tmp_path for the CLI."""
    key = SigningKey.generate()
    path = tmp_path / f"{name}.key"
    key.save(path)
    client = make_client(key)
    await client.register(role, name)
    return client, path


async def coalition(
    make_client: Callable[..., Client], tmp_path: Path, size: int = 5
) -> tuple[list[Path], str]:
    """``size`` members (key files) with consented items, and a lab (its key id) whose
    negotiated agreement covers them all."""
    keys = []
    for i in range(size):
        client, path = await party(make_client, tmp_path, party_pb2.ROLE_CONTRIBUTOR, f"m{i}")
        contents = [f"{i} a".encode(), f"{i} b".encode()]
        response = await client.register_items(
            [(hashlib.sha256(c).digest(), len(c), "text/plain", []) for c in contents]
        )
        for item, content in zip(response.items, contents, strict=True):
            await client.upload(item.item_id, content)
        await client.grant_consent(
            item_ids=[item.item_id for item in response.items],
            purposes=["train-ai"],
            floors=[price_floor("purchase", USD)],
        )
        keys.append(path)
    lab, _ = await party(make_client, tmp_path, party_pb2.ROLE_LAB, "acme")
    terms = terms_pb2.LicenceTerms(
        purposes=[terms_pb2.PURPOSE_TRAIN_AI],
        payment_model=terms_pb2.PAYMENT_MODEL_PURCHASE,
        price_per_item=terms_pb2.Money(currency_code="USD"),
    )
    terms.licence_duration.FromTimedelta(timedelta(days=365))
    terms.deletion_deadline.FromTimedelta(timedelta(days=7))
    terms.lease_duration.FromTimedelta(timedelta(hours=1))
    final = await lab.negotiate_auto(terms, linear(USD // 2, 5 * USD, 20, 86400))
    assert final.state == negotiation_pb2.NEGOTIATION_STATE_FINALIZED
    assert lab.key is not None
    return keys, lab.key.key_id


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


def cells(result: Result, marker: str) -> list[str]:
    """The cells of the table row containing ``marker``."""
    line = next(x for x in result.stdout.splitlines() if marker in x)
    return [cell.strip() for cell in line.split("│")[1:-1]]


async def test_pledge_list_status_until_the_strike_executes(
    cli: Cli, make_client: Callable[..., Client], tmp_path: Path
) -> None:
    keys, lab = await coalition(make_client, tmp_path)
    empty = ok(await cli("strike", "status"))
    assert "no pledges yet" in empty.stderr
    assert json_out(ok(await cli("strike", "status", "--json"))) == []

    first = json_out(
        ok(await cli("strike", "pledge", "--lab", lab, "--min-members", "3", "--json", key=keys[0]))
    )
    assert first["executed"] is False
    assert first["executed_pledges"] == 0
    assert first["target_lab_key_id"] == lab
    assert (first["min_members"], first["min_share_basis_points"], first["days"]) == (3, 0, 30)
    assert first["receipt"]["verified"] is True
    second = ok(await cli("strike", "pledge", "--lab", lab, "--min-members", "3", key=keys[1]))
    assert f"against {lab} logged at entry" in second.stdout
    assert "active: it executes once its threshold is met" in second.stdout
    assert "EXECUTED" not in second.stdout

    # Public progress: two active pledges against the lowest threshold, three.
    status = ok(await cli("strike", "status"))
    assert cells(status, lab) == [lab, "2", "3", "2/3 (at least 1 more needed)", "0"]
    assert json_out(ok(await cli("strike", "status", "--json"))) == [
        {
            "target_lab_key_id": lab,
            "active_pledges": 2,
            "lowest_member_threshold": 3,
            "executed_pledges": 0,
        }
    ]
    (mine,) = json_out(ok(await cli("strike", "list", "--json", key=keys[0])))
    assert mine["pledge_id"] == first["pledge_id"]
    assert mine["state"] == "active"
    assert mine["index"] == first["receipt"]["index"]
    assert (mine["target_lab_key_id"], mine["min_members"]) == (lab, 3)

    # The third pledge completes the set: the CLI says all three executed now.
    third = ok(await cli("strike", "pledge", "--lab", lab, "--min-members", "3", key=keys[2]))
    assert "EXECUTED now: 3 pledges executed together, yours among them" in third.stdout
    for key in keys[:3]:
        listed = ok(await cli("strike", "list", key=key))
        row = cells(listed, lab)
        assert row[1:3] == [lab, "3 members"]
        assert row[4] == "executed"
    assert json_out(ok(await cli("strike", "status", "--json")))[0] == {
        "target_lab_key_id": lab,
        "active_pledges": 0,
        "lowest_member_threshold": None,
        "executed_pledges": 3,
    }
    after = ok(await cli("strike", "status"))
    assert cells(after, lab) == [lab, "0", "-", "-", "3"]

    # The ledger, with the negotiation and the strike, passes a full audit.
    audit = ok(await cli("audit", "verify", "--json"))
    kinds = json_out(audit)["kinds"]
    assert (kinds["StrikePledge"], kinds["StrikeExecution"]) == (3, 1)
    assert kinds["NegotiationMove"] >= 1


async def test_retract_and_bad_input(
    cli: Cli, make_client: Callable[..., Client], tmp_path: Path
) -> None:
    keys, lab = await coalition(make_client, tmp_path)
    args = ("strike", "pledge", "--all-labs", "--min-share", "50", "--days", "10", "--json")
    pledge = json_out(ok(await cli(*args, key=keys[3])))
    assert pledge["target_lab_key_id"] is None
    assert (pledge["min_members"], pledge["min_share_basis_points"]) == (0, 5000)
    assert pledge["executed"] is False
    listed = ok(await cli("strike", "list", key=keys[3]))
    assert cells(listed, pledge["pledge_id"])[1:3] == ["every lab", "50% of covered items"]
    status = ok(await cli("strike", "status"))
    assert cells(status, "every lab") == ["every lab", "1", "-", "-", "0"]

    # Someone else's pledge cannot be retracted; your own can, once.
    other = await cli("strike", "retract", pledge["pledge_id"], key=keys[0])
    assert other.exit_code == 1
    assert "NOT_YOUR_PLEDGE" in other.stderr
    retract = ("strike", "retract", pledge["pledge_id"], "--json")
    retracted = json_out(ok(await cli(*retract, key=keys[3])))
    assert retracted["state"] == "retracted"
    assert retracted["receipt"]["index"] > pledge["receipt"]["index"]
    (record,) = json_out(ok(await cli("strike", "list", "--json", key=keys[3])))
    assert record["state"] == "retracted"
    again = await cli("strike", "retract", pledge["pledge_id"], key=keys[3])
    assert again.exit_code == 1
    assert "FAILED_PRECONDITION [PLEDGE_NOT_ACTIVE]" in again.stderr
    # One member holds a fifth of the lab's covered items: 12.5% is met alone, 30% is not.
    alone = ok(await cli("strike", "pledge", "--lab", lab, "--min-share", "12.5", key=keys[4]))
    assert "EXECUTED now: your pledge executed on its own" in alone.stdout
    text = ok(await cli("strike", "pledge", "--lab", lab, "--min-share", "30", key=keys[2]))
    assert "active:" in text.stdout
    retract_text = ok(await cli("strike", "retract", text.stdout.split()[1], key=keys[2]))
    assert "retracted: retraction logged at entry" in retract_text.stdout
    assert json_out(ok(await cli("strike", "status", "--json"))) == [
        {
            "target_lab_key_id": None,
            "active_pledges": 0,
            "lowest_member_threshold": None,
            "executed_pledges": 0,
        },
        {
            "target_lab_key_id": lab,
            "active_pledges": 0,
            "lowest_member_threshold": None,
            "executed_pledges": 1,
        },
    ]

    # Bad input: exit 2 before anything is sent; the server's refusals: exit 1.
    unusable = [
        ("strike", "pledge", "--min-members", "2"),
        ("strike", "pledge", "--lab", lab, "--all-labs", "--min-members", "2"),
        ("strike", "pledge", "--lab", lab),
        ("strike", "pledge", "--lab", " ", "--min-members", "2"),
        ("strike", "pledge", "--lab", lab, "--min-share", "0"),
        ("strike", "pledge", "--lab", lab, "--min-share", "150"),
        ("strike", "pledge", "--lab", lab, "--min-share", "abc"),
        ("strike", "pledge", "--lab", lab, "--min-share", "12.345"),
        ("strike", "pledge", "--lab", lab, "--min-members", "0"),
        ("strike", "pledge", "--lab", lab, "--min-members", "2", "--days", "0"),
        ("strike", "pledge", "--lab", lab, "--min-members", "2", "--days", "400"),
    ]
    for argv in unusable:
        result = await cli(*argv, key=keys[0])
        assert result.exit_code == 2, (argv, result.output)
    keyless = await cli("strike", "pledge", "--lab", lab, "--min-members", "2")
    assert keyless.exit_code == 2
    assert "needs a key" in keyless.stderr
    impossible = await cli("strike", "pledge", "--lab", lab, "--min-members", "100", key=keys[0])
    assert impossible.exit_code == 1
    assert "IMPOSSIBLE_THRESHOLD" in impossible.stderr
    unknown = await cli("strike", "pledge", "--lab", "ab" * 32, "--min-members", "2", key=keys[0])
    assert unknown.exit_code == 1
    assert "LAB_NOT_FOUND" in unknown.stderr
    assert json_out(ok(await cli("strike", "list", "--json", key=keys[0]))) == []
