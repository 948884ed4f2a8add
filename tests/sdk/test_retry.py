"""Mutations with a request_id are retried on UNAVAILABLE with the very same bytes, and the
server answers a repeat with its first answer; without one, nothing is retried."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from coalition.client import Client, ServerError, price_floor
from coalition.keys import SigningKey
from coalition.v1 import party_pb2
from tests.sdk.proxy import Proxy


@pytest.fixture
async def proxy(target: str) -> AsyncIterator[Proxy]:
    instance = Proxy(target)
    await instance.start()
    try:
        yield instance
    finally:
        await instance.stop()


@pytest.fixture
async def via_proxy(proxy: Proxy, make_client: Callable[..., Client]) -> AsyncIterator[Client]:
    key = SigningKey.generate()
    await make_client(key).register(party_pb2.ROLE_CONTRIBUTOR, "Ada")
    client = Client(f"127.0.0.1:{proxy.port}", key=key)
    client.retry_delay = 0.01
    try:
        yield client
    finally:
        await client.close()


async def test_retries_send_the_same_bytes(proxy: Proxy, via_proxy: Client) -> None:
    proxy.unavailable["GrantConsent"] = 2
    response = await via_proxy.grant_consent(
        all_items=True,
        purposes=["search"],
        floors=[price_floor("purchase", 1)],
        request_id="grant-1",
    )
    assert len(response.consents) == 1
    sent = proxy.requests["GrantConsent"]
    assert len(sent) == 3
    assert len(set(sent)) == 1


async def test_a_lost_answer_is_answered_again_not_redone(
    proxy: Proxy, via_proxy: Client, anonymous: Client
) -> None:
    await via_proxy.grant_consent(
        all_items=True, purposes=["search"], floors=[price_floor("purchase", 1)]
    )
    before = (await anonymous.checkpoint()).tree_size
    proxy.lose_answers["Withdraw"] = 1
    response = await via_proxy.withdraw(everything=True, request_id="withdraw-1")
    assert len(set(proxy.requests["Withdraw"])) == 1
    assert len(proxy.requests["Withdraw"]) == 2
    # One withdrawal was sequenced, and the retry got its receipt.
    withdrawals = [e async for e in anonymous.entries_by_subject(kind="Withdrawal")]
    assert len(withdrawals) == 1
    assert response.receipt.index == withdrawals[0].index
    assert response.receipt.index >= before


async def test_gives_up_after_three_retries(proxy: Proxy, via_proxy: Client) -> None:
    proxy.unavailable["Withdraw"] = 10
    with pytest.raises(ServerError) as error:
        await via_proxy.withdraw(everything=True, request_id="withdraw-2")
    assert error.value.code == grpc.StatusCode.UNAVAILABLE
    assert len(proxy.requests["Withdraw"]) == 4


async def test_no_request_id_no_retry(proxy: Proxy, via_proxy: Client) -> None:
    proxy.unavailable["Withdraw"] = 1
    with pytest.raises(ServerError) as error:
        await via_proxy.withdraw(everything=True)
    assert error.value.code == grpc.StatusCode.UNAVAILABLE
    assert len(proxy.requests["Withdraw"]) == 1
