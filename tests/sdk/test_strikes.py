"""Strike pledges through the SDK over the real server (SQLite and PostgreSQL): pledges
below their threshold stay active, the one that completes a set executes every pledge in it
together, retraction, public progress, and the pledge statement the SDK builds."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from coalition.client import (
    Client,
    ServerError,
    pledge_state_name,
    price_floor,
    strike_pledge,
)
from coalition.errors import CoalitionError
from coalition.strategy import linear
from coalition.v1 import access_pb2, negotiation_pb2, party_pb2, strike_pb2, terms_pb2
from tests.sdk.conftest import MakeParty

USD = 1_000_000
WEEK = timedelta(days=7)
CODE = grpc.StatusCode
ACTIVE = strike_pb2.PLEDGE_STATE_ACTIVE
EXECUTED = strike_pb2.PLEDGE_STATE_EXECUTED
RETRACTED = strike_pb2.PLEDGE_STATE_RETRACTED


@dataclass
class Pool:
    """Members with two stored, consented items each, and a lab whose agreement covers all."""

    members: list[Client]
    items: list[set[str]]
    lab: Client
    agreement_id: str

    @property
    def lab_id(self) -> str:
        assert self.lab.key is not None
        return self.lab.key.key_id


def terms() -> terms_pb2.LicenceTerms:
    out = terms_pb2.LicenceTerms(
        purposes=[terms_pb2.PURPOSE_TRAIN_AI],
        payment_model=terms_pb2.PAYMENT_MODEL_PURCHASE,
        price_per_item=terms_pb2.Money(currency_code="USD"),
    )
    out.licence_duration.FromTimedelta(timedelta(days=365))
    out.deletion_deadline.FromTimedelta(timedelta(days=7))
    out.lease_duration.FromTimedelta(timedelta(hours=1))
    return out


async def pool(make_party: MakeParty, size: int = 6) -> Pool:
    """``size`` members at a 1-USD floor, and a lab that negotiated for all their items."""
    members, items = [], []
    for i in range(size):
        member = await make_party(party_pb2.ROLE_CONTRIBUTOR, f"member {i}")
        contents = [f"{i} a {os.urandom(4).hex()}".encode(), f"{i} b".encode()]
        response = await member.register_items(
            [(hashlib.sha256(c).digest(), len(c), "text/plain", []) for c in contents]
        )
        for item, content in zip(response.items, contents, strict=True):
            await member.upload(item.item_id, content)
        ids = [item.item_id for item in response.items]
        await member.grant_consent(
            item_ids=ids, purposes=["train-ai"], floors=[price_floor("purchase", USD)]
        )
        members.append(member)
        items.append(set(ids))
    lab = await make_party(party_pb2.ROLE_LAB, "Acme")
    final = await lab.negotiate_auto(terms(), linear(USD // 2, 5 * USD, 20, 86400))
    assert final.state == negotiation_pb2.NEGOTIATION_STATE_FINALIZED
    covered = access_pb2.Agreement.FromString(final.agreement_draft).covered_item_ids
    assert set(covered) == set().union(*items)
    return Pool(members, items, lab, final.agreement_id)


async def states(member: Client) -> dict[str, int]:
    return {record.pledge_id: record.state for record in await member.pledges()}


async def progress(anonymous: Client) -> list[tuple[str, int, int, int]]:
    rows = await anonymous.strikes()
    return [
        (r.target_lab_key_id, r.active_pledges, r.lowest_member_threshold, r.executed_pledges)
        for r in rows
    ]


async def leased_items(p: Pool, directory: Path) -> set[str]:
    lease = await p.lab.take_lease(p.agreement_id)
    fetched = await p.lab.fetch(lease.lease.lease_id, directory)
    return {f.item.item_id for f in fetched.files}


async def test_pledges_wait_for_their_threshold_then_execute_together(
    make_party: MakeParty, anonymous: Client, tmp_path: Path
) -> None:
    p = await pool(make_party)
    assert await anonymous.strikes() == []
    first = await p.members[0].pledge(p.lab_id, min_members=3, expires_in=WEEK)
    second = await p.members[1].pledge(p.lab_id, min_members=3, expires_in=WEEK)
    # Below the threshold: logged, active, nothing withdrawn.
    for response in (first, second):
        assert not response.executed
        assert response.executed_pledges == 0
        assert len(response.pledge_id) == 32
    (record,) = await p.members[0].pledges()
    assert (record.pledge_id, record.state) == (first.pledge_id, ACTIVE)
    assert record.index == first.receipt.index
    assert record.pledge.target_lab_key_id == p.lab_id
    assert record.pledge.min_members == 3
    expiry = record.pledge.expiry_time.ToDatetime(tzinfo=UTC)
    assert abs(expiry - (datetime.now(UTC) + WEEK)) < timedelta(minutes=5)
    assert await progress(anonymous) == [(p.lab_id, 2, 3, 0)]
    everything = set().union(*p.items)
    assert await leased_items(p, tmp_path / "before") == everything

    # The third pledge completes the set: all three execute, in its batch.
    third = await p.members[2].pledge(p.lab_id, min_members=3, expires_in=WEEK)
    assert third.executed
    assert third.executed_pledges == 3
    for member, response in zip(p.members[:3], (first, second, third), strict=True):
        assert await states(member) == {response.pledge_id: EXECUTED}
    assert await progress(anonymous) == [(p.lab_id, 0, 0, 3)]
    # The struck lab is notified (each notice signed by the coalition, checked by the SDK)
    # and gets no key for the strikers' items again.
    noticed: set[str] = set()
    async for notice in p.lab.watch_withdrawals(idle_timeout=2):
        noticed |= set(access_pb2.WithdrawalNotice.FromString(notice.notice.payload).item_ids)
    strikers = p.items[0] | p.items[1] | p.items[2]
    assert noticed == strikers
    assert await leased_items(p, tmp_path / "after") == everything - strikers
    # A later pledge against the same lab waits again, from zero.
    later = await p.members[3].pledge(p.lab_id, min_members=2, expires_in=WEEK)
    assert not later.executed
    assert await progress(anonymous) == [(p.lab_id, 1, 2, 3)]


async def test_retract_and_share_thresholds(make_party: MakeParty, anonymous: Client) -> None:
    p = await pool(make_party)
    half = 5000  # of the 12 items the lab's agreement covers: three members' items
    first = await p.members[0].pledge(p.lab_id, min_share_basis_points=half, expires_in=WEEK)
    second = await p.members[1].pledge(p.lab_id, min_share_basis_points=half, expires_in=WEEK)
    assert not first.executed
    assert not second.executed
    # Only a pledge's author may retract it, and only while it is active.
    with pytest.raises(ServerError) as not_mine:
        await p.members[0].retract_pledge(second.pledge_id)
    assert (not_mine.value.code, not_mine.value.reason) == (
        CODE.PERMISSION_DENIED,
        "NOT_YOUR_PLEDGE",
    )
    retracted = await p.members[1].retract_pledge(second.pledge_id, request_id="r-1")
    assert retracted.receipt.index > second.receipt.index
    assert await states(p.members[1]) == {second.pledge_id: RETRACTED}
    with pytest.raises(ServerError) as twice:
        await p.members[1].retract_pledge(second.pledge_id)
    assert (twice.value.code, twice.value.reason) == (
        CODE.FAILED_PRECONDITION,
        "PLEDGE_NOT_ACTIVE",
    )
    with pytest.raises(ServerError) as unknown:
        await p.members[1].retract_pledge("0" * 32)
    assert (unknown.value.code, unknown.value.reason) == (CODE.NOT_FOUND, "PLEDGE_NOT_FOUND")
    # No pledge counts members: the lowest member threshold is unset.
    assert await progress(anonymous) == [(p.lab_id, 1, 0, 0)]

    # Two members hold a third of the covered items: not enough.
    third = await p.members[2].pledge(p.lab_id, min_share_basis_points=half, expires_in=WEEK)
    assert not third.executed
    # A third member (counting members) brings the share to half: all three execute; the
    # retracted pledge stays retracted.
    fourth = await p.members[3].pledge(p.lab_id, min_members=3, expires_in=WEEK)
    assert (fourth.executed, fourth.executed_pledges) == (True, 3)
    assert await states(p.members[0]) == {first.pledge_id: EXECUTED}
    assert await states(p.members[1]) == {second.pledge_id: RETRACTED}
    assert await states(p.members[2]) == {third.pledge_id: EXECUTED}
    assert await progress(anonymous) == [(p.lab_id, 0, 0, 3)]
    with pytest.raises(ServerError) as executed:
        await p.members[0].retract_pledge(first.pledge_id)
    assert executed.value.reason == "PLEDGE_NOT_ACTIVE"


async def test_a_strike_against_every_lab_and_refusals(
    make_party: MakeParty, anonymous: Client, tmp_path: Path
) -> None:
    p = await pool(make_party, size=3)
    # Thresholds the pool can never meet, an unknown lab, a lab pledging: refused.
    with pytest.raises(ServerError) as impossible:
        await p.members[0].pledge(p.lab_id, min_members=4, expires_in=WEEK)
    assert (impossible.value.code, impossible.value.reason) == (
        CODE.INVALID_ARGUMENT,
        "IMPOSSIBLE_THRESHOLD",
    )
    with pytest.raises(ServerError) as nobody:
        await p.members[0].pledge("ab" * 32, min_members=2, expires_in=WEEK)
    assert (nobody.value.code, nobody.value.reason) == (CODE.NOT_FOUND, "LAB_NOT_FOUND")
    with pytest.raises(ServerError) as lab:
        await p.lab.pledge(p.lab_id, min_members=2, expires_in=WEEK)
    assert (lab.value.code, lab.value.reason) == (CODE.PERMISSION_DENIED, "ROLE_NOT_ALLOWED")
    assert await p.members[0].pledges() == []

    first = await p.members[0].pledge("", min_members=2, expires_in=WEEK, request_id="p-1")
    assert not first.executed
    assert await progress(anonymous) == [("", 1, 2, 0)]
    done = await p.members[1].pledge(min_members=2, expires_in=timedelta(days=1))
    assert (done.executed, done.executed_pledges) == (True, 2)
    assert await progress(anonymous) == [("", 0, 0, 2)]
    struck = p.items[0] | p.items[1]
    assert await leased_items(p, tmp_path / "out") == p.items[2]
    assert struck.isdisjoint(p.items[2])


def test_the_pledge_statement() -> None:
    now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    pledge = strike_pledge(
        "ab" * 32, min_members=3, min_share_basis_points=2500, expires_in=WEEK, now=now
    )
    assert pledge.target_lab_key_id == "ab" * 32
    assert (pledge.min_members, pledge.min_share_basis_points) == (3, 2500)
    assert pledge.created_time.ToDatetime(tzinfo=UTC) == now
    assert pledge.expiry_time.ToDatetime(tzinfo=UTC) == now + WEEK
    assert 16 <= len(pledge.nonce) <= 64
    assert strike_pledge(min_members=1, expires_in=WEEK).nonce != pledge.nonce
    assert strike_pledge(min_members=1, expires_in=WEEK).target_lab_key_id == ""
    bad: list[tuple[int, int, timedelta, str]] = [
        (0, 0, WEEK, "threshold"),
        (-1, 0, WEEK, "negative"),
        (0, -1, WEEK, "negative"),
        (0, 10_001, WEEK, "10000"),
        (2, 0, timedelta(0), "future"),
        (2, 0, -WEEK, "future"),
    ]
    for members, share, expires_in, message in bad:
        with pytest.raises(CoalitionError, match=message):
            strike_pledge(
                "", min_members=members, min_share_basis_points=share, expires_in=expires_in
            )
    names = [pledge_state_name(s) for s in (ACTIVE, RETRACTED, EXECUTED)]
    assert names == ["active", "retracted", "executed"]
    assert pledge_state_name(strike_pb2.PLEDGE_STATE_EXPIRED) == "expired"
    assert pledge_state_name(99) == "99"


async def test_the_sdk_refuses_a_pledge_it_cannot_sign() -> None:
    async with Client("127.0.0.1:1") as keyless:
        with pytest.raises(CoalitionError, match="needs a key"):
            await keyless.pledge(min_members=1, expires_in=WEEK)
        with pytest.raises(CoalitionError, match="needs a key"):
            await keyless.retract_pledge("0" * 32)
