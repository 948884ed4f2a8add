"""``coalition vote --reason NORM_ID``: reasons travel signed in the ballot, checked first."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from coalition.client import Client
from coalition.keys import SigningKey
from coalition.strategy import linear
from coalition.v1 import access_pb2, ledger_pb2, negotiation_pb2, party_pb2
from coalition_server.config import Settings
from coalition_server.server import CoalitionServer
from tests.cli.helpers import Cli, invoke, json_out
from tests.cli.test_bargaining_cli import USD, party, pool, terms


@pytest.fixture
async def voting(settings: Settings, tmp_path: Path) -> AsyncIterator[tuple[str, Any]]:
    """A server whose deals the covered members ratify; (target, client factory)."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "ratification:\n  required: true\n  basis: items\n  threshold: 0.5\n  window_seconds: 60\n"
    )
    server = CoalitionServer(dataclasses.replace(settings, policy_file=policy))
    port = await server.start()
    target = f"127.0.0.1:{port}"
    clients: list[Client] = []

    def make(key: SigningKey | None = None) -> Client:
        client = Client(target, key=key or SigningKey.generate())
        clients.append(client)
        return client

    try:
        yield target, make
    finally:
        for client in clients:
            await client.close()
        await server.stop()


async def test_vote_with_reasons(voting: tuple[str, Callable[..., Client]], tmp_path: Path) -> None:
    target, make = voting
    cli = Cli(target)
    members = await pool(make, tmp_path, [1, 2, 3, 4])
    acme, _ = await party(make, tmp_path, party_pb2.ROLE_LAB, "Acme")
    final = await acme.negotiate_auto(terms(0), linear(USD // 2, 5 * USD, 20, 86400))
    nid = final.negotiation_id
    covered = set(access_pb2.Agreement.FromString(final.agreement_draft).covered_item_ids)
    path = next(path for _, path, ids in members if ids & covered)

    voted = await cli(
        "vote", nid, "--reject", "--reason", "prohibited-use", "--reason", "occupation",
        "--json", key=path,
    )  # fmt: skip
    assert voted.exit_code == 0, voted.output
    assert json_out(voted)["reasons"] == ["occupation", "prohibited-use"]
    (entry,) = [e async for e in make().entries_by_subject(nid, "Ballot")]
    ballot = negotiation_pb2.Ballot.FromString(
        ledger_pb2.LedgerLeaf.FromString(entry.leaf).envelope.payload
    )
    assert (ballot.approve, list(ballot.reasons)) == (False, ["occupation", "prohibited-use"])


def test_an_unknown_reason_exits_2_naming_the_norms(tmp_path: Path) -> None:
    key = tmp_path / "k.key"
    SigningKey.generate().save(key)
    result = invoke(
        "--server", "127.0.0.1:9", "--key", str(key), "vote", "a" * 32, "--reject",
        "--reason", "price",
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "--reason 'price' is not a norm id" in result.stderr
    assert "prohibited-use" in result.stderr
