"""The demo's closing words on the terminal: the auditor's compliance table and a short,
readable summary of the run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from rich.console import Console
from rich.table import Table

from coalition.demo.results import DemoResult, LabResult, usd

WHY: Final[Mapping[str, str]] = {
    "OVER_BUDGET": "its budget stayed below what the members ask",
    "DECLARATION_REFUSED": "it would not change a use the members' norms rule out",
    "RATIFICATION_REJECTED": "the members voted the deal down",
    "DEADLINE": "the negotiation ran out of time",
}
"""Why a lab ended without a deal, in words, by the termination reason."""


def no_deal(lab: LabResult) -> str:
    """``Sentinel terminated (OVER_BUDGET: its budget ...)``."""
    why = WHY.get(lab.reason, "")
    reason = f"{lab.reason}: {why}" if why else (lab.reason or "no deal")
    return f"{lab.name} {lab.outcome} ({reason})"


def compliance_table(result: DemoResult) -> Table:
    """The auditor's table: each lab's notices, receipts and releases, from the ledger."""
    audit = result.audit
    table = Table(
        title=f"lab compliance (ledger of {audit.entries} entries, replayed and verified)",
        title_justify="left",
    )
    for name, justify in (
        ("lab", "left"),
        ("agreements", "right"),
        ("releases", "right"),
        ("notices", "right"),
        ("in time", "right"),
        ("late", "right"),
        ("missing", "right"),
        ("released after withdrawal", "right"),
        ("status", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in audit.compliance:
        table.add_row(
            row.lab,
            str(row.agreements),
            str(row.releases),
            str(row.notices),
            str(row.in_time),
            str(row.late),
            str(row.missing),
            str(row.releases_after_withdrawal),
            "[green]ok" if row.ok else "[red]VIOLATION",
        )
    return table


def labs_table(result: DemoResult) -> Table:
    """One row per lab: how it bargained and what came of it."""
    table = Table(title="labs", title_justify="left")
    for name, justify in (
        ("lab", "left"),
        ("strategy", "left"),
        ("declares", "left"),
        ("budget", "right"),
        ("reservation", "right"),
        ("outcome", "left"),
        ("price", "right"),
        ("items", "right"),
        ("vote for/against", "right"),
        ("paid", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for lab in result.labs:
        vote = "-"
        if lab.ballots is not None:
            vote = f"{lab.ballots.approving_members}/{lab.ballots.rejecting_members}"
        table.add_row(
            lab.name,
            lab.strategy,
            lab.model_release,
            usd(lab.budget_micros),
            usd(lab.reservation_micros),
            lab.outcome + (f" ({lab.reason})" if lab.reason else ""),
            usd(lab.price_micros),
            str(lab.covered_items) if lab.covered_items else "-",
            vote,
            usd(lab.payout_total_micros) if lab.payout_total_micros else "-",
        )
    return table


def summary_lines(result: DemoResult) -> list[str]:
    """The summary, a line per part of the story (rich markup)."""
    deals = "; ".join(
        f"{lab.name} at {usd(lab.price_micros)}/item for {lab.covered_items} items"
        for lab in result.agreements
    )
    walked = [lab for lab in result.labs if not lab.agreed]
    lines = [
        f"[bold]members[/]     {result.members} joined, {result.items} items uploaded "
        f"({result.item_bytes / 1024:,.0f} KiB), {result.consents} consents; norms: "
        + (", ".join(f"{v} {k}" for k, v in result.norm_holders.items()) or "none"),
        f"[bold]agreements[/]  {len(result.agreements)} of {len(result.labs)} labs"
        + (f": {deals}" if deals else "")
        + "".join(f"; {no_deal(lab)}" for lab in walked),
        f"[bold]payouts[/]     {usd(result.payouts_total_micros)} to members; "
        f"{result.earnings_checked} members verified their lines "
        f"({usd(result.earnings_checked_micros)}) against the signed statements",
        f"[bold]notices[/]     {len(result.notices)} = {result.receipts} deletion receipts "
        f"({result.late} late) + {result.outstanding} outstanding; a member withdrew "
        f"{result.withdrawn_items} items, deadline {result.deletion_deadline_s:g} s",
    ]
    strike = result.strike
    if strike is not None:
        lines.append(
            f"[bold]strike[/]      against {strike.target}: {strike.pledges} pledges for a "
            f"threshold of {strike.threshold} ({strike.active_before_last} active before the "
            f"last); {'[green]executed' if strike.executed else '[red]not executed'}[/], "
            f"{strike.executed_pledges} withdrawals at once"
        )
    else:
        lines.append("[bold]strike[/]      none (no lab held a deal to strike against)")
    audit = result.audit
    state = "[green]verified[/]" if audit.verified else "[red]NOT verified[/]"
    lines.append(
        f"[bold]audit[/]       {audit.entries} entries replayed, signatures, signer rules and "
        f"root {state} against the signed checkpoint (root {audit.root_hash[:16]}…)"
    )
    lines.append(f"[bold]time[/]        {result.seconds:.1f} s (seed {result.seed})")
    return lines


def print_summary(console: Console, result: DemoResult) -> None:
    """Print the compliance table, the labs and the summary."""
    console.print()
    console.print(labs_table(result))
    console.print(compliance_table(result))
    for line in summary_lines(result):
        console.print(line)
