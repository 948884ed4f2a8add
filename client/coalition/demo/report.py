"""The demo's HTML report: one self-contained page (inline SVG, no scripts, no fetches).

:func:`write_report` writes ``index.html`` and ``result.json`` (the same numbers, for
machines) into a directory. The page has the run's summary and three plots:

* ``negotiation``: each lab's bids and the coalition's asks over the rounds, with the lab's
  budget, the reservation its what-if showed, and the price agreed;
* ``supply``: the pool's supply curve as each lab's what-if showed it (items covered at each
  uniform price; it depends on the lab's declared use, through the members' norms), and
  where each deal landed;
* ``timeline``: withdrawal notices and deletion receipts on the ledger's clock, in time and
  late, against the deadline.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from html import escape
from pathlib import Path
from typing import Final

from coalition.demo import svg
from coalition.demo.results import DemoResult, LabResult, NoticeResult, usd

INDEX: Final = "index.html"
RESULT_JSON: Final = "result.json"
PLOTS: Final = ("negotiation", "supply", "timeline")
"""The report's plot sections, by id."""

LAB_COLOR: Final = "#1f77b4"
COALITION_COLOR: Final = "#ff7f0e"
OK_COLOR: Final = "#2ca02c"
LATE_COLOR: Final = "#d62728"
GREY: Final = "#777777"

STYLE: Final = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1320px;
       color: #222; padding: 0 1rem; }
h1 { margin-bottom: 0.2rem; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3rem 0.7rem; text-align: left; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.ok { color: #2ca02c; font-weight: 600; }
.bad { color: #d62728; font-weight: 600; }
.plots { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: 0; }
figcaption { color: #555; max-width: 620px; font-size: 0.9rem; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.3rem 1rem; }
dt { font-weight: 600; }
"""


def _dollars(value: float) -> str:
    return f"${value:,.2f}"


def _seconds(value: float) -> str:
    return f"{value:g} s"


def negotiation_chart(lab: LabResult, plot_id: str) -> str:
    """One lab's negotiation: its bids and the coalition's asks (USD) by round."""
    bids = [
        (m.round, m.price_micros / 1e6)
        for m in lab.moves
        if m.by == "lab" and m.kind in ("request", "offer") and m.price_micros is not None
    ]
    asks = [
        (m.round, m.price_micros / 1e6)
        for m in lab.moves
        if m.by == "coalition" and m.kind == "offer" and m.price_micros is not None
    ]
    rules = [svg.Rule(f"budget {usd(lab.budget_micros)}", LAB_COLOR, y=lab.budget_micros / 1e6)]
    if lab.reservation_micros is not None:
        rules.append(
            svg.Rule(
                f"reservation {usd(lab.reservation_micros)}",
                COALITION_COLOR,
                y=lab.reservation_micros / 1e6,
            )
        )
    points: list[svg.Point] = []
    accept = next((m for m in lab.moves if m.kind == "accept"), None)
    if accept is not None and lab.price_micros is not None:
        # Unlabelled: the subtitle gives the price, and a label here would sit on the
        # curves converging at it or on the rules' labels level with it.
        points.append(svg.Point("", accept.round, lab.price_micros / 1e6, OK_COLOR))
    outcome = lab.outcome + (f" ({lab.reason})" if lab.reason else "")
    if lab.price_micros is not None and lab.agreed:
        outcome += f" at {usd(lab.price_micros)} per item"
    return svg.line_chart(
        plot_id,
        lab.name,
        [
            svg.Series("lab bids", bids, LAB_COLOR),
            svg.Series("coalition asks", asks, COALITION_COLOR),
        ],
        x_label="round",
        y_label="price per item (USD)",
        rules=rules,
        points=points,
        y_format=_dollars,
        width=450,
        height=310,
        subtitle=f"{lab.strategy}, {lab.model_release}: {outcome}",
    )


def supply_chart(labs: Sequence[LabResult]) -> str:
    """The supply curve each lab was shown, and each deal's price and items."""
    series: list[svg.Series] = []
    points: list[svg.Point] = []
    for i, lab in enumerate(labs):
        color = svg.PALETTE[i % len(svg.PALETTE)]
        steps = [(s.price_micros / 1e6, float(s.items)) for s in lab.supply]
        if steps:
            series.append(
                svg.Series(f"{lab.name} ({lab.model_release})", steps, color, step=True, dots=False)
            )
        if lab.agreed and lab.price_micros is not None:
            # Alternate the labels above and below, as deals often land close together.
            dy = -10.0 if len(points) % 2 == 0 else 20.0
            points.append(svg.Point(lab.name, lab.price_micros / 1e6, lab.covered_items, color, dy))
    return svg.line_chart(
        "supply",
        "The pool's supply curve: items covered at each uniform price",
        series,
        x_label="price per item (USD)",
        y_label="items covered",
        points=points,
        x_format=_dollars,
        width=880,
        height=380,
    )


def _cumulative(times: Iterable[float]) -> list[tuple[float, float]]:
    ordered = sorted(times)
    return [(0.0, 0.0)] + [(t, float(i + 1)) for i, t in enumerate(ordered)]


def timeline_chart(notices: Sequence[NoticeResult], deadline_s: float) -> str:
    """Notices and receipts over time (seconds after the first withdrawal), cumulative."""
    in_time = [n.receipt_s for n in notices if n.state == "in_time" and n.receipt_s is not None]
    late = [n.receipt_s for n in notices if n.state == "late" and n.receipt_s is not None]
    series = [
        svg.Series(
            "notices issued", _cumulative(n.issued_s for n in notices), GREY, step=True, dots=False
        ),
        svg.Series("receipts in time", _cumulative(in_time), OK_COLOR, step=True, dots=False),
        svg.Series("receipts late", _cumulative(late), LATE_COLOR, step=True, dots=False),
    ]
    rules = []
    causes: dict[str, float] = {}
    for n in notices:
        causes[n.cause] = min(causes.get(n.cause, n.issued_s), n.issued_s)
    labels = {"withdrawal": "a member withdraws", "strike": "the strike executes"}
    for cause, at in sorted(causes.items(), key=lambda item: item[1]):
        rules.append(svg.Rule(labels.get(cause, cause), GREY, x=at))
    for cause, at in sorted(causes.items(), key=lambda item: item[1]):
        rules.append(svg.Rule(f"deadline ({cause})", LATE_COLOR, x=at + deadline_s))
    return svg.line_chart(
        "timeline",
        "Withdrawal notices and deletion receipts (ledger time)",
        series,
        x_label="seconds after the member's withdrawal",
        y_label="count",
        rules=rules,
        x_format=_seconds,
        width=880,
        height=340,
    )


class Markup(str):
    """HTML this module built itself: put in a table cell as it is, not escaped."""

    __slots__ = ()


def _table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: Iterable[int] = ()
) -> str:
    right = set(numeric)
    head = "".join(
        f'<th class="n">{escape(h)}</th>' if i in right else f"<th>{escape(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            text = cell if isinstance(cell, Markup) else escape(cell)
            cells.append(f'<td class="n">{text}</td>' if i in right else f"<td>{text}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _status(ok: bool) -> Markup:
    return Markup('<span class="ok">ok</span>' if ok else '<span class="bad">VIOLATION</span>')


def _lab_rows(result: DemoResult) -> list[list[str]]:
    rows = []
    for lab in result.labs:
        ballots = lab.ballots
        vote = "-"
        if ballots is not None:
            vote = f"{ballots.approving_members} for / {ballots.rejecting_members} against"
            if ballots.rejecting_reasons:
                reasons = ", ".join(
                    f"{k} {v}" for k, v in sorted(ballots.rejecting_reasons.items())
                )
                vote += f" (reasons: {reasons})"
        rows.append(
            [
                lab.name,
                lab.strategy,
                lab.model_release,
                usd(lab.budget_micros),
                usd(lab.reservation_micros),
                lab.outcome + (f" ({lab.reason})" if lab.reason else ""),
                usd(lab.price_micros),
                str(lab.covered_items),
                str(lab.covered_members),
                str(lab.rounds),
                vote,
                usd(lab.payout_total_micros),
            ]
        )
    return rows


def _facts(result: DemoResult) -> list[tuple[str, str]]:
    """The summary's lines, as (what, how it went)."""
    kib = result.item_bytes / 1024
    deals = "".join(
        f"; {lab.name} at {usd(lab.price_micros)} for {lab.covered_items} items"
        for lab in result.agreements
    )
    strike = result.strike
    struck = "none"
    if strike is not None:
        done = "executed" if strike.executed else "not executed"
        struck = (
            f"against {strike.target}: {strike.pledges} pledges, threshold "
            f"{strike.threshold}, {done} ({strike.executed_pledges} together)"
        )
    audit = result.audit
    verified = "verified" if audit.verified else "NOT verified"
    return [
        (
            "Members",
            f"{result.members} joined; {result.items} items uploaded ({kib:,.0f} KiB, "
            f"encrypted at rest); {result.consents} consents",
        ),
        ("Norms held", ", ".join(f"{k}: {v}" for k, v in result.norm_holders.items()) or "none"),
        ("Agreements", f"{len(result.agreements)} of {len(result.labs)} labs{deals}"),
        (
            "Payouts",
            f"{usd(result.payouts_total_micros)} to members; {result.earnings_checked} members "
            f"verified their lines ({usd(result.earnings_checked_micros)}) against the signed "
            "statements",
        ),
        (
            "Withdrawal",
            f"a member withdrew {result.withdrawn_items} items; deletion deadline "
            f"{result.deletion_deadline_s:g} s",
        ),
        (
            "Notices",
            f"{len(result.notices)} = {result.receipts} receipts ({result.late} late) + "
            f"{result.outstanding} outstanding",
        ),
        ("Strike", struck),
        (
            "Audit",
            f"{audit.entries} entries replayed; signatures, signer rules and root {verified} "
            f"(root {audit.root_hash[:16]}…)",
        ),
        ("Run", f"seed {result.seed}; {result.seconds:.1f} s"),
    ]


def render_report(result: DemoResult) -> str:
    """The whole report as one HTML page."""
    audit = result.audit
    facts = _facts(result)
    negotiation = "".join(
        f"<figure>{negotiation_chart(lab, f'negotiation-{i + 1}')}</figure>"
        for i, lab in enumerate(result.labs)
    )
    compliance = _table(
        ["lab", "agreements", "releases", "notices", "in time", "late", "missing", "pending",
         "released after withdrawal", "status"],
        (
            [row.lab, str(row.agreements), str(row.releases), str(row.notices),
             str(row.in_time), str(row.late), str(row.missing), str(row.pending),
             str(row.releases_after_withdrawal), _status(row.ok)]
            for row in audit.compliance
        ),
        numeric=range(1, 9),
    )  # fmt: skip
    labs = _table(
        ["lab", "strategy", "declares", "budget", "what-if reservation", "outcome", "price",
         "items", "members", "rounds", "ratification", "paid to members"],
        _lab_rows(result),
        numeric=(3, 4, 6, 7, 8, 9, 11),
    )  # fmt: skip
    phases = _table(
        ["phase", "seconds"],
        ([name, f"{seconds:.1f}"] for name, seconds in result.phases.items()),
        numeric=(1,),
    )
    facts_html = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in facts)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Coalition demo report</title>
<style>{STYLE}</style>
</head>
<body>
<h1>Coalition demo</h1>
<p class="sub">A coalition of {result.members} members bargaining with {len(result.labs)} labs
over gRPC against a real server, replayed and checked by an auditor.</p>
<h2>Summary</h2>
<dl>{facts_html}</dl>
<h2>Labs</h2>
{labs}
<section id="negotiation">
<h2>Negotiations</h2>
<div class="plots">{negotiation}</div>
<p class="sub">Each lab bids by its own concession strategy up to its budget; the coalition
asks from twice its reservation (the lowest price covering the quorum) down towards it.</p>
</section>
<section id="supply">
<h2>Supply</h2>
<figure>{supply_chart(result.labs)}
<figcaption>Items the coalition would cover at each uniform price per item, as each lab's
what-if (EstimateSupply) showed it: members' floors, plus the premiums of the priced norms
the lab's declared use breaks; hard norms it breaks keep items out at any price.
Circles: the deals struck.</figcaption></figure>
</section>
<section id="timeline">
<h2>Withdrawal and receipts</h2>
<figure>{timeline_chart(result.notices, result.deletion_deadline_s)}
<figcaption>Notices the coalition sent and the deletion receipts labs signed, on the ledger's
clock (the authority for deadlines). A receipt after its notice's deadline is late, and the
auditor counts it against the lab.</figcaption></figure>
</section>
<h2>Auditor's compliance table</h2>
{compliance}
<h2>Phases</h2>
{phases}
</body>
</html>
"""


def write_report(result: DemoResult, directory: Path) -> Path:
    """Write ``index.html`` and ``result.json`` into ``directory``; the page's path."""
    directory.mkdir(parents=True, exist_ok=True)
    page = directory / INDEX
    page.write_text(render_report(result), encoding="utf-8")
    (directory / RESULT_JSON).write_text(
        json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8"
    )
    return page
