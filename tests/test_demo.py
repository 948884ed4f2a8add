"""`coalition demo`: a small run end to end through the CLI (a real server, the SDK, the
report), and the report, charts and summary rendered from a fixed result."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from coalition.cli.app import app
from coalition.demo import svg
from coalition.demo.report import PLOTS, RESULT_JSON, render_report, write_report
from coalition.demo.results import (
    AuditResult,
    Ballots,
    ComplianceRow,
    DemoResult,
    LabResult,
    Move,
    NoticeResult,
    StrikeResult,
    SupplyStep,
    usd,
)
from coalition.demo.scenario import LAB_PLANS, DemoConfig, plan_members
from coalition.demo.summary import print_summary, summary_lines


class Page(HTMLParser):
    """What the report's HTML holds: plots by id, section ids, tags, text."""

    def __init__(self) -> None:
        super().__init__()
        self.plots: list[str] = []
        self.sections: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.tags.append(tag)
        if tag == "svg" and found.get("data-plot"):
            self.plots.append(str(found["data-plot"]))
        if tag == "section" and found.get("id"):
            self.sections.append(str(found["id"]))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(html: str) -> Page:
    page = Page()
    page.feed(html)
    page.close()
    return page


def plot_group(plot: str) -> str:
    """``negotiation`` for ``negotiation-2``."""
    return plot.split("-", 1)[0]


# --- end to end -----------------------------------------------------------------------------


def test_a_small_demo_runs_end_to_end_and_reports(tmp_path: Path) -> None:
    report = tmp_path / "report"
    result = CliRunner().invoke(
        app, ["demo", "--members", "40", "--labs", "2", "--seed", "3", "--report", str(report)]
    )
    assert result.exit_code == 0, result.output
    assert "verified" in result.output
    assert "lab compliance" in result.output
    assert str(report / "index.html") in result.output

    data = json.loads((report / RESULT_JSON).read_text())
    totals = data["totals"]
    assert data["members"] == 40
    assert data["items"] >= 40
    assert totals["agreements"] > 0
    agreed = [lab for lab in data["labs"] if lab["outcome"] == "finalized"]
    assert len(agreed) == totals["agreements"]
    for lab in agreed:
        assert lab["price_micros"] >= lab["reservation_micros"]
        assert lab["price_micros"] <= lab["budget_micros"]
        assert lab["covered_items"] > 0
        assert lab["ballots"]["approved"]
        # Purchase, pro rata by items: the members are paid the price for every item.
        assert lab["payout_total_micros"] == lab["price_micros"] * lab["covered_items"]
        assert lab["fetched_items"] == lab["covered_items"]
    assert totals["payouts_total_micros"] == sum(lab["payout_total_micros"] for lab in agreed)
    assert data["earnings_checked"] > 0
    # Every notice was answered, one lab after the deadline.
    assert totals["notices"] == totals["receipts"] + totals["outstanding"]
    assert totals["notices"] > 0
    assert totals["outstanding"] == 0
    assert totals["late"] > 0
    late_labs = {n["lab"] for n in data["notices"] if n["state"] == "late"}
    assert late_labs == {lab["name"] for lab in data["labs"] if lab["answers_late"]}
    strike = data["strike"]
    assert strike["executed"]
    assert strike["executed_pledges"] == strike["threshold"] == strike["pledges"]
    assert strike["active_before_last"] == strike["threshold"] - 1
    assert sum(1 for n in data["notices"] if n["cause"] == "strike") == strike["executed_pledges"]
    audit = data["audit"]
    assert audit["verified"]
    assert audit["entries"] == sum(audit["kinds"].values())
    assert audit["kinds"]["StrikeExecution"] == 1
    assert audit["kinds"]["WithdrawalNotice"] == totals["notices"]
    assert audit["kinds"]["DeletionReceipt"] == totals["receipts"]
    rows = {row["lab"]: row for row in audit["compliance"]}
    for lab in agreed:
        row = rows[lab["name"]]
        assert row["releases_after_withdrawal"] == 0
        assert row["missing"] == 0
        assert row["late"] == (row["notices"] if lab["answers_late"] else 0)

    page = parse((report / "index.html").read_text())
    assert {plot_group(p) for p in page.plots} == set(PLOTS)
    assert sorted(p for p in page.plots if p.startswith("negotiation-")) == [
        "negotiation-1",
        "negotiation-2",
    ]
    assert set(PLOTS) <= set(page.sections)
    assert "script" not in page.tags  # self-contained and inert
    assert "img" not in page.tags


# --- the report from a fixed result ---------------------------------------------------------


def lab_result(name: str, *, agreed: bool = True, late: bool = False) -> LabResult:
    moves: tuple[Move, ...] = (
        Move("lab", "request", 0, 300_000),
        Move("coalition", "offer", 1, 2_000_000),
        Move("lab", "offer", 2, 800_000),
        Move("coalition", "offer", 3, 1_400_000),
    )
    if agreed:
        moves += (Move("lab", "accept", 4, 1_400_000), Move("lab", "sign", 4, 1_400_000))
    else:
        moves += (Move("lab", "terminate", 4, None),)
    return LabResult(
        name=name,
        key_id="ab" * 32,
        strategy="boulware",
        model_release="closed",
        opening_micros=300_000,
        budget_micros=1_500_000,
        reservation_micros=1_000_000,
        outcome="finalized" if agreed else "terminated",
        reason="" if agreed else "OVER_BUDGET",
        price_micros=1_400_000 if agreed else None,
        covered_items=12 if agreed else 0,
        covered_members=5 if agreed else 0,
        agreement_id="c" * 32 if agreed else "",
        moves=moves,
        supply=(
            SupplyStep(500_000, 4, 2),
            SupplyStep(1_000_000, 10, 5),
            SupplyStep(1_400_000, 12, 5),
        ),
        ballots=Ballots(True, 4, 1, 10, 2, {"model-release": 1}, after_decision=0)
        if agreed
        else None,
        payout_total_micros=16_800_000 if agreed else 0,
        payout_lines=5 if agreed else 0,
        fetched_items=12 if agreed else 0,
        fetched_bytes=4096 if agreed else 0,
        answers_late=late,
    )


def fixed_result() -> DemoResult:
    notices = (
        NoticeResult("Acme <Models>", "withdrawal", 0.0, 3.0, 3.5, "late"),
        NoticeResult("Open Commons", "withdrawal", 0.0, 3.0, 0.1, "in_time"),
        NoticeResult("Acme <Models>", "strike", 0.8, 3.8, 4.4, "late"),
        NoticeResult("Acme <Models>", "strike", 0.8, 3.8, None, "pending"),
    )
    return DemoResult(
        seed=7,
        members=12,
        items=30,
        item_bytes=20_480,
        consents=12,
        norm_holders={"model-release (priced)": 3, "prohibited-use (hard)": 2},
        labs=(
            lab_result("Open Commons"),
            lab_result("Acme <Models>", late=True),
            lab_result("Sentinel", agreed=False),
        ),
        earnings_checked=2,
        earnings_checked_micros=5_600_000,
        withdrawn_items=3,
        notices=notices,
        strike=StrikeResult("Acme <Models>", 2, 2, 1, True, 2),
        audit=AuditResult(
            entries=120,
            root_hash="ab" * 32,
            verified=True,
            parties=16,
            kinds={"PartyRegistration": 16, "ItemRegistration": 104},
            compliance=(
                ComplianceRow("Open Commons", 1, 1, 1, 1, 0, 0, 0, 0),
                ComplianceRow("Acme <Models>", 1, 1, 3, 0, 2, 0, 1, 0),
            ),
        ),
        deletion_deadline_s=3.0,
        phases={"members join": 1.5, "audit": 0.2},
        seconds=12.3,
    )


def test_result_totals_add_up() -> None:
    result = fixed_result()
    assert [lab.name for lab in result.agreements] == ["Open Commons", "Acme <Models>"]
    assert result.payouts_total_micros == 2 * 16_800_000
    assert (result.receipts, result.late, result.outstanding) == (3, 2, 1)
    assert len(result.notices) == result.receipts + result.outstanding
    assert result.labs[0].rounds == 4
    data = result.to_json()
    assert data["totals"] == {
        "agreements": 2,
        "payouts_total_micros": 33_600_000,
        "notices": 4,
        "receipts": 3,
        "late": 2,
        "outstanding": 1,
    }
    json.dumps(data)  # JSON-ready as it is


def test_the_report_has_the_three_plots_and_escapes_names() -> None:
    html = render_report(fixed_result())
    page = parse(html)
    assert page.plots == ["negotiation-1", "negotiation-2", "negotiation-3", "supply", "timeline"]
    assert set(PLOTS) <= set(page.sections)
    assert "Acme <Models>" in "".join(page.text)  # shown as text...
    assert "<Models>" not in html  # ...because escaped everywhere, charts included
    assert "script" not in page.tags
    # The summary's numbers are on the page.
    for fact in ("4 = 3 receipts (2 late) + 1 outstanding", "$33.60", "120 entries"):
        assert fact in html
    assert 'class="bad">VIOLATION' in html  # Acme's late receipts
    assert 'class="ok">ok' in html


def test_write_report_writes_the_page_and_the_numbers(tmp_path: Path) -> None:
    page = write_report(fixed_result(), tmp_path / "out")
    assert page == tmp_path / "out" / "index.html"
    assert parse(page.read_text()).plots[-2:] == ["supply", "timeline"]
    data: dict[str, Any] = json.loads((tmp_path / "out" / RESULT_JSON).read_text())
    assert data["totals"]["late"] == 2
    assert data["labs"][2]["reason"] == "OVER_BUDGET"


def test_the_summary_tells_the_story() -> None:
    result = fixed_result()
    lines = summary_lines(result)
    text = "\n".join(lines)
    assert "2 of 3 labs" in text
    assert f"Open Commons at {usd(1_400_000)}/item for 12 items" in text
    assert "Sentinel terminated (OVER_BUDGET: its budget stayed below" in text
    assert "4 = 3 deletion receipts (2 late) + 1 outstanding" in text
    assert "2 pledges for a threshold of 2" in text
    assert "120 entries replayed" in text
    console = Console(record=True, width=200)
    print_summary(console, result)
    shown = console.export_text()
    assert "lab compliance" in shown
    assert "VIOLATION" in shown


# --- charts ---------------------------------------------------------------------------------


def test_nice_ticks_cover_the_range_in_round_steps() -> None:
    assert svg.nice_ticks(0, 10) == [0, 2, 4, 6, 8, 10]
    assert svg.nice_ticks(0.26, 2.9) == [0.0, 1.0, 2.0, 3.0]
    assert svg.nice_ticks(0, 0.9) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    ticks = svg.nice_ticks(3, 3)  # a single value still gets an axis
    assert ticks[0] <= 3 <= ticks[-1]
    assert len(ticks) >= 2


def test_a_chart_is_well_formed_svg_even_when_empty() -> None:
    chart = svg.line_chart(
        "empty", "Nothing yet", [svg.Series("none", [], "#000")], x_label="x", y_label="y"
    )
    page = parse(chart)
    assert page.plots == ["empty"]
    stepped = svg.line_chart(
        "steps",
        "Steps",
        [svg.Series("s", [(2.0, 5.0), (1.0, 2.0)], "#000", step=True)],
        x_label="x",
        y_label="y",
        rules=[svg.Rule("r", "#f00", y=3.0), svg.Rule("v", "#f00", x=1.5)],
        points=[svg.Point("p", 1.0, 2.0, "#0f0")],
    )
    # Drawn as steps: horizontal, then vertical.
    assert "H" in stepped
    assert "V" in stepped
    assert parse(stepped).plots == ["steps"]


# --- the scenario's plan --------------------------------------------------------------------


def test_the_plan_is_reproducible_from_the_seed() -> None:
    first = plan_members(30, random.Random(5))
    again = plan_members(30, random.Random(5))
    other = plan_members(30, random.Random(6))
    assert [(m.key_id, m.floor_micros, m.contents) for m in first] == [
        (m.key_id, m.floor_micros, m.contents) for m in again
    ]
    assert [m.key_id for m in first] != [m.key_id for m in other]
    assert all(m.floor_micros > 0 and m.floor_micros % 10_000 == 0 for m in first)
    assert all(1 <= len(m.contents) <= 5 for m in first)


def test_demo_config_refuses_what_it_cannot_play() -> None:
    with pytest.raises(ValueError, match="members"):
        DemoConfig(members=5)
    with pytest.raises(ValueError, match="labs"):
        DemoConfig(labs=len(LAB_PLANS) + 1)
    with pytest.raises(ValueError, match="concurrency"):
        DemoConfig(concurrency=0)


def test_demo_help_needs_no_server() -> None:
    result = CliRunner().invoke(app, ["demo", "--help"])
    assert result.exit_code == 0
    assert "--members" in result.output
    assert "--report" in result.output


@pytest.mark.slow
def test_the_readme_s_demo_runs_at_full_size(tmp_path: Path, figure: Callable[[str], None]) -> None:
    """`make demo` as the README gives it: the default coalition (300 members, three labs
    bargaining by different strategies), with its report. Its time is printed, not bound."""
    started = time.perf_counter()
    done = subprocess.run(
        [str(Path(sys.executable).parent / "coalition"), "demo", "--report", "demo-report"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if not k.startswith("COALITION_")},
    )
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads((tmp_path / "demo-report" / RESULT_JSON).read_text())
    assert data["members"] == 300
    assert len({lab["strategy"] for lab in data["labs"]}) == 3
    assert data["audit"]["verified"]
    assert data["strike"]["executed"]
    assert (tmp_path / "demo-report" / "index.html").exists()
    figure(
        f"demo (make demo): {data['members']} members, {len(data['labs'])} labs, "
        f"{data['audit']['entries']:,} entries verified, {seconds:.1f} s"
    )
