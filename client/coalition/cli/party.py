"""``coalition join``: register your key as a party, and check the receipt you get back."""

from __future__ import annotations

import enum
from typing import Annotated, Any

import typer
from google.protobuf.message import DecodeError
from rich.table import Table

from coalition import dsse, statements
from coalition.checkpoint import Checkpoint
from coalition.cli.common import (
    EXIT_FAILED,
    EXIT_UNUSABLE,
    JsonOpt,
    b64,
    console,
    fail,
    globals_of,
    print_json,
    run,
)
from coalition.errors import CoalitionError, NoteError, VerificationError
from coalition.keys import SigningKey
from coalition.note import NoteVerifier
from coalition.receipts import verify_receipt
from coalition.v1 import ledger_pb2, party_pb2


class RoleName(enum.StrEnum):
    """The roles a party can register with."""

    contributor = "contributor"
    lab = "lab"
    auditor = "auditor"


_ROLES: dict[RoleName, party_pb2.Role.ValueType] = {
    RoleName.contributor: party_pb2.ROLE_CONTRIBUTOR,
    RoleName.lab: party_pb2.ROLE_LAB,
    RoleName.auditor: party_pb2.ROLE_AUDITOR,
}


def role_name(role: party_pb2.Role.ValueType) -> str:
    """``contributor`` for ROLE_CONTRIBUTOR, and so on; the number if unknown."""
    try:
        return party_pb2.Role.Name(role).removeprefix("ROLE_").lower()
    except ValueError:
        return str(int(role))


def join(
    ctx: typer.Context,
    role: Annotated[RoleName, typer.Option(help="Your role in the coalition.")],
    name: Annotated[str, typer.Option(help="Display name, 1 to 128 characters.")],
    request_id: Annotated[
        str,
        typer.Option(help="Idempotency key: a retry of the same request gets the first answer."),
    ] = "",
    log_key: Annotated[
        str | None,
        typer.Option(
            envvar="COALITION_LOG_KEY",
            help="The log's verifier key to check the receipt with (default: the server's).",
        ),
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Register your key (--key) as a party and verify the ledger receipt."""
    options = globals_of(ctx)
    key = options.signing_key()
    pinned = _parse_log_key(log_key) if log_key else None

    async def register() -> tuple[party_pb2.RegisterPartyResponse, NoteVerifier]:
        async with options.client(key) as client:
            verifier = pinned
            if verifier is None:
                verifier = _parse_log_key((await client.log_info()).verifier_key)
            response = await client.register(_ROLES[role], name, request_id=request_id)
        return response, verifier

    response, verifier = run(ctx, register())
    checkpoint = _check_receipt(response, verifier, key)
    party, receipt = response.party, response.receipt
    if json_output:
        print_json(
            {
                "party": _party_json(party),
                "receipt": {
                    "index": receipt.index,
                    "tree_size": receipt.tree_size,
                    "leaf_hash": b64(receipt.leaf_hash),
                    "leaf": b64(receipt.leaf),
                    "inclusion_proof": [b64(h) for h in receipt.inclusion_proof],
                    "checkpoint": receipt.checkpoint,
                    "root_hash": b64(checkpoint.root_hash),
                    "verified": True,
                },
            }
        )
        return
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("key id", party.key_id)
    table.add_row("role", role_name(party.role))
    table.add_row("name", party.name)
    table.add_row("registered at", f"entry {party.registration_index}")
    table.add_row("receipt", f"entry {receipt.index} of a tree of size {receipt.tree_size}")
    table.add_row("leaf hash", receipt.leaf_hash.hex())
    table.add_row("checkpoint", f"{checkpoint.origin} size {checkpoint.size}")
    table.add_row("root", b64(checkpoint.root_hash))
    table.add_row("verified", f"inclusion proof and checkpoint signature ({verifier.name})")
    console().print(table)


def _parse_log_key(vkey: str) -> NoteVerifier:
    try:
        return NoteVerifier.parse(vkey)
    except NoteError as exc:
        fail(f"bad log verifier key {vkey!r}: {exc}", EXIT_UNUSABLE)


def _check_receipt(
    response: party_pb2.RegisterPartyResponse, verifier: NoteVerifier, key: SigningKey
) -> Checkpoint:
    """Verify the receipt, and that it is the receipt of *our* registration of *our* key."""
    receipt = response.receipt
    try:
        checkpoint = verify_receipt(receipt, verifier)
    except VerificationError as exc:
        fail(f"the server's receipt does not verify: {exc}", EXIT_FAILED)
    # A valid receipt for somebody else's entry would prove nothing about ours.
    try:
        leaf = ledger_pb2.LedgerLeaf.FromString(receipt.leaf)
        envelope = dsse.Envelope.from_proto(leaf.envelope)
        if envelope.payload_type != statements.payload_type(party_pb2.PartyRegistration):
            fail(f"the receipt's entry is a {envelope.payload_type}, not a registration")
        registration = statements.parse_payload(party_pb2.PartyRegistration, envelope.payload)
        dsse.verify(envelope, key.public_key)
    except (DecodeError, CoalitionError) as exc:
        fail(f"the receipt's entry is not our registration: {exc}", EXIT_FAILED)
    if bytes(registration.signing_key) != key.public_key.raw:
        fail("the receipt's entry registers a different key", EXIT_FAILED)
    if response.party.key_id != key.key_id or response.party.registration_index != receipt.index:
        fail("the server's party record does not match the receipt", EXIT_FAILED)
    return checkpoint


def _party_json(party: party_pb2.Party) -> dict[str, Any]:
    return {
        "key_id": party.key_id,
        "role": role_name(party.role),
        "name": party.name,
        "signing_key": b64(party.signing_key),
        "encryption_key": b64(party.encryption_key),
        "registration_index": party.registration_index,
    }
