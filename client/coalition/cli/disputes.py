"""``coalition dispute``: allege that a lab breaks what it declared, and answer.

A member whose items an agreement covers files a dispute naming the norms (``--norm``) and
the use-declaration fields (``--field``) the lab allegedly breaks, with a short text; the
agreement's lab answers it once (``respond``). Both are signed statements in the public
ledger: ``list`` and ``show`` read them (no key needed), and ``coalition audit compliance``
reports them per agreement from the ledger alone.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

import typer
from rich.table import Table

from coalition import statements
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
from coalition.errors import CoalitionError, VerificationError
from coalition.norms import Vocabulary
from coalition.v1 import disputes_pb2, party_pb2

MAX_TEXT: Final = 1000
"""Longest dispute or response text, in characters (the server's limit)."""

app = typer.Typer(
    no_args_is_help=True,
    help=(
        "Disputes: as a member an agreement covers, allege that its lab breaks what it "
        "declared; as that lab, answer. Both are signed and logged."
    ),
)

STATES: Final = {
    disputes_pb2.DISPUTE_STATE_OPEN: "open",
    disputes_pb2.DISPUTE_STATE_ANSWERED: "answered",
}


# --- text and JSON ------------------------------------------------------------------------


def _statement(record: disputes_pb2.DisputeRecord) -> disputes_pb2.Dispute:
    return statements.parse_payload(disputes_pb2.Dispute, record.dispute.payload)


def _response(record: disputes_pb2.DisputeRecord) -> disputes_pb2.DisputeResponse | None:
    if record.state != disputes_pb2.DISPUTE_STATE_ANSWERED:
        return None
    return statements.parse_payload(disputes_pb2.DisputeResponse, record.response.payload)


def record_json(record: disputes_pb2.DisputeRecord) -> dict[str, Any]:
    """A dispute and its answer in JSON (the statements decoded; ``response`` null: open)."""
    dispute = _statement(record)
    response = _response(record)
    return {
        "dispute_id": record.dispute_id,
        "agreement_id": record.agreement_id,
        "lab_key_id": record.lab_key_id,
        "member_key_id": record.member_key_id,
        "state": STATES.get(record.state, "unknown"),
        "norm_ids": list(dispute.norm_ids),
        "declaration_fields": list(dispute.declaration_fields),
        "text": dispute.text,
        "index": record.index,
        "filed_time": format_timestamp(record.filed_time),
        "response": (
            None
            if response is None
            else {
                "text": response.text,
                "index": record.response_index,
                "time": format_timestamp(record.response_time),
            }
        ),
    }


def _read_text(text: str | None, text_file: typer.FileText | None, option: str) -> str:
    """The text given inline or in a file ('-': standard input), checked for length."""
    if text is not None and text_file is not None:
        fail(f"give {option} or {option}-file, not both", EXIT_UNUSABLE)
    value = text_file.read() if text_file is not None else (text or "")
    value = value.strip()
    if len(value) > MAX_TEXT:
        fail(f"{option}: at most {MAX_TEXT} characters (this is {len(value)})", EXIT_UNUSABLE)
    return value


def _known(values: list[str], known: list[str], option: str) -> list[str]:
    """Option values as a statement carries them: known, sorted, each once; else exit 2."""
    chosen = sorted({value.strip() for value in values})
    for value in chosen:
        if value not in known:
            fail(f"{option} {value!r} is unknown; use one of: {', '.join(known)}", EXIT_UNUSABLE)
    return chosen


# --- commands ------------------------------------------------------------------------------


@app.command("file")
def file(
    ctx: typer.Context,
    agreement_id: Annotated[str, typer.Argument(help="An agreement that covers your items.")],
    norm: Annotated[
        list[str] | None,
        typer.Option(
            "--norm",
            metavar="NORM_ID",
            help="A norm the lab's use breaks (docs/norms.md), e.g. prohibited-use; repeatable.",
        ),
    ] = None,
    field: Annotated[
        list[str] | None,
        typer.Option(
            "--field",
            metavar="FIELD",
            help="A use-declaration field whose commitment the lab breaks, e.g. "
            "jurisdictions; repeatable.",
        ),
    ] = None,
    text: Annotated[
        str | None,
        typer.Option("--text", help=f"What happened, in your words (at most {MAX_TEXT} chars)."),
    ] = None,
    text_file: Annotated[
        typer.FileText | None,
        typer.Option("--text-file", help="Read the text from this file ('-': standard input)."),
    ] = None,
    request_id: RequestIdOpt = "",
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """File a dispute about an agreement that covers your items: name at least one norm
    (--norm) or declaration field (--field) its lab breaks. Signed, logged, and shown in
    every auditor's `coalition audit compliance`. With --quiet, only the dispute id is
    printed."""
    check_output_options(json_output, quiet)
    vocabulary = Vocabulary.load()
    norm_ids = _known(norm or [], list(vocabulary.norms), "--norm")
    fields = _known(field or [], list(vocabulary.declaration), "--field")
    if not norm_ids and not fields:
        fail("say what the lab breaks: --norm NORM_ID and/or --field FIELD", EXIT_UNUSABLE)
    body = _read_text(text, text_file, "--text")
    options = globals_of(ctx)
    key = options.signing_key()

    async def go() -> disputes_pb2.FileDisputeResponse:
        async with options.client(key) as client:
            response = await client.file_dispute(
                agreement_id.strip(),
                norm_ids=norm_ids,
                declaration_fields=fields,
                text=body,
                request_id=request_id,
            )
            try:
                await check_receipts(client, [response.receipt])
            except VerificationError as exc:
                check_verified(exc, "the dispute receipt")
            return response

    response = run(ctx, go())
    if json_output:
        print_json(
            {
                "dispute_id": response.dispute_id,
                "agreement_id": agreement_id.strip(),
                "norm_ids": norm_ids,
                "declaration_fields": fields,
                "receipt": receipt_json(response.receipt),
            }
        )
        return
    if quiet:
        typer.echo(response.dispute_id)
        return
    console().print(
        f"dispute {response.dispute_id} about agreement {agreement_id.strip()} logged at entry "
        f"{response.receipt.index} (receipt verified); its lab answers with "
        f"`coalition dispute respond {response.dispute_id}`"
    )


@app.command("respond")
def respond(
    ctx: typer.Context,
    dispute_id: Annotated[str, typer.Argument(help="A dispute about one of your agreements.")],
    text: Annotated[
        str | None,
        typer.Option("--text", help=f"Your answer (at most {MAX_TEXT} characters)."),
    ] = None,
    text_file: Annotated[
        typer.FileText | None,
        typer.Option("--text-file", help="Read the answer from this file ('-': standard input)."),
    ] = None,
    request_id: RequestIdOpt = "",
    json_output: JsonOpt = False,
) -> None:
    """As the disputed agreement's lab, answer a dispute (once; signed and logged)."""
    body = _read_text(text, text_file, "--text")
    if not body:
        fail("give your answer: --text TEXT or --text-file FILE", EXIT_UNUSABLE)
    options = globals_of(ctx)
    key = options.signing_key()

    async def go() -> disputes_pb2.RespondToDisputeResponse:
        async with options.client(key) as client:
            response = await client.respond_to_dispute(
                dispute_id.strip(), body, request_id=request_id
            )
            try:
                await check_receipts(client, [response.receipt])
            except VerificationError as exc:
                check_verified(exc, "the response receipt")
            return response

    response = run(ctx, go())
    if json_output:
        print_json(
            {
                "dispute_id": dispute_id.strip(),
                "state": "answered",
                "receipt": receipt_json(response.receipt),
            }
        )
        return
    console().print(
        f"response to dispute {dispute_id.strip()} logged at entry {response.receipt.index} "
        "(receipt verified)"
    )


@app.command("list")
def list_disputes(
    ctx: typer.Context,
    agreement: Annotated[
        str | None, typer.Option("--agreement", metavar="ID", help="Only about this agreement.")
    ] = None,
    lab: Annotated[
        str | None,
        typer.Option("--lab", metavar="KEYID", help="Only about this lab's agreements."),
    ] = None,
    member: Annotated[
        str | None, typer.Option("--member", metavar="KEYID", help="Only filed by this member.")
    ] = None,
    mine: Annotated[
        bool,
        typer.Option(
            "--mine", help="Only yours: filed by you (member) or about your agreements (lab)."
        ),
    ] = False,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Disputes in ledger order, open or answered (public: the ledger holds them all); with
    --quiet, only their dispute ids."""
    check_output_options(json_output, quiet)
    options = globals_of(ctx)
    key = options.signing_key() if mine else None

    async def go() -> list[disputes_pb2.DisputeRecord]:
        lab_id, member_id = (lab or "").strip(), (member or "").strip()
        async with options.client(key) as client:
            if key is not None:
                me = await client.who_am_i()
                if me.role == party_pb2.ROLE_LAB:
                    lab_id = key.key_id
                else:
                    member_id = key.key_id
            return [
                record
                async for record in client.disputes(
                    agreement_id=(agreement or "").strip(),
                    lab_key_id=lab_id,
                    member_key_id=member_id,
                )
            ]

    records = run(ctx, go())
    try:
        described = [record_json(r) for r in records]
    except CoalitionError as exc:
        fail(f"the server sent a malformed dispute: {exc}")
    if json_output:
        print_json(described)
        return
    if quiet:
        for d in described:
            typer.echo(d["dispute_id"])
        return
    table = Table()
    table.add_column("dispute id")
    table.add_column("agreement")
    table.add_column("lab")
    table.add_column("alleges")
    table.add_column("filed")
    table.add_column("state")
    for d in described:
        table.add_row(
            d["dispute_id"],
            d["agreement_id"],
            d["lab_key_id"][:16],
            ", ".join(d["norm_ids"] + d["declaration_fields"]),
            d["filed_time"],
            d["state"],
        )
    console().print(table)
    if not records:
        note("no disputes")


@app.command("show")
def show(
    ctx: typer.Context,
    dispute_id: Annotated[str, typer.Argument(help="A dispute id.")],
    json_output: JsonOpt = False,
) -> None:
    """One dispute, what it alleges, and the lab's answer if any."""
    options = globals_of(ctx)

    async def go() -> disputes_pb2.DisputeRecord:
        async with options.client() as client:
            return await client.dispute(dispute_id.strip())

    record = run(ctx, go())
    try:
        d = record_json(record)
    except CoalitionError as exc:
        fail(f"the server sent a malformed dispute: {exc}")
    if json_output:
        print_json(d)
        return
    out = console()
    out.print(f"dispute {d['dispute_id']} ({d['state']}), entry {d['index']}, {d['filed_time']}")
    out.print(f"agreement {d['agreement_id']} of lab {d['lab_key_id']}")
    out.print(f"filed by {d['member_key_id']}")
    if d["norm_ids"]:
        out.print(f"norms: {', '.join(d['norm_ids'])}")
    if d["declaration_fields"]:
        out.print(f"declaration fields: {', '.join(d['declaration_fields'])}")
    if d["text"]:
        # Text is the member's and the lab's: printed as text, never as markup.
        out.print(d["text"], markup=False, highlight=False)
    response = d["response"]
    if response is None:
        out.print("not answered yet")
    else:
        out.print(f"answered at entry {response['index']}, {response['time']}:")
        out.print(response["text"], markup=False, highlight=False)
