"""What every command shares: global options, the client, output, and error reporting.

Exit codes, the same for every command:

* 0: success;
* 1: the command failed: the server refused the call (``error: CODE [REASON]: message``),
  or something did not verify (for ``audit verify``: the log misbehaved);
* 2: the command could not run: bad arguments or local files, or the server is unreachable.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Final, NoReturn, TypeVar

import grpc
import typer
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console

from coalition.client import Client, ServerError
from coalition.errors import KeyFormatError
from coalition.keys import SigningKey

T = TypeVar("T")

DEFAULT_SERVER: Final = "127.0.0.1:50051"
EXIT_FAILED: Final = 1
EXIT_UNUSABLE: Final = 2
# Wide enough that a table of 64-hex-digit hashes never wraps when piped to a file.
PIPE_WIDTH: Final = 200

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
QuietOpt = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        help="Print only the id(s), one per line, for a script: ID=$(coalition ... --quiet).",
    ),
]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_UNREACHABLE: Final = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


@dataclass(frozen=True)
class Globals:
    """The global options, shared by every command through the typer context."""

    server: str = DEFAULT_SERVER
    key_path: Path | None = None
    tls_ca: Path | None = None
    tls_client_cert: Path | None = None
    tls_client_key: Path | None = None

    def signing_key(self, path: Path | None = None) -> SigningKey:
        """Load the key at ``path`` or ``--key``; exit 2 with a message if there is none."""
        path = path or self.key_path
        if path is None:
            fail("this command needs a key: pass --key PATH or set COALITION_KEY", EXIT_UNUSABLE)
        try:
            return SigningKey.load(path)
        except FileNotFoundError:
            fail(
                f"no key file at {path} (create one with `coalition keys new {path}`)",
                EXIT_UNUSABLE,
            )
        except (OSError, KeyFormatError) as exc:
            fail(f"cannot load key {path}: {_describe(exc)}", EXIT_UNUSABLE)

    def client(self, key: SigningKey | None = None) -> Client:
        """A client for ``--server``: over TLS with ``--tls-ca`` as the root when given, and
        presenting ``--tls-client-cert``/``--tls-client-key`` to a mutual-TLS server."""
        if (self.tls_client_cert is None) != (self.tls_client_key is None):
            fail("--tls-client-cert and --tls-client-key go together", EXIT_UNUSABLE)
        roots = _read_tls_file("--tls-ca", self.tls_ca)
        cert = _read_tls_file("--tls-client-cert", self.tls_client_cert)
        private = _read_tls_file("--tls-client-key", self.tls_client_key)
        return Client(
            self.server, key=key, root_certificates=roots, client_cert=cert, client_key=private
        )


def _read_tls_file(option: str, path: Path | None) -> bytes | None:
    """The PEM file an option names (None when not given); exit 2 if it cannot be read.

    The message names the file, never its content (a client key is a secret).
    """
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        fail(f"cannot read {option} {path}: {_describe(exc)}", EXIT_UNUSABLE)


def globals_of(ctx: typer.Context) -> Globals:
    """The global options stored by the top-level callback."""
    obj = ctx.find_root().obj
    return obj if isinstance(obj, Globals) else Globals()


def run(ctx: typer.Context, coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion, reporting server errors as ``error: ...`` and an exit code.

    Each command runs its own event loop: the CLI is synchronous at its edges.
    """
    try:
        return asyncio.run(coro)
    except ServerError as exc:
        if exc.code in _UNREACHABLE and not exc.reason:
            # gRPC's own failure (no ErrorInfo from our server): nobody answered in time.
            server = globals_of(ctx).server
            fail(f"{exc} (cannot reach the server at {server})", EXIT_UNUSABLE)
        fail(str(exc), EXIT_FAILED)


def check_output_options(json_output: bool, quiet: bool) -> None:
    """Exit 2 when both --json and --quiet are given: each is the whole of stdout."""
    if json_output and quiet:
        fail("--json and --quiet both choose what stdout is: give one", EXIT_UNUSABLE)


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code``."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def note(message: str) -> None:
    """An informational line on stderr (stdout stays clean for data)."""
    typer.echo(message, err=True)


def console() -> Console:
    """A rich console on stdout; wide when piped so hashes never wrap."""
    out = Console(highlight=False, soft_wrap=False)
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out = Console(highlight=False, soft_wrap=False, width=PIPE_WIDTH)
    return out


def print_json(data: object) -> None:
    """Print ``data`` as indented JSON on stdout."""
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    sys.stdout.flush()


def b64(data: bytes) -> str:
    """Standard base64, the encoding of every hash and key in JSON output."""
    return base64.b64encode(data).decode("ascii")


def format_timestamp(ts: Timestamp) -> str:
    """RFC 3339 UTC with microseconds, e.g. ``2025-01-31T12:00:00.123456Z``."""
    try:
        when = _EPOCH + timedelta(seconds=ts.seconds, microseconds=ts.nanos // 1000)
    except OverflowError:
        # Only a malformed leaf gets here; show the raw value rather than crash.
        return f"{ts.seconds}s+{ts.nanos}ns"
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
