"""``coalition audit payouts``: a negotiated deal's payout statement, verified and exported
for a payment processor (table, JSON, CSV), over the real server (SQLite and PostgreSQL);
and the export's verification of a statement, with statements built in memory."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import hashlib
import io
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import Result

from coalition import dsse
from coalition.cli.audit import (
    PAYOUT_CSV_COLUMNS,
    amount_text,
    payment_model_name,
    payout_rows,
    verify_payout_statement,
)
from coalition.client import Client, price_floor
from coalition.keys import SigningKey
from coalition.payouts import PAYOUT_STATEMENT_TYPE, PayoutError, build_statement, lines_root
from coalition.strategy import linear
from coalition.v1 import access_pb2, negotiation_pb2, party_pb2, terms_pb2
from coalition_server.config import Settings
from coalition_server.server import CoalitionServer
from tests.cli.helpers import Cli, json_out

USD = 1_000_000
FLOORS = [1, 2, 3, 4, 5, 6]


@dataclasses.dataclass
class Deal:
    """A negotiated agreement, its lab, and the members' item counts it covers."""

    agreement_id: str
    negotiation: negotiation_pb2.Negotiation
    lab: Client
    covered: dict[str, int]  # member key id -> covered items


async def members(make: Callable[..., Client], floors: list[int]) -> list[Client]:
    """One member per floor (USD); member i has i % 3 + 1 stored, consented items."""
    out = []
    for i, floor in enumerate(floors):
        member = make(SigningKey.generate())
        await member.register(party_pb2.ROLE_CONTRIBUTOR, f"m{i}")
        contents = [f"{i} {j}".encode() for j in range(i % 3 + 1)]
        response = await member.register_items(
            [(hashlib.sha256(c).digest(), len(c), "text/plain", []) for c in contents]
        )
        for item, content in zip(response.items, contents, strict=True):
            await member.upload(item.item_id, content)
        await member.grant_consent(
            item_ids=[item.item_id for item in response.items],
            purposes=["train-ai"],
            floors=[price_floor("purchase", floor * USD)],
        )
        out.append(member)
    return out


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


async def negotiate(make: Callable[..., Client], pool: list[Client]) -> Deal:
    """A lab negotiates automatically within a 5-USD budget until the coalition agrees."""
    lab = make(SigningKey.generate())
    await lab.register(party_pb2.ROLE_LAB, "Acme")
    final = await lab.negotiate_auto(terms(), linear(USD // 2, 5 * USD, 20, 86400))
    draft = access_pb2.Agreement.FromString(final.agreement_draft)
    covered: dict[str, int] = {}
    for member in pool:
        assert member.key is not None
        mine = {item.item_id async for item in member.items()}
        count = len(mine & set(draft.covered_item_ids))
        if count:
            covered[member.key.key_id] = count
    return Deal(final.agreement_id, final, lab, covered)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


def parse_csv(text: str) -> list[dict[str, str]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    assert tuple(reader.fieldnames or ()) == PAYOUT_CSV_COLUMNS
    return list(reader)


def check_rows(rows: list[dict[str, str]], deal: Deal, statement: dict[str, Any]) -> None:
    """The CSV rows are the statement's lines, exact to the micro, adding up to its total."""
    price = deal.negotiation.current_terms.price_per_item.micros
    assert [r["member_key_id"] for r in rows] == sorted(deal.covered)
    for row in rows:
        assert row["agreement_id"] == deal.agreement_id
        assert int(row["item_count"]) == deal.covered[row["member_key_id"]]
        # Exact decimals with six places: the micros, never a float's approximation.
        whole, _, fraction = row["amount"].partition(".")
        assert whole.isdigit()
        assert len(fraction) == 6
        assert fraction.isdigit()
        assert Decimal(row["amount"]) * USD == price * int(row["item_count"])
        assert row["currency"] == "USD"
        assert row["payment_model"] == "purchase"
        assert row["rule"] == "pro-rata-items"
        assert int(row["statement_index"]) == statement["statement_index"]
    total = sum((Decimal(r["amount"]) for r in rows), Decimal(0))
    assert total == Decimal(statement["total"]["amount"])
    assert total * USD == statement["total"]["micros"] == price * sum(deal.covered.values())


async def test_export_a_negotiated_deal(
    cli: Cli, make_client: Callable[..., Client], tmp_path: Path
) -> None:
    pool = await members(make_client, FLOORS)
    deal = await negotiate(make_client, pool)
    assert deal.negotiation.state == negotiation_pb2.NEGOTIATION_STATE_FINALIZED
    assert len(deal.covered) >= 2

    # JSON: the statement as verified; the log key was not pinned, so it is trusted on use.
    shown = ok(await cli("audit", "payouts", deal.agreement_id, "--json"))
    assert "trusting the server's log key" in shown.stderr
    statement = json_out(shown)
    assert statement["verified"] is True
    assert statement["agreement_id"] == deal.agreement_id
    assert (statement["payment_model"], statement["rule"]) == ("purchase", "pro-rata-items")
    assert [line["member_key_id"] for line in statement["lines"]] == sorted(deal.covered)
    assert statement["tree_size"] > statement["statement_index"]

    # CSV on stdout, exactly the statement's lines.
    exported = ok(await cli("audit", "payouts", deal.agreement_id, "--csv", "-"))
    # RFC 4180: CRLF line ends (the runner's ``stdout`` text turns them into LF).
    assert exported.stdout_bytes.startswith(",".join(PAYOUT_CSV_COLUMNS).encode() + b"\r\n")
    rows = parse_csv(exported.stdout)
    check_rows(rows, deal, statement)
    assert [Decimal(r["amount"]) for r in rows] == [
        Decimal(line["amount"]) for line in statement["lines"]
    ]

    # CSV to a file, pinned keys from `audit verify` (which passes over this very ledger).
    ok(await cli("audit", "verify"))
    path = tmp_path / "payouts.csv"
    written = ok(await cli("audit", "payouts", deal.agreement_id, "--csv", str(path), "--json"))
    assert "trusting" not in written.stderr
    assert f"wrote {len(rows)} lines to {path}" in written.stderr
    assert json_out(written)["lines"] == statement["lines"]
    assert parse_csv(path.read_text(encoding="utf-8")) == rows
    left = await asyncio.to_thread(lambda: [p.name for p in tmp_path.iterdir()])
    assert not [name for name in left if name.startswith(".payouts.csv.")]

    # The table.
    table = ok(await cli("audit", "payouts", deal.agreement_id))
    assert f"payouts of {deal.agreement_id}" in table.stdout
    assert f"{statement['total']['amount']} USD" in table.stdout
    for row in rows:
        line = next(x for x in table.stdout.splitlines() if row["member_key_id"] in x)
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        assert cells == [row["member_key_id"], row["item_count"], row["amount"], "USD"]

    # No statement, conflicting outputs.
    missing = await cli("audit", "payouts", "0" * 32)
    assert missing.exit_code == 1
    assert "NOT_FOUND" in missing.stderr
    both = await cli("audit", "payouts", deal.agreement_id, "--csv", "-", "--json")
    assert both.exit_code == 2
    unwritable = await cli("audit", "payouts", deal.agreement_id, "--csv", str(tmp_path / "no/x"))
    assert unwritable.exit_code == 2


async def test_a_statement_the_ledger_does_not_hold_is_refused(
    cli: Cli,
    make_client: Callable[..., Client],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool = await members(make_client, FLOORS)
    deal = await negotiate(make_client, pool)
    real = await make_client().payout_statement(deal.agreement_id)
    original = Client.payout_statement

    def serve(index: int) -> None:
        async def lying(
            self: Client, agreement_id: str
        ) -> negotiation_pb2.GetPayoutStatementResponse:
            response = await original(self, agreement_id)
            response.index = index
            return response

        monkeypatch.setattr(Client, "payout_statement", lying)

    path = tmp_path / "out.csv"
    serve(real.index - 1)  # another entry: not the envelope logged there
    elsewhere = await cli("audit", "payouts", deal.agreement_id, "--csv", str(path))
    assert elsewhere.exit_code == 1
    assert (
        f"the payout statement the server sent is not the envelope logged at entry "
        f"{real.index - 1}" in elsewhere.stderr
    )
    serve(10**6)  # beyond the log
    beyond = await cli("audit", "payouts", deal.agreement_id, "--csv", str(path))
    assert beyond.exit_code == 1
    assert "the server says the payout statement is entry 1000000" in beyond.stderr
    assert not path.exists()  # nothing written for a statement that does not verify


# --- a ratified deal: ballots in the ledger, then the export ---------------------------------


@pytest.fixture
async def ratifying(settings: Settings, tmp_path: Path) -> AsyncIterator[tuple[Cli, Any]]:
    """A server whose policy requires the covered members to ratify: its CLI and a client
    factory."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "ratification:\n  required: true\n  basis: items\n  threshold: 0.5\n  window_seconds: 60\n"
    )
    server = CoalitionServer(dataclasses.replace(settings, policy_file=policy))
    port = await server.start()
    clients: list[Client] = []

    def make(key: SigningKey | None = None) -> Client:
        client = Client(f"127.0.0.1:{port}", key=key or SigningKey.generate())
        clients.append(client)
        return client

    try:
        yield Cli(f"127.0.0.1:{port}"), make
    finally:
        for client in clients:
            await client.close()
        await server.stop()


async def test_export_after_ratification(ratifying: tuple[Cli, Any]) -> None:
    cli, make = ratifying
    pool = await members(make, [1, 2, 3, 4])
    deal = await negotiate(make, pool)
    assert deal.negotiation.state == negotiation_pb2.NEGOTIATION_STATE_RATIFYING
    nid = deal.negotiation.negotiation_id
    not_yet = await cli("audit", "payouts", nid)
    assert not_yet.exit_code == 1  # no agreement, no statement before the vote
    decided = None
    for member in pool:
        assert member.key is not None
        if member.key.key_id in deal.covered:
            decided = await member.cast_ballot(nid, True)
            if decided.state != negotiation_pb2.NEGOTIATION_STATE_RATIFYING:
                break
    assert decided is not None
    assert decided.state == negotiation_pb2.NEGOTIATION_STATE_FINALIZED
    # The ledger, with its ratification call and ballots, passes the audit's rules.
    audit = json_out(ok(await cli("audit", "verify", "--json")))
    assert audit["kinds"]["Ballot"] >= 1
    assert audit["kinds"]["RatificationCall"] == 1
    agreement_id = (await deal.lab.negotiation(nid)).agreement_id
    assert agreement_id
    deal = dataclasses.replace(deal, agreement_id=agreement_id)
    shown = json_out(ok(await cli("audit", "payouts", agreement_id, "--json")))
    rows = parse_csv(ok(await cli("audit", "payouts", agreement_id, "--csv", "-")).stdout)
    check_rows(rows, deal, shown)


# --- the export's verification, on statements built in memory ------------------------------


def _lines(amounts: list[int]) -> list[negotiation_pb2.PayoutLine]:
    return [
        negotiation_pb2.PayoutLine(
            member_key_id=f"{i:032x}",
            item_count=i + 1,
            amount=terms_pb2.Money(currency_code="USD", micros=amount),
        )
        for i, amount in enumerate(amounts)
    ]


def _response(
    statement: negotiation_pb2.PayoutStatement, key: SigningKey, index: int = 9
) -> negotiation_pb2.GetPayoutStatementResponse:
    envelope = dsse.sign(
        PAYOUT_STATEMENT_TYPE, statement.SerializeToString(deterministic=True), key
    )
    return negotiation_pb2.GetPayoutStatementResponse(statement=envelope.to_proto(), index=index)


def _statement(amounts: list[int], total: int | None = None) -> negotiation_pb2.PayoutStatement:
    lines = _lines(amounts)
    money = terms_pb2.Money(currency_code="USD", micros=sum(amounts) if total is None else total)
    return build_statement("a" * 32, money, lines)


def _rerooted(statement: negotiation_pb2.PayoutStatement) -> negotiation_pb2.PayoutStatement:
    statement.lines_root = lines_root(list(statement.lines))
    return statement


def test_an_honest_statement_exports_exactly() -> None:
    coalition = SigningKey.generate()
    amounts = [1, 333_333, 1_000_000, 12_345_678_901, 0]
    statement = verify_payout_statement(
        _response(_statement(amounts), coalition), coalition.public_key, "a" * 32
    )
    rows = payout_rows(statement, 9)
    assert [r["amount"] for r in rows] == [
        "0.000001",
        "0.333333",
        "1.000000",
        "12345.678901",
        "0.000000",
    ]
    assert sum(Decimal(r["amount"]) for r in rows) * USD == sum(amounts)
    assert {r["statement_index"] for r in rows} == {"9"}
    assert amount_text(10**18 + 1) == "1000000000000.000001"
    assert payment_model_name(terms_pb2.PAYMENT_MODEL_PER_USE) == "per-use"
    assert payment_model_name(99) == "99"


def test_a_tampered_statement_is_refused() -> None:
    coalition = SigningKey.generate()
    good = _statement([3 * USD, 6 * USD, 9 * USD])

    def copy() -> negotiation_pb2.PayoutStatement:
        out = negotiation_pb2.PayoutStatement()
        out.CopyFrom(good)
        return out

    # A line changed after signing: the signature no longer covers the payload.
    signed = _response(good, coalition)
    payload = bytearray(signed.statement.payload)
    payload[-1] ^= 1
    flipped = negotiation_pb2.GetPayoutStatementResponse()
    flipped.CopyFrom(signed)
    flipped.statement.payload = bytes(payload)

    raised_line = copy()
    raised_line.lines[1].amount.micros += 1
    raised_total = copy()
    raised_total.total.micros += 1
    double = copy()
    double.lines[2].member_key_id = double.lines[1].member_key_id
    euros = copy()
    euros.lines[0].amount.currency_code = "EUR"
    cases: list[tuple[negotiation_pb2.GetPayoutStatementResponse, str, str]] = [
        (flipped, "a" * 32, "does not verify"),
        (_response(good, SigningKey.generate()), "a" * 32, "does not verify"),
        (_response(good, coalition), "b" * 32, "is for agreement"),
        # Changed and re-signed by the coalition, but its root no longer commits to it...
        (_response(raised_line, coalition), "a" * 32, "lines_root"),
        # ...or re-rooted too, but the lines no longer add up to the total.
        (_response(_rerooted(raised_line), coalition), "a" * 32, "add up to 18.000001 USD"),
        (_response(raised_total, coalition), "a" * 32, "not the statement's total"),
        (_response(_rerooted(double), coalition), "a" * 32, "more than one line"),
        (_response(_rerooted(euros), coalition), "a" * 32, "'EUR'"),
    ]
    for response, agreement_id, message in cases:
        with pytest.raises(PayoutError, match=message):
            verify_payout_statement(response, coalition.public_key, agreement_id)
    wrong_type = _response(good, coalition)
    wrong_type.statement.payload_type = "application/vnd.coalition.v1.Agreement+proto"
    with pytest.raises(PayoutError, match="not a payout statement"):
        verify_payout_statement(wrong_type, coalition.public_key, "a" * 32)
    ok_ = verify_payout_statement(_response(good, coalition), coalition.public_key, "a" * 32)
    assert ok_ == good
