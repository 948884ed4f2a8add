"""``coalition dispute file|respond|list|show`` and disputes in ``coalition audit compliance``,
against the real server (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest

from coalition.keys import SigningKey
from coalition_server.server import CoalitionServer
from tests.access_helpers import make_agreement
from tests.cli.access_cli_helpers import add_items, files, grant, joined
from tests.cli.helpers import Cli, invoke, json_out


async def test_file_list_respond_and_audit(
    cli: Cli, server: CoalitionServer, tmp_path: Path
) -> None:
    ada, _ = await joined(cli, tmp_path, "contributor", "Ada")
    bob, _ = await joined(cli, tmp_path, "contributor", "Bob")
    acme_path, acme = await joined(cli, tmp_path, "lab", "Acme")
    rival_path, _ = await joined(cli, tmp_path, "lab", "Rival")
    added = await add_items(cli, ada, files(tmp_path / "src", {"a.txt": b"a"}))
    await grant(cli, ada, "--all")
    agreement_id, _ = await make_agreement(server, acme, [str(o["item_id"]) for o in added])

    filed = await cli(
        "dispute",
        "file",
        agreement_id,
        "--norm",
        "prohibited-use",
        "--field",
        "application_domains",
        "--norm",
        "jurisdiction",
        "--text",
        "Sold for [bold]surveillance[/bold].",
        "--json",
        key=ada,
    )
    assert filed.exit_code == 0, filed.output
    report = json_out(filed)
    dispute_id = report["dispute_id"]
    assert report["norm_ids"] == ["jurisdiction", "prohibited-use"]  # sorted, as signed
    assert report["receipt"]["verified"] is True

    outsider = await cli("dispute", "file", agreement_id, "--norm", "occupation", key=bob)
    assert outsider.exit_code == 1
    assert "NOT_COVERED" in outsider.stderr

    listed = await cli("dispute", "list", "--json")  # public: no key
    assert listed.exit_code == 0, listed.output
    (record,) = json_out(listed)
    assert (record["dispute_id"], record["state"], record["response"]) == (dispute_id, "open", None)
    assert record["declaration_fields"] == ["application_domains"]
    for path, count in ((acme_path, 1), (ada, 1), (rival_path, 0), (bob, 0)):
        mine = await cli("dispute", "list", "--mine", "--json", key=path)
        assert len(json_out(mine)) == count, path
    by_agreement = await cli("dispute", "list", "--agreement", agreement_id)
    assert dispute_id in by_agreement.stdout

    shown = await cli("dispute", "show", dispute_id)
    assert shown.exit_code == 0, shown.output
    assert "Sold for [bold]surveillance[/bold]." in shown.stdout  # text, never markup
    assert "not answered yet" in shown.stdout

    stolen = await cli("dispute", "respond", dispute_id, "--text", "Not ours.", key=rival_path)
    assert stolen.exit_code == 1
    assert "NOT_YOUR_AGREEMENT" in stolen.stderr
    answer = tmp_path / "answer.txt"
    answer.write_text("We sell to no surveillance customer.\n")
    answered = await cli(
        "dispute", "respond", dispute_id, "--text-file", str(answer), "--json", key=acme_path
    )
    assert answered.exit_code == 0, answered.output
    assert json_out(answered)["state"] == "answered"
    again = await cli("dispute", "respond", dispute_id, "--text", "Again.", key=acme_path)
    assert again.exit_code == 1
    assert "DISPUTE_ANSWERED" in again.stderr
    shown = json_out(await cli("dispute", "show", dispute_id, "--json"))
    assert shown["state"] == "answered"
    assert shown["response"]["text"] == "We sell to no surveillance customer."

    # A second dispute stays open: the auditor sees both, per agreement, from the ledger.
    second = await cli("dispute", "file", agreement_id, "--field", "jurisdictions", key=ada)
    assert second.exit_code == 0, second.output
    audited = await cli("audit", "compliance", "--strict", "--json")
    assert audited.exit_code == 0, audited.output  # allegations are not violations
    audit = json_out(audited)
    (row,) = audit["agreement_disputes"]
    assert (row["agreement_id"], row["disputes"], row["open"], row["answered"]) == (
        agreement_id,
        2,
        1,
        1,
    )
    assert row["slowest_answer_seconds"] is not None
    states = {d["dispute_id"]: d["state"] for d in audit["disputes"]}
    assert states[dispute_id] == "answered"
    acme_row = next(lab for lab in audit["labs"] if lab["lab_key_id"] == acme.key_id)
    assert (acme_row["disputes"], acme_row["disputes_open"]) == (2, 1)
    table = await cli("audit", "compliance")
    assert table.exit_code == 0, table.output
    assert "disputes by agreement" in table.stdout
    assert "open: dispute" in table.stdout
    assert "jurisdictions" in table.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("file", "a" * 32), "--norm NORM_ID and/or --field FIELD"),
        (("file", "a" * 32, "--norm", "no-such-norm"), "--norm 'no-such-norm' is unknown"),
        (("file", "a" * 32, "--field", "price"), "--field 'price' is unknown"),
        (("file", "a" * 32, "--norm", "occupation", "--text", "x" * 1001), "at most 1000"),
        (("respond", "a" * 32), "give your answer"),
    ],
)
def test_bad_dispute_options_exit_2_before_any_call(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    key = tmp_path / "k.key"
    SigningKey.generate().save(key)
    result = invoke("--server", "127.0.0.1:9", "--key", str(key), "dispute", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
