"""``coalition-server``: run the server, or migrate its database."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import Annotated

import typer

from coalition_server.config import DEFAULT_DATA_DIR, DEFAULT_LISTEN, Settings
from coalition_server.server import CoalitionServer, NotMigratedError
from coalition_server.store import migrate as migrations
from coalition_server.store.database import Database

app = typer.Typer(
    add_completion=False,
    no_args_is_help=False,
    help="Coalition server: the ledger and the gRPC API.",
)

ListenOpt = Annotated[
    str, typer.Option("--listen", envvar="COALITION_LISTEN", help="HOST:PORT to serve on.")
]
DataDirOpt = Annotated[
    Path,
    typer.Option(
        "--data-dir", envvar="COALITION_DATA_DIR", help="Keys and the SQLite file live here."
    ),
]
DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db", envvar="COALITION_DB_URL", help="Database URL (default: SQLite in --data-dir)."
    ),
]


async def _serve(settings: Settings) -> None:
    server = CoalitionServer(settings)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    typer.echo(f"coalition-server listening on {settings.listen.rsplit(':', 1)[0]}:{server.port}")
    await stop.wait()
    await server.stop(grace=5.0)


@app.callback(invoke_without_command=True)
def main_command(
    ctx: typer.Context,
    listen: ListenOpt = DEFAULT_LISTEN,
    data_dir: DataDirOpt = DEFAULT_DATA_DIR,
    db: DbOpt = None,
    origin: Annotated[
        str | None,
        typer.Option(envvar="COALITION_ORIGIN", help="Checkpoint origin (log name)."),
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(envvar="COALITION_TLS_CERT", help="Server certificate (PEM).")
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option(envvar="COALITION_TLS_KEY", help="Server private key (PEM).")
    ] = None,
    policy: Annotated[
        Path | None,
        typer.Option(envvar="COALITION_POLICY", help="The coalition's bargaining policy (YAML)."),
    ] = None,
    log_level: Annotated[str, typer.Option(envvar="COALITION_LOG_LEVEL")] = "INFO",
) -> None:
    """Serve the ledger (the default command)."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    ctx.obj = Settings(
        listen=listen,
        data_dir=data_dir,
        db_url=db,
        origin=origin,
        tls_cert=tls_cert,
        tls_key=tls_key,
        policy_file=policy,
    )
    if ctx.invoked_subcommand is not None:
        return
    if bool(tls_cert) != bool(tls_key):
        raise typer.BadParameter("--tls-cert and --tls-key go together")
    try:
        asyncio.run(_serve(ctx.obj))
    except NotMigratedError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def migrate(ctx: typer.Context) -> None:
    """Create or upgrade the database schema, then exit."""
    settings: Settings = ctx.obj

    async def run() -> None:
        db = Database.connect(settings.database_url())
        try:
            await migrations.upgrade(db)
        finally:
            await db.dispose()

    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    asyncio.run(run())
    typer.echo(f"database at revision {migrations.head_revision()}")


def main() -> None:
    """Console-script entry point."""
    app()
