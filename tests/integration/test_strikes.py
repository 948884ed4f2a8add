"""Strike pledges over real gRPC on both databases: a threshold met executes every pledge
it completes, atomically, with everything a withdrawal does."""

from __future__ import annotations

import os
from collections.abc import Callable

import grpc
import pytest

from coalition.client import Client, ServerError
from coalition.statements import sign_statement
from coalition.v1 import access_pb2, ledger_pb2, strike_pb2
from coalition_server.server import CoalitionServer

from . import builders
from .helpers import row_counts
from .world import STRIKE, Lab, Member, agree, lab, member, pledge

CODE = grpc.StatusCode


async def _coalition(
    make_client: Callable[..., Client], server: CoalitionServer, size: int
) -> tuple[list[Member], Lab, str, Lab, str]:
    members = []
    for i in range(size):
        m = await member(make_client, f"m{i}")
        ids = await m.add([f"{i} one".encode(), f"{i} two".encode()])
        await m.grant(builders.consent_token(item_ids=ids))
        members.append(m)
    everything = [i for m in members for i in m.contents]
    acme, rival = await lab(make_client, "acme"), await lab(make_client, "rival")
    return (
        members,
        acme,
        await agree(server, acme, everything),
        rival,
        await agree(server, rival, everything),
    )


async def test_a_strike_executes_all_pledges_together_once_the_threshold_is_met(
    make_client: Callable[..., Client], server: CoalitionServer, anonymous: Client
) -> None:
    members, acme, acme_deal, rival, rival_deal = await _coalition(make_client, server, 4)
    target = acme.key.key_id
    first = await pledge(members[0], target, min_members=3)
    second = await pledge(members[1], target, min_members=3)
    assert not first.executed
    assert not second.executed
    lease = (await acme.lease(acme_deal)).lease
    _, before = await acme.fetch(lease.lease_id, acme_deal)
    assert len(before) == 8  # nothing happens before the threshold
    third = await pledge(members[2], target, min_members=3)
    assert third.executed
    assert third.executed_pledges == 3
    # The coalition's execution statement follows the pledge that completed the set.
    execution = ledger_pb2.LedgerLeaf.FromString(
        (await anonymous.entry(third.receipt.index + 1)).leaf
    ).envelope
    statement = strike_pb2.StrikeExecution.FromString(execution.payload)
    assert sorted(statement.pledge_ids) == sorted(
        [first.pledge_id, second.pledge_id, third.pledge_id]
    )
    # The struck lab gets notices and no key for the strikers' items again...
    notices = await acme.notices(count=3)
    noticed = {
        i
        for n in notices
        for i in access_pb2.WithdrawalNotice.FromString(n.notice.payload).item_ids
    }
    strikers = {i for m in members[:3] for i in m.contents}
    assert noticed == strikers
    _, after = await acme.fetch((await acme.lease(acme_deal)).lease.lease_id, acme_deal)
    assert set(after) == set(members[3].contents)
    # ...while another lab's access and the content itself are untouched.
    _, elsewhere = await rival.fetch((await rival.lease(rival_deal)).lease.lease_id, rival_deal)
    assert len(elsewhere) == 8


async def test_pledges_refused_or_retracted(
    make_client: Callable[..., Client], server: CoalitionServer, db_url: str
) -> None:
    members, acme, *_ = await _coalition(make_client, server, 2)
    cases = [
        ({"min_members": 100}, CODE.INVALID_ARGUMENT, "IMPOSSIBLE_THRESHOLD"),
        ({"min_share_bp": 20_000}, CODE.INVALID_ARGUMENT, "IMPOSSIBLE_THRESHOLD"),
        ({}, CODE.INVALID_ARGUMENT, "MISSING_THRESHOLD"),
    ]
    for thresholds, code, reason in cases:
        before = await row_counts(db_url)
        with pytest.raises(ServerError) as refused:
            await pledge(members[0], acme.key.key_id, **thresholds)
        assert (refused.value.code, refused.value.reason) == (code, reason)
        assert await row_counts(db_url) == before
    with pytest.raises(ServerError) as unknown:
        await pledge(members[0], "ab" * 32, min_members=2)
    assert unknown.value.reason == "LAB_NOT_FOUND"
    pending = await pledge(members[0], acme.key.key_id, min_members=2)

    async def retract(m: Member, pledge_id: str) -> strike_pb2.RetractPledgeResponse:
        statement = strike_pb2.PledgeRetraction(
            pledge_id=pledge_id, created_time=builders.ts(builders.now()), nonce=os.urandom(16)
        )
        return await m.client.call(
            STRIKE + "RetractPledge",
            strike_pb2.RetractPledgeRequest(retraction=sign_statement(statement, m.key).to_proto()),
            strike_pb2.RetractPledgeResponse,
            sign=True,
        )

    with pytest.raises(ServerError) as not_mine:
        await retract(members[1], pending.pledge_id)
    assert not_mine.value.reason == "NOT_YOUR_PLEDGE"
    await retract(members[0], pending.pledge_id)
    with pytest.raises(ServerError) as twice:
        await retract(members[0], pending.pledge_id)
    assert (twice.value.code, twice.value.reason) == (CODE.FAILED_PRECONDITION, "PLEDGE_NOT_ACTIVE")
    # With the first pledge retracted, the second alone does not reach two members.
    second = await pledge(members[1], acme.key.key_id, min_members=2)
    assert not second.executed
    progress = await members[0].client.call(
        STRIKE + "ListStrikes",
        strike_pb2.ListStrikesRequest(),
        strike_pb2.ListStrikesResponse,
        sign=False,
    )
    (row,) = progress.strikes
    assert (row.active_pledges, row.lowest_member_threshold, row.executed_pledges) == (1, 2, 0)


async def test_a_strike_against_every_lab_withdraws_everything(
    make_client: Callable[..., Client], server: CoalitionServer
) -> None:
    members, acme, acme_deal, *_ = await _coalition(make_client, server, 2)
    await pledge(members[0], "", min_members=2)
    done = await pledge(members[1], "", min_members=2)
    assert done.executed_pledges == 2
    notices = await acme.notices(count=2)
    assert len(notices) == 2
    with pytest.raises(ServerError) as nothing:
        await acme.lease(acme_deal)
    assert nothing.value.reason == "NO_CONSENTED_ITEMS"


async def test_one_live_pledge_per_member_and_no_share_of_nothing(
    make_client: Callable[..., Client], server: CoalitionServer
) -> None:
    members, acme, *_ = await _coalition(make_client, server, 2)
    await pledge(members[0], acme.key.key_id, min_members=2)
    with pytest.raises(ServerError) as twice:
        await pledge(members[0], acme.key.key_id, min_members=2)
    assert (twice.value.code, twice.value.reason) == (CODE.ALREADY_EXISTS, "PLEDGE_EXISTS")
    idle = await lab(make_client, "no deals yet")
    with pytest.raises(ServerError) as nothing_covered:
        await pledge(members[0], idle.key.key_id, min_share_bp=5000)
    assert (nothing_covered.value.code, nothing_covered.value.reason) == (
        CODE.INVALID_ARGUMENT,
        "IMPOSSIBLE_THRESHOLD",
    )
