"""``--quiet`` (only the ids, for ``ID=$(coalition ...)``), ``lab negotiate --open-only`` and
``audit entries --kind/--subject``: what the guides in docs/ use to carry ids from one
command to the next, against the real server (SQLite and PostgreSQL)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from coalition.client import Client
from coalition.keys import SigningKey
from coalition_server.config import Settings
from coalition_server.server import CoalitionServer
from tests.cli.access_cli_helpers import add_items, files, joined
from tests.cli.helpers import Cli, json_out
from tests.cli.test_bargaining_cli import pool

NEGOTIATE = ("lab", "negotiate", "--purpose", "train-ai", "--model", "purchase")


@pytest.fixture
async def voting(
    settings: Settings, tmp_path: Path
) -> AsyncIterator[tuple[Cli, Callable[..., Client]]]:
    """A server whose members ratify every deal (half of the covered items must approve)."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "ratification:\n  required: true\n  basis: items\n  threshold: 0.5\n"
        "  window_seconds: 60\ncatalogue:\n  minimum_group_size: 1\n"
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
        yield Cli(target), make
    finally:
        for client in clients:
            await client.close()
        await server.stop()


def lines(text: str) -> list[str]:
    return text.strip().splitlines()


async def test_quiet_prints_the_ids_the_next_command_takes(
    voting: tuple[Cli, Callable[..., Client]], tmp_path: Path
) -> None:
    cli, make = voting
    others = await pool(make, tmp_path, [1, 1])
    ada, _ = await joined(cli, tmp_path, "contributor", "Ada")
    await add_items(cli, ada, files(tmp_path / "poems", {"a.txt": b"a", "b.txt": b"b"}))
    granted = await cli(
        "consent", "grant", "--all", "--purpose", "train-ai", "--floor", "purchase=1.00",
        "--quiet", key=ada,
    )  # fmt: skip
    assert granted.exit_code == 0, granted.output
    (consent_id,) = lines(granted.stdout)
    assert lines((await cli("consent", "list", "--quiet", key=ada)).stdout) == [consent_id]
    both = await cli("consent", "list", "--quiet", "--json", key=ada)
    assert both.exit_code == 2
    assert "--json and --quiet" in both.stderr

    lab, lab_key = await joined(cli, tmp_path, "lab", "Acme")
    opened = await cli(*NEGOTIATE, "--price", "0.10", "--open-only", "--quiet", key=lab)
    assert opened.exit_code == 0, opened.output
    (first,) = lines(opened.stdout)
    assert "coalition  offer" in opened.stderr
    assert f"coalition lab accept {first}" in opened.stderr
    listed = json_out(await cli("lab", "negotiations", "--json", key=lab))
    assert [(n["negotiation_id"], n["state"]) for n in listed] == [(first, "offered")]
    ended = await cli("lab", "terminate", first, key=lab)
    assert ended.exit_code == 0, ended.output

    auto = await cli(*NEGOTIATE, "--price", "1.00", "--auto", "--budget", "5.00", "--quiet",
                     key=lab)  # fmt: skip
    assert auto.exit_code == 0, auto.output
    (negotiation_id,) = lines(auto.stdout)
    assert "ratifying" in auto.stderr
    assert lines((await cli("lab", "negotiations", "--quiet", key=lab)).stdout) == [
        first,
        negotiation_id,
    ]

    read = await cli("ratifications", "--quiet", key=ada)
    assert lines(read.stdout) == [f"{negotiation_id} {lab_key.key_id}"]
    for _, path, _ in others:
        await cli("vote", negotiation_id, "--approve", key=path)
    await cli("vote", negotiation_id, "--approve", key=ada)
    (agreement_id,) = lines((await cli("earnings", "--quiet", key=ada)).stdout)
    assert lines((await cli("lab", "agreements", "--quiet", key=lab)).stdout) == [agreement_id]

    leased = await cli("lab", "lease", agreement_id, "--quiet", key=lab)
    (lease_id,) = lines(leased.stdout)
    fetched = await cli("lab", "fetch", lease_id, "--out", str(tmp_path / "data"), "--json",
                        key=lab)  # fmt: skip
    assert json_out(fetched)["lease_id"] == lease_id

    disputed = await cli("dispute", "file", agreement_id, "--field", "jurisdictions", "--quiet",
                         key=ada)  # fmt: skip
    (dispute_id,) = lines(disputed.stdout)
    assert lines((await cli("dispute", "list", "--mine", "--quiet", key=lab)).stdout) == [
        dispute_id
    ]
    pledged = await cli("strike", "pledge", "--lab", lab_key.key_id, "--min-members", "3",
                        "--quiet", key=ada)  # fmt: skip
    (pledge_id,) = lines(pledged.stdout)
    assert [p["pledge_id"] for p in json_out(await cli("strike", "list", "--json", key=ada))] == [
        pledge_id
    ]

    await cli("consent", "withdraw", "--consent", consent_id, key=ada)
    watched = await cli("lab", "watch", "--once", "--idle", "0.5", "--quiet", key=lab)
    (notice_id,) = lines(watched.stdout)
    acked = await cli("lab", "ack", notice_id, key=lab)
    assert acked.exit_code == 0, acked.output

    agreements = await cli("audit", "entries", "--kind", "Agreement", "--quiet")
    assert lines(agreements.stdout) == [agreement_id]
    consents = await cli("audit", "entries", "--kind", "ConsentToken", "--count", "1", "--quiet")
    (first_consent,) = lines(consents.stdout)
    assert first_consent != consent_id  # the pool's members consented first
    assert len(first_consent) == 32
    ada_consent = await cli("audit", "entries", "--kind", "ConsentToken", "--start", "1",
                            "--count", "10", "--quiet")  # fmt: skip
    assert consent_id in lines(ada_consent.stdout)
    leases = json_out(
        await cli(
            "audit", "entries", "--subject", lab_key.key_id, "--kind", "LeaseRequest", "--json"
        )
    )
    assert [(e["kind"], e["statement_id"]) for e in leases] == [("LeaseRequest", lease_id)]
    about_lab = json_out(await cli("audit", "entries", "--subject", lab_key.key_id, "--json"))
    assert {"PartyRegistration", "Agreement", "WithdrawalNotice"} <= {e["kind"] for e in about_lab}
    everything = json_out(await cli("audit", "entries", "--count", "2", "--json"))
    assert [e["statement_id"] is not None for e in everything] == [True, True]
    bogus = await cli("audit", "entries", "--kind", "Agreements")
    assert bogus.exit_code == 2
    assert "unknown --kind 'Agreements'" in bogus.stderr


async def test_open_only_is_not_for_auto(tmp_path: Path) -> None:
    key = tmp_path / "lab.key"
    SigningKey.generate().save(key)
    refused = await Cli("127.0.0.1:1")(
        *NEGOTIATE, "--price", "1", "--auto", "--budget", "2", "--open-only", key=key
    )
    assert refused.exit_code == 2
    assert "not with --auto" in refused.stderr
