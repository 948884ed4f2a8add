"""The ``coalition`` command: global options and the command groups."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from coalition import __version__
from coalition.cli import (
    audit,
    bargaining,
    consent,
    disputes,
    items,
    keys,
    lab,
    norms,
    party,
    strike,
)
from coalition.cli.common import DEFAULT_SERVER, Globals
from coalition.demo import command as demo_command

app = typer.Typer(
    name="coalition",
    no_args_is_help=True,
    add_completion=False,
    # Tracebacks must never print local variables: they could include key material.
    pretty_exceptions_show_locals=False,
    # Markdown reflows docstring paragraphs instead of keeping their hard line breaks.
    rich_markup_mode="markdown",
    help=(
        "Coalition: collective bargaining for data contributors. Make a key, join, register "
        "your data and consent (or, as a lab, fetch licensed data), and audit the public "
        "ledger.\n\nExit codes: 0 success; 1 failed (the server refused, "
        "or something did not verify); 2 could not run (bad input, server unreachable)."
    ),
)
app.add_typer(keys.app, name="keys")
app.add_typer(items.app, name="items")
app.add_typer(consent.app, name="consent")
app.add_typer(lab.app, name="lab")
app.add_typer(audit.app, name="audit")
app.add_typer(strike.app, name="strike")
app.add_typer(disputes.app, name="dispute")
app.add_typer(norms.app, name="norms")
app.command("join")(party.join)
app.command("demo")(demo_command.demo)
bargaining.register(app, lab.app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"coalition {__version__}")
        raise typer.Exit


@app.callback()
def main_callback(
    ctx: typer.Context,
    server: Annotated[
        str, typer.Option(envvar="COALITION_SERVER", help="Server address, HOST:PORT.")
    ] = DEFAULT_SERVER,
    key: Annotated[
        Path | None,
        typer.Option(envvar="COALITION_KEY", help="Your key file (from `coalition keys new`)."),
    ] = None,
    tls_ca: Annotated[
        Path | None,
        typer.Option(
            envvar="COALITION_TLS_CA",
            help="Use TLS, trusting this root certificate (PEM) for the server.",
        ),
    ] = None,
    tls_client_cert: Annotated[
        Path | None,
        typer.Option(
            envvar="COALITION_TLS_CLIENT_CERT",
            help="Client certificate chain (PEM) for a server that requires mutual TLS; "
            "with --tls-client-key.",
        ),
    ] = None,
    tls_client_key: Annotated[
        Path | None,
        typer.Option(
            envvar="COALITION_TLS_CLIENT_KEY",
            help="The client certificate's private key (PEM); with --tls-client-cert.",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Global options, shared by every command."""
    del version  # handled eagerly by its callback
    ctx.obj = Globals(
        server=server,
        key_path=key,
        tls_ca=tls_ca,
        tls_client_cert=tls_client_cert,
        tls_client_key=tls_client_key,
    )


def main() -> None:
    """Console-script entry point."""
    app()
