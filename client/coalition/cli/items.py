"""``coalition items``: register your data items (hash commitments) and upload their content.

Also the helpers the contributor and lab commands share: receipt checking, JSON forms and
the transfer progress bar.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from coalition.checkpoint import Checkpoint
from coalition.cli.common import (
    EXIT_FAILED,
    JsonOpt,
    b64,
    console,
    fail,
    globals_of,
    print_json,
    run,
)
from coalition.client import Client, ServerError, file_commitment, media_type_of
from coalition.errors import VerificationError
from coalition.note import NoteVerifier
from coalition.receipts import verify_receipt
from coalition.v1 import items_pb2, ledger_pb2

REGISTERED = items_pb2.ITEM_STATE_REGISTERED

app = typer.Typer(
    no_args_is_help=True,
    help="Register your data items (SHA-256 commitments) and upload their content.",
)

RequestIdOpt = Annotated[
    str,
    typer.Option(help="Idempotency key: a retry of the same request gets the first answer."),
]
ProgressOpt = Annotated[
    bool | None,
    typer.Option(
        "--progress/--no-progress",
        help="Show a progress bar (default: when stderr is a terminal).",
    ),
]


# --- shared by the contributor and lab commands -----------------------------------------


async def check_receipts(
    client: Client, receipts: Iterable[ledger_pb2.Receipt]
) -> Checkpoint | None:
    """Verify receipts against the log key the server presents; the last checkpoint."""
    verifier = NoteVerifier.parse((await client.log_info()).verifier_key)
    checkpoint = None
    for receipt in receipts:
        checkpoint = verify_receipt(receipt, verifier)
    return checkpoint


def receipt_json(receipt: ledger_pb2.Receipt) -> dict[str, Any]:
    """A receipt in JSON (base64 hashes), marked verified: callers check it first."""
    return {
        "index": receipt.index,
        "tree_size": receipt.tree_size,
        "leaf_hash": b64(receipt.leaf_hash),
        "leaf": b64(receipt.leaf),
        "inclusion_proof": [b64(h) for h in receipt.inclusion_proof],
        "checkpoint": receipt.checkpoint,
        "verified": True,
    }


def item_state_name(state: items_pb2.ItemState.ValueType) -> str:
    """``registered``, ``stored`` or ``withdrawn``."""
    try:
        return items_pb2.ItemState.Name(state).removeprefix("ITEM_STATE_").lower()
    except ValueError:
        return str(int(state))


def item_json(item: items_pb2.Item) -> dict[str, Any]:
    """An item in JSON."""
    return {
        "item_id": item.item_id,
        "contributor_key_id": item.contributor_key_id,
        "commitment": item.commitment.hex(),
        "size_bytes": item.size_bytes,
        "media_type": item.media_type,
        "tags": list(item.tags),
        "state": item_state_name(item.state),
        "registration_index": item.registration_index,
    }


def transfer_progress(show: bool | None) -> Progress:
    """A byte-transfer progress bar on stderr: shown when asked, else on a terminal only."""
    err = Console(stderr=True, force_terminal=True if show else None)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not (show or (show is None and err.is_terminal)),
    )


def split_ids(values: Sequence[str] | None) -> list[str]:
    """Ids given as repeated options and/or separated by commas or spaces."""
    out: list[str] = []
    for value in values or ():
        out.extend(part for part in value.replace(",", " ").split() if part)
    return out


def check_verified(error: VerificationError, what: str) -> NoReturn:
    """Exit 1: something the server sent did not verify."""
    fail(f"{what} does not verify: {error}", EXIT_FAILED)


# --- commands ----------------------------------------------------------------------------


@dataclass
class _Added:
    path: Path
    item: items_pb2.Item
    receipt: ledger_pb2.Receipt | None  # None: registered before
    uploaded: bool = False


@app.command("add")
def add(
    ctx: typer.Context,
    paths: Annotated[
        list[Path],
        typer.Argument(help="Files to register.", exists=True, dir_okay=False, readable=True),
    ],
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="Tag every new item (repeatable).")
    ] = None,
    media_type: Annotated[
        str | None, typer.Option(help="Media type of every file (default: from the name).")
    ] = None,
    no_upload: Annotated[
        bool,
        typer.Option("--no-upload", help="Register the commitments only; keep the content."),
    ] = False,
    request_id: RequestIdOpt = "",
    progress: ProgressOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Register files as your items, then upload their content (encrypted at rest).

    Each file's SHA-256 commitment, size, media type and tags are signed by your key and
    logged; the receipts are verified. With --no-upload the content stays with you. Files
    registered before are not registered again, only uploaded if their content is not
    stored yet: running the same command again finishes an interrupted upload.
    """
    options = globals_of(ctx)
    key = options.signing_key()
    tags = [t.strip().lower() for t in tag or ()]

    async def go() -> list[_Added]:
        async with options.client(key) as client:
            added = await _register_new(client, paths, tags, media_type, request_id)
            if not no_upload:
                await _upload(client, [a for a in added if a.item.state == REGISTERED], progress)
            return added

    added = run(ctx, go())
    if json_output:
        print_json(
            [
                {
                    **item_json(a.item),
                    "path": str(a.path),
                    "registered_now": a.receipt is not None,
                    "uploaded_now": a.uploaded,
                    "receipt": receipt_json(a.receipt) if a.receipt is not None else None,
                }
                for a in added
            ]
        )
        return
    table = Table()
    table.add_column("item id")
    table.add_column("file")
    table.add_column("size", justify="right")
    table.add_column("media type")
    table.add_column("state")
    table.add_column("entry", justify="right")
    for a in added:
        state = item_state_name(a.item.state)
        if a.receipt is None:
            state += " (uploaded now)" if a.uploaded else " (before)"
        table.add_row(
            a.item.item_id,
            str(a.path),
            str(a.item.size_bytes),
            a.item.media_type,
            state,
            str(a.item.registration_index),
        )
    console().print(table)


async def _register_new(
    client: Client,
    paths: Sequence[Path],
    tags: list[str],
    media_type: str | None,
    request_id: str,
) -> list[_Added]:
    """Hash the files; register those not registered before (one file per content)."""
    found: dict[str, _Added] = {}
    new: list[tuple[Path, tuple[bytes, int, str, list[str]]]] = []
    for path in paths:
        commitment, size = await asyncio.to_thread(file_commitment, path)
        item_id = client.item_id_for(commitment)
        if item_id in found or any(client.item_id_for(spec[0]) == item_id for _, spec in new):
            continue  # the same content twice is one item
        try:
            found[item_id] = _Added(path, await client.item(item_id), None)
        except ServerError as exc:
            if exc.reason != "ITEM_NOT_FOUND":
                raise
            new.append((path, (commitment, size, media_type_of(path, media_type), tags)))
    if new:
        response = await client.register_items([spec for _, spec in new], request_id=request_id)
        try:
            await check_receipts(client, response.receipts)
        except VerificationError as exc:
            check_verified(exc, "a registration receipt")
        for (path, _), item, receipt in zip(new, response.items, response.receipts, strict=True):
            found[item.item_id] = _Added(path, item, receipt)
    order = {path: position for position, path in enumerate(paths)}
    return sorted(found.values(), key=lambda a: order[a.path])


async def _upload(client: Client, pending: list[_Added], show: bool | None) -> None:
    """Upload the content of ``pending`` items, with a progress bar."""
    total = sum(a.item.size_bytes for a in pending)
    with transfer_progress(show) as bar:
        overall = bar.add_task("uploading", total=total)
        done = 0
        for a in pending:
            task = bar.add_task(f"  {a.path.name}", total=a.item.size_bytes)

            def advance(sent: int, task: TaskID = task, base: int = done) -> None:
                bar.update(task, completed=sent)
                bar.update(overall, completed=base + sent)

            response = await client.upload(a.item.item_id, a.path, progress=advance)
            bar.update(task, completed=a.item.size_bytes, visible=False)
            a.item, a.uploaded = response.item, True
            done += a.item.size_bytes
        bar.update(overall, completed=total)


@app.command("list")
def list_items(ctx: typer.Context, json_output: JsonOpt = False) -> None:
    """List your items: id, state, size, media type, tags."""
    options = globals_of(ctx)
    key = options.signing_key()

    async def go() -> list[items_pb2.Item]:
        async with options.client(key) as client:
            return [item async for item in client.items()]

    items = run(ctx, go())
    if json_output:
        print_json([item_json(item) for item in items])
        return
    table = Table()
    table.add_column("item id")
    table.add_column("state")
    table.add_column("size", justify="right")
    table.add_column("media type")
    table.add_column("tags")
    table.add_column("entry", justify="right")
    for item in items:
        table.add_row(
            item.item_id,
            item_state_name(item.state),
            str(item.size_bytes),
            item.media_type,
            ",".join(item.tags) or "-",
            str(item.registration_index),
        )
    console().print(table)
