"""``coalition audit verify`` and ``compliance`` enforce the ledger's signer rules end to end.

The honest server's ledger (every core statement type) passes, in this process and in worker
processes; a ledger rewritten behind the server's back so that entry 0 is not the coalition
the server announces, or so that a statement has the wrong signer, is rejected at that entry.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

from coalition import dsse, statements
from coalition.client import Client
from coalition.keys import SigningKey
from coalition.v1 import ledger_pb2, party_pb2
from coalition_server.config import Settings
from coalition_server.server import CoalitionServer
from tests.access_helpers import make_agreement
from tests.cli.access_cli_helpers import add_items, files, grant, joined
from tests.cli.helpers import Cli, json_out, registration, signed
from tests.cli.test_audit_verify import read_state, run_binary, tamper

CORE_KINDS = {
    "PartyRegistration",
    "ItemRegistration",
    "ConsentToken",
    "Agreement",
    "LeaseRequest",
    "KeyRelease",
    "Withdrawal",
    "WithdrawalNotice",
    "ShreddingRecord",
    "DeletionReceipt",
}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def with_envelope(envelope: dsse.Envelope) -> Callable[[bytes], bytes]:
    """A leaf rewrite: same integration time, another envelope."""

    def change(leaf: bytes) -> bytes:
        record = ledger_pb2.LedgerLeaf.FromString(leaf)
        record.envelope.CopyFrom(envelope.to_proto())
        return record.SerializeToString(deterministic=True)

    return change


async def whole_flow(cli: Cli, server: CoalitionServer, tmp_path: Path) -> SigningKey:
    """Member, lab, items, consent, agreement, lease, release, withdrawal, notice, receipt."""
    member, _ = await joined(cli, tmp_path, "contributor", "Ada")
    lab_path, lab = await joined(cli, tmp_path, "lab", "Lab")
    await joined(cli, tmp_path, "auditor", "Auditor")
    added = await add_items(cli, member, files(tmp_path / "src", {"a.txt": b"a", "b.txt": b"b"}))
    consent_id = await grant(cli, member, "--all")
    agreement, _ = await make_agreement(server, lab, [str(o["item_id"]) for o in added])
    lease = json_out(await cli("lab", "lease", agreement, "--json", key=lab_path))
    fetched = await cli("lab", "fetch", lease["lease_id"], "--out", str(tmp_path / "got"),
                        key=lab_path)  # fmt: skip
    assert fetched.exit_code == 0, fetched.output
    withdrawn = await cli("consent", "withdraw", "--consent", consent_id, key=member)
    assert withdrawn.exit_code == 0, withdrawn.output
    watched = await cli("lab", "watch", "--once", "--json", key=lab_path)
    (notice,) = watched.stdout.splitlines()
    acked = await cli("lab", "ack", json.loads(notice)["notice_id"], key=lab_path)
    assert acked.exit_code == 0, acked.output
    return lab


async def index_of(client: Client, kind: str) -> int:
    """The index of the first entry of ``kind``."""
    checkpoint = await client.checkpoint()
    async for entry in client.entries(0, checkpoint.tree_size, 100):
        leaf = ledger_pb2.LedgerLeaf.FromString(entry.leaf)
        if statements.kind(leaf.envelope.payload_type) == kind:
            return entry.index
    raise AssertionError(f"no {kind} in the ledger")


async def test_the_honest_servers_whole_ledger_verifies(
    cli: Cli, server: CoalitionServer, target: str, tmp_path: Path
) -> None:
    await whole_flow(cli, server, tmp_path)
    result = await cli("audit", "verify", "--state", str(tmp_path / "s.json"), "--json")
    assert result.exit_code == 0, result.output
    out = json_out(result)
    assert set(out["kinds"]) == CORE_KINDS
    assert out["parties"] == 4  # the coalition, the member, the lab and the auditor
    # The same ledger, its signatures checked by worker processes.
    code, stdout, err = await run_binary(
        "--server", target, "audit", "verify", "--state", str(tmp_path / "w.json"),
        "--jobs", "2", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(stdout)["entries"] == out["entries"]
    compliance = await cli("audit", "compliance", "--json")
    assert compliance.exit_code == 0, compliance.output


async def test_entry_0_must_register_the_key_the_server_announces(
    cli: Cli, anonymous: Client, settings: Settings, tmp_path: Path
) -> None:
    info = await anonymous.log_info()
    impostor = SigningKey.generate()
    forged = signed(registration(impostor, "Coalition", party_pb2.ROLE_COALITION), impostor)
    await tamper(settings, 0, with_envelope(forged), rehash=True)
    expected = (
        f"error: entry 0: the ledger registers coalition key {impostor.key_id} "
        f"({b64(impostor.public_key.raw)}), but the server's GetLogInfo names coalition key "
        f"{info.coalition_key_id} ({b64(info.coalition_public_key)})"
    )
    state = tmp_path / "s.json"
    result = await cli("audit", "verify", "--state", str(state))
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == expected
    assert "trusting the coalition key" not in result.stderr
    assert not state.exists()
    result = await cli("audit", "compliance", "--state", str(state))
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == expected


async def test_a_pinned_coalition_key_is_checked_against_entry_0(
    cli: Cli, anonymous: Client, settings: Settings, tmp_path: Path
) -> None:
    state = tmp_path / "s.json"
    result = await cli("audit", "verify", "--state", str(state))
    assert result.exit_code == 0, result.output
    info = await anonymous.log_info()
    assert (
        f"trusting the coalition key {info.coalition_key_id} on first use (registered at "
        f"entry 0 of the ledger); it will be pinned in {state}"
    ) in result.stderr
    assert read_state(state)["coalition_public_key"] == b64(info.coalition_public_key)
    # The server still announces its key, but the ledger's entry 0 now registers another.
    impostor = SigningKey.generate()
    forged = signed(registration(impostor, "Coalition", party_pb2.ROLE_COALITION), impostor)
    await tamper(settings, 0, with_envelope(forged), rehash=True)
    result = await cli("audit", "verify", "--state", str(state))
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        f"error: entry 0: the ledger registers coalition key {impostor.key_id} "
        f"({b64(impostor.public_key.raw)}), but the state file {state} names coalition key "
        f"{info.coalition_key_id} ({b64(info.coalition_public_key)})"
    )


async def test_a_log_must_begin_with_the_coalitions_registration(
    cli: Cli, settings: Settings, make_client: Callable[..., Client], tmp_path: Path
) -> None:
    member = SigningKey.generate()
    await tamper(settings, 0, with_envelope(signed(registration(member), member)), rehash=True)
    result = await cli("audit", "verify", "--state", str(tmp_path / "s.json"))
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        "error: entry 0: the log must begin with the coalition's own PartyRegistration "
        f"(ROLE_COALITION), but entry 0 registers {member.key_id} with role ROLE_CONTRIBUTOR"
    )


async def test_a_statement_with_the_wrong_signer_is_rejected_at_its_entry(
    cli: Cli,
    server: CoalitionServer,
    settings: Settings,
    anonymous: Client,
    target: str,
    tmp_path: Path,
) -> None:
    lab = await whole_flow(cli, server, tmp_path)
    index = await index_of(anonymous, "Withdrawal")
    original = ledger_pb2.LedgerLeaf.FromString((await anonymous.entry(index)).leaf)
    # The member's withdrawal, re-signed by the lab: a lab cannot withdraw a member's consent.
    by_lab = dsse.sign(original.envelope.payload_type, original.envelope.payload, lab)
    await tamper(settings, index, with_envelope(by_lab), rehash=True)
    lab_index = await index_of(anonymous, "PartyRegistration") + 2  # coalition, member, lab
    expected = (
        f"error: entry {index}: a Withdrawal must be signed by a registered contributor, but "
        f"its signer {lab.key_id} is a lab registered at entry {lab_index}"
    )
    result = await cli("audit", "verify", "--state", str(tmp_path / "s.json"))
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == expected
    # Worker processes check signatures; the rule, checked in order, fails the same way.
    code, _, err = await run_binary(
        "--server", target, "audit", "verify", "--state", str(tmp_path / "s.json"), "--jobs", "2"
    )
    assert code == 1
    assert err.splitlines()[-1] == expected
