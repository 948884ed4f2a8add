"""Withdrawal against release is race-free: no release of an item is ever sequenced after
its withdrawal, however the two interleave. Checked on the ledger itself."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest

from coalition.client import Client, ServerError
from coalition.v1 import access_pb2, consent_pb2, ledger_pb2
from coalition_server.server import CoalitionServer

from . import builders
from .world import agree, lab, member


async def releases_after_withdrawal(auditor: Client) -> list[tuple[str, int, int]]:
    """(item, withdrawal index, release index) for every release after a withdrawal."""
    withdrawn_at: dict[str, int] = {}
    violations: list[tuple[str, int, int]] = []
    async for entry in auditor.entries():
        envelope = ledger_pb2.LedgerLeaf.FromString(entry.leaf).envelope
        kind = envelope.payload_type
        if kind.endswith(".Withdrawal+proto"):
            statement = consent_pb2.Withdrawal.FromString(envelope.payload)
            for item_id in statement.items.item_ids:
                withdrawn_at.setdefault(item_id, entry.index)
        elif kind.endswith(".KeyRelease+proto"):
            release = access_pb2.KeyRelease.FromString(envelope.payload)
            violations.extend(
                (item_id, withdrawn_at[item_id], entry.index)
                for item_id in release.item_ids
                if item_id in withdrawn_at
            )
    return violations


async def run_race(
    make_client: Callable[..., Client], server: CoalitionServer, auditor: Client, trials: int
) -> tuple[int, int, int]:
    """Withdraw one item per trial while the lab fetches.

    Returns (trials, releases seen, fetches cut mid-stream by the withdrawal).
    """
    alice = await member(make_client)
    ids = await alice.add([f"item {i}".encode() for i in range(trials)])
    await alice.grant(builders.consent_token(item_ids=ids))
    acme = await lab(make_client)
    agreement_id = await agree(server, acme, ids)
    lease = (await acme.lease(agreement_id)).lease
    rng = random.Random(1234)
    order = ids[:]
    rng.shuffle(order)
    ranked = sorted(ids)
    released = cut = 0
    for item_id in order:
        # Fetch a small page that holds the item being withdrawn (the cursor is an item id).
        position = ranked.index(item_id)
        cursor = ranked[position - 1] if position else ""
        delay = rng.random() * 0.004

        async def withdraw(target: str = item_id, wait: float = delay) -> None:
            await asyncio.sleep(wait)
            await alice.withdraw(builders.withdrawal(item_ids=[target]))

        async def fetch(after: str = cursor, target: str = item_id) -> int:
            nonlocal cut
            try:
                releases, _ = await acme.fetch(
                    lease.lease_id, agreement_id, page_size=3, start=after, pages=1
                )
            except ServerError as exc:  # a lost race may end a fetch; it must never leak
                error = exc
            else:
                return sum(1 for r in releases if r.HasField("receipt"))
            if error.reason == "CONSENT_CHANGING":
                return 0
            if error.reason == "ITEM_WITHDRAWN" and error.metadata == {"item_id": target}:
                # Released before the withdrawal, shredded while it streamed: the release
                # (sent first) happened, and only the withdrawn item is cut short.
                cut += 1
                return 1
            raise error

        _, count = await asyncio.gather(withdraw(), fetch())
        released += count
    assert await releases_after_withdrawal(auditor) == []
    return trials, released, cut


async def test_withdraw_while_fetching_never_releases_after_withdrawal(
    make_client: Callable[..., Client],
    server: CoalitionServer,
    anonymous: Client,
    figure: Callable[[str], None],
) -> None:
    trials, released, cut = await run_race(make_client, server, anonymous, trials=30)
    figure(
        f"withdrawal race: {trials} trials, {released} releases ({cut} cut mid-stream),"
        " 0 after a withdrawal"
    )
    assert released > 0  # the race was real: releases did happen alongside withdrawals


@pytest.mark.slow
async def test_withdrawal_race_at_scale(
    make_client: Callable[..., Client],
    server: CoalitionServer,
    anonymous: Client,
    figure: Callable[[str], None],
) -> None:
    trials, released, cut = await run_race(make_client, server, anonymous, trials=500)
    figure(
        f"withdrawal race: {trials} trials, {released} releases ({cut} cut mid-stream),"
        " 0 after a withdrawal"
    )
    assert released > 0
