"""``coalition lab``: agreements, lease, fetch (decrypted, checked), watch and ack."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import Result

from coalition import norms
from coalition.cli import app
from coalition.client import Client, consent_token, price_floor
from coalition.keys import SigningKey
from coalition.v1 import norms_pb2, party_pb2, terms_pb2
from coalition_server.config import Settings
from coalition_server.server import CoalitionServer
from tests.access_helpers import licence_terms, make_agreement
from tests.cli.access_cli_helpers import add_items, files, grant, joined
from tests.cli.helpers import Cli, json_out, runner

CONTENTS = {
    "poem.txt": b"so much depends upon a red wheel barrow\n" * 50,
    "image.png": bytes(range(256)) * 5000,  # over 1 MiB: more than one segment
}


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def test_lease_fetch_watch_ack(cli: Cli, server: CoalitionServer, tmp_path: Path) -> None:
    member, _ = await joined(cli, tmp_path, "contributor", "Ada")
    lab_path, lab_key = await joined(cli, tmp_path, "lab", "Lab One")
    added = await add_items(cli, member, files(tmp_path / "src", CONTENTS), "--tag", "poems")
    ids = sorted(str(o["item_id"]) for o in added)
    consent_id = await grant(cli, member, "--tag", "poems")
    agreement_id, _ = await make_agreement(server, lab_key, ids)

    listed = await cli("lab", "agreements", "--json", key=lab_path)
    assert listed.exit_code == 0, listed.output
    (agreement,) = json_out(listed)
    assert agreement["agreement_id"] == agreement_id
    assert agreement["covered_item_ids"] == ids
    assert agreement["purposes"] == ["train-ai"]
    text = await cli("lab", "agreements", key=lab_path)
    assert agreement_id in text.stdout

    leased = await cli("lab", "lease", agreement_id, "--json", key=lab_path)
    assert leased.exit_code == 0, leased.output
    lease = json_out(leased)
    assert lease["agreement_id"] == agreement_id
    assert lease["receipt"]["verified"] is True
    lease_id = lease["lease_id"]

    out_dir = tmp_path / "fetched"
    fetched = await cli(
        "lab", "fetch", lease_id, "--out", str(out_dir), "--progress", "--json", key=lab_path
    )
    assert fetched.exit_code == 0, fetched.output
    assert "fetched 2 items" in fetched.stderr
    assert "100%" in fetched.stderr
    report = json_out(fetched)
    assert report["agreement_id"] == agreement_id
    assert sorted(i["item_id"] for i in report["items"]) == ids
    by_hash = {hashlib.sha256(data).hexdigest(): data for data in CONTENTS.values()}
    for item in report["items"]:
        data = Path(item["path"]).read_bytes()  # noqa: ASYNC240
        assert hashlib.sha256(data).hexdigest() == item["sha256"]
        assert data == by_hash[item["sha256"]]
        assert item["verified"] is True
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        Path(i["path"]).name for i in report["items"]
    )
    assert len(report["releases"]) == 1

    again = await cli("lab", "fetch", lease_id, "--out", str(tmp_path / "again"), key=lab_path)
    assert again.exit_code == 0, again.output
    assert "2 items" in again.stdout
    assert "checked against its SHA-256 commitment" in again.stdout
    assert f"written to {tmp_path / 'again'};" in again.stdout  # whole, however long

    nothing = await cli("lab", "watch", "--once", "--idle", "0.5", key=lab_path)
    assert nothing.exit_code == 0, nothing.output
    assert nothing.stdout == ""

    withdrawn = await cli("consent", "withdraw", "--consent", consent_id, "--json", key=member)
    assert withdrawn.exit_code == 0, withdrawn.output
    assert json_out(withdrawn)["notified_labs"] == 1

    watched = await cli("lab", "watch", "--once", "--json", key=lab_path)
    assert watched.exit_code == 0, watched.output
    (notice,) = json_lines(watched.stdout)
    assert notice["item_ids"] == ids
    assert notice["agreement_id"] == agreement_id
    assert f"--since {notice['index'] + 1}" in watched.stderr  # type: ignore[operator]
    resumed = await cli(
        "lab", "watch", "--once", "--idle", "0.5", "--since", str(notice["index"] + 1),  # type: ignore[operator]
        key=lab_path,
    )  # fmt: skip
    assert resumed.stdout == ""
    text_watch = await cli("lab", "watch", "--once", "--idle", "0.5", key=lab_path)
    assert str(notice["notice_id"]) in text_watch.stdout

    acked = await cli("lab", "ack", str(notice["notice_id"]), "--json", key=lab_path)
    assert acked.exit_code == 0, acked.output
    answer = json_out(acked)
    assert answer["in_time"] is True
    assert answer["receipt"]["verified"] is True
    twice = await cli("lab", "ack", str(notice["notice_id"]), key=lab_path)
    assert twice.exit_code == 1
    assert "NOTICE_ALREADY_ACKNOWLEDGED" in twice.stderr

    # The items are gone: a new lease is refused, the old one releases nothing more.
    renewed = await cli("lab", "lease", agreement_id, key=lab_path)
    assert renewed.exit_code == 1
    assert "NO_CONSENTED_ITEMS" in renewed.stderr
    empty = await cli("lab", "fetch", lease_id, "--out", str(tmp_path / "late"), "--json",
                      key=lab_path)  # fmt: skip
    assert empty.exit_code == 0, empty.output
    assert json_out(empty)["items"] == []


async def test_lab_commands_refuse_what_is_not_theirs(
    cli: Cli, server: CoalitionServer, tmp_path: Path
) -> None:
    member, _ = await joined(cli, tmp_path, "contributor", "Ada")
    lab_path, lab_key = await joined(cli, tmp_path, "lab", "Lab One")
    other_path, _ = await joined(cli, tmp_path, "lab", "Lab Two")
    added = await add_items(cli, member, files(tmp_path / "src", {"a.txt": b"a"}))
    await grant(cli, member, "--all")
    agreement_id, _ = await make_agreement(
        server,
        lab_key,
        [str(added[0]["item_id"])],
        terms=licence_terms(deletion_deadline=timedelta(days=1)),
    )
    lease_id = json_out(await cli("lab", "lease", agreement_id, "--json", key=lab_path))["lease_id"]
    others = await cli("lab", "agreements", "--json", key=other_path)
    assert json_out(others) == []
    stolen = await cli("lab", "lease", agreement_id, key=other_path)
    assert stolen.exit_code == 1
    assert "NOT_YOUR_AGREEMENT" in stolen.stderr
    borrowed = await cli("lab", "fetch", lease_id, "--out", str(tmp_path / "x"), key=other_path)
    assert borrowed.exit_code == 1
    assert "NOT_YOUR_LEASE" in borrowed.stderr
    unknown = await cli("lab", "ack", "0" * 32, "--since", "0", key=lab_path)
    assert unknown.exit_code == 1
    assert "no notice" in unknown.stderr
    by_member = await cli("lab", "agreements", key=member)
    assert by_member.exit_code == 1
    assert "ROLE_NOT_ALLOWED" in by_member.stderr


# --- the catalogue's norm shares, the what-if and negotiating a declared use -------------------

USD = 1_000_000
NO_MILITARY = norms.make_norm(
    "prohibited-use", norms_pb2.NORM_STANCE_HARD, {"domains": ["military"]}
)
OPEN_OR_PAY = norms.make_norm(
    "model-release",
    norms_pb2.NORM_STANCE_PRICED,
    {"release": "open-weights"},
    premium=terms_pb2.Money(currency_code="USD", micros=2 * USD),
)
MILITARY_CLOSED: dict[str, Any] = {
    "modelRelease": "closed",
    "applicationDomains": ["military"],
    "jurisdictions": ["DE"],
}


@pytest.fixture
async def small_groups(settings: Settings, tmp_path: Path) -> AsyncIterator[Cli]:
    """A server showing groups of two members and opening at its reservation."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "catalogue:\n  minimum_group_size: 2\nnegotiation:\n  aspiration_multiplier: 1.0\n"
    )
    server = CoalitionServer(dataclasses.replace(settings, policy_file=policy))
    port = await server.start()
    try:
        yield Cli(f"127.0.0.1:{port}")
    finally:
        await server.stop(grace=1.0)


async def holding(cli: Cli, name: str, count: int, *held: norms_pb2.Norm) -> None:
    """``count`` members with two items each, consented for training at 1 USD, holding
    ``held``."""
    for n in range(count):
        async with Client(cli.target, key=SigningKey.generate()) as client:
            await client.register(party_pb2.ROLE_CONTRIBUTOR, f"{name} {n}")
            contents = [f"{name} {n} {i}".encode() for i in range(2)]
            registered = await client.register_items(
                [(hashlib.sha256(c).digest(), len(c), "text/plain", []) for c in contents]
            )
            token = consent_token(
                item_ids=[item.item_id for item in registered.items],
                purposes=["train-ai"],
                floors=[price_floor("purchase", USD)],
            )
            token.norms.extend(held)
            await client.grant_consent(token)


def declaration_file(tmp_path: Path, name: str, content: dict[str, Any]) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(content))
    return path


async def test_catalogue_shows_norm_shares_and_the_what_if(
    small_groups: Cli, tmp_path: Path
) -> None:
    cli = small_groups
    await holding(cli, "plain", 3)
    await holding(cli, "pacifist", 2, NO_MILITARY)
    await holding(cli, "open", 2, OPEN_OR_PAY)
    lab_path, _ = await joined(cli, tmp_path, "lab", "Acme")

    public = await cli("lab", "catalogue", "--json")
    assert public.exit_code == 0, public.output
    shares = {s["norm_id"]: s for s in json_out(public)["norm_shares"]}
    assert shares["prohibited-use"] == {
        "norm_id": "prohibited-use",
        "hard": {"member_count": 2, "item_count": 4},
        "priced": {"member_count": 0, "item_count": 0},
        "unheld": {"member_count": 5, "item_count": 10},
    }
    assert "what_if" not in json_out(public)

    declared = declaration_file(tmp_path, "use.json", MILITARY_CLOSED)
    what_if = await cli("lab", "catalogue", "--declare", str(declared), "--json", key=lab_path)
    assert what_if.exit_code == 0, what_if.output
    report = json_out(what_if)["what_if"]
    assert report["declaration"] == {
        "modelRelease": "MODEL_RELEASE_CLOSED",
        "applicationDomains": ["military"],
        "jurisdictions": ["DE"],
    }
    assert report["supply"] == [
        {"price_micros": USD, "item_count": 6, "member_count": 3},
        {"price_micros": 3 * USD, "item_count": 10, "member_count": 5},
    ]
    assert (report["reservation_price_micros"], report["covered_at_reservation"]) == (USD, 6)
    assert report["quorum_items"] == 5
    assert [(c["norm_id"], c["changes"], c["more_items_at_reservation"]) for c in
            report["changes"]] == [
        ("prohibited-use", ["application_domains: -military"], 4),
        ("model-release", ["model_release: closed -> open-weights"], 4),
    ]  # fmt: skip

    yaml_file = tmp_path / "use.yaml"
    yaml_file.write_text(
        "modelRelease: closed\napplicationDomains: [military]\njurisdictions: [DE]\n"
    )
    text = await cli("lab", "catalogue", "--declare", str(yaml_file), key=lab_path)
    assert text.exit_code == 0, text.output
    assert "Members' norms" in text.stdout
    assert "the coalition would take 1.00 USD per item now, covering 6 items" in text.stdout
    row = next(
        line for line in text.stdout.splitlines() if "prohibited-use" in line and "+4" in line
    )
    assert "application_domains: -military" in row


async def test_catalogue_refuses_a_bad_declaration(cli: Cli, tmp_path: Path) -> None:
    lab_path, _ = await joined(cli, tmp_path, "lab", "Acme")
    incomplete = declaration_file(tmp_path, "bad.json", {"jurisdictions": ["DE"]})
    refused = await cli("lab", "catalogue", "--declare", str(incomplete), key=lab_path)
    assert refused.exit_code == 2
    assert "model_release" in refused.stderr
    missing = await cli("lab", "catalogue", "--declare", str(tmp_path / "nope.json"), key=lab_path)
    assert missing.exit_code == 2
    assert "cannot read" in missing.stderr
    ok = declaration_file(tmp_path, "ok.json", MILITARY_CLOSED)
    keyless = await cli("lab", "catalogue", "--declare", str(ok))
    assert keyless.exit_code == 2
    assert "needs a key" in keyless.stderr


NEGOTIATE = ("lab", "negotiate", "--purpose", "train-ai", "--model", "purchase")


async def test_negotiate_a_declared_use_auto_conceding_what_the_file_allows(
    small_groups: Cli, tmp_path: Path
) -> None:
    cli = small_groups
    await holding(cli, "plain", 3)
    await holding(cli, "open", 3, OPEN_OR_PAY)
    lab_path, _ = await joined(cli, tmp_path, "lab", "Acme")
    closed = {"modelRelease": "closed", "jurisdictions": ["DE"]}
    willing = declaration_file(
        tmp_path, "willing.json", {**closed, "mayConcede": {"modelRelease": ["open-weights"]}}
    )
    auto = ("--price", "0.50", "--auto", "--budget", "3", "--json")
    took = await cli(*NEGOTIATE, *auto, "--declare", str(willing), key=lab_path)
    assert took.exit_code == 0, took.output
    report = json_out(took)
    assert report["state"] == "finalized"
    assert report["current_terms"]["declaration"]["modelRelease"] == "MODEL_RELEASE_OPEN_WEIGHTS"
    assert report["agreement_draft"]["covered_item_count"] == 12
    assert "[use: model_release: closed -> open-weights]" in took.stderr

    unwilling = declaration_file(tmp_path, "unwilling.json", closed)
    kept = await cli(*NEGOTIATE, *auto, "--declare", str(unwilling), key=lab_path)
    assert kept.exit_code == 0, kept.output
    report = json_out(kept)
    assert report["state"] == "finalized"
    assert report["current_terms"]["declaration"]["modelRelease"] == "MODEL_RELEASE_CLOSED"
    assert report["agreement_draft"]["covered_item_count"] == 6


async def test_negotiate_interactively_shows_the_proposed_use(
    small_groups: Cli, tmp_path: Path
) -> None:
    cli = small_groups
    await holding(cli, "pacifist", 3, NO_MILITARY)
    lab_path, _ = await joined(cli, tmp_path, "lab", "Acme")
    declared = declaration_file(tmp_path, "use.json", MILITARY_CLOSED)
    argv = ["--server", cli.target, "--key", str(lab_path), *NEGOTIATE, "--price", "2",
            "--declare", str(declared)]  # fmt: skip
    result: Result = await asyncio.to_thread(
        runner.invoke, app, argv, input="a\n", catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert "Accepting takes its change to your use: application_domains: -military." in (
        result.stdout
    )
    assert "finalized" in result.stdout
    assert "6 items" in result.stdout
