"""Ballots with reasons over real gRPC on both databases: reasons are norm ids, checked and
stored with the ballot; the ratification result tallies them k-anonymously, the same way
whether a ballot decides the vote or the sweep closes it."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import grpc
import pytest

from coalition.client import Client, ServerError
from coalition.keys import SigningKey
from coalition.statements import sign_statement
from coalition.v1 import access_pb2, ledger_pb2, negotiation_pb2
from coalition_server.config import Settings
from coalition_server.server import CoalitionServer

from . import builders
from .helpers import row_counts
from .world import NEGOTIATION, Member, member, move, open_negotiation, sign_agreement
from .world import lab as new_lab

CODE = grpc.StatusCode
USD = 1_000_000
STATE = negotiation_pb2


@pytest.fixture
async def ratifying(
    settings: Settings, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Callable[..., Client]]:
    """A server whose deals go to a vote of the covered members (half of them must
    approve), with reasons shown from two members up; yields a client factory."""
    window = getattr(request, "param", 60)
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "catalogue:\n  minimum_group_size: 2\n"
        "ratification:\n  required: true\n  basis: members\n  threshold: 0.5\n"
        f"  window_seconds: {window}\n"
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


async def _ratifying_deal(make: Callable[..., Client], members: int) -> tuple[list[Member], str]:
    """``members`` members with the same floor, all covered by a deal now being ratified."""
    pool = []
    for i in range(members):
        m = await member(make, f"member {i}")
        ids = await m.add([f"{i} a".encode(), f"{i} b".encode()])
        await m.grant(builders.consent_token(item_ids=ids, purchase_floor=USD))
        pool.append(m)
    acme = await new_lab(make)
    opened = await open_negotiation(acme, builders.licence_terms(price=USD // 2))
    nid = opened.negotiation.negotiation_id
    accepted = await move(acme, nid, opened.negotiation.round + 1, STATE.MOVE_KIND_ACCEPT)
    draft = access_pb2.Agreement.FromString(accepted.negotiation.agreement_draft)
    assert draft.covered_item_count == 2 * members  # one floor: everyone is in
    signed = await sign_agreement(acme, accepted.negotiation.agreement_draft)
    assert signed.negotiation.state == STATE.NEGOTIATION_STATE_RATIFYING
    return pool, nid


async def _vote(
    m: Member, negotiation_id: str, approve: bool, reasons: Sequence[str] = ()
) -> negotiation_pb2.CastBallotResponse:
    """A raw ballot: reasons exactly as given (the SDK would sort them)."""
    ballot = negotiation_pb2.Ballot(
        negotiation_id=negotiation_id,
        approve=approve,
        created_time=builders.ts(builders.now()),
        nonce=os.urandom(16),
        reasons=list(reasons),
    )
    return await m.client.call(
        NEGOTIATION + "CastBallot",
        negotiation_pb2.CastBallotRequest(ballot=sign_statement(ballot, m.key).to_proto()),
        negotiation_pb2.CastBallotResponse,
        sign=True,
    )


async def _result(client: Client, negotiation_id: str) -> negotiation_pb2.RatificationResult:
    """The logged RatificationResult of a negotiation."""
    (entry,) = [e async for e in client.entries_by_subject(negotiation_id, "RatificationResult")]
    leaf = ledger_pb2.LedgerLeaf.FromString(entry.leaf)
    return negotiation_pb2.RatificationResult.FromString(leaf.envelope.payload)


def _counts(counts: Sequence[negotiation_pb2.ReasonCount]) -> list[tuple[str, int, int]]:
    return [(c.norm_id, c.members, c.items) for c in counts]


async def test_the_deciding_ballot_publishes_the_tally_by_reason(
    ratifying: Callable[..., Client],
) -> None:
    members, nid = await _ratifying_deal(ratifying, 6)
    # Three reject, for shared and for rare reasons; the third approval decides (3 of 6).
    await _vote(members[0], nid, False, ["prohibited-use"])
    await _vote(members[1], nid, False, ["occupation", "prohibited-use"])
    await _vote(members[2], nid, False)
    await members[3].client.cast_ballot(nid, True, reasons=["public-benefit"])  # the SDK
    await _vote(members[4], nid, True, ["jurisdiction", "public-benefit"])
    decided = await _vote(members[5], nid, True, ["derivatives"])
    assert decided.state == STATE.NEGOTIATION_STATE_FINALIZED
    result = await _result(ratifying(), nid)
    assert result.approved
    assert (result.approving_members, result.rejecting_members) == (3, 3)
    assert result.minimum_group_size == 2
    # Two members each: published, with their items (two per member).
    assert _counts(result.rejecting_reasons) == [("prohibited-use", 2, 4)]
    assert _counts(result.approving_reasons) == [("public-benefit", 2, 4)]
    # One member each: only counted as "other", by member, never named.
    assert result.rejecting_members_other_reasons == 1  # occupation
    assert result.approving_members_other_reasons == 2  # jurisdiction; derivatives


@pytest.mark.parametrize("ratifying", [1], indirect=True)
async def test_the_sweep_publishes_the_same_tally(ratifying: Callable[..., Client]) -> None:
    members, nid = await _ratifying_deal(ratifying, 6)
    # Not decided by any ballot (2 approvals of the 3 needed, 1 rejection of the 4 that
    # would decide): the window closes and the sweep draws the result.
    await _vote(members[0], nid, True, ["model-release", "prohibited-use"])
    await _vote(members[1], nid, True, ["prohibited-use"])
    await _vote(members[2], nid, False, ["model-release"])
    for _ in range(50):
        await asyncio.sleep(0.2)
        if [e async for e in ratifying().entries_by_subject(nid, "RatificationResult")]:
            break
    result = await _result(ratifying(), nid)
    assert not result.approved
    assert _counts(result.approving_reasons) == [("prohibited-use", 2, 4)]
    assert result.approving_members_other_reasons == 1  # model-release, one approving member
    assert _counts(result.rejecting_reasons) == []
    assert result.rejecting_members_other_reasons == 1


async def test_bad_reasons_are_refused_and_write_nothing(
    ratifying: Callable[..., Client], db_url: str
) -> None:
    members, nid = await _ratifying_deal(ratifying, 4)
    too_many = [f"norm-{i:02d}" for i in range(17)]
    for reasons, code, reason in (
        (["no-such-norm"], CODE.INVALID_ARGUMENT, "UNKNOWN_NORM"),
        (["prohibited-use", "occupation"], CODE.INVALID_ARGUMENT, "BAD_NORM_IDS"),
        (["occupation", "occupation"], CODE.INVALID_ARGUMENT, "BAD_NORM_IDS"),
        (too_many, CODE.INVALID_ARGUMENT, "BAD_NORM_IDS"),
    ):
        before = await row_counts(db_url)
        with pytest.raises(ServerError) as refused:
            await _vote(members[0], nid, False, reasons)
        assert (refused.value.code, refused.value.reason) == (code, reason)
        assert await row_counts(db_url) == before
    # The member may still vote, with good reasons.
    counted = await _vote(members[0], nid, False, ["occupation", "prohibited-use"])
    assert counted.state == STATE.NEGOTIATION_STATE_RATIFYING
