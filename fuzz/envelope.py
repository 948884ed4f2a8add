"""Fuzz target: DSSE envelopes from bytes (``coalition.dsse``, ``coalition.statements``).

The first input byte picks the encoding of the rest:

* even: a serialised ``coalition.v1.Envelope`` (protobuf), as the ledger and the API carry
  it, decoded with ``Envelope.from_proto``;
* odd: the standard DSSE JSON form, decoded with ``Envelope.from_json``.

A decoded envelope is then verified against the fuzzing key (``dsse.verify``), its
statement decoded (``statements.decode_statement``: known type, canonical encoding) and
its id computed; and it must survive a round trip through both encodings unchanged.

ALLOWED: ``CoalitionError`` (the package's closed hierarchy: EnvelopeError, SignatureError,
KeyFormatError, ...), and ``DecodeError`` from protobuf itself, only for bytes that are not
an Envelope message at all. Anything else escaping (IndexError, UnicodeError, ValueError
from base64 or JSON, RecursionError, ...) is a finding, as is a broken round trip.

    python fuzz/envelope.py -max_total_time=30
"""

from __future__ import annotations

import contextlib
import sys

import atheris
from google.protobuf.message import DecodeError

import fuzzing

with atheris.instrument_imports(include=["coalition"]):
    from coalition import dsse, statements
    from coalition.errors import CoalitionError
    from coalition.v1 import envelope_pb2, party_pb2

ALLOWED: tuple[type[Exception], ...] = (CoalitionError,)
PROTO, JSON = 0, 1


def decode(data: bytes) -> dsse.Envelope | None:
    """The envelope the input encodes; None if protobuf refuses the bytes outright."""
    if not data:
        return None
    encoding, body = data[0] % 2, data[1:]
    if encoding == JSON:
        return dsse.Envelope.from_json(body)
    message = envelope_pb2.Envelope()
    try:
        message.ParseFromString(body)
    except DecodeError:
        return None  # not a message: protobuf's refusal, before our code runs
    return dsse.Envelope.from_proto(message)


def check(envelope: dsse.Envelope) -> None:
    """What must hold of every envelope the decoders accept."""
    assert dsse.Envelope.from_json(envelope.to_json()) == envelope, "JSON round trip"
    again = envelope_pb2.Envelope.FromString(envelope.to_proto().SerializeToString())
    assert dsse.Envelope.from_proto(again) == envelope, "protobuf round trip"
    assert len(statements.statement_id(envelope)) == 32
    try:
        payload = dsse.verify(envelope, fuzzing.KEY.public_key)
        assert payload == envelope.payload
    except ALLOWED:
        pass
    with contextlib.suppress(*ALLOWED):
        statements.decode_statement(envelope)


def test_one_input(data: bytes) -> None:
    """One input: decode, verify and check; only ALLOWED exceptions may escape the library."""
    try:
        envelope = decode(data)
    except ALLOWED:
        return
    if envelope is not None:
        check(envelope)


def seeds() -> list[bytes]:
    """A valid signed statement in both encodings, and a few near misses."""
    statement = party_pb2.PartyRegistration(
        role=party_pb2.ROLE_LAB,
        name="A Lab",
        signing_key=fuzzing.KEY.public_key.raw,
        encryption_key=fuzzing.KEY.encryption_public_key_raw(),
        nonce=bytes(16),
    )
    envelope = statements.sign_statement(statement, fuzzing.KEY)
    proto = envelope.to_proto().SerializeToString()
    text = envelope.to_json().encode()
    return [
        bytes([PROTO]) + proto,
        bytes([JSON]) + text,
        bytes([JSON]) + text.replace(b"+", b"-").replace(b"/", b"_"),  # URL-safe base64
        bytes([JSON]) + b'{"payloadType": "x", "payload": "", "signatures": []}',
        bytes([PROTO]),
    ]


if __name__ == "__main__":
    fuzzing.main(test_one_input, seeds)
    sys.exit(0)
