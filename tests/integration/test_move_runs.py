"""Negotiation moves queued together are decided together (decision 35), exactly as one at
a time: a later move of the same negotiation sees the earlier one, a refused move consumes
no index, and each coalition answer lands right after the move it answers. On both
databases, over gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc

from coalition.client import Client, ServerError
from coalition.v1 import ledger_pb2, negotiation_pb2
from coalition_server.server import CoalitionServer

from . import builders
from .helpers import held
from .world import NEGOTIATION, lab, member, move, open_negotiation

CODE = grpc.StatusCode
STATE = negotiation_pb2
USD = 1_000_000


async def test_moves_in_one_batch_see_each_other(
    make_client: Callable[..., Client], server: CoalitionServer, anonymous: Client
) -> None:
    for i, floor in enumerate([1, 2, 3, 4]):
        m = await member(make_client, f"member {i}")
        ids = await m.add([f"{i} a".encode(), f"{i} b".encode()])
        await m.grant(builders.consent_token(item_ids=ids, purchase_floor=floor * USD))
    low = builders.licence_terms(price=USD // 10)
    acme, rival, third = [await lab(make_client, name) for name in ("acme", "rival", "third")]
    acme_id = (await open_negotiation(acme, low)).negotiation.negotiation_id
    rival_id = (await open_negotiation(rival, low)).negotiation.negotiation_id
    offer = STATE.MOVE_KIND_OFFER
    calls = [
        move(acme, acme_id, 2, offer, low),  # the coalition counters in round 3
        move(acme, acme_id, 4, offer, low),  # valid only after the move above
        move(rival, rival_id, 4, offer, low),  # stale: rival's next round is 2
        open_negotiation(third, low),
    ]
    async with held(server) as until:
        tasks = []
        for position, call in enumerate(calls):
            tasks.append(asyncio.ensure_future(call))
            await until(position + 1)  # queued in this order
    first, second, stale, opened = await asyncio.gather(*tasks, return_exceptions=True)

    assert isinstance(stale, ServerError)
    assert (stale.code, stale.reason) == (CODE.FAILED_PRECONDITION, "STALE_ROUND")
    assert isinstance(first, negotiation_pb2.MoveResponse)
    assert isinstance(second, negotiation_pb2.MoveResponse)
    assert isinstance(opened, negotiation_pb2.OpenNegotiationResponse)
    assert (first.negotiation.round, second.negotiation.round) == (3, 5)
    assert second.negotiation.state == STATE.NEGOTIATION_STATE_OFFERED
    # Each lab move is followed by the coalition's answer; the refused one took no index.
    start = first.receipt.index
    assert (second.receipt.index, opened.receipt.index) == (start + 2, start + 4)
    entries = [e async for e in anonymous.entries(start=start)]
    kinds = [
        ledger_pb2.LedgerLeaf.FromString(e.leaf).envelope.payload_type.rsplit(".", 1)[-1]
        for e in entries
    ]
    assert kinds == [
        "NegotiationMove+proto",
        "NegotiationMove+proto",
        "NegotiationMove+proto",
        "NegotiationMove+proto",
        "NegotiationRequest+proto",
        "NegotiationMove+proto",
    ]
    answer = ledger_pb2.LedgerLeaf.FromString(entries[3].leaf).envelope
    assert answer.payload == second.coalition_move.payload
    # The rows say what the responses said.
    for who, negotiation_id, expected in (
        (acme, acme_id, second.negotiation),
        (rival, rival_id, None),
        (third, opened.negotiation.negotiation_id, opened.negotiation),
    ):
        stored = await who.client.call(
            NEGOTIATION + "GetNegotiation",
            STATE.GetNegotiationRequest(negotiation_id=negotiation_id),
            STATE.GetNegotiationResponse,
            sign=True,
        )
        if expected is None:
            assert (stored.negotiation.round, stored.negotiation.state) == (
                1,
                STATE.NEGOTIATION_STATE_OFFERED,
            )
        else:
            assert stored.negotiation == expected
