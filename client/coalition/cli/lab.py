"""``coalition lab``: for labs. See the pool in aggregate (``catalogue``, with the what-if of
a use declaration), list agreements, take leases, fetch licensed items (decrypted and checked
against their commitments), follow the withdrawal feed and answer its notices."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from google.protobuf.duration_pb2 import Duration
from rich.progress import TaskID
from rich.table import Table

from coalition import dsse, norms, statements
from coalition.cli.bargaining import QUANTILES, ModelName, _terms, money_text
from coalition.cli.common import (
    EXIT_FAILED,
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
from coalition.cli.consent import period_text
from coalition.cli.items import (
    ProgressOpt,
    RequestIdOpt,
    check_receipts,
    check_verified,
    receipt_json,
    split_ids,
    transfer_progress,
)
from coalition.client import (
    DEFAULT_CURRENCY,
    PAYMENT_MODELS,
    PURPOSES,
    FetchProgress,
    FetchResult,
)
from coalition.errors import CoalitionError, VerificationError
from coalition.v1 import access_pb2, negotiation_pb2, terms_pb2

app = typer.Typer(
    no_args_is_help=True,
    help="For labs: agreements, leases, fetching licensed data, withdrawal notices.",
)


def _agreement(record: access_pb2.AgreementRecord) -> access_pb2.Agreement:
    envelope = dsse.Envelope.from_proto(record.agreement)
    return statements.parse_payload(access_pb2.Agreement, envelope.payload)


def _duration(value: Duration) -> str:
    return period_text(value.seconds)


def _name(mapping: dict[str, int], value: int) -> str:
    return next((name for name, v in mapping.items() if v == value), str(value))


def agreement_json(record: access_pb2.AgreementRecord) -> dict[str, Any]:
    """An agreement in JSON."""
    agreement = _agreement(record)
    terms = agreement.terms
    return {
        "agreement_id": record.agreement_id,
        "index": record.index,
        "lab_key_id": agreement.lab_key_id,
        "covered_item_count": agreement.covered_item_count,
        "covered_item_ids": list(agreement.covered_item_ids),
        "purposes": [_name(dict(PURPOSES), p) for p in terms.purposes],
        "payment_model": _name(dict(PAYMENT_MODELS), terms.payment_model),
        "price_per_item": {
            "currency_code": terms.price_per_item.currency_code,
            "micros": terms.price_per_item.micros,
        },
        "deletion_deadline_seconds": terms.deletion_deadline.seconds,
        "lease_duration_seconds": terms.lease_duration.seconds,
        "expiry_time": format_timestamp(agreement.expiry_time),
    }


# --- the catalogue and the what-if -----------------------------------------------------------


def _group_json(group: negotiation_pb2.NormShareGroup) -> dict[str, int] | None:
    if not group.shown:
        return None
    return {"member_count": group.member_count, "item_count": group.item_count}


def norm_shares_json(response: negotiation_pb2.GetCatalogueResponse) -> list[dict[str, Any]]:
    """The catalogue's norm shares in JSON: a hidden group is null."""
    return [
        {
            "norm_id": share.norm_id,
            "hard": _group_json(share.hard),
            "priced": _group_json(share.priced),
            "unheld": _group_json(share.unheld),
        }
        for share in response.norm_shares
    ]


def what_if_json(
    declaration: terms_pb2.UseDeclaration, estimate: negotiation_pb2.EstimateSupplyResponse
) -> dict[str, Any]:
    """An EstimateSupply answer in JSON, each change also as lines against ``declaration``."""
    return {
        "declaration": norms.declaration_to_json(declaration),
        "supply": [
            {
                "price_micros": point.price_per_item_micros,
                "item_count": point.item_count,
                "member_count": point.member_count,
            }
            for point in estimate.supply
        ],
        "reservation_price_micros": estimate.reservation_price_micros
        if estimate.HasField("reservation_price_micros")
        else None,
        "quorum_items": estimate.quorum_items,
        "covered_at_reservation": estimate.covered_at_reservation,
        "changes": [
            {
                "norm_id": change.norm_id,
                "changes": norms.declaration_changes(declaration, change.declaration),
                "declaration": norms.declaration_to_json(change.declaration),
                "more_items_at_reservation": change.more_items_at_reservation,
                "more_items_at_any_price": change.more_items_at_any_price,
            }
            for change in estimate.changes
        ],
    }


def _group_text(group: negotiation_pb2.NormShareGroup) -> str:
    if not group.shown:
        return "hidden"
    return f"{group.item_count} ({group.member_count})"


def _print_rows(response: negotiation_pb2.GetCatalogueResponse) -> None:
    table = Table(
        title=f"The pool (groups of fewer than {response.minimum_group_size} members are "
        f"not shown); floor prices per item in {response.currency_code}"
    )
    table.add_column("purpose")
    table.add_column("model")
    table.add_column("members", justify="right")
    table.add_column("items", justify="right")
    for name in QUANTILES:
        table.add_column(name, justify="right")
    for row in response.rows:
        quantiles = [money_text(q, "") for q in row.floor_quantiles_micros]
        quantiles += [""] * (len(QUANTILES) - len(quantiles))
        table.add_row(
            _name(dict(PURPOSES), row.purpose),
            _name(dict(PAYMENT_MODELS), row.payment_model),
            str(row.member_count),
            str(row.item_count),
            *quantiles[: len(QUANTILES)],
        )
    console().print(table)
    if not response.rows:
        note("no group is large enough to show")


def _print_norm_shares(response: negotiation_pb2.GetCatalogueResponse) -> None:
    if not response.norm_shares:
        return
    table = Table(
        title=f"Members' norms (vocabulary {response.norm_vocabulary_version}): consented items "
        "(members) holding each"
    )
    table.add_column("norm")
    table.add_column("hard", justify="right")
    table.add_column("priced", justify="right")
    table.add_column("not held", justify="right")
    for share in response.norm_shares:
        table.add_row(
            share.norm_id,
            _group_text(share.hard),
            _group_text(share.priced),
            _group_text(share.unheld),
        )
    console().print(table)


def _print_what_if(
    declaration: terms_pb2.UseDeclaration, estimate: negotiation_pb2.EstimateSupplyResponse
) -> None:
    currency = estimate.currency_code
    table = Table(
        title=f"What your declared use would get: items covered against price ({currency})"
    )
    table.add_column("price/item", justify="right")
    table.add_column("items", justify="right")
    table.add_column("members", justify="right")
    for point in estimate.supply:
        table.add_row(
            money_text(point.price_per_item_micros, ""),
            str(point.item_count),
            str(point.member_count),
        )
    console().print(table)
    if estimate.HasField("reservation_price_micros"):
        console().print(
            f"the coalition would take {money_text(estimate.reservation_price_micros, currency)} "
            f"per item now, covering {estimate.covered_at_reservation} items "
            f"(a deal must cover {estimate.quorum_items})"
        )
    else:
        note("no reservation to show: no price reaches the quorum, or too few members")
    if not estimate.changes:
        return
    changes = Table(title="Keeping a norm your declaration breaks would bring in")
    changes.add_column("norm")
    changes.add_column("change")
    changes.add_column("more items at that price", justify="right")
    changes.add_column("at any price", justify="right")
    for change in estimate.changes:
        changes.add_row(
            change.norm_id,
            "; ".join(norms.declaration_changes(declaration, change.declaration)),
            f"{change.more_items_at_reservation:+d}",
            f"{change.more_items_at_any_price:+d}",
        )
    console().print(changes)


@app.command("catalogue")
def catalogue(
    ctx: typer.Context,
    declare: Annotated[
        Path | None,
        typer.Option(
            "--declare",
            metavar="FILE",
            help="Your use declaration (JSON or YAML, see docs/norms.md): adds the what-if. "
            "Needs your key.",
        ),
    ] = None,
    purposes: Annotated[
        list[str] | None,
        typer.Option(
            "--purpose",
            help=f"With --declare (repeatable; default train-ai): {', '.join(PURPOSES)}.",
        ),
    ] = None,
    model: Annotated[
        ModelName, typer.Option("--model", help="With --declare: how you would pay.")
    ] = ModelName.purchase,
    period_days: Annotated[
        int | None,
        typer.Option("--period-days", min=1, help="With --declare, subscriptions: the period."),
    ] = None,
    licence_days: Annotated[
        int, typer.Option("--licence-days", min=1, help="With --declare: licence length.")
    ] = 365,
    deletion_days: Annotated[
        int,
        typer.Option(
            "--deletion-days", min=1, help="With --declare: days to delete after a withdrawal."
        ),
    ] = 7,
    tags: Annotated[
        list[str] | None,
        typer.Option("--tag", help="With --declare: only items with this tag (repeatable)."),
    ] = None,
    min_items: Annotated[
        int,
        typer.Option("--min-items", min=0, help="With --declare: the least items a deal needs."),
    ] = 0,
    max_items: Annotated[
        int, typer.Option("--max-items", min=0, help="With --declare: the most items (0: all).")
    ] = 0,
    attribution: Annotated[
        bool, typer.Option("--attribution", help="With --declare: you attribute contributors.")
    ] = False,
    currency: Annotated[str, typer.Option(help="Currency of the prices.")] = DEFAULT_CURRENCY,
    json_output: JsonOpt = False,
) -> None:
    """The pool in aggregate: for each purpose and payment model, how many members and
    items consent and the spread of their floor prices per item (p10 to p90); and for each
    norm of the vocabulary, how many items are held to it hard, priced, or not at all.

    With --declare FILE and the terms you have in mind (--purpose, --model, ...): the
    what-if. The supply curve (items covered against price), the price the coalition would
    take now with the items it covers, and for each norm your declaration breaks, what
    keeping it would bring in. These are the numbers a negotiation on those terms would use.

    Groups smaller than the coalition's minimum are not shown. Needs no key without --declare.
    """
    options = globals_of(ctx)
    terms: terms_pb2.LicenceTerms | None = None
    if declare is not None:
        try:
            declared = norms.load_declaration(declare)
            terms = _terms(
                purposes or ["train-ai"],
                model,
                "0",
                period_days,
                licence_days,
                deletion_days,
                1,
                tags or [],
                min_items,
                max_items,
                attribution,
                currency,
            )
        except CoalitionError as exc:
            fail(str(exc), EXIT_UNUSABLE)
        terms.declaration.CopyFrom(declared.declaration)
    key = options.signing_key() if terms is not None else None

    async def go() -> tuple[
        negotiation_pb2.GetCatalogueResponse, negotiation_pb2.EstimateSupplyResponse | None
    ]:
        async with options.client(key) as client:
            response = await client.catalogue()
            estimate = None if terms is None else await client.estimate_supply(terms)
            return response, estimate

    response, estimate = run(ctx, go())
    if json_output:
        out: dict[str, Any] = {
            "currency_code": response.currency_code,
            "minimum_group_size": response.minimum_group_size,
            "rows": [
                {
                    "purpose": _name(dict(PURPOSES), row.purpose),
                    "payment_model": _name(dict(PAYMENT_MODELS), row.payment_model),
                    "member_count": row.member_count,
                    "item_count": row.item_count,
                    "floor_quantiles_micros": dict(
                        zip(QUANTILES, row.floor_quantiles_micros, strict=False)
                    ),
                }
                for row in response.rows
            ],
            "norm_vocabulary_version": response.norm_vocabulary_version,
            "norm_shares": norm_shares_json(response),
        }
        if terms is not None and estimate is not None:
            out["what_if"] = what_if_json(terms.declaration, estimate)
        print_json(out)
        return
    _print_rows(response)
    _print_norm_shares(response)
    if terms is not None and estimate is not None:
        _print_what_if(terms.declaration, estimate)


# --- agreements, leases, data and notices -----------------------------------------------------


def notice_json(message: access_pb2.WatchWithdrawalsResponse) -> dict[str, Any]:
    """A notice from the feed in JSON."""
    notice = access_pb2.WithdrawalNotice.FromString(message.notice.payload)
    return {
        "index": message.index,
        "notice_id": message.notice_id,
        "withdrawal_id": notice.withdrawal_id,
        "agreement_id": notice.agreement_id,
        "item_ids": list(notice.item_ids),
        "respond_by": format_timestamp(notice.respond_by),
    }


@app.command("agreements")
def agreements(ctx: typer.Context, json_output: JsonOpt = False, quiet: QuietOpt = False) -> None:
    """List your agreements: id, covered items, terms, expiry; with --quiet, only their
    agreement ids."""
    check_output_options(json_output, quiet)
    options = globals_of(ctx)
    key = options.signing_key()

    async def go() -> list[access_pb2.AgreementRecord]:
        async with options.client(key) as client:
            return [record async for record in client.agreements()]

    records = run(ctx, go())
    described = [agreement_json(r) for r in records]
    if json_output:
        print_json(described)
        return
    if quiet:
        for record in records:
            typer.echo(record.agreement_id)
        return
    table = Table()
    table.add_column("agreement id")
    table.add_column("entry", justify="right")
    table.add_column("items", justify="right")
    table.add_column("purposes")
    table.add_column("price/item")
    table.add_column("delete within")
    table.add_column("lease")
    table.add_column("expires")
    for record, d in zip(records, described, strict=True):
        terms = _agreement(record).terms
        price = terms.price_per_item
        table.add_row(
            d["agreement_id"],
            str(d["index"]),
            str(d["covered_item_count"]),
            ",".join(d["purposes"]),
            f"{price.micros / 1_000_000:.6g} {price.currency_code} ({d['payment_model']})",
            _duration(terms.deletion_deadline),
            _duration(terms.lease_duration),
            d["expiry_time"],
        )
    console().print(table)


@app.command("lease")
def lease(
    ctx: typer.Context,
    agreement_id: Annotated[str, typer.Argument(help="One of your agreements.")],
    request_id: RequestIdOpt = "",
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Take (or renew) a lease on an agreement; renewal re-checks consent. With --quiet,
    only the lease id is printed."""
    check_output_options(json_output, quiet)
    options = globals_of(ctx)
    key = options.signing_key()

    async def go() -> access_pb2.TakeLeaseResponse:
        async with options.client(key) as client:
            response = await client.take_lease(agreement_id, request_id=request_id)
            try:
                await check_receipts(client, [response.receipt])
            except VerificationError as exc:
                check_verified(exc, "the lease receipt")
            return response

    response = run(ctx, go())
    granted = response.lease
    if json_output:
        print_json(
            {
                "lease_id": granted.lease_id,
                "agreement_id": granted.agreement_id,
                "start_time": format_timestamp(granted.start_time),
                "expiry_time": format_timestamp(granted.expiry_time),
                "receipt": receipt_json(response.receipt),
            }
        )
        return
    if quiet:
        typer.echo(granted.lease_id)
        return
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("lease id", granted.lease_id)
    table.add_row("agreement", granted.agreement_id)
    table.add_row("starts", format_timestamp(granted.start_time))
    table.add_row("expires", format_timestamp(granted.expiry_time))
    table.add_row("receipt", f"entry {response.receipt.index} (verified)")
    console().print(table)


@app.command("fetch")
def fetch(
    ctx: typer.Context,
    lease_id: Annotated[str, typer.Argument(help="A lease of yours, not expired.")],
    out: Annotated[Path, typer.Option("--out", help="Directory to write the items to.")],
    page_size: Annotated[
        int, typer.Option(min=0, max=1000, help="Items per release (0: server default).")
    ] = 0,
    progress: ProgressOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Fetch the items your lease releases into a directory, decrypting each one and
    checking it against its commitment (SHA-256 and size) before it is written.

    Every release is logged: its receipt is verified, and must be signed by the coalition
    and name exactly the items received.
    """
    options = globals_of(ctx)
    key = options.signing_key()
    if out.exists() and not out.is_dir():
        fail(f"--out {out} is not a directory", EXIT_UNUSABLE)

    async def go() -> FetchResult:
        async with options.client(key) as client:
            with transfer_progress(progress) as bar:
                overall = bar.add_task("fetched 0 items", total=None)
                tasks: dict[str, TaskID] = {}

                def advance(p: FetchProgress) -> None:
                    item_id = p.item.item_id
                    task = tasks.get(item_id)
                    if task is None:
                        task = bar.add_task(f"  {item_id}", total=p.item.size_bytes)
                        tasks[item_id] = task
                    bar.update(task, completed=p.item_bytes)
                    bar.update(
                        overall,
                        completed=p.total_bytes,
                        description=f"fetched {p.items_done} items",
                    )
                    if p.done:
                        bar.update(task, visible=False)

                result = await client.fetch(lease_id, out, page_size=page_size, progress=advance)
                bar.update(overall, total=result.total_bytes, completed=result.total_bytes)
                return result

    try:
        result = run(ctx, go())
    except VerificationError as exc:
        fail(f"fetched data does not verify: {exc}", EXIT_FAILED)
    except OSError as exc:
        fail(f"cannot write to {out}: {exc}", EXIT_UNUSABLE)
    if json_output:
        print_json(
            {
                "lease_id": result.lease_id,
                "agreement_id": result.agreement_id,
                "items": [
                    {
                        "item_id": f.item.item_id,
                        "contributor_key_id": f.item.contributor_key_id,
                        "size_bytes": f.item.size_bytes,
                        "media_type": f.item.media_type,
                        "sha256": f.item.commitment.hex(),
                        "path": str(f.path),
                        "verified": True,
                    }
                    for f in result.files
                ],
                "releases": [receipt_json(r) for r in result.releases],
            }
        )
        return
    table = Table(title=f"{len(result.files)} items, {result.total_bytes} bytes")
    table.add_column("item id")
    table.add_column("size", justify="right")
    table.add_column("media type")
    table.add_column("file")
    table.add_column("sha256")
    for f in result.files:
        table.add_row(
            f.item.item_id,
            str(f.item.size_bytes),
            f.item.media_type,
            f.path.name,
            "verified",
        )
    out_console = console()
    out_console.print(table)
    # A line of its own, never wrapped by rich: the directory must survive copy and paste.
    out_console.print(
        f"written to {out}; each item decrypted and checked against its SHA-256 commitment",
        soft_wrap=True,
    )


@app.command("watch")
def watch(
    ctx: typer.Context,
    since: Annotated[
        int, typer.Option("--since", min=0, help="First ledger index (resume: last + 1).")
    ] = 0,
    once: Annotated[
        bool, typer.Option("--once", help="Print the notices there are now, then exit.")
    ] = False,
    idle: Annotated[
        float,
        typer.Option(min=0.1, help="With --once: seconds without a new notice that end it."),
    ] = 2.0,
    json_output: JsonOpt = False,
    quiet: Annotated[
        bool,
        typer.Option("--quiet", "-q", help="Print only each notice's id, one per line."),
    ] = False,
) -> None:
    """Follow your withdrawal notices (one line each; --json: one JSON object per line).

    Each notice names the withdrawn items and the deadline for your deletion receipt
    (`coalition lab ack`). Resume after a disconnect with --since LAST_INDEX+1.
    """
    check_output_options(json_output, quiet)
    options = globals_of(ctx)
    key = options.signing_key()
    last: list[int] = []

    async def go() -> None:
        async with options.client(key) as client:
            async for message in client.watch_withdrawals(
                since, idle_timeout=idle if once else None
            ):
                last.append(message.index)
                described = notice_json(message)
                if json_output:
                    sys.stdout.write(json.dumps(described) + "\n")
                elif quiet:
                    sys.stdout.write(f"{described['notice_id']}\n")
                else:
                    sys.stdout.write(
                        f"{described['index']} {described['notice_id']} "
                        f"agreement={described['agreement_id']} "
                        f"items={len(described['item_ids'])} "
                        f"respond_by={described['respond_by']}\n"
                    )
                sys.stdout.flush()

    try:
        run(ctx, go())
    except VerificationError as exc:
        check_verified(exc, "a notice")
    except KeyboardInterrupt:
        pass
    if last:
        note(f"resume with --since {last[-1] + 1}")


@app.command("ack")
def ack(
    ctx: typer.Context,
    notice_id: Annotated[str, typer.Argument(help="The notice to answer.")],
    items: Annotated[
        list[str] | None,
        typer.Option("--items", help="The notice's item ids (default: looked up on your feed)."),
    ] = None,
    since: Annotated[
        int, typer.Option("--since", min=0, help="Where on the feed to look the notice up.")
    ] = 0,
    request_id: RequestIdOpt = "",
    json_output: JsonOpt = False,
) -> None:
    """Answer a withdrawal notice with a signed deletion receipt: you deleted its items."""
    options = globals_of(ctx)
    key = options.signing_key()
    ids = split_ids(items)

    async def go() -> access_pb2.AcknowledgeWithdrawalResponse:
        async with options.client(key) as client:
            if ids:
                response = await client.acknowledge(notice_id, item_ids=ids, request_id=request_id)
            else:
                found = await client.find_notice(notice_id, since_index=since)
                if found is None:
                    fail(f"no notice {notice_id} on your feed", EXIT_FAILED)
                response = await client.acknowledge(found, request_id=request_id)
            try:
                await check_receipts(client, [response.receipt])
            except VerificationError as exc:
                check_verified(exc, "the receipt")
            return response

    try:
        response = run(ctx, go())
    except (VerificationError, CoalitionError) as exc:
        fail(str(exc), EXIT_FAILED)
    if json_output:
        print_json(
            {
                "notice_id": notice_id,
                "in_time": response.in_time,
                "receipt": receipt_json(response.receipt),
            }
        )
        return
    timing = "in time" if response.in_time else "LATE (after the notice's deadline)"
    console().print(
        f"deletion receipt for notice {notice_id} logged at entry {response.receipt.index}: "
        f"{timing}"
    )
