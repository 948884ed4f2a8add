"""Collective bargaining over real gRPC on both databases: catalogue, negotiation to a
finalized agreement, illegal moves refused, deadlines."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from coalition import merkle
from coalition.auth import CallSigner
from coalition.client import Client, ServerError
from coalition.keys import SigningKey
from coalition.statements import sign_statement
from coalition.v1 import access_pb2, negotiation_pb2, terms_pb2
from coalition_server.config import Settings
from coalition_server.server import CoalitionServer

from . import builders
from .helpers import row_counts
from .world import (
    NEGOTIATION,
    Lab,
    Member,
    lab,
    member,
    move,
    open_negotiation,
    sign_agreement,
)

CODE = grpc.StatusCode
STATE = negotiation_pb2
USD = 1_000_000


async def _pool(make_client: Callable[..., Client], floors: list[int]) -> list[Member]:
    """One member per floor (in USD), each with two stored items consented for training."""
    members = []
    for i, floor in enumerate(floors):
        m = await member(make_client, f"member {i}")
        ids = await m.add([f"{i} a".encode(), f"{i} b".encode()])
        await m.grant(builders.consent_token(item_ids=ids, purchase_floor=floor * USD))
        members.append(m)
    return members


async def test_catalogue_is_aggregate_and_k_anonymous(
    make_client: Callable[..., Client], anonymous: Client
) -> None:
    await _pool(make_client, [1, 2, 3, 4])
    catalogue = await anonymous.call(
        NEGOTIATION + "GetCatalogue",
        negotiation_pb2.GetCatalogueRequest(),
        negotiation_pb2.GetCatalogueResponse,
        sign=False,
    )
    assert catalogue.minimum_group_size == 5
    assert list(catalogue.rows) == []  # four members: too few to show anything
    await _pool(make_client, [5, 6])
    catalogue = await anonymous.call(
        NEGOTIATION + "GetCatalogue",
        negotiation_pb2.GetCatalogueRequest(),
        negotiation_pb2.GetCatalogueResponse,
        sign=False,
    )
    (row,) = catalogue.rows
    assert (row.purpose, row.payment_model) == (
        terms_pb2.PURPOSE_TRAIN_AI,
        terms_pb2.PAYMENT_MODEL_PURCHASE,
    )
    assert (row.member_count, row.item_count) == (6, 12)
    assert list(row.floor_quantiles_micros) == [1 * USD, 2 * USD, 3 * USD, 5 * USD, 6 * USD]


async def test_negotiate_to_a_finalized_agreement_and_use_it(
    make_client: Callable[..., Client], db_url: str
) -> None:
    floors = [1, 2, 3, 4, 5, 6]
    members = await _pool(make_client, floors)
    acme = await lab(make_client)
    opening = builders.licence_terms(price=USD // 2)
    opened = await open_negotiation(acme, opening)
    negotiation = opened.negotiation
    assert negotiation.state == STATE.NEGOTIATION_STATE_OFFERED
    asked = negotiation.current_terms.price_per_item.micros
    # Half the pool's items must be covered: the reservation is the 3-USD floor.
    assert asked >= 3 * USD
    assert opened.coalition_move.payload  # the coalition's signed answer
    accepted = await move(
        acme, negotiation.negotiation_id, negotiation.round + 1, STATE.MOVE_KIND_ACCEPT
    )
    assert accepted.negotiation.state == STATE.NEGOTIATION_STATE_AGREED
    draft = access_pb2.Agreement.FromString(accepted.negotiation.agreement_draft)
    covered = set(draft.covered_item_ids)
    eligible = {i for m in members for i in m.contents}
    assert len(covered) >= len(eligible) // 2
    assert draft.terms.price_per_item.micros == asked
    finalized = await sign_agreement(acme, accepted.negotiation.agreement_draft)
    assert finalized.negotiation.state == STATE.NEGOTIATION_STATE_FINALIZED
    agreement_id = finalized.negotiation.agreement_id
    lease = (await acme.lease(agreement_id)).lease
    _, fetched = await acme.fetch(lease.lease_id, agreement_id)
    assert set(fetched) == covered
    # Uniform price: exactly the members whose floor the agreed price meets are covered.
    for floor, m in zip(floors, members, strict=True):
        assert (set(m.contents) <= covered) == (floor * USD <= asked)
    before = await row_counts(db_url)
    with pytest.raises(ServerError) as again:
        await move(
            acme,
            negotiation.negotiation_id,
            finalized.negotiation.round + 1,
            STATE.MOVE_KIND_ACCEPT,
        )
    assert (again.value.code, again.value.reason) == (CODE.FAILED_PRECONDITION, "OUT_OF_TURN")
    assert await row_counts(db_url) == before


async def test_counter_offers_converge_or_end_at_the_deadline(
    make_client: Callable[..., Client],
) -> None:
    await _pool(make_client, [1, 2, 3, 4])
    acme = await lab(make_client)
    opened = await open_negotiation(acme, builders.licence_terms(price=USD // 10))
    negotiation = opened.negotiation
    asks = [negotiation.current_terms.price_per_item.micros]
    bid = USD // 10
    while negotiation.state == STATE.NEGOTIATION_STATE_OFFERED:
        bid = min(bid * 2, 10 * USD)
        response = await move(
            acme,
            negotiation.negotiation_id,
            negotiation.round + 1,
            STATE.MOVE_KIND_OFFER,
            builders.licence_terms(price=bid),
        )
        negotiation = response.negotiation
        if negotiation.state == STATE.NEGOTIATION_STATE_OFFERED:
            asks.append(negotiation.current_terms.price_per_item.micros)
    assert negotiation.state == STATE.NEGOTIATION_STATE_AGREED
    assert asks == sorted(asks, reverse=True)  # the coalition only ever conceded
    assert all(ask >= 2 * USD for ask in asks)  # never below its reservation


async def test_illegal_moves_are_refused_and_write_nothing(
    make_client: Callable[..., Client], db_url: str
) -> None:
    await _pool(make_client, [1, 2])
    acme = await lab(make_client)
    rival = await lab(make_client, "rival")
    opened = await open_negotiation(acme, builders.licence_terms(price=USD // 2))
    nid, next_round = opened.negotiation.negotiation_id, opened.negotiation.round + 1
    bad_purpose = builders.licence_terms(purposes=[terms_pb2.Purpose.ValueType(42)])
    negative = builders.licence_terms(price=-1)
    absurd = builders.licence_terms(price=10**16)
    cases = [
        (
            move(rival, nid, next_round, STATE.MOVE_KIND_ACCEPT),
            CODE.PERMISSION_DENIED,
            "NOT_YOUR_NEGOTIATION",
        ),
        (
            move(acme, nid, next_round + 3, STATE.MOVE_KIND_ACCEPT),
            CODE.FAILED_PRECONDITION,
            "STALE_ROUND",
        ),
        (
            move(acme, nid, next_round, STATE.MOVE_KIND_OFFER, bad_purpose),
            CODE.INVALID_ARGUMENT,
            "UNKNOWN_PURPOSE",
        ),
        (
            move(acme, nid, next_round, STATE.MOVE_KIND_OFFER, negative),
            CODE.INVALID_ARGUMENT,
            "NEGATIVE_PRICE",
        ),
        (
            move(acme, nid, next_round, STATE.MOVE_KIND_OFFER, absurd),
            CODE.INVALID_ARGUMENT,
            "ABSURD_PRICE",
        ),
        (open_negotiation(acme, bad_purpose), CODE.INVALID_ARGUMENT, "UNKNOWN_PURPOSE"),
        (move(acme, "0" * 32, 1, STATE.MOVE_KIND_ACCEPT), CODE.NOT_FOUND, "NEGOTIATION_NOT_FOUND"),
    ]
    for call, code, reason in cases:
        before = await row_counts(db_url)
        with pytest.raises(ServerError) as refused:
            await call
        assert (refused.value.code, refused.value.reason) == (code, reason)
        assert await row_counts(db_url) == before
    accepted = await move(acme, nid, next_round, STATE.MOVE_KIND_ACCEPT)
    tampered = access_pb2.Agreement.FromString(accepted.negotiation.agreement_draft)
    tampered.terms.price_per_item.micros -= 1
    with pytest.raises(ServerError) as not_draft:
        await sign_agreement(acme, tampered.SerializeToString(deterministic=True))
    assert (not_draft.value.code, not_draft.value.reason) == (
        CODE.INVALID_ARGUMENT,
        "NOT_THE_DRAFT",
    )
    ended = await move(acme, nid, accepted.negotiation.round + 1, STATE.MOVE_KIND_TERMINATE)
    assert ended.negotiation.state == STATE.NEGOTIATION_STATE_TERMINATED


async def test_stale_negotiations_end_at_the_deadline(settings: Settings, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("negotiation:\n  deadline_seconds: 1\n")
    server = CoalitionServer(
        dataclasses.replace(settings, policy_file=policy, negotiation_sweep_seconds=0.2)
    )
    port = await server.start()
    try:
        target = f"127.0.0.1:{port}"

        def make(key: SigningKey | None = None) -> Client:
            return Client(target, key=key)

        await _pool(make, [1, 2])
        acme = await lab(make)
        opened = await open_negotiation(acme, builders.licence_terms(price=USD // 10))
        assert opened.negotiation.state == STATE.NEGOTIATION_STATE_OFFERED
        await asyncio.sleep(1.6)
        current = await acme.client.call(
            NEGOTIATION + "GetNegotiation",
            negotiation_pb2.GetNegotiationRequest(negotiation_id=opened.negotiation.negotiation_id),
            negotiation_pb2.GetNegotiationResponse,
            sign=True,
        )
        assert current.negotiation.state == STATE.NEGOTIATION_STATE_TERMINATED
        with pytest.raises(ServerError) as late:
            await move(
                acme,
                opened.negotiation.negotiation_id,
                opened.negotiation.round + 1,
                STATE.MOVE_KIND_ACCEPT,
            )
        assert late.value.reason == "OUT_OF_TURN"
    finally:
        await server.stop()


async def test_never_finalizes_below_the_reservation_as_it_stands_at_signing(
    make_client: Callable[..., Client], db_url: str
) -> None:
    await _pool(make_client, [1, 2, 3, 4])
    acme = await lab(make_client)
    opened = await open_negotiation(acme, builders.licence_terms(price=USD // 2))
    negotiation = opened.negotiation
    accepted = await move(
        acme, negotiation.negotiation_id, negotiation.round + 1, STATE.MOVE_KIND_ACCEPT
    )
    assert accepted.negotiation.state == STATE.NEGOTIATION_STATE_AGREED
    price = accepted.negotiation.current_terms.price_per_item.micros
    # Many members join with high floors: half the pool is now far above the agreed price.
    await _pool(make_client, [100] * 6)
    before = await row_counts(db_url)
    with pytest.raises(ServerError) as refused:
        await sign_agreement(acme, accepted.negotiation.agreement_draft)
    assert (refused.value.code, refused.value.reason) == (
        CODE.FAILED_PRECONDITION,
        "BELOW_RESERVATION",
    ), price
    assert await row_counts(db_url) == before


async def _ratifying_server(
    settings: Settings, tmp_path: Path, window: float = 60
) -> CoalitionServer:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "ratification:\n  required: true\n  basis: items\n  threshold: 0.5\n"
        f"  window_seconds: {window}\n"
    )
    return CoalitionServer(
        dataclasses.replace(settings, policy_file=policy, negotiation_sweep_seconds=0.2)
    )


async def _agreed(
    make: Callable[..., Client], floors: list[int]
) -> tuple[list[Member], Lab, negotiation_pb2.MoveResponse]:
    members = await _pool(make, floors)
    acme = await lab(make)
    opened = await open_negotiation(acme, builders.licence_terms(price=USD // 2))
    accepted = await move(
        acme,
        opened.negotiation.negotiation_id,
        opened.negotiation.round + 1,
        STATE.MOVE_KIND_ACCEPT,
    )
    assert accepted.negotiation.state == STATE.NEGOTIATION_STATE_AGREED
    return members, acme, accepted


async def _vote(
    m: Member, negotiation_id: str, approve: bool
) -> negotiation_pb2.CastBallotResponse:
    ballot = negotiation_pb2.Ballot(
        negotiation_id=negotiation_id,
        approve=approve,
        created_time=builders.ts(builders.now()),
        nonce=os.urandom(16),
    )
    return await m.client.call(
        NEGOTIATION + "CastBallot",
        negotiation_pb2.CastBallotRequest(ballot=sign_statement(ballot, m.key).to_proto()),
        negotiation_pb2.CastBallotResponse,
        sign=True,
    )


async def test_members_ratify_then_the_deal_is_final_and_paid_out(
    settings: Settings, tmp_path: Path, db_url: str
) -> None:
    server = await _ratifying_server(settings, tmp_path)
    port = await server.start()
    try:
        target = f"127.0.0.1:{port}"

        def make(key: SigningKey | None = None) -> Client:
            return Client(target, key=key)

        members, acme, accepted = await _agreed(make, [1, 2, 3, 4])
        nid = accepted.negotiation.negotiation_id
        draft = access_pb2.Agreement.FromString(accepted.negotiation.agreement_draft)
        covered = set(draft.covered_item_ids)
        signed = await sign_agreement(acme, accepted.negotiation.agreement_draft)
        assert signed.negotiation.state == STATE.NEGOTIATION_STATE_RATIFYING
        inside = [m for m in members if set(m.contents) & covered]
        outside = [m for m in members if not set(m.contents) & covered]
        assert outside, "the top floor is above the agreed price"
        before = await row_counts(db_url)
        with pytest.raises(ServerError) as not_covered:
            await _vote(outside[0], nid, True)
        assert (not_covered.value.code, not_covered.value.reason) == (
            CODE.PERMISSION_DENIED,
            "NOT_COVERED",
        )
        assert await row_counts(db_url) == before
        first = await _vote(inside[0], nid, True)
        assert first.state == STATE.NEGOTIATION_STATE_RATIFYING
        with pytest.raises(ServerError) as twice:
            await _vote(inside[0], nid, False)
        assert (twice.value.code, twice.value.reason) == (CODE.ALREADY_EXISTS, "ALREADY_VOTED")
        decided = await _vote(inside[1], nid, True)  # half of the covered items approve
        assert decided.state == STATE.NEGOTIATION_STATE_FINALIZED
        final = await acme.client.call(
            NEGOTIATION + "GetNegotiation",
            negotiation_pb2.GetNegotiationRequest(negotiation_id=nid),
            negotiation_pb2.GetNegotiationResponse,
            sign=True,
        )
        agreement_id = final.negotiation.agreement_id
        assert final.negotiation.state == STATE.NEGOTIATION_STATE_FINALIZED
        assert agreement_id
        statement = await make().call(
            NEGOTIATION + "GetPayoutStatement",
            negotiation_pb2.GetPayoutStatementRequest(agreement_id=agreement_id),
            negotiation_pb2.GetPayoutStatementResponse,
            sign=False,
        )
        payout = negotiation_pb2.PayoutStatement.FromString(statement.statement.payload)
        price = draft.terms.price_per_item.micros
        assert payout.total.micros == price * len(covered)
        assert sum(line.amount.micros for line in payout.lines) == payout.total.micros
        assert {line.member_key_id for line in payout.lines} == {m.key.key_id for m in inside}
        earnings = await inside[0].client.call(
            NEGOTIATION + "GetEarnings",
            negotiation_pb2.GetEarningsRequest(),
            negotiation_pb2.GetEarningsResponse,
            sign=True,
        )
        (earning,) = earnings.earnings
        assert earning.line.member_key_id == inside[0].key.key_id
        merkle.verify_inclusion(
            merkle.leaf_hash(earning.line.SerializeToString(deterministic=True)),
            earning.line_index,
            len(payout.lines),
            list(earning.line_proof),
            payout.lines_root,
        )
        lease = (await acme.lease(agreement_id)).lease
        _, fetched = await acme.fetch(lease.lease_id, agreement_id)
        assert set(fetched) == covered
    finally:
        await server.stop()


async def test_rejected_or_unanswered_ratification_terminates(
    settings: Settings, tmp_path: Path
) -> None:
    server = await _ratifying_server(settings, tmp_path, window=1)
    port = await server.start()
    try:
        target = f"127.0.0.1:{port}"

        def make(key: SigningKey | None = None) -> Client:
            return Client(target, key=key)

        members, acme, accepted = await _agreed(make, [1, 2, 3, 4])
        covered = set(
            access_pb2.Agreement.FromString(accepted.negotiation.agreement_draft).covered_item_ids
        )
        inside = [m for m in members if set(m.contents) & covered]
        await sign_agreement(acme, accepted.negotiation.agreement_draft)
        rejected = await _vote(inside[0], accepted.negotiation.negotiation_id, False)
        await _vote(inside[1], accepted.negotiation.negotiation_id, False)
        assert rejected.state == STATE.NEGOTIATION_STATE_RATIFYING
        final = await acme.client.call(
            NEGOTIATION + "GetNegotiation",
            negotiation_pb2.GetNegotiationRequest(
                negotiation_id=accepted.negotiation.negotiation_id
            ),
            negotiation_pb2.GetNegotiationResponse,
            sign=True,
        )
        assert final.negotiation.state == STATE.NEGOTIATION_STATE_TERMINATED
        # A second deal nobody votes on ends when the window closes.
        _, other, second = await _agreed(make, [1, 2])
        await sign_agreement(other, second.negotiation.agreement_draft)
        await asyncio.sleep(1.8)
        closed = await other.client.call(
            NEGOTIATION + "GetNegotiation",
            negotiation_pb2.GetNegotiationRequest(negotiation_id=second.negotiation.negotiation_id),
            negotiation_pb2.GetNegotiationResponse,
            sign=True,
        )
        assert closed.negotiation.state == STATE.NEGOTIATION_STATE_TERMINATED
    finally:
        await server.stop()


async def test_watch_negotiation_streams_every_move_to_the_end(
    make_client: Callable[..., Client],
) -> None:
    await _pool(make_client, [1, 2])
    acme = await lab(make_client)
    opened = await open_negotiation(acme, builders.licence_terms(price=USD // 2))
    nid = opened.negotiation.negotiation_id
    accepted = await move(acme, nid, opened.negotiation.round + 1, STATE.MOVE_KIND_ACCEPT)
    await sign_agreement(acme, accepted.negotiation.agreement_draft)
    request = negotiation_pb2.WatchNegotiationRequest(negotiation_id=nid, request_id="watch-1")
    raw = request.SerializeToString()
    method = NEGOTIATION + "WatchNegotiation"
    stub: grpc.aio.UnaryStreamMultiCallable[bytes, negotiation_pb2.WatchNegotiationResponse]
    stub = acme.client._channel.unary_stream(
        method, response_deserializer=negotiation_pb2.WatchNegotiationResponse.FromString
    )
    events = [
        event
        async for event in stub(
            raw, metadata=CallSigner(acme.key).metadata(method, raw), timeout=10
        )
    ]
    states = [event.state for event in events]
    # Request, the coalition's offer, the lab's acceptance, the agreement: then it ends.
    assert states[0] == STATE.NEGOTIATION_STATE_REQUESTED
    assert STATE.NEGOTIATION_STATE_OFFERED in states
    assert STATE.NEGOTIATION_STATE_AGREED in states
    assert states[-1] == STATE.NEGOTIATION_STATE_FINALIZED
    assert [e.index for e in events] == sorted(e.index for e in events)
