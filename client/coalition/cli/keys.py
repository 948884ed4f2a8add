"""``coalition keys``: make and inspect a party's key file (no server involved)."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from coalition.cli.common import (
    EXIT_FAILED,
    EXIT_UNUSABLE,
    JsonOpt,
    b64,
    console,
    fail,
    globals_of,
    note,
    print_json,
)
from coalition.keys import SigningKey

app = typer.Typer(no_args_is_help=True, help="Make and inspect Ed25519 key files.")


@app.command("new")
def new_key(
    path: Annotated[Path, typer.Argument(help="Where to write the new key (must not exist).")],
    json_output: JsonOpt = False,
) -> None:
    """Generate a key and write it to PATH, readable by you only; print its key id."""
    key = SigningKey.generate()
    try:
        key.save(path)
    except FileExistsError:
        fail(f"{path} already exists: refusing to overwrite a key", EXIT_FAILED)
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or exc}", EXIT_UNUSABLE)
    if json_output:
        print_json({"key_id": key.key_id, "path": str(path)})
    else:
        typer.echo(key.key_id)
        note(f"wrote a new key to {path}: keep it secret, it is your identity")


@app.command("show")
def show_key(
    ctx: typer.Context,
    path: Annotated[
        Path | None, typer.Argument(help="Key file (default: --key / COALITION_KEY).")
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Show a key's id, public key and X25519 encryption key (never the private key)."""
    key = globals_of(ctx).signing_key(path)
    shown = path or globals_of(ctx).key_path
    public = {
        "key_id": key.key_id,
        "public_key": b64(key.public_key.raw),
        "encryption_public_key": b64(key.encryption_public_key_raw()),
    }
    if json_output:
        print_json(public)
    else:
        table = Table(show_header=False, box=None)
        table.add_column(style="bold")
        table.add_column()
        table.add_row("key id", public["key_id"])
        table.add_row("public key (Ed25519)", public["public_key"])
        table.add_row("encryption key (X25519)", public["encryption_public_key"])
        console().print(table)
    if shown is not None and _readable_by_others(shown):
        note(f"warning: {shown} is readable by other users; run `chmod 600 {shown}`")


def _readable_by_others(path: Path) -> bool:
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return bool(mode & (stat.S_IRWXG | stat.S_IRWXO))
