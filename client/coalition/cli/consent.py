"""``coalition consent``: grant consent with your floor terms, list it, withdraw it, export it,
and check anyone's consent state with a proof."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from google.protobuf import json_format
from rich.table import Table

from coalition import dsse, statements
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
from coalition.cli.items import (
    RequestIdOpt,
    check_receipts,
    check_verified,
    receipt_json,
    split_ids,
)
from coalition.client import (
    PAYMENT_MODELS,
    PURPOSES,
    consent_token,
    micros,
    price_floor,
)
from coalition.consent_state import VerifiedConsentState, state_name, verify_consent_state
from coalition.errors import CoalitionError, NoteError, VerificationError
from coalition.norms import (
    NORM_OPTION_SYNTAX,
    format_norm_option,
    parse_norm_option,
    validate_norms,
)
from coalition.note import NoteVerifier
from coalition.v1 import consent_pb2, terms_pb2

app = typer.Typer(
    no_args_is_help=True,
    help="Grant, list, withdraw and export your consent; check any consent's state.",
)

_PERIOD = re.compile(r"^([0-9]+)([smhdw]?)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "": 86400}


def parse_period(text: str) -> timedelta:
    """``30d``, ``12h``, ``2w``, ``90m``, ``3600s`` (a bare number is days)."""
    match = _PERIOD.match(text.strip().lower())
    if match is None or int(match.group(1)) == 0:
        raise CoalitionError(f"bad period {text!r}: use e.g. 30d, 12h or 2w")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def parse_floor(text: str, currency: str) -> terms_pb2.PriceFloor:
    """``MODEL=PRICE[/PERIOD]``: a minimum price per item, in currency units."""
    model, sep, rest = text.partition("=")
    if not sep:
        raise CoalitionError(f"bad floor {text!r}: use MODEL=PRICE[/PERIOD], e.g. purchase=0.50")
    price, _, period = rest.partition("/")
    model = model.strip().lower()
    if model not in PAYMENT_MODELS:
        raise CoalitionError(f"unknown payment model {model!r}: use {', '.join(PAYMENT_MODELS)}")
    amount = micros(price.strip().lstrip("$"))
    if model == "subscription" and not period:
        raise CoalitionError("a subscription floor needs a period: subscription=PRICE/30d")
    if model != "subscription" and period:
        raise CoalitionError("only subscription floors have a period")
    return price_floor(
        model, amount, period=parse_period(period) if period else None, currency=currency
    )


def _money(money: terms_pb2.Money) -> str:
    units, rest = divmod(money.micros, 1_000_000)
    fraction = f"{rest:06d}".rstrip("0")
    fraction = fraction.ljust(2, "0")
    return f"{units}.{fraction} {money.currency_code}"


def _model_name(model: int) -> str:
    return next((name for name, value in PAYMENT_MODELS.items() if value == model), str(model))


def _purpose_name(value: int) -> str:
    return next((name for name, p in PURPOSES.items() if p == value), str(value))


def _floor_text(floor: terms_pb2.PriceFloor) -> str:
    text = f"{_model_name(floor.payment_model)} ≥ {_money(floor.minimum_per_item)}"
    if floor.HasField("period"):
        text += f"/{period_text(floor.period.seconds)}"
    return text


def period_text(seconds: int) -> str:
    """A duration in the largest unit that divides it: ``30d``, ``12h``, ``90m``, ``5s``."""
    for unit in ("w", "d", "h", "m"):
        if seconds and seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


def _selector_text(token: consent_pb2.ConsentToken) -> str:
    selector = token.items.WhichOneof("selector")
    if selector == "item_ids":
        return f"{len(token.items.item_ids.item_ids)} items"
    if selector == "tag":
        return f"tag:{token.items.tag}"
    return "all items"


def decode_token(envelope: Any) -> consent_pb2.ConsentToken:
    """The ConsentToken inside a record's envelope."""
    return statements.parse_payload(
        consent_pb2.ConsentToken, dsse.Envelope.from_proto(envelope).payload
    )


def record_json(record: consent_pb2.ConsentRecord) -> dict[str, Any]:
    """A consent record in JSON, the token decoded."""
    return {
        "consent_id": record.consent_id,
        "contributor_key_id": record.contributor_key_id,
        "state": state_name(record.state),
        "index": record.index,
        "withdrawal_index": record.withdrawal_index or None,
        "token": json_format.MessageToDict(
            decode_token(record.token), preserving_proto_field_name=True
        ),
    }


@app.command("grant")
def grant(
    ctx: typer.Context,
    purpose: Annotated[
        list[str],
        typer.Option("--purpose", help=f"Permitted purpose (repeatable): {', '.join(PURPOSES)}."),
    ],
    floor: Annotated[
        list[str],
        typer.Option(
            "--floor",
            help=(
                "Minimum price per item, MODEL=PRICE[/PERIOD] (repeatable), e.g. "
                "purchase=0.50, subscription=0.10/30d, per-use=0.001."
            ),
        ),
    ],
    items: Annotated[
        list[str] | None, typer.Option("--items", help="These item ids (repeatable, or a,b,c).")
    ] = None,
    tag: Annotated[str | None, typer.Option("--tag", help="Your items with this tag.")] = None,
    all_items: Annotated[
        bool, typer.Option("--all", help="All your items, now and later.")
    ] = False,
    attribution: Annotated[
        bool, typer.Option("--attribution", help="Licensees must attribute you.")
    ] = False,
    max_licence_days: Annotated[
        int | None, typer.Option(min=1, help="Longest licence you accept, in days.")
    ] = None,
    max_deletion_days: Annotated[
        int | None,
        typer.Option(min=0, help="Longest a lab may take to delete after a withdrawal (days)."),
    ] = None,
    exclude_lab: Annotated[
        list[str] | None, typer.Option("--exclude-lab", help="A lab's key id (repeatable).")
    ] = None,
    days: Annotated[
        int, typer.Option(min=1, help="The consent lapses after this many days.")
    ] = 365,
    norm: Annotated[
        list[str] | None,
        typer.Option(
            "--norm",
            help=(
                f"A norm on how the items may be used (repeatable): {NORM_OPTION_SYNTAX}, "
                "e.g. prohibited-use:hard:domains=military,mass-surveillance or "
                "model-release:priced:release=open-weights:premium=3.00:protects=commons. "
                "See `coalition norms list`."
            ),
        ),
    ] = None,
    currency: Annotated[
        str, typer.Option(help="Currency of the floor prices and norm premiums.")
    ] = "USD",
    request_id: RequestIdOpt = "",
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Grant consent to use some of your items, for some purposes, at your floor terms.

    Name the items one way: --items, --tag or --all. The signed token is logged and its
    receipt verified; labs only ever get items on terms that meet every floor.

    Norms (--norm) say how the items may be used: a hard norm keeps them out of any deal
    whose use declaration breaks it; a priced one lets such a deal in only if it pays your
    floor plus the premium. Give them in any order: they are signed in canonical order.

    With --quiet, only the new token's consent id is printed.
    """
    check_output_options(json_output, quiet)
    options = globals_of(ctx)
    ids = split_ids(items)
    if sum([bool(ids), tag is not None, all_items]) != 1:
        fail("name the items one way: --items ID..., --tag TAG or --all", EXIT_UNUSABLE)
    try:
        member_norms = [parse_norm_option(text, currency) for text in norm or []]
        token = consent_token(
            item_ids=ids or None,
            tag=tag,
            all_items=all_items,
            purposes=purpose,
            floors=[parse_floor(f, currency) for f in floor],
            attribution_required=attribution,
            max_licence_duration=timedelta(days=max_licence_days) if max_licence_days else None,
            max_deletion_deadline=(
                timedelta(days=max_deletion_days) if max_deletion_days is not None else None
            ),
            excluded_labs=split_ids(exclude_lab),
            valid_for=timedelta(days=days),
            norms=member_norms,
        )
        # Together, too (contradictions), before anything is signed or sent.
        validate_norms(token.norms, currency)
    except CoalitionError as exc:
        fail(str(exc), EXIT_UNUSABLE)
    key = options.signing_key()

    async def go() -> consent_pb2.GrantConsentResponse:
        async with options.client(key) as client:
            response = await client.grant_consent(token, request_id=request_id)
            try:
                await check_receipts(client, response.receipts)
            except VerificationError as exc:
                check_verified(exc, "the consent receipt")
            return response

    response = run(ctx, go())
    (record,) = response.consents
    (receipt,) = response.receipts
    if json_output:
        print_json({**record_json(record), "receipt": receipt_json(receipt)})
        return
    if quiet:
        typer.echo(record.consent_id)
        return
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("consent id", record.consent_id)
    table.add_row("state", state_name(record.state))
    table.add_row("items", _selector_text(token))
    table.add_row("purposes", ", ".join(_purpose_name(p) for p in token.purposes))
    table.add_row("floors", "; ".join(_floor_text(f) for f in token.floor.prices))
    if token.norms:
        table.add_row("norms", "\n".join(format_norm_option(n) for n in token.norms))
    table.add_row("valid until", format_timestamp(token.not_after))
    table.add_row("receipt", f"entry {receipt.index} of a tree of size {receipt.tree_size}")
    console().print(table)


@app.command("list")
def list_consents(
    ctx: typer.Context, json_output: JsonOpt = False, quiet: QuietOpt = False
) -> None:
    """List your consent tokens and their states (given, withdrawn, lapsed, invalidated);
    with --quiet, only their consent ids."""
    check_output_options(json_output, quiet)
    options = globals_of(ctx)
    key = options.signing_key()

    async def go() -> list[consent_pb2.ConsentRecord]:
        async with options.client(key) as client:
            return [record async for record in client.consents()]

    records = run(ctx, go())
    if json_output:
        print_json([record_json(r) for r in records])
        return
    if quiet:
        for record in records:
            typer.echo(record.consent_id)
        return
    table = Table()
    table.add_column("consent id")
    table.add_column("state")
    table.add_column("items")
    table.add_column("purposes")
    table.add_column("floors")
    table.add_column("valid until")
    table.add_column("entry", justify="right")
    for record in records:
        token = decode_token(record.token)
        table.add_row(
            record.consent_id,
            state_name(record.state),
            _selector_text(token),
            ",".join(_purpose_name(p) for p in token.purposes),
            "; ".join(_floor_text(f) for f in token.floor.prices),
            format_timestamp(token.not_after),
            str(record.index),
        )
    console().print(table)


@app.command("withdraw")
def withdraw(
    ctx: typer.Context,
    consent: Annotated[
        str | None, typer.Option("--consent", help="Withdraw this consent token.")
    ] = None,
    items: Annotated[
        list[str] | None,
        typer.Option("--items", help="Withdraw these items from every token (repeatable)."),
    ] = None,
    everything: Annotated[
        bool, typer.Option("--everything", help="Withdraw all your consent.")
    ] = False,
    request_id: RequestIdOpt = "",
    json_output: JsonOpt = False,
) -> None:
    """Withdraw a consent token, items, or everything: one signed, logged statement.

    From then on no key for those items is released to anyone; their data keys are
    destroyed and every lab that licensed them is notified and owes a deletion receipt.
    The printed receipt (verified) is your proof.
    """
    options = globals_of(ctx)
    ids = split_ids(items)
    if sum([consent is not None, bool(ids), everything]) != 1:
        fail("withdraw one thing: --consent ID, --items ID... or --everything", EXIT_UNUSABLE)
    key = options.signing_key()

    async def go() -> consent_pb2.WithdrawResponse:
        async with options.client(key) as client:
            response = await client.withdraw(
                consent_id=consent,
                item_ids=ids or None,
                everything=everything,
                request_id=request_id,
            )
            try:
                await check_receipts(client, [response.receipt])
            except VerificationError as exc:
                check_verified(exc, "the withdrawal receipt")
            return response

    response = run(ctx, go())
    if json_output:
        print_json(
            {
                "receipt": receipt_json(response.receipt),
                "shredded_item_ids": list(response.shredded_item_ids),
                "notified_labs": response.notified_labs,
            }
        )
        return
    receipt = response.receipt
    table = Table(show_header=False, box=None, title="withdrawn")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("receipt", f"entry {receipt.index} of a tree of size {receipt.tree_size}")
    table.add_row("leaf hash", receipt.leaf_hash.hex())
    table.add_row("keys destroyed", f"{len(response.shredded_item_ids)} items")
    table.add_row("labs notified", str(response.notified_labs))
    table.add_row("verified", "inclusion proof and checkpoint signature")
    console().print(table)


@app.command("export")
def export(
    ctx: typer.Context,
    consent_id: Annotated[str, typer.Argument(help="Your consent token's id.")],
    format: Annotated[
        str, typer.Option("--format", help="odrl (ODRL 2.2, JSON-LD) or rsl (RSL, XML).")
    ] = "odrl",
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the document here instead.")
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Export one of your consent tokens as an ODRL 2.2 policy or an RSL licence."""
    options = globals_of(ctx)
    if format.lower() not in ("odrl", "rsl"):
        fail(f"unknown format {format!r}: use odrl or rsl", EXIT_UNUSABLE)
    key = options.signing_key()

    async def go() -> consent_pb2.ExportConsentResponse:
        async with options.client(key) as client:
            return await client.export_consent(consent_id, format.lower())

    response = run(ctx, go())
    if out is not None:
        try:
            out.write_text(response.document, encoding="utf-8")
        except OSError as exc:
            fail(f"cannot write {out}: {exc}", EXIT_UNUSABLE)
        note(f"wrote {response.media_type} to {out}")
    if json_output:
        print_json({"media_type": response.media_type, "document": response.document})
    elif out is None:
        typer.echo(response.document.rstrip("\n"))


@app.command("state")
def state(
    ctx: typer.Context,
    consent_id: Annotated[str, typer.Argument(help="Any consent token's id.")],
    log_key: Annotated[
        str | None,
        typer.Option(
            envvar="COALITION_LOG_KEY",
            help="The log's verifier key to check the proof with (default: the server's).",
        ),
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Check any consent token's state, with its proof verified here (no key needed).

    The token's entry and, when withdrawn, the withdrawal's entry are proven included in a
    signed checkpoint. (Proving that no withdrawal exists takes a full `audit verify`.)
    """
    options = globals_of(ctx)
    pinned = None
    if log_key:
        try:
            pinned = NoteVerifier.parse(log_key)
        except NoteError as exc:
            fail(f"bad log verifier key {log_key!r}: {exc}", EXIT_UNUSABLE)

    async def go() -> tuple[consent_pb2.GetConsentStateResponse, NoteVerifier]:
        async with options.client() as client:
            verifier = pinned or NoteVerifier.parse((await client.log_info()).verifier_key)
            return await client.consent_state(consent_id), verifier

    response, verifier = run(ctx, go())
    try:
        verified = verify_consent_state(response, verifier, consent_id)
    except VerificationError as exc:
        check_verified(exc, "the consent state's proof")
    _print_state(verified, verifier, json_output)


def _print_state(verified: VerifiedConsentState, verifier: NoteVerifier, as_json: bool) -> None:
    cp = verified.checkpoint
    if as_json:
        print_json(
            {
                "consent_id": verified.consent_id,
                "state": verified.state_name,
                "member_key_id": verified.member_key_id,
                "token_index": verified.token_index,
                "token_time": _iso(verified.token_integrated_time),
                "withdrawal_index": verified.withdrawal_index,
                "withdrawal_time": _iso(verified.withdrawal_integrated_time),
                "not_after": format_timestamp(verified.token.not_after),
                "checkpoint": {"origin": cp.origin, "size": cp.size},
                "log_key": verifier.verifier_key,
                "verified": True,
            }
        )
        return
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("consent id", verified.consent_id)
    table.add_row("state", verified.state_name)
    table.add_row("member", verified.member_key_id)
    table.add_row("token", f"entry {verified.token_index}")
    if verified.withdrawal_index is not None:
        table.add_row("withdrawal", f"entry {verified.withdrawal_index}")
    table.add_row("valid until", format_timestamp(verified.token.not_after))
    table.add_row("checkpoint", f"{cp.origin} size {cp.size}")
    table.add_row("verified", f"inclusion proofs and checkpoint signature ({verifier.name})")
    console().print(table)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
