"""``coalition demo``: the CLI command. Imports the server only when it runs, so the rest
of the CLI works without the ``server`` extra."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from coalition.cli.common import EXIT_FAILED, EXIT_UNUSABLE, console, fail
from coalition.errors import CoalitionError


def demo(
    members: Annotated[
        int, typer.Option("--members", min=10, help="Members in the coalition.")
    ] = 300,
    labs: Annotated[
        int, typer.Option("--labs", min=1, max=3, help="Labs bargaining with it (1 to 3).")
    ] = 3,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of everything random: the same run again.")
    ] = 7,
    report: Annotated[
        Path | None,
        typer.Option(
            "--report",
            help="Write an HTML report (index.html, with plots) and result.json here.",
            file_okay=False,
        ),
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, help="Members acting at once.")
    ] = 32,
) -> None:
    """Play a whole coalition end to end against a real local server, and show it.

    Starts coalition-server in this process (127.0.0.1, a free port, SQLite in a temporary
    directory) and, through the public SDK only: members join, upload and consent with
    varied floors and norms; labs read the catalogue and negotiate (Conceder, Boulware,
    linear); members ratify; payouts are published and verified; a member withdraws and
    the labs answer with deletion receipts (one late); a strike executes against one lab;
    an auditor replays and verifies the ledger and prints the compliance table.

    The server's address and your key (--server, --key) are not used.
    """
    try:
        from coalition.demo.report import write_report
        from coalition.demo.scenario import DemoConfig, run_demo
        from coalition.demo.summary import print_summary
    except ModuleNotFoundError as exc:
        fail(
            f"the demo runs a server, which needs the server extra ({exc.name} is missing): "
            "pip install 'coalition[server]'",
            EXIT_UNUSABLE,
        )
    out = console()
    config = DemoConfig(members=members, labs=labs, seed=seed, concurrency=concurrency)
    try:
        result = asyncio.run(run_demo(config, out))
    except CoalitionError as exc:
        # A refusal or a failed verification is a finding, reported like any command's.
        fail(f"the demo stopped: {exc}", EXIT_FAILED)
    print_summary(out, result)
    if report is not None:
        page = write_report(result, report)
        # Never wrapped by rich: the path must survive copy and paste.
        out.print(f"[bold]report[/]      {page}", soft_wrap=True)
    if not result.audit.verified:
        raise typer.Exit(EXIT_FAILED)
