"""Collective bargaining on the command line.

For labs, under ``coalition lab``: ``negotiate`` (interactively, or ``--auto`` within a
budget; ``--declare`` a use declaration), ``negotiations``, ``offers`` (a negotiation's moves
so far), ``accept`` (the coalition's offer, signing the agreement) and ``terminate``. The
catalogue and its what-if are in :mod:`coalition.cli.lab`.
For members: ``coalition vote``, ``coalition ratifications`` and ``coalition earnings``
(each payout line verified against the coalition's signed statement).
"""

from __future__ import annotations

import asyncio
import enum
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Final

import typer
from google.protobuf.duration_pb2 import Duration
from rich.table import Table

from coalition import dsse, norms, statements
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
from coalition.cli.items import RequestIdOpt, check_receipts, check_verified, receipt_json
from coalition.client import (
    AGREED,
    DEFAULT_CURRENCY,
    ENDED_STATES,
    OFFERED,
    PAYMENT_MODELS,
    PURPOSES,
    Client,
    NegotiationStep,
    StepKind,
    check_draft,
    coalition_answer,
    lab_strategy,
    micros,
    negotiation_state_name,
    payment_model,
    purpose,
)
from coalition.errors import CoalitionError, VerificationError
from coalition.keys import PublicKey
from coalition.norms import Vocabulary
from coalition.payouts import VerifiedEarning
from coalition.v1 import access_pb2, ledger_pb2, negotiation_pb2, terms_pb2

MAX_LEASE_HOURS: Final = 7 * 24
QUANTILES: Final = ("p10", "p25", "p50", "p75", "p90")


class ModelName(enum.StrEnum):
    """Payment models."""

    purchase = "purchase"
    subscription = "subscription"
    per_use = "per-use"


class StrategyName(enum.StrEnum):
    """Concession tactics for ``--auto``."""

    boulware = "boulware"
    linear = "linear"
    conceder = "conceder"


# --- text and JSON ------------------------------------------------------------------------


def money_text(amount_micros: int, currency: str) -> str:
    """``1.50 USD`` (at least two decimals, at most six)."""
    units, rest = divmod(amount_micros, 1_000_000)
    fraction = f"{rest:06d}".rstrip("0").ljust(2, "0")
    return f"{units}.{fraction} {currency}".rstrip()


def _name(mapping: Any, value: int) -> str:
    return next((name for name, v in mapping.items() if v == value), str(value))


def _seconds(value: Duration) -> int:
    return int(value.seconds)


def terms_json(terms: terms_pb2.LicenceTerms) -> dict[str, Any]:
    """Licence terms in JSON."""
    out: dict[str, Any] = {
        "purposes": [_name(PURPOSES, p) for p in terms.purposes],
        "payment_model": _name(PAYMENT_MODELS, terms.payment_model),
        "price_per_item": {
            "currency_code": terms.price_per_item.currency_code,
            "micros": terms.price_per_item.micros,
        },
        "licence_duration_seconds": _seconds(terms.licence_duration),
        "deletion_deadline_seconds": _seconds(terms.deletion_deadline),
        "lease_duration_seconds": _seconds(terms.lease_duration),
        "attribution": terms.attribution,
        "scope": {
            "tags": list(terms.scope.tags),
            "media_types": list(terms.scope.media_types),
            "min_item_count": terms.scope.min_item_count,
            "max_item_count": terms.scope.max_item_count,
        },
    }
    if terms.HasField("subscription_period"):
        out["subscription_period_seconds"] = _seconds(terms.subscription_period)
    if terms.HasField("declaration"):
        out["declaration"] = norms.declaration_to_json(terms.declaration)
    return out


def _price(terms: terms_pb2.LicenceTerms) -> str:
    text = money_text(terms.price_per_item.micros, terms.price_per_item.currency_code)
    if terms.HasField("subscription_period"):
        text += f"/{period_text(_seconds(terms.subscription_period))}"
    return text


def _draft(negotiation: negotiation_pb2.Negotiation) -> access_pb2.Agreement | None:
    if not negotiation.agreement_draft:
        return None
    return access_pb2.Agreement.FromString(negotiation.agreement_draft)


def negotiation_json(negotiation: negotiation_pb2.Negotiation) -> dict[str, Any]:
    """A negotiation in JSON (the agreement draft summarised)."""
    draft = _draft(negotiation)
    return {
        "negotiation_id": negotiation.negotiation_id,
        "lab_key_id": negotiation.lab_key_id,
        "state": negotiation_state_name(negotiation.state),
        "round": negotiation.round,
        "max_rounds": negotiation.max_rounds,
        "deadline": format_timestamp(negotiation.deadline),
        "coalition_offered_last": negotiation.coalition_offered_last,
        "current_terms": terms_json(negotiation.current_terms),
        "agreement_draft": None
        if draft is None
        else {
            "covered_item_count": draft.covered_item_count,
            "covered_items_root": bytes(draft.covered_items_root).hex(),
            "expiry_time": format_timestamp(draft.expiry_time),
        },
        "agreement_id": negotiation.agreement_id or None,
        "ratification_deadline": format_timestamp(negotiation.ratification_deadline)
        if negotiation.HasField("ratification_deadline")
        else None,
        "index": negotiation.index,
    }


def step_json(step: NegotiationStep, currency: str) -> dict[str, Any]:
    """One move in JSON."""
    return {
        "round": step.round,
        "by": step.by,
        "kind": step.kind,
        "price": None
        if step.price_micros is None
        else {"currency_code": currency, "micros": step.price_micros},
        "state": negotiation_state_name(step.state),
        "reason": step.reason or None,
    }


def step_text(step: NegotiationStep, currency: str) -> str:
    """One move on one line."""
    price = "" if step.price_micros is None else money_text(step.price_micros, currency)
    reason = f"  ({step.reason})" if step.reason else ""
    # A counter on the use itself: how the offered declaration differs from yours.
    changes = f"  [use: {'; '.join(step.changes)}]" if step.changes else ""
    return (
        f"round {step.round:>3}  {step.by:<9}  {step.kind:<9}  {price:>16}  -> "
        f"{negotiation_state_name(step.state)}{reason}{changes}"
    )


def _outcome_text(negotiation: negotiation_pb2.Negotiation) -> str:
    state = negotiation_state_name(negotiation.state)
    price = _price(negotiation.current_terms)
    if negotiation.state == negotiation_pb2.NEGOTIATION_STATE_FINALIZED:
        draft = _draft(negotiation)
        items = f", {draft.covered_item_count} items" if draft is not None else ""
        return f"negotiation {negotiation.negotiation_id} {state}: agreement " + (
            f"{negotiation.agreement_id} at {price} per item{items}"
        )
    if negotiation.state == negotiation_pb2.NEGOTIATION_STATE_RATIFYING:
        closes = format_timestamp(negotiation.ratification_deadline)
        return (
            f"negotiation {negotiation.negotiation_id} {state}: agreed at {price} per item; "
            f"the covered members vote until {closes}"
        )
    if negotiation.state == negotiation_pb2.NEGOTIATION_STATE_TERMINATED:
        return f"negotiation {negotiation.negotiation_id} {state} without agreement"
    return f"negotiation {negotiation.negotiation_id} {state} at {price} per item"


# --- steps from the server's answers ------------------------------------------------------


def _lab_state(kind: str) -> negotiation_pb2.NegotiationState.ValueType:
    return {
        "request": negotiation_pb2.NEGOTIATION_STATE_REQUESTED,
        "offer": negotiation_pb2.NEGOTIATION_STATE_COUNTERED,
        "accept": negotiation_pb2.NEGOTIATION_STATE_AGREED,
        "terminate": negotiation_pb2.NEGOTIATION_STATE_TERMINATED,
    }[kind]


class _Dialogue:
    """Where a negotiation's moves are shown: stdout, or stderr when stdout is JSON."""

    def __init__(self, json_output: bool, currency: str) -> None:
        self.json_output = json_output
        self.currency = currency
        self.coalition: PublicKey | None = None
        self.steps: list[NegotiationStep] = []
        self.receipts: list[ledger_pb2.Receipt] = []
        # The lab's own use declaration, against which the coalition's offers are shown.
        self.own: terms_pb2.UseDeclaration | None = None

    def show(self, step: NegotiationStep) -> None:
        self.steps.append(step)
        typer.echo(step_text(step, self.currency), err=self.json_output)

    def say(self, text: str) -> None:
        typer.echo(text, err=self.json_output)

    async def trust(self, client: Client) -> None:
        """Learn the coalition's key, which must sign its answers."""
        self.coalition = PublicKey(bytes((await client.log_info()).coalition_public_key))

    def answered(self, answer: Any, negotiation: negotiation_pb2.Negotiation) -> None:
        """Show the coalition's answer in a response, checked to be signed by it."""
        step = coalition_answer(answer, negotiation, self.coalition, self.own)
        if step is not None:
            self.show(step)


# --- lab commands -------------------------------------------------------------------------


def _terms(
    purposes: list[str],
    model: ModelName,
    price: str,
    period_days: int | None,
    licence_days: int,
    deletion_days: int,
    lease_hours: int,
    tags: list[str],
    min_items: int,
    max_items: int,
    attribution: bool,
    currency: str,
) -> terms_pb2.LicenceTerms:
    """The terms the options describe; CoalitionError if they make no sense."""
    if not purposes:
        raise CoalitionError(f"name at least one --purpose: {', '.join(PURPOSES)}")
    subscription = model == ModelName.subscription
    if subscription and period_days is None:
        raise CoalitionError("a subscription needs --period-days")
    if not subscription and period_days is not None:
        raise CoalitionError("only subscriptions have --period-days")
    if max_items and max_items < min_items:
        raise CoalitionError("--max-items is below --min-items")
    terms = terms_pb2.LicenceTerms(
        purposes=[purpose(p) for p in purposes],
        scope=terms_pb2.ItemFilter(tags=tags, min_item_count=min_items, max_item_count=max_items),
        payment_model=payment_model(model.value),
        price_per_item=terms_pb2.Money(currency_code=currency, micros=micros(price.lstrip("$"))),
        attribution=attribution,
    )
    if period_days is not None:
        terms.subscription_period.FromTimedelta(timedelta(days=period_days))
    terms.licence_duration.FromTimedelta(timedelta(days=licence_days))
    terms.deletion_deadline.FromTimedelta(timedelta(days=deletion_days))
    terms.lease_duration.FromTimedelta(timedelta(hours=lease_hours))
    return terms


async def _ask(question: str, err: bool) -> str:
    answer: str = await asyncio.to_thread(typer.prompt, question, err=err)
    return answer.strip().lower()


async def _lab_turn(
    dialogue: _Dialogue, negotiation: negotiation_pb2.Negotiation
) -> tuple[str, int | None]:
    """Ask the lab what to do about the coalition's offer: (accept|counter|terminate, price)."""
    err = dialogue.json_output
    offered = negotiation.current_terms
    dialogue.say(
        f"The coalition offers {_price(offered)} per item (round {negotiation.round} of at "
        f"most {negotiation.max_rounds}; deadline {format_timestamp(negotiation.deadline)})."
    )
    if dialogue.own is not None:
        changed = norms.declaration_changes(dialogue.own, offered.declaration)
        if changed:
            dialogue.say(f"Accepting takes its change to your use: {'; '.join(changed)}.")
    while True:
        answer = await _ask("accept, counter or terminate?", err)
        choice = next(
            (c for c in ("accept", "counter", "terminate") if answer and c.startswith(answer)),
            None,
        )
        if choice is None:
            dialogue.say("answer accept, counter or terminate")
            continue
        if choice != "counter":
            return choice, None
        while True:
            text = await _ask(f"your price per item ({dialogue.currency})", err)
            try:
                return choice, micros(text.lstrip("$"))
            except CoalitionError as exc:
                dialogue.say(f"{exc}: give an amount such as 1.25")


async def _finish(
    client: Client,
    dialogue: _Dialogue,
    negotiation: negotiation_pb2.Negotiation,
) -> negotiation_pb2.Negotiation:
    """Sign the draft of an AGREED negotiation, after checking it is the terms agreed."""
    if negotiation.state != AGREED:
        return negotiation
    key = client.key
    assert key is not None
    draft = check_draft(negotiation, key.key_id)
    dialogue.say(
        f"Agreed at {_price(negotiation.current_terms)} per item, covering "
        f"{draft.covered_item_count} items: signing the agreement."
    )
    signed = await client.sign_agreement(bytes(negotiation.agreement_draft))
    dialogue.receipts.append(signed.receipt)
    negotiation = signed.negotiation
    dialogue.show(
        NegotiationStep(
            "lab",
            "sign",
            negotiation.round,
            negotiation.current_terms.price_per_item.micros,
            negotiation.state,
        )
    )
    return negotiation


async def _interactive(
    client: Client,
    dialogue: _Dialogue,
    terms: terms_pb2.LicenceTerms,
    request_id: str,
    open_only: bool = False,
) -> negotiation_pb2.Negotiation:
    await dialogue.trust(client)
    opened = await client.open_negotiation(terms, request_id=request_id)
    dialogue.receipts.append(opened.receipt)
    negotiation = opened.negotiation
    dialogue.show(
        NegotiationStep("lab", "request", 0, terms.price_per_item.micros, _lab_state("request"))
    )
    dialogue.say(f"negotiation {negotiation.negotiation_id} opened")
    dialogue.answered(opened.coalition_move, negotiation)
    if open_only:
        if negotiation.state in (OFFERED, AGREED):
            nid = negotiation.negotiation_id
            dialogue.say(
                f"your turn: `coalition lab accept {nid}` or `coalition lab terminate {nid}`"
            )
        return negotiation
    while negotiation.state == OFFERED:
        choice, price = await _lab_turn(dialogue, negotiation)
        round_ = negotiation.round + 1
        nid = negotiation.negotiation_id
        kind: StepKind
        if choice == "accept":
            kind, price = "accept", negotiation.current_terms.price_per_item.micros
            response = await client.accept(nid, round_)
        elif choice == "counter":
            assert price is not None
            kind = "offer"
            counter = terms_pb2.LicenceTerms()
            counter.CopyFrom(terms)
            counter.price_per_item.micros = price
            response = await client.offer(nid, round_, counter)
        else:
            kind = "terminate"
            response = await client.terminate(nid, round_, reason="LAB_TERMINATED")
        dialogue.receipts.append(response.receipt)
        negotiation = response.negotiation
        reason = "LAB_TERMINATED" if kind == "terminate" else ""
        dialogue.show(NegotiationStep("lab", kind, round_, price, _lab_state(kind), reason))
        dialogue.answered(response.coalition_move, negotiation)
    return await _finish(client, dialogue, negotiation)


def _report(
    negotiation: negotiation_pb2.Negotiation,
    dialogue: _Dialogue,
    json_output: bool,
    quiet: bool = False,
) -> None:
    if quiet:
        typer.echo(negotiation.negotiation_id)
        return
    if json_output:
        print_json(
            {
                **negotiation_json(negotiation),
                "moves": [step_json(s, dialogue.currency) for s in dialogue.steps],
                "receipts": [receipt_json(r) for r in dialogue.receipts],
            }
        )
        return
    console().print(_outcome_text(negotiation))


def negotiate(
    ctx: typer.Context,
    purposes: Annotated[
        list[str],
        typer.Option("--purpose", help=f"Purpose (repeatable): {', '.join(PURPOSES)}."),
    ],
    model: Annotated[ModelName, typer.Option("--model", help="How you pay.")],
    price: Annotated[str, typer.Option("--price", help="Your opening price per item, e.g. 0.50.")],
    period_days: Annotated[
        int | None,
        typer.Option("--period-days", min=1, help="Subscriptions: the period the price is for."),
    ] = None,
    licence_days: Annotated[
        int, typer.Option("--licence-days", min=1, help="How long the licence lasts.")
    ] = 365,
    deletion_days: Annotated[
        int,
        typer.Option("--deletion-days", min=1, help="Days you take to delete after a withdrawal."),
    ] = 7,
    lease_hours: Annotated[
        int,
        typer.Option("--lease-hours", min=1, max=MAX_LEASE_HOURS, help="Length of each lease."),
    ] = 24,
    tags: Annotated[
        list[str] | None, typer.Option("--tag", help="Only items with this tag (repeatable).")
    ] = None,
    min_items: Annotated[
        int, typer.Option("--min-items", min=0, help="The deal needs at least this many items.")
    ] = 0,
    max_items: Annotated[
        int, typer.Option("--max-items", min=0, help="The deal covers at most this many (0: all).")
    ] = 0,
    attribution: Annotated[
        bool, typer.Option("--attribution", help="You attribute the contributors.")
    ] = False,
    currency: Annotated[str, typer.Option(help="Currency of the prices.")] = DEFAULT_CURRENCY,
    auto: Annotated[
        bool, typer.Option("--auto", help="Negotiate automatically within --budget.")
    ] = False,
    budget: Annotated[
        str | None, typer.Option("--budget", help="With --auto: the most you pay per item.")
    ] = None,
    strategy: Annotated[
        StrategyName,
        typer.Option(
            "--strategy",
            help="With --auto: boulware (concede late), linear, conceder (concede early).",
        ),
    ] = StrategyName.linear,
    rounds: Annotated[
        int,
        typer.Option(
            "--rounds",
            min=2,
            help="With --auto: your deadline in rounds (never past the negotiation's own).",
        ),
    ] = 20,
    declare: Annotated[
        Path | None,
        typer.Option(
            "--declare",
            metavar="FILE",
            help="Your use declaration (JSON or YAML, see docs/norms.md); with --auto, its "
            "mayConcede says which changes the coalition proposes you may take.",
        ),
    ] = None,
    open_only: Annotated[
        bool,
        typer.Option(
            "--open-only",
            help="Only open the negotiation and show the coalition's first answer; go on with "
            "`lab offers`, `lab accept` or `lab terminate`.",
        ),
    ] = False,
    request_id: RequestIdOpt = "",
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Negotiate a licence with the coalition, opening at --price.

    Interactively, each coalition offer is shown and you answer accept, counter (with your
    price) or terminate. With --auto --budget, your side bids by a concession strategy and
    never pays more than the budget. Once terms are agreed, the drafted agreement is
    checked and signed: the negotiation ends FINALIZED (or RATIFYING while the covered
    members vote) or TERMINATED.

    The coalition may counter with changes to your --declare'd use that bring in more
    members' items (e.g. open weights instead of closed); each is shown. Accepting takes the
    declaration with the price; --auto takes one only within the file's mayConcede.

    With --open-only, the negotiation is opened and left at the coalition's first answer.
    With --quiet, the moves go to stderr and only the negotiation id to stdout.
    """
    check_output_options(json_output, quiet)
    options = globals_of(ctx)
    limits: norms.DeclarationLimits | None = None
    try:
        terms = _terms(
            purposes,
            model,
            price,
            period_days,
            licence_days,
            deletion_days,
            lease_hours,
            tags or [],
            min_items,
            max_items,
            attribution,
            currency,
        )
        if declare is not None:
            declared = norms.load_declaration(declare)
            terms.declaration.CopyFrom(declared.declaration)
            limits = declared.limits
        tactic = None
        if auto and open_only:
            raise CoalitionError("--open-only leaves the negotiation to you: not with --auto")
        if auto:
            if budget is None:
                raise CoalitionError("--auto needs --budget")
            tactic = lab_strategy(
                strategy.value,
                terms.price_per_item.micros,
                micros(budget.lstrip("$")),
                max_rounds=rounds,
            )
        elif budget is not None:
            raise CoalitionError("--budget goes with --auto")
    except CoalitionError as exc:
        fail(str(exc), EXIT_UNUSABLE)
    key = options.signing_key()
    dialogue = _Dialogue(json_output or quiet, currency)
    dialogue.own = terms.declaration

    async def go() -> negotiation_pb2.Negotiation:
        async with options.client(key) as client:
            if tactic is None:
                negotiation = await _interactive(client, dialogue, terms, request_id, open_only)
            else:
                negotiation = await client.negotiate_auto(
                    terms, tactic, on_step=dialogue.show, limits=limits
                )
                dialogue.receipts.extend(s.receipt for s in dialogue.steps if s.receipt)
            try:
                await check_receipts(client, dialogue.receipts)
            except VerificationError as exc:
                check_verified(exc, "a receipt")
            return negotiation

    try:
        negotiation = run(ctx, go())
    except VerificationError as exc:
        fail(f"the coalition's answer does not verify: {exc}", EXIT_FAILED)
    except CoalitionError as exc:
        fail(str(exc), EXIT_FAILED)
    _report(negotiation, dialogue, json_output, quiet)


def negotiations(ctx: typer.Context, json_output: JsonOpt = False, quiet: QuietOpt = False) -> None:
    """List your negotiations: state, round, the price on the table, agreement; with
    --quiet, only their negotiation ids."""
    check_output_options(json_output, quiet)
    options = globals_of(ctx)
    key = options.signing_key()

    async def go() -> list[negotiation_pb2.Negotiation]:
        async with options.client(key) as client:
            return [n async for n in client.negotiations()]

    found = run(ctx, go())
    if json_output:
        print_json([negotiation_json(n) for n in found])
        return
    if quiet:
        for n in found:
            typer.echo(n.negotiation_id)
        return
    table = Table()
    table.add_column("negotiation id")
    table.add_column("state")
    table.add_column("round", justify="right")
    table.add_column("price/item")
    table.add_column("purposes")
    table.add_column("agreement")
    for n in found:
        table.add_row(
            n.negotiation_id,
            negotiation_state_name(n.state),
            f"{n.round}/{n.max_rounds}",
            f"{_price(n.current_terms)} ({_name(PAYMENT_MODELS, n.current_terms.payment_model)})",
            ",".join(_name(PURPOSES, p) for p in n.current_terms.purposes),
            n.agreement_id,
        )
    console().print(table)


def event_json(
    event: negotiation_pb2.WatchNegotiationResponse, coalition_key_id: str
) -> dict[str, Any]:
    """One negotiation event in JSON: who did what, at which ledger index."""
    envelope = dsse.Envelope.from_proto(event.statement)
    kind = statements.kind(envelope.payload_type)
    signers = [s.keyid for s in envelope.signatures]
    out: dict[str, Any] = {
        "index": event.index,
        "statement": kind,
        "state": negotiation_state_name(event.state),
        "round": None,
        "by": "lab",
        "kind": kind,
        "price": None,
        "reason": None,
    }

    def price(terms: terms_pb2.LicenceTerms) -> dict[str, Any]:
        return {
            "currency_code": terms.price_per_item.currency_code,
            "micros": terms.price_per_item.micros,
        }

    if kind == "NegotiationRequest":
        request = negotiation_pb2.NegotiationRequest.FromString(envelope.payload)
        out.update(round=0, kind="request", price=price(request.terms))
    elif kind == "NegotiationMove":
        move = negotiation_pb2.NegotiationMove.FromString(envelope.payload)
        out.update(
            round=move.round,
            by="coalition" if coalition_key_id in signers else "lab",
            kind=negotiation_pb2.MoveKind.Name(move.kind).removeprefix("MOVE_KIND_").lower(),
            price=price(move.terms) if move.kind == negotiation_pb2.MOVE_KIND_OFFER else None,
            reason=move.reason or None,
        )
    elif kind == "Agreement":
        agreement = access_pb2.Agreement.FromString(envelope.payload)
        out.update(
            by="lab+coalition" if len(signers) > 1 else "coalition",
            kind="agreement",
            price=price(agreement.terms),
            covered_item_count=agreement.covered_item_count,
        )
    elif kind in ("RatificationCall", "RatificationResult"):
        out.update(by="coalition", kind=kind)
        if kind == "RatificationResult":
            result = negotiation_pb2.RatificationResult.FromString(envelope.payload)
            out["kind"] = "ratified" if result.approved else "rejected"
    elif kind == "Ballot":
        out.update(by="member", kind="ballot")
    return out


def offers(
    ctx: typer.Context,
    negotiation_id: Annotated[str, typer.Argument(help="One of your negotiations.")],
    json_output: JsonOpt = False,
) -> None:
    """A negotiation's moves so far, from the ledger: your request, each offer, counter,
    acceptance or termination (each checked to be signed by you or the coalition), and the
    agreement once signed."""
    options = globals_of(ctx)
    key = options.signing_key()

    async def go() -> tuple[
        negotiation_pb2.Negotiation, list[negotiation_pb2.WatchNegotiationResponse], str
    ]:
        async with options.client(key) as client:
            coalition = (await client.log_info()).coalition_key_id
            negotiation, events = await client.negotiation_history(negotiation_id)
            return negotiation, events, coalition

    try:
        negotiation, events, coalition = run(ctx, go())
    except VerificationError as exc:
        check_verified(exc, "a negotiation entry")
    described = [event_json(e, coalition) for e in events]
    if json_output:
        print_json({**negotiation_json(negotiation), "events": described})
        return
    table = Table(title=_outcome_text(negotiation))
    table.add_column("entry", justify="right")
    table.add_column("round", justify="right")
    table.add_column("by")
    table.add_column("move")
    table.add_column("price/item", justify="right")
    table.add_column("state after")
    for d in described:
        price = d["price"]
        table.add_row(
            str(d["index"]),
            "" if d["round"] is None else str(d["round"]),
            d["by"],
            d["kind"] + (f" ({d['reason']})" if d["reason"] else ""),
            money_text(price["micros"], price["currency_code"]) if price else "",
            d["state"],
        )
    console().print(table)
    if negotiation.state == OFFERED:
        note(
            f"your turn: `coalition lab accept {negotiation_id}` or "
            f"`coalition lab terminate {negotiation_id}`"
        )


def accept(
    ctx: typer.Context,
    negotiation_id: Annotated[str, typer.Argument(help="A negotiation the coalition offered in.")],
    request_id: RequestIdOpt = "",
    json_output: JsonOpt = False,
) -> None:
    """Accept the coalition's current offer and sign the drafted agreement (checked first:
    the terms on the table, your key, the covered items' Merkle root)."""
    options = globals_of(ctx)
    key = options.signing_key()
    dialogue = _Dialogue(json_output, DEFAULT_CURRENCY)

    async def go() -> negotiation_pb2.Negotiation:
        async with options.client(key) as client:
            negotiation = await client.negotiation(negotiation_id)
            dialogue.currency = negotiation.current_terms.price_per_item.currency_code
            await dialogue.trust(client)
            if negotiation.state == OFFERED:
                round_ = negotiation.round + 1
                response = await client.accept(negotiation_id, round_, request_id=request_id)
                dialogue.receipts.append(response.receipt)
                negotiation = response.negotiation
                dialogue.show(
                    NegotiationStep(
                        "lab",
                        "accept",
                        round_,
                        negotiation.current_terms.price_per_item.micros,
                        _lab_state("accept"),
                    )
                )
                dialogue.answered(response.coalition_move, negotiation)
            elif negotiation.state != AGREED:
                fail(
                    f"negotiation {negotiation_id} is "
                    f"{negotiation_state_name(negotiation.state)}: there is no offer to accept",
                    EXIT_FAILED,
                )
            negotiation = await _finish(client, dialogue, negotiation)
            try:
                await check_receipts(client, dialogue.receipts)
            except VerificationError as exc:
                check_verified(exc, "a receipt")
            return negotiation

    try:
        negotiation = run(ctx, go())
    except VerificationError as exc:
        fail(f"the agreement draft does not verify: {exc}", EXIT_FAILED)
    except CoalitionError as exc:
        fail(str(exc), EXIT_FAILED)
    _report(negotiation, dialogue, json_output)
    if negotiation.state not in ENDED_STATES | {negotiation_pb2.NEGOTIATION_STATE_RATIFYING}:
        raise typer.Exit(EXIT_FAILED)


def terminate(
    ctx: typer.Context,
    negotiation_id: Annotated[str, typer.Argument(help="One of your open negotiations.")],
    reason: Annotated[
        str, typer.Option(help="Why, machine-readable (e.g. OVER_BUDGET).")
    ] = "LAB_TERMINATED",
    request_id: RequestIdOpt = "",
    json_output: JsonOpt = False,
) -> None:
    """End a negotiation without agreement."""
    options = globals_of(ctx)
    key = options.signing_key()
    dialogue = _Dialogue(json_output, DEFAULT_CURRENCY)

    async def go() -> negotiation_pb2.Negotiation:
        async with options.client(key) as client:
            negotiation = await client.negotiation(negotiation_id)
            round_ = negotiation.round + 1
            response = await client.terminate(
                negotiation_id, round_, reason=reason, request_id=request_id
            )
            dialogue.receipts.append(response.receipt)
            dialogue.show(
                NegotiationStep(
                    "lab", "terminate", round_, None, response.negotiation.state, reason
                )
            )
            try:
                await check_receipts(client, dialogue.receipts)
            except VerificationError as exc:
                check_verified(exc, "the receipt")
            return response.negotiation

    negotiation = run(ctx, go())
    _report(negotiation, dialogue, json_output)


# --- member commands ----------------------------------------------------------------------


def vote(
    ctx: typer.Context,
    negotiation_id: Annotated[
        str,
        typer.Argument(
            help="The negotiation whose agreement is being ratified (`coalition ratifications`)."
        ),
    ],
    approve: Annotated[
        bool | None,
        typer.Option("--approve/--reject", help="Approve or reject the agreement."),
    ] = None,
    reason: Annotated[
        list[str] | None,
        typer.Option(
            "--reason",
            metavar="NORM_ID",
            help="Why, as a norm id of the vocabulary (docs/norms.md), e.g. prohibited-use; "
            "repeat for several. The result publishes only reasons enough members gave.",
        ),
    ] = None,
    request_id: RequestIdOpt = "",
    json_output: JsonOpt = False,
) -> None:
    """Vote on an agreement that covers some of your items (a signed ballot, logged),
    optionally saying why with --reason: the coalition learns why deals are rejected."""
    if approve is None:
        fail("say how you vote: --approve or --reject", EXIT_UNUSABLE)
    reasons = ballot_reasons(reason or [])
    options = globals_of(ctx)
    key = options.signing_key()

    async def go() -> negotiation_pb2.CastBallotResponse:
        async with options.client(key) as client:
            response = await client.cast_ballot(
                negotiation_id, approve, reasons=reasons, request_id=request_id
            )
            try:
                await check_receipts(client, [response.receipt])
            except VerificationError as exc:
                check_verified(exc, "the ballot receipt")
            return response

    response = run(ctx, go())
    state = negotiation_state_name(response.state)
    if json_output:
        print_json(
            {
                "negotiation_id": negotiation_id,
                "approve": approve,
                "reasons": reasons,
                "state": state,
                "receipt": receipt_json(response.receipt),
            }
        )
        return
    because = f" because of {', '.join(reasons)}" if reasons else ""
    console().print(
        f"ballot ({'approve' if approve else 'reject'}{because}) on {negotiation_id} logged "
        f"at entry {response.receipt.index}; the negotiation is {state}"
    )


def ballot_reasons(given: list[str]) -> list[str]:
    """``--reason`` values as a ballot carries them: known norm ids, sorted, each once; exit
    2 naming the vocabulary's ids for an unknown one (the server would refuse it)."""
    known = Vocabulary.load().norms
    reasons = sorted({value.strip() for value in given})
    unknown = [value for value in reasons if value not in known]
    if unknown:
        fail(
            f"--reason {unknown[0]!r} is not a norm id; use one of: {', '.join(known)}",
            EXIT_UNUSABLE,
        )
    return reasons


def ratifications(
    ctx: typer.Context,
    json_output: JsonOpt = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="Print only each one's negotiation id and its lab's key id, one per line: "
            "read -r NEGOTIATION LAB < <(coalition ratifications --quiet).",
        ),
    ] = False,
) -> None:
    """The agreements you may vote on: they cover some of your items."""
    check_output_options(json_output, quiet)
    options = globals_of(ctx)
    key = options.signing_key()

    async def go() -> list[negotiation_pb2.Ratification]:
        async with options.client(key) as client:
            return await client.ratifications()

    found = run(ctx, go())
    described: list[dict[str, Any]] = []
    for r in found:
        draft = access_pb2.Agreement.FromString(r.agreement_draft)
        described.append(
            {
                "negotiation_id": r.negotiation_id,
                "lab_key_id": draft.lab_key_id,
                "your_items": r.your_items,
                "covered_item_count": draft.covered_item_count,
                "terms": terms_json(draft.terms),
                "closes_at": format_timestamp(r.closes_at),
                "voted": r.voted,
            }
        )
    if json_output:
        print_json(described)
        return
    if quiet:
        for d in described:
            typer.echo(f"{d['negotiation_id']} {d['lab_key_id']}")
        return
    table = Table()
    table.add_column("negotiation id")
    table.add_column("lab")
    table.add_column("your items", justify="right")
    table.add_column("covered", justify="right")
    table.add_column("price/item")
    table.add_column("purposes")
    table.add_column("closes at")
    table.add_column("voted")
    for r, d in zip(found, described, strict=True):
        terms = access_pb2.Agreement.FromString(r.agreement_draft).terms
        table.add_row(
            d["negotiation_id"],
            d["lab_key_id"],
            str(d["your_items"]),
            str(d["covered_item_count"]),
            f"{_price(terms)} ({_name(PAYMENT_MODELS, terms.payment_model)})",
            ",".join(d["terms"]["purposes"]),
            d["closes_at"],
            "yes" if r.voted else "no",
        )
    console().print(table)
    if found and not all(r.voted for r in found):
        note("vote with `coalition vote NEGOTIATION --approve` (or --reject)")


def earning_json(earning: VerifiedEarning) -> dict[str, Any]:
    """A verified payout line in JSON."""
    line = earning.line
    statement = earning.statement
    return {
        "agreement_id": earning.agreement_id,
        "member_key_id": line.member_key_id,
        "item_count": line.item_count,
        "amount": {"currency_code": line.amount.currency_code, "micros": line.amount.micros},
        "payment_model": _name(PAYMENT_MODELS, statement.payment_model),
        "rule": statement.rule,
        "statement_total": {
            "currency_code": statement.total.currency_code,
            "micros": statement.total.micros,
        },
        "line_index": earning.line_index,
        "statement_index": earning.statement_index,
        "lines_root": bytes(statement.lines_root).hex(),
        "verified": True,
    }


def _per(model: int) -> str:
    if model == terms_pb2.PAYMENT_MODEL_SUBSCRIPTION:
        return " per period"
    if model == terms_pb2.PAYMENT_MODEL_PER_USE:
        return " per use"
    return ""


def earnings(
    ctx: typer.Context,
    json_output: JsonOpt = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="Print only the ids of the agreements that paid you (each line verified), "
            "one per line.",
        ),
    ] = False,
) -> None:
    """Your payout lines, each verified: the line is in the payout statement the coalition
    signed and logged (a Merkle proof to the statement's lines root)."""
    check_output_options(json_output, quiet)
    options = globals_of(ctx)
    key = options.signing_key()

    async def go() -> list[VerifiedEarning]:
        async with options.client(key) as client:
            return await client.verified_earnings()

    try:
        found = run(ctx, go())
    except VerificationError as exc:
        check_verified(exc, "a payout line")
    if json_output:
        print_json([earning_json(e) for e in found])
        return
    if quiet:
        for e in found:
            typer.echo(e.agreement_id)
        return
    totals: dict[str, int] = {}
    table = Table()
    table.add_column("agreement")
    table.add_column("model")
    table.add_column("your items", justify="right")
    table.add_column("amount", justify="right")
    table.add_column("rule")
    table.add_column("statement entry", justify="right")
    table.add_column("line")
    for e in found:
        amount = e.line.amount
        if e.statement.payment_model == terms_pb2.PAYMENT_MODEL_PURCHASE:
            totals[amount.currency_code] = totals.get(amount.currency_code, 0) + amount.micros
        table.add_row(
            e.agreement_id,
            _name(PAYMENT_MODELS, e.statement.payment_model),
            str(e.line.item_count),
            money_text(amount.micros, amount.currency_code) + _per(e.statement.payment_model),
            e.statement.rule,
            str(e.statement_index),
            f"#{e.line_index} verified",
        )
    if totals:
        table.title = "one-off purchases: " + ", ".join(
            money_text(v, c) for c, v in sorted(totals.items())
        )
    console().print(table)
    if not found:
        note("no earnings yet")


def register(app: typer.Typer, lab_app: typer.Typer) -> None:
    """Add the bargaining commands: lab ones onto ``lab_app``, member ones onto ``app``."""
    lab_app.command("negotiate")(negotiate)
    lab_app.command("negotiations")(negotiations)
    lab_app.command("offers")(offers)
    lab_app.command("accept")(accept)
    lab_app.command("terminate")(terminate)
    app.command("vote")(vote)
    app.command("ratifications")(ratifications)
    app.command("earnings")(earnings)
