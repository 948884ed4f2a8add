"""``coalition strike``: pledge to withdraw together from a lab, once enough members do.

A pledge is a conditional withdrawal (an assurance contract): "withdraw all my consent from
lab L (or from every lab) if at least N members pledge too", or "if the members pledging
hold at least X% of the items L's agreements cover". Pledges are signed and logged; the
pledge that completes a set executes every pledge in it together, in one sequenced batch,
with everything a withdrawal does. Until then a pledge can be retracted.

``pledge`` makes one, ``list`` shows yours and their states, ``status`` the public progress
toward each target's threshold, and ``retract`` takes one back.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Final

import typer
from rich.table import Table

from coalition.cli.common import (
    EXIT_UNUSABLE,
    JsonOpt,
    QuietOpt,
    check_output_options,
    console,
    fail,
    format_timestamp,
    globals_of,
    note,
    print_json,
    run,
)
from coalition.cli.items import RequestIdOpt, check_receipts, check_verified, receipt_json
from coalition.client import FULL_SHARE_BASIS_POINTS, pledge_state_name
from coalition.errors import VerificationError
from coalition.v1 import strike_pb2

DEFAULT_DAYS: Final = 30
MAX_DAYS: Final = 365
EVERY_LAB: Final = "every lab"

app = typer.Typer(
    no_args_is_help=True,
    help=(
        "Strike together: pledge to withdraw your consent from a lab once enough members "
        "pledge too; see your pledges and the progress toward each threshold."
    ),
)


# --- text and JSON ------------------------------------------------------------------------


def parse_share(text: str) -> int:
    """A percentage (``30``, ``12.5``, ``0.01``) as basis points; ValueError if it is not
    a share above 0 and at most 100 with at most two decimals."""
    try:
        value = Decimal(text.strip().removesuffix("%"))
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a percentage") from None
    points = value * 100
    if not value.is_finite() or points != points.to_integral_value():
        raise ValueError(f"{text!r}: give a percentage with at most two decimals")
    if not 0 < points <= FULL_SHARE_BASIS_POINTS:
        raise ValueError(f"{text!r}: a share is above 0 and at most 100%")
    return int(points)


def share_text(basis_points: int) -> str:
    """``30%``, ``12.5%``, ``0.01%``."""
    value = Decimal(basis_points) / 100
    return f"{value.normalize():f}%"


def target_text(target: str) -> str:
    """A lab's key id, or ``every lab``."""
    return target or EVERY_LAB


def threshold_text(pledge: strike_pb2.StrikePledge) -> str:
    """``3 members``, ``30% of covered items``, or both joined by ``and``."""
    parts = []
    if pledge.min_members:
        parts.append(f"{pledge.min_members} member{'s' if pledge.min_members != 1 else ''}")
    if pledge.min_share_basis_points:
        parts.append(f"{share_text(pledge.min_share_basis_points)} of covered items")
    return " and ".join(parts) or "-"


def pledge_json(pledge: strike_pb2.StrikePledge) -> dict[str, Any]:
    """A StrikePledge in JSON (``target_lab_key_id`` null: every lab)."""
    return {
        "target_lab_key_id": pledge.target_lab_key_id or None,
        "min_members": pledge.min_members,
        "min_share_basis_points": pledge.min_share_basis_points,
        "expiry_time": format_timestamp(pledge.expiry_time),
        "created_time": format_timestamp(pledge.created_time),
    }


def record_json(record: strike_pb2.PledgeRecord) -> dict[str, Any]:
    """One of your pledges in JSON."""
    return {
        "pledge_id": record.pledge_id,
        "state": pledge_state_name(record.state),
        "index": record.index,
        **pledge_json(record.pledge),
    }


def progress_json(row: strike_pb2.StrikeProgress) -> dict[str, Any]:
    """One target's progress in JSON (``lowest_member_threshold`` null: no active pledge
    counts members)."""
    return {
        "target_lab_key_id": row.target_lab_key_id or None,
        "active_pledges": row.active_pledges,
        "lowest_member_threshold": row.lowest_member_threshold or None,
        "executed_pledges": row.executed_pledges,
    }


# --- commands ------------------------------------------------------------------------------


@app.command("pledge")
def pledge(
    ctx: typer.Context,
    lab: Annotated[
        str | None, typer.Option("--lab", metavar="KEYID", help="Strike against this lab.")
    ] = None,
    all_labs: Annotated[
        bool,
        typer.Option("--all-labs", help="Strike against every lab: withdraw everything."),
    ] = False,
    min_members: Annotated[
        int | None,
        typer.Option(
            "--min-members", min=1, metavar="N", help="Only once N members pledge (you too)."
        ),
    ] = None,
    min_share: Annotated[
        str | None,
        typer.Option(
            "--min-share",
            metavar="PCT",
            help="Only once the pledging members hold PCT percent of the items the target's "
            "agreements cover (e.g. 30 or 12.5).",
        ),
    ] = None,
    days: Annotated[
        int,
        typer.Option("--days", min=1, max=MAX_DAYS, help="The pledge lapses after this many days."),
    ] = DEFAULT_DAYS,
    request_id: RequestIdOpt = "",
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Pledge to withdraw all your consent from a lab (--lab) or every lab (--all-labs)
    once enough members pledge too: --min-members and/or --min-share (both: both must hold).

    The pledge is signed and logged (its receipt verified). If it completes a set, every
    pledge in the set executes now, together, in one batch: each member's consent is
    withdrawn, the struck lab is notified and no key for those items is released again.
    With --quiet, only the pledge id is printed.
    """
    check_output_options(json_output, quiet)
    if (lab is not None) == all_labs:
        fail("name the target: --lab KEYID or --all-labs", EXIT_UNUSABLE)
    if min_members is None and min_share is None:
        fail("set a threshold: --min-members N and/or --min-share PCT", EXIT_UNUSABLE)
    share = 0
    if min_share is not None:
        try:
            share = parse_share(min_share)
        except ValueError as exc:
            fail(f"--min-share {exc}", EXIT_UNUSABLE)
    target = (lab or "").strip()
    if lab is not None and not target:
        fail("--lab needs a lab's key id", EXIT_UNUSABLE)
    options = globals_of(ctx)
    key = options.signing_key()

    async def go() -> strike_pb2.PledgeResponse:
        async with options.client(key) as client:
            response = await client.pledge(
                target,
                min_members=min_members or 0,
                min_share_basis_points=share,
                expires_in=timedelta(days=days),
                request_id=request_id,
            )
            try:
                await check_receipts(client, [response.receipt])
            except VerificationError as exc:
                check_verified(exc, "the pledge receipt")
            return response

    response = run(ctx, go())
    if json_output:
        print_json(
            {
                "pledge_id": response.pledge_id,
                "target_lab_key_id": target or None,
                "min_members": min_members or 0,
                "min_share_basis_points": share,
                "days": days,
                "executed": response.executed,
                "executed_pledges": response.executed_pledges,
                "receipt": receipt_json(response.receipt),
            }
        )
        return
    if quiet:
        typer.echo(response.pledge_id)
        if response.executed:
            note(f"pledge {response.pledge_id} EXECUTED now: your consent is withdrawn")
        return
    out = console()
    out.print(
        f"pledge {response.pledge_id} against {target_text(target)} logged at entry "
        f"{response.receipt.index} (receipt verified)"
    )
    if response.executed:
        count = response.executed_pledges
        together = (
            f"{count} pledges executed together, yours among them"
            if count != 1
            else "your pledge executed on its own"
        )
        out.print(f"EXECUTED now: {together}; your consent is withdrawn from {target_text(target)}")
    else:
        if response.executed_pledges:
            # Not expected (such a set would have executed with an earlier pledge), but the
            # response can say so, and then the member should know.
            out.print(
                f"{response.executed_pledges} other pledges executed together in this batch; "
                "yours did not meet its own threshold"
            )
        out.print(
            f"active: it executes once its threshold is met, or lapses in {days} days; "
            "take it back with `coalition strike retract " + response.pledge_id + "`"
        )


@app.command("list")
def list_pledges(ctx: typer.Context, json_output: JsonOpt = False) -> None:
    """Your pledges and their states (active, retracted, executed, expired)."""
    options = globals_of(ctx)
    key = options.signing_key()

    async def go() -> list[strike_pb2.PledgeRecord]:
        async with options.client(key) as client:
            return await client.pledges()

    records = run(ctx, go())
    if json_output:
        print_json([record_json(r) for r in records])
        return
    table = Table()
    table.add_column("pledge id")
    table.add_column("target")
    table.add_column("threshold")
    table.add_column("expires")
    table.add_column("state")
    table.add_column("entry", justify="right")
    for record in records:
        table.add_row(
            record.pledge_id,
            target_text(record.pledge.target_lab_key_id),
            threshold_text(record.pledge),
            format_timestamp(record.pledge.expiry_time),
            pledge_state_name(record.state),
            str(record.index),
        )
    console().print(table)
    if not records:
        note("no pledges yet")


@app.command("status")
def status(ctx: typer.Context, json_output: JsonOpt = False) -> None:
    """Public progress toward each target's threshold: active pledges against the lowest
    member threshold among them, and pledges executed so far (counts only, no names)."""
    options = globals_of(ctx)

    async def go() -> list[strike_pb2.StrikeProgress]:
        async with options.client() as client:
            return await client.strikes()

    rows = run(ctx, go())
    if json_output:
        print_json([progress_json(r) for r in rows])
        return
    table = Table()
    table.add_column("target")
    table.add_column("active pledges", justify="right")
    table.add_column("lowest member threshold", justify="right")
    table.add_column("progress")
    table.add_column("executed", justify="right")
    for row in rows:
        lowest = row.lowest_member_threshold
        if lowest:
            # A lower bound: pledges with higher thresholds (or a share) may need more.
            missing = max(0, lowest - row.active_pledges)
            progress = f"{row.active_pledges}/{lowest}" + (
                f" (at least {missing} more needed)" if missing else ""
            )
        else:
            progress = "-"
        table.add_row(
            target_text(row.target_lab_key_id),
            str(row.active_pledges),
            str(lowest) if lowest else "-",
            progress,
            str(row.executed_pledges),
        )
    console().print(table)
    if not rows:
        note("no pledges yet")


@app.command("retract")
def retract(
    ctx: typer.Context,
    pledge_id: Annotated[str, typer.Argument(help="One of your active pledges.")],
    request_id: RequestIdOpt = "",
    json_output: JsonOpt = False,
) -> None:
    """Take back one of your pledges that has not executed (a signed retraction, logged)."""
    options = globals_of(ctx)
    key = options.signing_key()

    async def go() -> strike_pb2.RetractPledgeResponse:
        async with options.client(key) as client:
            response = await client.retract_pledge(pledge_id.strip(), request_id=request_id)
            try:
                await check_receipts(client, [response.receipt])
            except VerificationError as exc:
                check_verified(exc, "the retraction receipt")
            return response

    response = run(ctx, go())
    if json_output:
        print_json(
            {
                "pledge_id": pledge_id.strip(),
                "state": "retracted",
                "receipt": receipt_json(response.receipt),
            }
        )
        return
    console().print(
        f"pledge {pledge_id.strip()} retracted: retraction logged at entry "
        f"{response.receipt.index} (receipt verified)"
    )
