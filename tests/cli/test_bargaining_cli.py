"""``coalition lab catalogue|negotiate|negotiations|offers|accept|terminate`` and
``coalition vote|ratifications|earnings`` against the real server (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import Result

from coalition.cli import app
from coalition.client import Client, price_floor
from coalition.keys import SigningKey
from coalition.strategy import linear
from coalition.v1 import access_pb2, party_pb2, terms_pb2
from coalition_server.config import Settings
from coalition_server.server import CoalitionServer
from tests.cli.helpers import Cli, json_out, runner

USD = 1_000_000
NEGOTIATE = ("lab", "negotiate", "--purpose", "train-ai", "--model", "purchase")


async def party(
    make_client: Callable[..., Client],
    tmp_path: Path,
    role: party_pb2.Role.ValueType,
    name: str,
) -> tuple[Client, Path]:
    """A registered party whose key is saved under tmp_path for the CLI."""
    key = SigningKey.generate()
    path = tmp_path / f"{name.replace(' ', '-')}.key"
    key.save(path)
    client = make_client(key)
    await client.register(role, name)
    return client, path


async def pool(
    make_client: Callable[..., Client], tmp_path: Path, floors: list[int]
) -> list[tuple[Client, Path, set[str]]]:
    """One member per floor (USD), with two stored items consented for training each."""
    out = []
    for i, floor in enumerate(floors):
        client, path = await party(make_client, tmp_path, party_pb2.ROLE_CONTRIBUTOR, f"m{i}")
        contents = [f"{i} a".encode(), f"{i} b".encode()]
        response = await client.register_items(
            [(hashlib.sha256(c).digest(), len(c), "text/plain", []) for c in contents]
        )
        for item, content in zip(response.items, contents, strict=True):
            await client.upload(item.item_id, content)
        ids = [item.item_id for item in response.items]
        await client.grant_consent(
            item_ids=ids, purposes=["train-ai"], floors=[price_floor("purchase", floor * USD)]
        )
        out.append((client, path, set(ids)))
    return out


async def piped(target: str, key: Path, answers: str, *args: str) -> Result:
    """The CLI with ``answers`` on its standard input."""
    argv = ["--server", target, "--key", str(key), *args]
    return await asyncio.to_thread(runner.invoke, app, argv, input=answers, catch_exceptions=False)


def terms(price: int) -> terms_pb2.LicenceTerms:
    out = terms_pb2.LicenceTerms(
        purposes=[terms_pb2.PURPOSE_TRAIN_AI],
        payment_model=terms_pb2.PAYMENT_MODEL_PURCHASE,
        price_per_item=terms_pb2.Money(currency_code="USD", micros=price),
    )
    out.licence_duration.seconds = 365 * 86400
    out.deletion_deadline.seconds = 7 * 86400
    out.lease_duration.seconds = 3600
    return out


async def test_catalogue(cli: Cli, make_client: Callable[..., Client], tmp_path: Path) -> None:
    empty = await cli("lab", "catalogue", "--json")
    assert empty.exit_code == 0, empty.output
    assert json_out(empty) == {
        "currency_code": "USD",
        "minimum_group_size": 5,
        "rows": [],
        "norm_vocabulary_version": "1",
        "norm_shares": [],
    }
    await pool(make_client, tmp_path, [1, 2, 3, 4, 5, 6])
    shown = await cli("lab", "catalogue", "--json")
    assert shown.exit_code == 0, shown.output
    (row,) = json_out(shown)["rows"]
    assert row == {
        "purpose": "train-ai",
        "payment_model": "purchase",
        "member_count": 6,
        "item_count": 12,
        "floor_quantiles_micros": {
            "p10": 1 * USD,
            "p25": 2 * USD,
            "p50": 3 * USD,
            "p75": 5 * USD,
            "p90": 6 * USD,
        },
    }
    text = await cli("lab", "catalogue")
    assert text.exit_code == 0, text.output
    line = next(x for x in text.stdout.splitlines() if "train-ai" in x)
    cells = [cell.strip() for cell in line.split("│")[1:-1]]
    assert cells == ["train-ai", "purchase", "6", "12", "1.00", "2.00", "3.00", "5.00", "6.00"]


async def test_interactive_negotiation_with_piped_answers(
    cli: Cli, target: str, make_client: Callable[..., Client], tmp_path: Path
) -> None:
    await pool(make_client, tmp_path, [1, 2, 3, 4, 5, 6])
    _, lab_key = await party(make_client, tmp_path, party_pb2.ROLE_LAB, "Acme")
    # A nonsense answer and a bad price are asked again; then counter at 2.50, then accept.
    result = await piped(
        target, lab_key, "maybe\ncounter\nabc\n2.50\naccept\n", *NEGOTIATE, "--price", "0.50"
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    # The coalition opens at twice its 3-USD reservation and concedes from its first move.
    assert "The coalition offers 5.9925 USD per item (round 1 of at most 20" in out
    assert "The coalition offers 5.9325 USD per item (round 3" in out
    assert "answer accept, counter or terminate" in out
    assert "give an amount" in out
    assert "finalized: agreement" in out
    assert "2.50 USD" in out
    lines = [x for x in out.splitlines() if x.startswith("round")]
    assert [x.split()[2:4] for x in lines] == [
        ["lab", "request"],
        ["coalition", "offer"],
        ["lab", "offer"],
        ["coalition", "offer"],
        ["lab", "accept"],
        ["lab", "sign"],
    ]

    listed = await cli("lab", "agreements", "--json", key=lab_key)
    (agreement,) = json_out(listed)
    price = agreement["price_per_item"]["micros"]
    assert 3 * USD <= price < 6 * USD
    assert agreement["covered_item_count"] == 2 * sum(1 for f in range(1, 7) if f * USD <= price)
    leased = await cli("lab", "lease", agreement["agreement_id"], "--json", key=lab_key)
    assert leased.exit_code == 0, leased.output

    # With --json the dialogue goes to stderr and stdout is the outcome; terminate ends it.
    ended = await piped(
        target, lab_key, "t\n", *NEGOTIATE, "--price", "0.50", "--json", "--attribution"
    )
    assert ended.exit_code == 0, ended.output
    # (CliRunner echoes the piped answers into stdout, where a terminal would not.)
    report = json.loads(ended.stdout[ended.stdout.index("{") :])
    assert report["state"] == "terminated"
    assert report["current_terms"]["attribution"] is True
    assert [(m["by"], m["kind"]) for m in report["moves"]] == [
        ("lab", "request"),
        ("coalition", "offer"),
        ("lab", "terminate"),
    ]
    assert all(r["verified"] for r in report["receipts"])
    assert "accept, counter or terminate?" in ended.stderr
    # No answer at all: the prompt aborts, nothing is agreed.
    aborted = await piped(target, lab_key, "", *NEGOTIATE, "--price", "0.50")
    assert aborted.exit_code != 0


async def test_auto_negotiation_within_and_below_budget(
    cli: Cli, make_client: Callable[..., Client], tmp_path: Path
) -> None:
    await pool(make_client, tmp_path, [1, 2, 3, 4, 5, 6])
    _, lab_key = await party(make_client, tmp_path, party_pb2.ROLE_LAB, "Acme")
    within = await cli(
        *NEGOTIATE,
        "--price",
        "0.50",
        "--auto",
        "--budget",
        "5",
        "--strategy",
        "boulware",
        "--json",
        key=lab_key,
    )
    assert within.exit_code == 0, within.output
    report = json_out(within)
    assert report["state"] == "finalized"
    assert report["agreement_id"]
    assert 3 * USD <= report["current_terms"]["price_per_item"]["micros"] <= 5 * USD
    assert report["moves"][0] == {
        "round": 0,
        "by": "lab",
        "kind": "request",
        "price": {"currency_code": "USD", "micros": USD // 2},
        "state": "requested",
        "reason": None,
    }
    assert report["moves"][-1]["kind"] == "sign"
    assert "round   1  coalition  offer" in within.stderr  # each round shown as it happens
    assert all(r["verified"] for r in report["receipts"])
    lease = await cli("lab", "lease", report["agreement_id"], "--json", key=lab_key)
    assert lease.exit_code == 0, lease.output
    fetched = await cli(
        "lab",
        "fetch",
        json_out(lease)["lease_id"],
        "--out",
        str(tmp_path / "out"),
        "--json",
        key=lab_key,
    )
    assert fetched.exit_code == 0, fetched.output
    assert len(json_out(fetched)["items"]) >= 6

    below = await cli(
        *NEGOTIATE, "--price", "0.50", "--auto", "--budget", "2", "--rounds", "10", key=lab_key
    )
    assert below.exit_code == 0, below.output
    assert "terminated without agreement" in below.stdout
    assert "OVER_BUDGET" in below.stdout
    rounds = [int(x.split()[1]) for x in below.stdout.splitlines() if x.startswith("round")]
    assert max(rounds) <= 10
    listed = await cli("lab", "negotiations", "--json", key=lab_key)
    assert [n["state"] for n in json_out(listed)] == ["finalized", "terminated"]
    table = await cli("lab", "negotiations", key=lab_key)
    assert "finalized" in table.stdout
    assert "terminated" in table.stdout


async def test_offers_accept_and_terminate(
    cli: Cli, make_client: Callable[..., Client], tmp_path: Path
) -> None:
    await pool(make_client, tmp_path, [1, 2, 3, 4, 5, 6])
    acme, lab_key = await party(make_client, tmp_path, party_pb2.ROLE_LAB, "Acme")
    opened = await acme.open_negotiation(terms(USD // 2))
    nid = opened.negotiation.negotiation_id

    moves = await cli("lab", "offers", nid, "--json", key=lab_key)
    assert moves.exit_code == 0, moves.output
    history = json_out(moves)
    assert history["state"] == "offered"
    assert [(e["by"], e["kind"], e["round"]) for e in history["events"]] == [
        ("lab", "request", 0),
        ("coalition", "offer", 1),
    ]
    asked = 5_992_500
    assert history["events"][1]["price"] == {"currency_code": "USD", "micros": asked}
    text = await cli("lab", "offers", nid, key=lab_key)
    assert text.exit_code == 0, text.output
    assert "5.9925 USD" in text.stdout
    assert "your turn" in text.stderr

    accepted = await cli("lab", "accept", nid, "--json", key=lab_key)
    assert accepted.exit_code == 0, accepted.output
    outcome = json_out(accepted)
    assert outcome["state"] == "finalized"
    assert outcome["current_terms"]["price_per_item"]["micros"] == asked
    assert outcome["agreement_draft"]["covered_item_count"] == 10  # floors 1 to 5 USD
    assert [m["kind"] for m in outcome["moves"]] == ["accept", "sign"]
    assert len(outcome["receipts"]) == 2
    after = json_out(await cli("lab", "offers", nid, "--json", key=lab_key))
    assert [e["kind"] for e in after["events"]] == ["request", "offer", "accept", "agreement"]
    assert after["events"][-1]["by"] == "lab+coalition"
    again = await cli("lab", "accept", nid, key=lab_key)
    assert again.exit_code == 1
    assert "no offer to accept" in again.stderr

    second = await acme.open_negotiation(terms(USD // 2))
    sid = second.negotiation.negotiation_id
    ended = await cli("lab", "terminate", sid, "--reason", "OVER_BUDGET", "--json", key=lab_key)
    assert ended.exit_code == 0, ended.output
    assert json_out(ended)["state"] == "terminated"
    assert json_out(ended)["moves"][0]["reason"] == "OVER_BUDGET"
    twice = await cli("lab", "terminate", sid, key=lab_key)
    assert twice.exit_code == 1
    assert "OUT_OF_TURN" in twice.stderr
    stranger = await cli("lab", "offers", "0" * 32, key=lab_key)
    assert stranger.exit_code == 1
    assert "NEGOTIATION_NOT_FOUND" in stranger.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--price", "1", "--model", "subscription"), "--period-days"),
        (("--price", "1", "--period-days", "30"), "only subscriptions"),
        (("--price", "1", "--budget", "3"), "--budget goes with --auto"),
        (("--price", "1", "--auto"), "--auto needs --budget"),
        (("--price", "4", "--auto", "--budget", "3"), "must not exceed the budget"),
        (("--price", "-1"), "negative"),
        (("--price", "0.1234567"), "decimal places"),
        (("--price", "1", "--purpose", "mining"), "unknown purpose"),
        (("--price", "1", "--min-items", "5", "--max-items", "2"), "--max-items"),
    ],
)
def test_negotiate_refuses_bad_options(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    key = tmp_path / "lab.key"
    SigningKey.generate().save(key)
    base = ["--server", "127.0.0.1:9", "--key", str(key), "lab", "negotiate"]
    if "--purpose" not in args:
        base += ["--purpose", "train-ai"]
    if "--model" not in args:
        base += ["--model", "purchase"]
    result = runner.invoke(app, [*base, *args], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert message in result.stderr


# --- members: ratification and earnings --------------------------------------------------


@pytest.fixture
async def ratifying(settings: Settings, tmp_path: Path) -> AsyncIterator[tuple[str, Any]]:
    """A server whose policy requires ratification by the covered members' items."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "ratification:\n  required: true\n  basis: items\n  threshold: 0.5\n  window_seconds: 60\n"
    )
    server = CoalitionServer(
        dataclasses.replace(settings, policy_file=policy, negotiation_sweep_seconds=0.2)
    )
    port = await server.start()
    target = f"127.0.0.1:{port}"
    clients: list[Client] = []

    def make(key: SigningKey | None = None) -> Client:
        client = Client(target, key=key or SigningKey.generate())
        clients.append(client)
        return client

    try:
        yield target, make
    finally:
        for client in clients:
            await client.close()
        await server.stop()


async def test_vote_ratifications_and_earnings(
    ratifying: tuple[str, Callable[..., Client]], tmp_path: Path
) -> None:
    target, make = ratifying
    cli = Cli(target)
    members = await pool(make, tmp_path, [1, 2, 3, 4])
    acme, _ = await party(make, tmp_path, party_pb2.ROLE_LAB, "Acme")
    final = await acme.negotiate_auto(terms(0), linear(USD // 2, 5 * USD, 20, 86400))
    nid = final.negotiation_id
    covered = set(access_pb2.Agreement.FromString(final.agreement_draft).covered_item_ids)
    inside = [(path, ids) for _, path, ids in members if ids & covered]
    outside = [path for _, path, ids in members if not ids & covered]
    assert len(inside) >= 2
    assert outside

    listed = await cli("ratifications", "--json", key=inside[0][0])
    assert listed.exit_code == 0, listed.output
    (open_,) = json_out(listed)
    assert open_["negotiation_id"] == nid
    assert (open_["your_items"], open_["voted"]) == (2, False)
    assert open_["covered_item_count"] == len(covered)
    text = await cli("ratifications", key=inside[0][0])
    assert nid in text.stdout
    assert "coalition vote" in text.stderr
    assert json_out(await cli("ratifications", "--json", key=outside[0])) == []

    undecided = await cli("vote", nid, key=inside[0][0])
    assert undecided.exit_code == 2
    assert "--approve or --reject" in undecided.stderr
    refused = await cli("vote", nid, "--approve", key=outside[0])
    assert refused.exit_code == 1
    assert "NOT_COVERED" in refused.stderr
    state = "ratifying"
    for path, _ in inside:
        voted = await cli("vote", nid, "--approve", "--json", key=path)
        assert voted.exit_code == 0, voted.output
        ballot = json_out(voted)
        assert ballot["receipt"]["verified"] is True
        state = ballot["state"]
        if state != "ratifying":
            break
    assert state == "finalized"
    twice = await cli("vote", nid, "--reject", key=inside[0][0])
    assert twice.exit_code == 1

    price = final.current_terms.price_per_item.micros
    for path, ids in inside:
        shown = await cli("earnings", "--json", key=path)
        assert shown.exit_code == 0, shown.output
        (line,) = json_out(shown)
        assert line["verified"] is True
        assert line["item_count"] == len(ids & covered)
        assert line["amount"]["micros"] == price * len(ids & covered)
        assert line["statement_total"]["micros"] == price * len(covered)
        assert line["payment_model"] == "purchase"
    table = await cli("earnings", key=inside[0][0])
    assert table.exit_code == 0, table.output
    assert "verified" in table.stdout
    nothing = await cli("earnings", "--json", key=outside[0])
    assert json_out(nothing) == []
