"""``coalition audit compliance``: each lab's notices, receipts and releases, from the ledger."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from coalition_server.server import CoalitionServer
from tests.access_helpers import licence_terms, make_agreement
from tests.cli.access_cli_helpers import add_items, files, grant, joined
from tests.cli.helpers import Cli, json_out


async def test_compliance_in_time_then_missing_past_the_deadline(
    cli: Cli, server: CoalitionServer, tmp_path: Path
) -> None:
    member, _ = await joined(cli, tmp_path, "contributor", "Ada")
    good_path, good = await joined(cli, tmp_path, "lab", "Good Lab")
    slow_path, slow = await joined(cli, tmp_path, "lab", "Slow Lab")
    added = await add_items(cli, member, files(tmp_path / "src", {"a.txt": b"a", "b.txt": b"b"}))
    ids = [str(o["item_id"]) for o in added]
    consent_id = await grant(cli, member, "--all")
    good_agreement, _ = await make_agreement(server, good, ids)
    slow_agreement, _ = await make_agreement(
        server, slow, ids, terms=licence_terms(deletion_deadline=timedelta(seconds=1))
    )
    for path, agreement in ((good_path, good_agreement), (slow_path, slow_agreement)):
        lease = json_out(await cli("lab", "lease", agreement, "--json", key=path))
        fetched = await cli("lab", "fetch", lease["lease_id"], "--out", str(tmp_path / path.stem),
                            key=path)  # fmt: skip
        assert fetched.exit_code == 0, fetched.output

    before = await cli("audit", "compliance", "--json")
    assert before.exit_code == 0, before.output
    report = json_out(before)
    assert report["ok"] is True
    assert {lab["name"]: lab["releases"] for lab in report["labs"]} == {
        "Good Lab": 1,
        "Slow Lab": 1,
    }

    withdrawn = await cli("consent", "withdraw", "--consent", consent_id, key=member)
    assert withdrawn.exit_code == 0, withdrawn.output
    watched = await cli("lab", "watch", "--once", "--json", key=good_path)
    (notice,) = watched.stdout.splitlines()
    acked = await cli("lab", "ack", json.loads(notice)["notice_id"], key=good_path)
    assert acked.exit_code == 0, acked.output
    assert "in time" in acked.stdout

    # Judged at the withdrawal's time, the slow lab's receipt is still pending: compliant.
    report = json_out(await cli("audit", "compliance", "--json", "--now", "ledger"))
    slow_notice = next(n for n in report["notices"] if n["lab_key_id"] == slow.key_id)
    at_issue = slow_notice["issued_time"]
    pending = await cli("audit", "compliance", "--strict", "--json", "--now", at_issue)
    assert pending.exit_code == 0, pending.output
    labs = {lab["name"]: lab for lab in json_out(pending)["labs"]}
    assert labs["Slow Lab"]["pending"] == 1
    assert labs["Slow Lab"]["missing"] == 0
    assert labs["Good Lab"]["receipts_in_time"] == 1

    # An hour later, past the slow lab's one-second deadline: missing, and --strict fails.
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    strict = await cli("audit", "compliance", "--strict", "--json", "--now", later)
    assert strict.exit_code == 1
    report = json_out(strict)
    assert report["ok"] is False
    labs = {lab["name"]: lab for lab in report["labs"]}
    assert (labs["Slow Lab"]["notices"], labs["Slow Lab"]["missing"]) == (1, 1)
    assert labs["Slow Lab"]["ok"] is False
    good_row = labs["Good Lab"]
    assert (good_row["notices"], good_row["receipts_in_time"], good_row["missing"]) == (1, 1, 0)
    assert good_row["releases_after_withdrawal"] == 0
    assert good_row["ok"] is True
    assert report["releases_after_withdrawal"] == []

    table = await cli("audit", "compliance", "--now", later)
    assert table.exit_code == 0, table.output  # not --strict: a report, not a verdict
    assert "VIOLATION" in table.stdout
    assert "missing: notice" in table.stdout
    assert "NOT compliant" in table.stdout
    assert good.key_id in table.stdout

    bad_time = await cli("audit", "compliance", "--now", "yesterday")
    assert bad_time.exit_code == 2
