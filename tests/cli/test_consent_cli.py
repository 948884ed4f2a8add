"""``coalition consent``: grant, list, export, public state with a proof, withdraw."""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree

import pytest

from coalition.cli.consent import parse_floor, parse_period
from coalition.errors import CoalitionError
from coalition.v1 import terms_pb2
from tests.cli.access_cli_helpers import add_items, files, grant, joined
from tests.cli.helpers import Cli, json_out


def test_parse_floor_and_period() -> None:
    floor = parse_floor("purchase=0.50", "USD")
    assert floor.payment_model == terms_pb2.PAYMENT_MODEL_PURCHASE
    assert floor.minimum_per_item.micros == 500_000
    assert floor.minimum_per_item.currency_code == "USD"
    sub = parse_floor("subscription=$2/30d", "USD")
    assert sub.minimum_per_item.micros == 2_000_000
    assert sub.period.seconds == 30 * 86400
    assert parse_floor("per-use=0.000001", "USD").minimum_per_item.micros == 1
    assert parse_period("12h").total_seconds() == 12 * 3600
    assert parse_period("2w").days == 14
    assert parse_period("7").days == 7
    for bad in (
        "purchase",
        "rent=1",
        "purchase=0.0000001",
        "purchase=-1",
        "subscription=1",
        "purchase=1/30d",
        "subscription=1/0d",
        "purchase=abc",
    ):
        with pytest.raises(CoalitionError):
            parse_floor(bad, "USD")


async def test_grant_list_export_state_withdraw(cli: Cli, tmp_path: Path) -> None:
    key_path, key = await joined(cli, tmp_path, "contributor", "Ada")
    out = await add_items(cli, key_path, files(tmp_path / "src", {"a.txt": b"a", "b.txt": b"b"}))
    ids = [str(o["item_id"]) for o in out]

    result = await cli(
        "consent", "grant", "--items", ",".join(ids), "--purpose", "train-ai",
        "--purpose", "search", "--floor", "purchase=0.25", "--floor", "subscription=0.01/30d",
        "--attribution", "--max-licence-days", "365", "--max-deletion-days", "14",
        "--exclude-lab", "ab" * 32, "--days", "30", "--json", key=key_path,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    granted = json_out(result)
    consent_id = granted["consent_id"]
    assert granted["state"] == "given"
    assert granted["receipt"]["verified"] is True
    token = granted["token"]
    assert token["items"]["item_ids"]["item_ids"] == ids
    assert token["purposes"] == ["PURPOSE_TRAIN_AI", "PURPOSE_SEARCH"]
    assert token["floor"]["attribution_required"] is True
    assert token["excluded_lab_key_ids"] == ["ab" * 32]

    listed = await cli("consent", "list", "--json", key=key_path)
    assert listed.exit_code == 0, listed.output
    assert [(c["consent_id"], c["state"]) for c in json_out(listed)] == [(consent_id, "given")]
    text = await cli("consent", "list", key=key_path)
    assert consent_id in text.stdout
    assert "given" in text.stdout
    assert "purchase ≥ 0.25 USD" in text.stdout

    odrl = await cli("consent", "export", consent_id, "--format", "odrl", key=key_path)
    assert odrl.exit_code == 0, odrl.output
    assert isinstance(json.loads(odrl.stdout), dict)
    rsl = await cli("consent", "export", consent_id, "--format", "rsl", key=key_path)
    assert rsl.exit_code == 0, rsl.output
    ElementTree.fromstring(rsl.stdout)
    target = tmp_path / "policy.jsonld"
    written = await cli("consent", "export", consent_id, "--out", str(target), key=key_path)
    assert written.exit_code == 0, written.output
    assert isinstance(json.loads(target.read_text()), dict)
    bad = await cli("consent", "export", consent_id, "--format", "pdf", key=key_path)
    assert bad.exit_code == 2

    # Anyone can check the state, with no key: the proof is verified locally.
    state = await cli("consent", "state", consent_id, "--json")
    assert state.exit_code == 0, state.output
    checked = json_out(state)
    assert checked["state"] == "given"
    assert checked["verified"] is True
    assert checked["member_key_id"] == key.key_id
    assert checked["withdrawal_index"] is None

    withdrawn = await cli("consent", "withdraw", "--consent", consent_id, "--json", key=key_path)
    assert withdrawn.exit_code == 0, withdrawn.output
    receipt = json_out(withdrawn)
    assert receipt["receipt"]["verified"] is True
    assert sorted(receipt["shredded_item_ids"]) == sorted(ids)
    assert receipt["notified_labs"] == 0

    state = await cli("consent", "state", consent_id, "--json")
    checked = json_out(state)
    assert checked["state"] == "withdrawn"
    assert checked["withdrawal_index"] == receipt["receipt"]["index"]
    text_state = await cli("consent", "state", consent_id)
    assert "withdrawn" in text_state.stdout
    assert "verified" in text_state.stdout

    listed = await cli("consent", "list", "--json", key=key_path)
    assert [c["state"] for c in json_out(listed)] == ["withdrawn"]


async def test_withdraw_is_one_command(cli: Cli, tmp_path: Path) -> None:
    key_path, _ = await joined(cli, tmp_path, "contributor", "Ada")
    out = await add_items(cli, key_path, files(tmp_path / "src", {"a.txt": b"a", "b.txt": b"b"}))
    first, second = (str(o["item_id"]) for o in out)
    await grant(cli, key_path, "--all")

    by_items = await cli("consent", "withdraw", "--items", first, key=key_path)
    assert by_items.exit_code == 0, by_items.output
    assert "withdrawn" in by_items.stdout
    assert "1 items" in by_items.stdout
    items = json_out(await cli("items", "list", "--json", key=key_path))
    assert {i["item_id"]: i["state"] for i in items} == {first: "withdrawn", second: "stored"}

    everything = await cli("consent", "withdraw", "--everything", "--json", key=key_path)
    assert everything.exit_code == 0, everything.output
    assert json_out(everything)["shredded_item_ids"] == [second]

    nothing_left = await cli("consent", "withdraw", "--everything", key=key_path)
    assert nothing_left.exit_code == 1
    assert "NOTHING_TO_WITHDRAW" in nothing_left.stderr


async def test_grant_and_withdraw_refuse_bad_input(cli: Cli, tmp_path: Path) -> None:
    key_path, _ = await joined(cli, tmp_path, "contributor", "Ada")
    both = await cli(
        "consent", "grant", "--all", "--tag", "x", "--purpose", "train-ai",
        "--floor", "purchase=1", key=key_path,
    )  # fmt: skip
    assert both.exit_code == 2
    unknown = await cli(
        "consent", "grant", "--all", "--purpose", "mind-reading", "--floor", "purchase=1",
        key=key_path,
    )  # fmt: skip
    assert unknown.exit_code == 2
    assert "unknown purpose" in unknown.stderr
    none = await cli("consent", "withdraw", key=key_path)
    assert none.exit_code == 2
    missing = await cli("consent", "withdraw", "--consent", "0" * 32, key=key_path)
    assert missing.exit_code == 1
    assert "CONSENT_NOT_FOUND" in missing.stderr
    not_found = await cli("consent", "state", "0" * 32)
    assert not_found.exit_code == 1
    assert "NOT_FOUND" in not_found.stderr


async def test_grant_with_norms(cli: Cli, tmp_path: Path) -> None:
    key_path, _ = await joined(cli, tmp_path, "contributor", "Ada")
    await add_items(cli, key_path, files(tmp_path / "src", {"a.txt": b"a"}))
    result = await cli(
        "consent", "grant", "--all", "--purpose", "train-ai", "--floor", "purchase=1.00",
        # In any order: the CLI signs them in canonical order.
        "--norm", "withdrawal-effect:hard:exclude_from_models_released_after=90d",
        "--norm", "prohibited-use:hard:domains=military,mass-surveillance:protects=safety",
        "--norm", "model-release:priced:release=open-weights:premium=3.00",
        "--json", key=key_path,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    granted = json_out(result)
    token_norms = granted["token"]["norms"]
    assert [(n["norm_id"], n["stance"]) for n in token_norms] == [
        ("model-release", "NORM_STANCE_PRICED"),
        ("prohibited-use", "NORM_STANCE_HARD"),
        ("withdrawal-effect", "NORM_STANCE_HARD"),
    ]
    assert token_norms[0]["premium_per_item"] == {"currency_code": "USD", "micros": "3000000"}
    assert token_norms[1]["protects"] == "ENDURING_VALUE_SAFETY"
    assert token_norms[1]["parameters"][0]["value"]["texts"]["values"] == [
        "mass-surveillance",
        "military",
    ]

    text = await cli(
        "consent", "grant", "--all", "--purpose", "search", "--floor", "purchase=1.00",
        "--norm", "jurisdiction:hard:allowed=DE,FR", key=key_path,
    )  # fmt: skip
    assert text.exit_code == 0, text.output
    assert "jurisdiction:hard:allowed=DE,FR" in text.stdout

    # The export carries them: a hard norm as a prohibition, a priced one as a premium duty.
    odrl = await cli("consent", "export", granted["consent_id"], key=key_path)
    assert odrl.exit_code == 0, odrl.output
    policy = json.loads(odrl.stdout)
    assert [p["coalition:norm"]["@id"] for p in policy["prohibition"]] == [
        "coalition:norm/prohibited-use",
        "coalition:norm/withdrawal-effect",
    ]
    (permission,) = policy["permission"]
    premiums = [d for d in permission["duty"] if "coalition:norm" in d]
    assert [d["coalition:norm"]["@id"] for d in premiums] == ["coalition:norm/model-release"]


async def test_grant_refuses_bad_norms_before_signing(cli: Cli, tmp_path: Path) -> None:
    key_path, _ = await joined(cli, tmp_path, "contributor", "Ada")
    await add_items(cli, key_path, files(tmp_path / "src", {"a.txt": b"a"}))
    base = ("consent", "grant", "--all", "--purpose", "train-ai", "--floor", "purchase=1")
    cases = [
        (["--norm", "no-such-norm:hard"], "no norm 'no-such-norm'"),
        (["--norm", "model-release:priced:release=closed"], "premium=AMOUNT"),
        (["--norm", "model-release:hard:release=closed:premium=1"], "has no premium"),
        (["--norm", "prohibited-use:hard:domains=gambling"], "'gambling' is not one of"),
        (
            [
                "--norm",
                "model-release:hard:release=closed",
                "--norm",
                "model-release:hard:release=open-weights",
            ],
            "at most one model-release",
        ),
    ]
    for extra, message in cases:
        result = await cli(*base, *extra, key=key_path)
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.stderr, (extra, result.stderr)
    listed = await cli("consent", "list", "--json", key=key_path)
    assert json_out(listed) == []
