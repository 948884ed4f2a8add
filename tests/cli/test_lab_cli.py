"""``coalition lab``: agreements, lease, fetch (decrypted, checked), watch and ack."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path

from coalition_server.server import CoalitionServer
from tests.access_helpers import licence_terms, make_agreement
from tests.cli.access_cli_helpers import add_items, files, grant, joined
from tests.cli.helpers import Cli, json_out

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
