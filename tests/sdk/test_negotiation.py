"""Collective bargaining through the SDK over the real server (SQLite and PostgreSQL):
automatic negotiation within a budget, manual moves, the moves' history, ratification by
ballots, and payout lines verified against the signed statement; and the pure payout
verification, with statements built in memory."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from coalition import dsse, statements
from coalition.client import (
    Client,
    NegotiationStep,
    ServerError,
    check_draft,
    check_negotiation_event,
    coalition_answer,
    covered_items_root,
    lab_strategy,
    price_floor,
)
from coalition.errors import CoalitionError, VerificationError
from coalition.keys import PublicKey, SigningKey
from coalition.payouts import (
    PAYOUT_STATEMENT_TYPE,
    PayoutError,
    build_statement,
    earning_of,
    lines_root,
    verify_earning,
)
from coalition.strategy import boulware, conceder, linear
from coalition.v1 import access_pb2, negotiation_pb2, party_pb2, terms_pb2
from coalition_server.config import Settings
from coalition_server.server import CoalitionServer
from tests.sdk.conftest import MakeParty

USD = 1_000_000
FLOORS = [1, 2, 3, 4, 5, 6]
RESERVATION = 3 * USD  # half of the pool's items must be covered: the 3-USD floor
STATE = negotiation_pb2
CODE = grpc.StatusCode


def terms(price: int = 0, *, lease: timedelta = timedelta(hours=1)) -> terms_pb2.LicenceTerms:
    """Purchase terms for training."""
    out = terms_pb2.LicenceTerms(
        purposes=[terms_pb2.PURPOSE_TRAIN_AI],
        payment_model=terms_pb2.PAYMENT_MODEL_PURCHASE,
        price_per_item=terms_pb2.Money(currency_code="USD", micros=price),
    )
    out.licence_duration.FromTimedelta(timedelta(days=365))
    out.deletion_deadline.FromTimedelta(timedelta(days=7))
    out.lease_duration.FromTimedelta(lease)
    return out


async def pool(make_party: MakeParty, floors: list[int] = FLOORS) -> dict[str, int]:
    """One member per floor (USD), each with two stored items consented for training;
    item id -> its member's floor in micros."""
    floor_of: dict[str, int] = {}
    for i, floor in enumerate(floors):
        member = await make_party(party_pb2.ROLE_CONTRIBUTOR, f"member {i}")
        contents = [f"{i} a {os.urandom(4).hex()}".encode(), f"{i} b".encode()]
        response = await member.register_items(
            [(hashlib.sha256(c).digest(), len(c), "text/plain", ["pool"]) for c in contents]
        )
        for item, content in zip(response.items, contents, strict=True):
            await member.upload(item.item_id, content)
            floor_of[item.item_id] = floor * USD
        await member.grant_consent(
            item_ids=[i.item_id for i in response.items],
            purposes=["train-ai"],
            floors=[price_floor("purchase", floor * USD)],
        )
    return floor_of


async def members(make_party: MakeParty, floors: list[int]) -> list[tuple[Client, set[str]]]:
    """Like :func:`pool`, keeping each member's client and items."""
    out = []
    for i, floor in enumerate(floors):
        member = await make_party(party_pb2.ROLE_CONTRIBUTOR, f"member {i}")
        contents = [f"{i} a {os.urandom(4).hex()}".encode(), f"{i} b".encode()]
        response = await member.register_items(
            [(hashlib.sha256(c).digest(), len(c), "text/plain", []) for c in contents]
        )
        for item, content in zip(response.items, contents, strict=True):
            await member.upload(item.item_id, content)
        ids = [i.item_id for i in response.items]
        await member.grant_consent(
            item_ids=ids, purposes=["train-ai"], floors=[price_floor("purchase", floor * USD)]
        )
        out.append((member, set(ids)))
    return out


# --- automatic negotiation ----------------------------------------------------------------


async def test_auto_within_budget_finalizes_and_the_lab_fetches(
    make_party: MakeParty, lab: Client, tmp_path: Path
) -> None:
    pool_members = await members(make_party, FLOORS)
    floor_of = {
        item: floor * USD
        for (_, ids), floor in zip(pool_members, FLOORS, strict=True)
        for item in ids
    }
    steps: list[NegotiationStep] = []
    strategy = linear(USD // 2, 5 * USD, 20, 86400)
    final = await lab.negotiate_auto(terms(), strategy, on_step=steps.append)

    assert final.state == STATE.NEGOTIATION_STATE_FINALIZED
    assert final.agreement_id
    price = final.current_terms.price_per_item.micros
    assert RESERVATION <= price <= 5 * USD
    # The story: the lab opened at its initial price, the sides alternated, the coalition
    # only ever conceded and never below its reservation, the lab never bid above budget.
    assert (steps[0].by, steps[0].kind, steps[0].round) == ("lab", "request", 0)
    assert steps[0].price_micros == USD // 2
    assert steps[-1].kind == "sign"
    assert steps[-1].state == STATE.NEGOTIATION_STATE_FINALIZED
    moves = [s for s in steps if s.kind != "sign"]
    assert [s.by for s in moves] == ["lab", "coalition"] * (len(moves) // 2) + (
        ["lab"] if len(moves) % 2 else []
    )
    assert [s.round for s in moves] == list(range(len(moves)))
    asks = [s.price_micros or 0 for s in moves if s.by == "coalition" and s.kind == "offer"]
    bids = [s.price_micros or 0 for s in moves if s.by == "lab" and s.kind in ("request", "offer")]
    assert asks == sorted(asks, reverse=True)
    assert all(a >= RESERVATION for a in asks)
    assert bids == sorted(bids)
    assert all(0 < b <= 5 * USD for b in bids)
    assert all(s.receipt is not None for s in steps if s.by == "lab")

    # The agreement covers exactly the items whose floor the price meets (uniform price).
    (record,) = [r async for r in lab.agreements()]
    assert record.agreement_id == final.agreement_id
    agreement = access_pb2.Agreement.FromString(record.agreement.payload)
    assert set(agreement.covered_item_ids) == {i for i, f in floor_of.items() if f <= price}
    assert agreement.covered_items_root == covered_items_root(agreement.covered_item_ids)
    # The default policy needs no vote: the revenue is split at once, pro rata by items.
    covered = set(agreement.covered_item_ids)
    for member, ids in pool_members:
        found = await member.verified_earnings()
        if not ids & covered:
            assert found == []
            continue
        (earning,) = found
        assert earning.agreement_id == final.agreement_id
        assert earning.line.amount.micros == price * len(ids)
        assert earning.statement.total.micros == price * len(covered)
    lease = await lab.take_lease(final.agreement_id)
    fetched = await lab.fetch(lease.lease.lease_id, tmp_path / "out")
    assert {f.item.item_id for f in fetched.files} == set(agreement.covered_item_ids)

    # The negotiation as the lab sees it, its list, and its history from the ledger.
    assert (await lab.negotiation(final.negotiation_id)).state == final.state
    listed = [n async for n in lab.negotiations()]
    assert [n.negotiation_id for n in listed] == [final.negotiation_id]
    now, events = await lab.negotiation_history(final.negotiation_id)
    assert now.state == STATE.NEGOTIATION_STATE_FINALIZED
    kinds = [statements.kind(e.statement.payload_type) for e in events]
    assert kinds[0] == "NegotiationRequest"
    assert kinds.count("NegotiationMove") == len(moves) - 1
    assert kinds[-1] == "Agreement"
    assert events[-1].state == STATE.NEGOTIATION_STATE_FINALIZED
    assert [e.index for e in events] == sorted(e.index for e in events)


async def test_auto_below_the_reservation_terminates_without_agreement(
    make_party: MakeParty, lab: Client
) -> None:
    await pool(make_party)
    steps: list[NegotiationStep] = []
    final = await lab.negotiate_auto(
        terms(), boulware(USD // 2, 2 * USD, 20, 86400), on_step=steps.append
    )
    assert final.state == STATE.NEGOTIATION_STATE_TERMINATED
    assert not final.agreement_id
    assert not final.agreement_draft
    last = steps[-1]
    assert (last.by, last.kind, last.reason) == ("lab", "terminate", "OVER_BUDGET")
    assert all(
        s.price_micros is not None and s.price_micros <= 2 * USD
        for s in steps
        if s.by == "lab" and s.kind in ("request", "offer")
    )
    assert [r async for r in lab.agreements()] == []
    _, events = await lab.negotiation_history(final.negotiation_id)
    assert events[-1].state == STATE.NEGOTIATION_STATE_TERMINATED


async def test_auto_conceder_agrees_and_a_tight_round_limit_is_respected(
    make_party: MakeParty, lab: Client
) -> None:
    await pool(make_party)
    steps: list[NegotiationStep] = []
    final = await lab.negotiate_auto(
        terms(), conceder(USD, 6 * USD, 6, 86400), on_step=steps.append
    )
    assert final.state == STATE.NEGOTIATION_STATE_FINALIZED
    assert max(s.round for s in steps if s.kind != "sign") <= 6
    with pytest.raises(CoalitionError, match="budget"):
        await lab.negotiate_auto(terms(), linear(2 * USD, USD, 20, 86400))
    with pytest.raises(CoalitionError, match="unknown strategy"):
        lab_strategy("haggle", 1, 2)


async def test_auto_without_signing_stops_at_agreed(make_party: MakeParty, lab: Client) -> None:
    await pool(make_party)
    agreed = await lab.negotiate_auto(terms(), linear(USD, 8 * USD, 20, 86400), sign=False)
    assert agreed.state == STATE.NEGOTIATION_STATE_AGREED
    assert lab.key is not None
    draft = check_draft(agreed, lab.key.key_id)
    assert draft.negotiation_id == agreed.negotiation_id
    signed = await lab.sign_agreement(agreed.agreement_draft)
    assert signed.negotiation.state == STATE.NEGOTIATION_STATE_FINALIZED


# --- manual moves -------------------------------------------------------------------------


async def test_manual_moves_offer_accept_sign_and_refusals(
    make_party: MakeParty, lab: Client
) -> None:
    await pool(make_party)
    rival = await make_party(party_pb2.ROLE_LAB, "Rival")
    assert lab.key is not None
    catalogue = await lab.catalogue()
    (row,) = catalogue.rows
    assert (row.member_count, row.item_count) == (6, 12)

    opened = await lab.open_negotiation(terms(USD // 2))
    negotiation = opened.negotiation
    assert negotiation.state == STATE.NEGOTIATION_STATE_OFFERED
    nid = negotiation.negotiation_id
    coalition = PublicKey(bytes((await lab.log_info()).coalition_public_key))
    answer = coalition_answer(opened.coalition_move, negotiation, coalition)
    assert answer is not None
    assert (answer.by, answer.kind, answer.round) == ("coalition", "offer", 1)
    assert answer.price_micros == negotiation.current_terms.price_per_item.micros
    with pytest.raises(VerificationError):
        coalition_answer(opened.coalition_move, negotiation, SigningKey.generate().public_key)
    countered = await lab.offer(nid, negotiation.round + 1, terms(USD))
    assert countered.negotiation.state == STATE.NEGOTIATION_STATE_OFFERED
    assert countered.coalition_move.payload
    with pytest.raises(ServerError) as stale:
        await lab.accept(nid, countered.negotiation.round + 5)
    assert (stale.value.code, stale.value.reason) == (CODE.FAILED_PRECONDITION, "STALE_ROUND")
    with pytest.raises(ServerError) as other:
        await rival.accept(nid, countered.negotiation.round + 1)
    assert (other.value.code, other.value.reason) == (
        CODE.PERMISSION_DENIED,
        "NOT_YOUR_NEGOTIATION",
    )
    accepted = await lab.accept(nid, countered.negotiation.round + 1, request_id="acc-1")
    assert accepted.negotiation.state == STATE.NEGOTIATION_STATE_AGREED
    with pytest.raises(ServerError) as reused:  # a new move (fresh nonce) under the same id
        await lab.accept(nid, countered.negotiation.round + 1, request_id="acc-1")
    assert (reused.value.code, reused.value.reason) == (CODE.ALREADY_EXISTS, "REQUEST_ID_REUSED")

    draft = check_draft(accepted.negotiation, lab.key.key_id)
    with pytest.raises(CoalitionError, match="another lab"):
        await rival.sign_agreement(accepted.negotiation.agreement_draft)
    tampered = negotiation_pb2.Negotiation()
    tampered.CopyFrom(accepted.negotiation)
    tampered.current_terms.price_per_item.micros -= 1
    with pytest.raises(VerificationError, match="terms"):
        check_draft(tampered, lab.key.key_id)
    with pytest.raises(VerificationError, match="another lab"):
        check_draft(accepted.negotiation, "0" * 32)
    dropped = access_pb2.Agreement()
    dropped.CopyFrom(draft)
    dropped.covered_item_ids.pop()
    dropped.covered_item_count -= 1
    short = negotiation_pb2.Negotiation()
    short.CopyFrom(accepted.negotiation)
    short.agreement_draft = dropped.SerializeToString(deterministic=True)
    with pytest.raises(VerificationError, match="Merkle root"):
        check_draft(short, lab.key.key_id)

    signed = await lab.sign_agreement(accepted.negotiation.agreement_draft)
    assert signed.negotiation.state == STATE.NEGOTIATION_STATE_FINALIZED
    assert signed.receipt.index > accepted.receipt.index

    second = await lab.open_negotiation(terms(USD // 2))
    ended = await lab.terminate(
        second.negotiation.negotiation_id, second.negotiation.round + 1, reason="NOT_NOW"
    )
    assert ended.negotiation.state == STATE.NEGOTIATION_STATE_TERMINATED
    _, events = await lab.negotiation_history(second.negotiation.negotiation_id)
    last = negotiation_pb2.NegotiationMove.FromString(events[-1].statement.payload)
    assert (last.kind, last.reason) == (STATE.MOVE_KIND_TERMINATE, "NOT_NOW")
    listed = [n.negotiation_id async for n in lab.negotiations(page_size=1)]
    assert listed == [nid, second.negotiation.negotiation_id]


async def test_history_of_an_open_negotiation_and_forged_events(
    make_party: MakeParty, lab: Client
) -> None:
    await pool(make_party)
    opened = await lab.open_negotiation(terms(USD // 2))
    nid = opened.negotiation.negotiation_id
    now, events = await lab.negotiation_history(nid, idle_timeout=5)
    assert now.state == STATE.NEGOTIATION_STATE_OFFERED
    assert [statements.kind(e.statement.payload_type) for e in events] == [
        "NegotiationRequest",
        "NegotiationMove",
    ]
    assert [e.state for e in events] == [
        STATE.NEGOTIATION_STATE_REQUESTED,
        STATE.NEGOTIATION_STATE_OFFERED,
    ]
    info = await lab.log_info()
    coalition = PublicKey(bytes(info.coalition_public_key))
    assert lab.key is not None
    for event in events:
        check_negotiation_event(event, nid, coalition, lab.key.public_key)
    # A move signed by somebody else, or about another negotiation, does not verify.
    move = negotiation_pb2.NegotiationMove.FromString(events[1].statement.payload)
    forged = negotiation_pb2.WatchNegotiationResponse()
    forged.CopyFrom(events[1])
    forged.statement.CopyFrom(statements.sign_statement(move, SigningKey.generate()).to_proto())
    with pytest.raises(VerificationError, match="neither"):
        check_negotiation_event(forged, nid, coalition, lab.key.public_key)
    with pytest.raises(VerificationError, match="another negotiation"):
        check_negotiation_event(events[1], "f" * 32, coalition, lab.key.public_key)
    broken = negotiation_pb2.WatchNegotiationResponse()
    broken.CopyFrom(events[1])
    signature = bytearray(broken.statement.signatures[0].sig)
    signature[0] ^= 1
    broken.statement.signatures[0].sig = bytes(signature)
    with pytest.raises(VerificationError):
        check_negotiation_event(broken, nid, coalition, lab.key.public_key)


# --- ratification and payouts over the server ---------------------------------------------


@pytest.fixture
async def ratifying(settings: Settings, tmp_path: Path) -> AsyncIterator[Callable[..., Client]]:
    """A server whose policy requires the covered members to ratify; a client factory."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "ratification:\n  required: true\n  basis: items\n  threshold: 0.5\n  window_seconds: 60\n"
    )
    server = CoalitionServer(
        dataclasses.replace(settings, policy_file=policy, negotiation_sweep_seconds=0.2)
    )
    port = await server.start()
    clients: list[Client] = []

    def make(key: SigningKey | None = None) -> Client:
        client = Client(f"127.0.0.1:{port}", key=key or SigningKey.generate())
        clients.append(client)
        return client

    try:
        yield make
    finally:
        for client in clients:
            await client.close()
        await server.stop()


async def test_ratify_by_ballots_then_verify_earnings(ratifying: Callable[..., Client]) -> None:
    async def party(role: party_pb2.Role.ValueType, name: str) -> Client:
        client = ratifying()
        await client.register(role, name)
        return client

    pool_members = await members(party, [1, 2, 3, 4])
    acme = await party(party_pb2.ROLE_LAB, "Acme")
    final = await acme.negotiate_auto(terms(), linear(USD // 2, 5 * USD, 20, 86400))
    assert final.state == STATE.NEGOTIATION_STATE_RATIFYING
    assert final.HasField("ratification_deadline")
    nid = final.negotiation_id
    covered = set(access_pb2.Agreement.FromString(final.agreement_draft).covered_item_ids)
    inside = [(m, ids) for m, ids in pool_members if ids & covered]
    outside = [(m, ids) for m, ids in pool_members if not ids & covered]
    assert len(inside) >= 2
    assert outside

    (open_,) = await inside[0][0].ratifications()
    assert (open_.negotiation_id, open_.your_items, open_.voted) == (nid, 2, False)
    assert await outside[0][0].ratifications() == []
    with pytest.raises(ServerError) as not_covered:
        await outside[0][0].cast_ballot(nid, True)
    assert not_covered.value.reason == "NOT_COVERED"
    first = await inside[0][0].cast_ballot(nid, True)
    assert first.state == STATE.NEGOTIATION_STATE_RATIFYING
    assert (await inside[0][0].ratifications())[0].voted
    with pytest.raises(ServerError) as twice:
        await inside[0][0].cast_ballot(nid, False)
    assert (twice.value.code, twice.value.reason) == (CODE.ALREADY_EXISTS, "ALREADY_VOTED")
    # Ballots go by items: each member has two; half of the covered items must approve.
    decided = first
    for member, _ in inside[1:]:
        decided = await member.cast_ballot(nid, True)
        if decided.state != STATE.NEGOTIATION_STATE_RATIFYING:
            break
    assert decided.state == STATE.NEGOTIATION_STATE_FINALIZED
    agreement_id = (await acme.negotiation(nid)).agreement_id
    assert agreement_id

    statement = await ratifying().payout_statement(agreement_id)
    payout = negotiation_pb2.PayoutStatement.FromString(statement.statement.payload)
    price = final.current_terms.price_per_item.micros
    assert payout.total.micros == price * len(covered)
    for member, ids in inside:
        assert member.key is not None
        (verified,) = await member.verified_earnings()
        assert verified.agreement_id == agreement_id
        assert verified.line.member_key_id == member.key.key_id
        assert verified.line.item_count == len(ids & covered)
        assert verified.statement_index == statement.index
        (earning,) = await member.earnings()
        again = await member.verify_earning(earning, statement.statement)
        assert again.line == verified.line
        earning.line.amount.micros += 1
        with pytest.raises(PayoutError):
            await member.verify_earning(earning, statement.statement)
    assert await outside[0][0].earnings() == []
    with pytest.raises(ServerError) as missing:
        await acme.payout_statement("0" * 32)
    assert missing.value.code == CODE.NOT_FOUND


async def test_the_history_of_a_ratified_negotiation(ratifying: Callable[..., Client]) -> None:
    async def party(role: party_pb2.Role.ValueType, name: str) -> Client:
        client = ratifying()
        await client.register(role, name)
        return client

    pool_members = await members(party, [1, 2, 3, 4])
    acme = await party(party_pb2.ROLE_LAB, "Acme")
    final = await acme.negotiate_auto(terms(), linear(USD // 2, 5 * USD, 20, 86400))
    covered = set(access_pb2.Agreement.FromString(final.agreement_draft).covered_item_ids)
    for member, ids in pool_members:
        if ids & covered:
            voted = await member.cast_ballot(final.negotiation_id, True)
            if voted.state != STATE.NEGOTIATION_STATE_RATIFYING:
                break
    now, events = await acme.negotiation_history(final.negotiation_id, idle_timeout=5)
    assert now.state == STATE.NEGOTIATION_STATE_FINALIZED
    kinds = [statements.kind(e.statement.payload_type) for e in events]
    assert kinds[-1] == "Agreement"
    assert {"RatificationCall", "Ballot", "RatificationResult"} <= set(kinds)
    call = kinds.index("RatificationCall")
    assert events[call].state == STATE.NEGOTIATION_STATE_RATIFYING
    assert events[-1].state == STATE.NEGOTIATION_STATE_FINALIZED


# --- the pure payout verification ---------------------------------------------------------


def _lines(count: int) -> list[negotiation_pb2.PayoutLine]:
    return [
        negotiation_pb2.PayoutLine(
            member_key_id=f"{i:032x}",
            item_count=i + 1,
            amount=terms_pb2.Money(currency_code="USD", micros=(i + 1) * 3 * USD),
        )
        for i in range(count)
    ]


def _signed(statement: negotiation_pb2.PayoutStatement, key: SigningKey) -> dsse.Envelope:
    return dsse.sign(PAYOUT_STATEMENT_TYPE, statement.SerializeToString(deterministic=True), key)


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8, 13])
def test_every_line_of_a_statement_verifies(count: int) -> None:
    coalition = SigningKey.generate()
    lines = _lines(count)
    total = terms_pb2.Money(currency_code="USD", micros=sum(x.amount.micros for x in lines))
    statement = build_statement("a" * 32, total, list(reversed(lines)))
    assert [x.member_key_id for x in statement.lines] == [x.member_key_id for x in lines]
    assert statement.lines_root == lines_root(lines)
    envelope = _signed(statement, coalition)
    for index in range(count):
        earning = earning_of(statement, index, statement_index=7)
        verified = verify_earning(
            earning,
            envelope.to_proto(),
            coalition.public_key,
            member_key_id=lines[index].member_key_id,
        )
        assert verified.line == lines[index]
        assert (verified.line_index, verified.statement_index) == (index, 7)
        assert verified.statement == statement


def test_tampered_earnings_and_statements_are_refused() -> None:
    coalition = SigningKey.generate()
    lines = _lines(5)
    total = terms_pb2.Money(currency_code="USD", micros=45 * USD)
    statement = build_statement("a" * 32, total, lines)
    envelope = _signed(statement, coalition)
    good = earning_of(statement, 2)
    verify_earning(good, envelope, coalition.public_key)

    def changed(
        *,
        amount: int | None = None,
        proof: list[bytes] | None = None,
        line_index: int | None = None,
        agreement_id: str | None = None,
    ) -> negotiation_pb2.Earning:
        out = negotiation_pb2.Earning()
        out.CopyFrom(good)
        if amount is not None:
            out.line.amount.micros = amount
        if proof is not None:
            del out.line_proof[:]
            out.line_proof.extend(proof)
        if line_index is not None:
            out.line_index = line_index
        if agreement_id is not None:
            out.agreement_id = agreement_id
        return out

    cases: list[tuple[negotiation_pb2.Earning, object, str]] = [
        (changed(amount=good.line.amount.micros + 1), envelope, "proof"),
        (changed(line_index=3), envelope, "proof"),
        (changed(line_index=9), envelope, "proof"),
        (changed(proof=list(good.line_proof)[:-1]), envelope, "proof"),
        (changed(proof=[os.urandom(32) for _ in good.line_proof]), envelope, "proof"),
        (changed(agreement_id="b" * 32), envelope, "agreement"),
        (good, _signed(statement, SigningKey.generate()), "does not verify"),
        (
            good,
            dsse.sign("application/vnd.coalition.v1.Agreement+proto", envelope.payload, coalition),
            "not a payout statement",
        ),
    ]
    for earning, signed, message in cases:
        with pytest.raises(PayoutError, match=message):
            verify_earning(earning, signed, coalition.public_key)  # type: ignore[arg-type]
    with pytest.raises(PayoutError, match="not"):
        verify_earning(good, envelope, coalition.public_key, member_key_id="c" * 32)

    # A statement whose root does not commit to its lines, or with lines out of order.
    wrong_root = negotiation_pb2.PayoutStatement()
    wrong_root.CopyFrom(statement)
    wrong_root.lines[0].amount.micros += 1
    with pytest.raises(PayoutError, match="lines_root"):
        verify_earning(good, _signed(wrong_root, coalition), coalition.public_key)
    disordered = negotiation_pb2.PayoutStatement()
    disordered.CopyFrom(statement)
    first, second = disordered.lines[0], disordered.lines[1]
    a, b = negotiation_pb2.PayoutLine(), negotiation_pb2.PayoutLine()
    a.CopyFrom(first)
    b.CopyFrom(second)
    disordered.lines[0].CopyFrom(b)
    disordered.lines[1].CopyFrom(a)
    disordered.lines_root = lines_root(list(disordered.lines))
    with pytest.raises(PayoutError, match="ordered"):
        verify_earning(good, _signed(disordered, coalition), coalition.public_key)


def test_a_statement_with_trailing_garbage_is_refused() -> None:
    coalition = SigningKey.generate()
    statement = build_statement("a" * 32, terms_pb2.Money(currency_code="USD"), _lines(2))
    envelope = dsse.sign(
        PAYOUT_STATEMENT_TYPE,
        statement.SerializeToString(deterministic=True) + b"\xf8\x07\x01",
        coalition,
    )
    with pytest.raises(PayoutError, match=r"canonical|malformed|does not verify"):
        verify_earning(earning_of(statement, 0), envelope, coalition.public_key)
