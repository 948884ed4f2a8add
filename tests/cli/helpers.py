"""Building blocks for the CLI tests: running the CLI, and hand-made ledger leaves."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from typer.testing import CliRunner, Result

from coalition import dsse, statements
from coalition.cli import app
from coalition.keys import PublicKey, SigningKey
from coalition.v1 import ledger_pb2, party_pb2

runner = CliRunner()


def invoke(*args: str) -> Result:
    """Run the CLI in this thread (for commands that need no server)."""
    return runner.invoke(app, list(args), catch_exceptions=False)


@dataclass(frozen=True)
class Cli:
    """Runs the CLI against a test server, in a worker thread.

    The CLI runs its own event loop (asyncio.run); the server lives in the test's loop, which
    must keep running, so the CLI cannot run on this thread.
    """

    target: str

    async def __call__(self, *args: str, key: Path | None = None) -> Result:
        argv = ["--server", self.target]
        if key is not None:
            argv += ["--key", str(key)]
        argv += list(args)
        return await asyncio.to_thread(runner.invoke, app, argv, catch_exceptions=False)


def json_out(result: Result) -> Any:
    """The command's stdout, parsed as JSON."""
    return json.loads(result.stdout)


def registration(
    key: SigningKey,
    name: str = "Ada",
    role: party_pb2.Role.ValueType = party_pb2.ROLE_CONTRIBUTOR,
) -> party_pb2.PartyRegistration:
    """A well-formed registration statement of ``key`` (a contributor's by default)."""
    return party_pb2.PartyRegistration(
        role=role,
        name=name,
        signing_key=key.public_key.raw,
        encryption_key=key.encryption_public_key_raw(),
        created_time=Timestamp(seconds=1_700_000_000),
        nonce=os.urandom(16),
    )


def leaf(envelope: dsse.Envelope, seconds: int = 1_700_000_000, nanos: int = 0) -> bytes:
    """A LedgerLeaf exactly as the server serialises it."""
    return ledger_pb2.LedgerLeaf(
        integrated_time=Timestamp(seconds=seconds, nanos=nanos), envelope=envelope.to_proto()
    ).SerializeToString(deterministic=True)


def signed(statement: Message, *keys: SigningKey) -> dsse.Envelope:
    """``statement`` in an envelope signed by every key, in order."""
    payload_type = statements.payload_type(type(statement))
    payload = statement.SerializeToString()
    sigs = tuple(dsse.Signature(k.key_id, k.sign(dsse.pae(payload_type, payload))) for k in keys)
    return dsse.Envelope(payload_type, payload, sigs)


def registration_leaf(key: SigningKey, seconds: int = 1_700_000_000) -> bytes:
    """The leaf of ``key``'s self-signed registration."""
    return leaf(signed(registration(key), key), seconds)


def coalition_leaf(key: SigningKey, seconds: int = 1_700_000_000) -> bytes:
    """The leaf of the coalition's own registration, self-signed: every log's entry 0."""
    statement = registration(key, "The Coalition", party_pb2.ROLE_COALITION)
    return leaf(signed(statement, key), seconds)


def assert_coalition_registration(leaf_bytes: bytes, info: ledger_pb2.GetLogInfoResponse) -> None:
    """``leaf_bytes`` is the coalition's own registration: the log's first entry.

    A PartyRegistration with ROLE_COALITION of the key GetLogInfo announces, signed (only,
    and validly) by that key.
    """
    envelope = dsse.Envelope.from_proto(ledger_pb2.LedgerLeaf.FromString(leaf_bytes).envelope)
    statement = statements.decode_statement(envelope)
    assert isinstance(statement, party_pb2.PartyRegistration)
    assert statement.role == party_pb2.ROLE_COALITION
    assert statement.signing_key == info.coalition_public_key
    assert [s.keyid for s in envelope.signatures] == [info.coalition_key_id]
    PublicKey(info.coalition_public_key).verify(envelope.signatures[0].sig, envelope.pae())
