"""``coalition-server``: serve, migrate the database, create keys, probe health.

Settings come from flags, ``COALITION_*`` environment variables and a TOML file named by
``--config`` (or ``COALITION_CONFIG``), in that order of precedence; see
:mod:`coalition_server.config` and docs/operator.md. The top-level options are the settings,
so they go before the subcommand: ``coalition-server --db URL migrate``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coalition_server import allocator, collector, logs
from coalition_server import event_loop as event_loops
from coalition_server.config import (
    BY_FIELD,
    CONFIG_ENV,
    ConfigError,
    Resolved,
    Settings,
    format_default,
    render,
    resolve,
)
from coalition_server.keys.server_keys import COALITION_KEY_FILE, LOG_KEY_FILE, ServerKeys

app = typer.Typer(
    add_completion=False,
    no_args_is_help=False,
    help="Coalition server: the ledger and the gRPC API.",
)

log = logging.getLogger(__name__)

# Exit codes: 2 is a usage or configuration error (as for a bad flag), 1 a failed probe.
EXIT_CONFIG = 2
EXIT_UNHEALTHY = 1


def _flag(field: str, *names: str) -> Any:
    """The typer option for a setting: its flag, and help naming its env var and key."""
    option = BY_FIELD[field]
    shown = "" if option.default is None else f" Default: {format_default(option)}."
    return typer.Option(
        *(names or (option.flag,)),
        help=f"{option.help}{shown} [env {option.env}; config key {option.key}]",
        show_default=False,
    )


def _fail(message: str, code: int = EXIT_CONFIG) -> typer.Exit:
    typer.echo(f"coalition-server: error: {message}", err=True)
    return typer.Exit(code)


async def _serve(settings: Settings) -> None:
    from coalition_server.server import CoalitionServer

    loop = asyncio.get_running_loop()
    log.info("event loop: %s", event_loops.name(loop))
    server = CoalitionServer(settings)
    await server.start()
    # Started: what is alive now lives as long as the process (decision 40).
    collector.freeze_start_up()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    typer.echo(f"coalition-server listening on {settings.listen.rsplit(':', 1)[0]}:{server.port}")
    await stop.wait()
    await server.stop(grace=5.0)


@app.callback(invoke_without_command=True)
def main_command(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help=f"TOML file of settings (keys as `show-config` prints). [env {CONFIG_ENV}]",
            show_default=False,
        ),
    ] = None,
    # Every parameter below is named exactly as its Settings field: the callback hands
    # ctx.params to config.resolve, and tests/test_config.py checks none is missing.
    listen: Annotated[str | None, _flag("listen")] = None,
    data_dir: Annotated[Path | None, _flag("data_dir")] = None,
    db_url: Annotated[str | None, _flag("db_url")] = None,
    origin: Annotated[str | None, _flag("origin")] = None,
    tls_cert: Annotated[Path | None, _flag("tls_cert")] = None,
    tls_key: Annotated[Path | None, _flag("tls_key")] = None,
    tls_client_ca: Annotated[Path | None, _flag("tls_client_ca")] = None,
    max_batch: Annotated[int | None, _flag("max_batch")] = None,
    auth_window_seconds: Annotated[float | None, _flag("auth_window_seconds")] = None,
    max_message_bytes: Annotated[int | None, _flag("max_message_bytes")] = None,
    policy_file: Annotated[Path | None, _flag("policy_file")] = None,
    negotiation_sweep_seconds: Annotated[float | None, _flag("negotiation_sweep_seconds")] = None,
    follow_poll_seconds: Annotated[float | None, _flag("follow_poll_seconds")] = None,
    currency: Annotated[str | None, _flag("currency")] = None,
    kek_dir: Annotated[Path | None, _flag("kek_dir")] = None,
    # Durations are parsed by config (90d, 12h, 30m, 45s), like their env and file forms.
    kek_max_age: Annotated[str | None, _flag("kek_max_age")] = None,
    kek_retention: Annotated[str | None, _flag("kek_retention")] = None,
    retention_check_seconds: Annotated[float | None, _flag("retention_check_seconds")] = None,
    auto_migrate: Annotated[
        bool | None, _flag("auto_migrate", "--auto-migrate/--no-auto-migrate")
    ] = None,
    metrics_listen: Annotated[str | None, _flag("metrics_listen")] = None,
    metrics_refresh_seconds: Annotated[float | None, _flag("metrics_refresh_seconds")] = None,
    log_level: Annotated[str | None, _flag("log_level")] = None,
    log_format: Annotated[str | None, _flag("log_format")] = None,
    event_loop: Annotated[str | None, _flag("event_loop")] = None,
) -> None:
    """Resolve the settings for every subcommand; without a subcommand, serve."""
    flags = {name: value for name, value in ctx.params.items() if name in BY_FIELD}
    try:
        resolved = resolve(flags, os.environ, config)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    ctx.obj = resolved
    logs.configure(resolved.settings.log_level.upper(), resolved.settings.log_format)
    if ctx.invoked_subcommand is None:
        serve(ctx)


def _settings(ctx: typer.Context) -> Settings:
    resolved: Resolved = ctx.obj
    return resolved.settings


@app.command()
def serve(ctx: typer.Context) -> None:
    """Serve the ledger until SIGTERM or SIGINT (what no subcommand does too)."""
    from coalition_server.server import NotMigratedError

    try:
        settings = _settings(ctx)
        # Before gRPC and SQLite start their threads: decision 39.
        allocator.cap_arenas()
        event_loops.run(_serve(settings), settings.event_loop)
    except NotMigratedError as exc:
        raise _fail(str(exc)) from None


@app.command()
def migrate(ctx: typer.Context) -> None:
    """Create or upgrade the database schema, then exit."""
    from coalition_server.store import migrate as migrations
    from coalition_server.store.database import Database

    settings = _settings(ctx)

    async def run() -> None:
        db = Database.connect(settings.database_url())
        try:
            await migrations.upgrade(db)
        finally:
            await db.dispose()

    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    asyncio.run(run())
    typer.echo(f"database at revision {migrations.head_revision()}")


@app.command("init-keys")
def init_keys(ctx: typer.Context) -> None:
    """Create the server's signing keys in --data-dir if missing, and print the public parts.

    Every replica of one ledger must use the same two key files: run this once (compose's
    migrate step does) and share the directory, instead of letting replicas create keys.
    """
    settings = _settings(ctx)
    names = (LOG_KEY_FILE, COALITION_KEY_FILE)
    existed = {name for name in names if (settings.data_dir / name).exists()}
    try:
        keys = ServerKeys.load(settings.data_dir, settings.origin)
    except (OSError, ValueError) as exc:
        raise _fail(f"cannot create or read the keys in {settings.data_dir}: {exc}") from None
    for name in names:
        state = "kept" if name in existed else "created"
        typer.echo(f"{state} {settings.data_dir / name}")
    # What auditors need to verify checkpoints, and the coalition's identity.
    typer.echo(f"log verifier key: {keys.log_signer.verifier.verifier_key}")
    typer.echo(f"coalition key id: {keys.coalition_key.key_id}")


@app.command()
def health(
    ctx: typer.Context,
    target: Annotated[
        str | None,
        typer.Option(help="HOST:PORT to probe; default: --listen, with 0.0.0.0 as 127.0.0.1."),
    ] = None,
    service: Annotated[
        str, typer.Option(help="Service to ask about; default: the server as a whole.")
    ] = "",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 3.0,
    ca: Annotated[
        Path | None,
        typer.Option(help="Root certificate (PEM) to talk TLS; default: plaintext."),
    ] = None,
    cert: Annotated[
        Path | None,
        typer.Option(
            help="Client certificate chain (PEM) for a mutual-TLS server (tls_client_ca); "
            "with --key and --ca."
        ),
    ] = None,
    key: Annotated[
        Path | None,
        typer.Option(help="The client certificate's private key (PEM); with --cert."),
    ] = None,
    server_name: Annotated[
        str | None,
        typer.Option(
            help="Name to check the server's certificate against, when the target's host is "
            "not in it (e.g. probing 127.0.0.1 for a certificate of coalition.example.org)."
        ),
    ] = None,
) -> None:
    """Ask a server's grpc.health.v1 Check; exit 0 only when it is SERVING.

    For container health checks: it needs no client key and no database.
    """
    address = target or _local_address(_settings(ctx).listen)
    if (cert is None) != (key is None):
        raise _fail("--cert and --key go together")
    if ca is None and (cert is not None or server_name is not None):
        raise _fail("--cert, --key and --server-name are for TLS: give --ca too")
    try:
        status = check_health(
            address,
            service=service,
            timeout=timeout,
            ca=ca,
            client_cert=cert,
            client_key=key,
            server_name=server_name,
        )
    except OSError as exc:
        raise _fail(f"cannot read a TLS file: {exc}") from None
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        if code == grpc.StatusCode.NOT_FOUND:
            raise _fail(f"{address}: no service {service!r} there", EXIT_UNHEALTHY) from None
        raise _fail(f"{address}: {code.name if code else exc}", EXIT_UNHEALTHY) from None
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    typer.echo(f"{address}: {name}")
    if status != health_pb2.HealthCheckResponse.SERVING:
        raise typer.Exit(EXIT_UNHEALTHY)


def check_health(
    target: str,
    *,
    service: str = "",
    timeout: float = 3.0,
    ca: Path | None,
    client_cert: Path | None = None,
    client_key: Path | None = None,
    server_name: str | None = None,
) -> int:
    """The serving status a server reports for ``service`` ("" = overall).

    With ``ca``, over TLS; with ``client_cert`` and ``client_key`` too, presenting that
    certificate (a server with ``tls_client_ca`` refuses a client without one).
    """
    if ca is not None:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca.read_bytes(),
            private_key=client_key.read_bytes() if client_key is not None else None,
            certificate_chain=client_cert.read_bytes() if client_cert is not None else None,
        )
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        channel = grpc.secure_channel(target, credentials, options=options)
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return int(reply.status)


def _local_address(listen: str) -> str:
    """The address a probe on the same host uses for ``listen`` (wildcards are not dialable)."""
    host, _, port = listen.rpartition(":")
    if host in ("0.0.0.0", "[::]", "::", ""):  # noqa: S104 (comparing, not binding)
        host = "127.0.0.1"
    return f"{host}:{port}"


@app.command("show-config")
def show_config(ctx: typer.Context) -> None:
    """Print the effective settings as TOML, each with where it came from."""
    resolved: Resolved = ctx.obj
    typer.echo(render(resolved), nl=False)


def main() -> None:
    """Console-script entry point."""
    app()
