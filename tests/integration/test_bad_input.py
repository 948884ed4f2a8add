"""Bad input over real gRPC: the right status and ErrorInfo reason, the server stays up,
and nothing is written (row counts are compared before and after every case)."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from coalition import auth
from coalition.client import Client, ServerError
from coalition.dsse import Envelope, Signature
from coalition.dsse import sign as dsse_sign
from coalition.keys import SigningKey
from coalition.statements import payload_type, sign_statement
from coalition.v1 import ledger_pb2, party_pb2

from .helpers import raw_call, row_counts

REGISTER = "/coalition.v1.PartyService/RegisterParty"
WHO_AM_I = "/coalition.v1.PartyService/WhoAmI"
CODE = grpc.StatusCode


def _registration(key: SigningKey, **overrides: object) -> party_pb2.PartyRegistration:
    client = Client("unused:0", key=key)
    statement = client.registration(party_pb2.ROLE_LAB, "A Lab")
    for name, value in overrides.items():
        if name == "created_time":
            assert isinstance(value, datetime)
            statement.created_time.FromDatetime(value)
        else:
            setattr(statement, name, value)
    return statement


def _request(envelope: Envelope, request_id: str = "") -> bytes:
    return party_pb2.RegisterPartyRequest(
        registration=envelope.to_proto(), request_id=request_id
    ).SerializeToString()


def _signed(key: SigningKey, method: str, raw: bytes) -> tuple[tuple[str, str], ...]:
    return auth.CallSigner(key).metadata(method, raw)


def _cases() -> list[
    tuple[
        str,
        Callable[[SigningKey, SigningKey], tuple[str, bytes, tuple[tuple[str, str], ...]]],
        CODE,
        str,
    ]
]:
    def garbage(me: SigningKey, other: SigningKey):  # type: ignore[no-untyped-def]
        raw = b"\xff\xff\xff\xff garbage"
        return REGISTER, raw, _signed(me, REGISTER, raw)

    def unsigned(me: SigningKey, other: SigningKey):  # type: ignore[no-untyped-def]
        return REGISTER, _request(sign_statement(_registration(me), me)), ()

    def bad_call_signature(me: SigningKey, other: SigningKey):  # type: ignore[no-untyped-def]
        raw = _request(sign_statement(_registration(me), me))
        metadata = dict(_signed(me, REGISTER, raw))
        metadata[auth.SIGNATURE_HEADER] = base64.b64encode(os.urandom(64)).decode()
        return REGISTER, raw, tuple(metadata.items())

    def signed_other_bytes(me: SigningKey, other: SigningKey):  # type: ignore[no-untyped-def]
        raw = _request(sign_statement(_registration(me), me))
        return REGISTER, raw, _signed(me, REGISTER, raw + b"\x00")

    def stale_call(me: SigningKey, other: SigningKey):  # type: ignore[no-untyped-def]
        raw = _request(sign_statement(_registration(me), me))
        old = int((datetime.now(UTC) - timedelta(hours=1)).timestamp() * 1000)
        nonce = os.urandom(16)
        sig = me.sign(auth.call_message(REGISTER, old, nonce, raw))
        metadata = (
            (auth.PUBLIC_KEY_HEADER, base64.b64encode(me.public_key.raw).decode()),
            (auth.TIMESTAMP_HEADER, str(old)),
            (auth.NONCE_HEADER, base64.b64encode(nonce).decode()),
            (auth.SIGNATURE_HEADER, base64.b64encode(sig).decode()),
        )
        return REGISTER, raw, metadata

    def malformed_credentials(me: SigningKey, other: SigningKey):  # type: ignore[no-untyped-def]
        raw = _request(sign_statement(_registration(me), me))
        metadata = dict(_signed(me, REGISTER, raw))
        metadata[auth.PUBLIC_KEY_HEADER] = "not base64!"
        return REGISTER, raw, tuple(metadata.items())

    def unknown_key(me: SigningKey, other: SigningKey):  # type: ignore[no-untyped-def]
        raw = party_pb2.WhoAmIRequest().SerializeToString()
        return WHO_AM_I, raw, _signed(me, WHO_AM_I, raw)

    def someone_elses_key(me: SigningKey, other: SigningKey):  # type: ignore[no-untyped-def]
        raw = _request(sign_statement(_registration(other), other))
        return REGISTER, raw, _signed(me, REGISTER, raw)

    def forged_statement(me: SigningKey, other: SigningKey):  # type: ignore[no-untyped-def]
        genuine = sign_statement(_registration(me), me)
        forged = Envelope(
            genuine.payload_type, genuine.payload, (Signature(me.key_id, os.urandom(64)),)
        )
        raw = _request(forged)
        return REGISTER, raw, _signed(me, REGISTER, raw)

    def extra_signature(me: SigningKey, other: SigningKey):  # type: ignore[no-untyped-def]
        genuine = sign_statement(_registration(me), me)
        stranger = dsse_sign(genuine.payload_type, genuine.payload, other).signatures
        raw = _request(
            Envelope(genuine.payload_type, genuine.payload, (*genuine.signatures, *stranger))
        )
        return REGISTER, raw, _signed(me, REGISTER, raw)

    def statement(**overrides: object):  # type: ignore[no-untyped-def]
        def make(me: SigningKey, other: SigningKey):  # type: ignore[no-untyped-def]
            raw = _request(sign_statement(_registration(me, **overrides), me))
            return REGISTER, raw, _signed(me, REGISTER, raw)

        return make

    def out_of_range_time(me: SigningKey, other: SigningKey):  # type: ignore[no-untyped-def]
        registration = _registration(me)
        registration.created_time.seconds = 2**62
        raw = _request(sign_statement(registration, me))
        return REGISTER, raw, _signed(me, REGISTER, raw)

    def wrong_type(me: SigningKey, other: SigningKey):  # type: ignore[no-untyped-def]
        payload = _registration(me).SerializeToString()
        raw = _request(dsse_sign("application/vnd.coalition.v1.Other+proto", payload, me))
        return REGISTER, raw, _signed(me, REGISTER, raw)

    def non_canonical(me: SigningKey, other: SigningKey):  # type: ignore[no-untyped-def]
        # An unknown field (number 99) that verifiers would not see.
        payload = _registration(me).SerializeToString() + b"\x9a\x06\x03abc"
        raw = _request(dsse_sign(payload_type(party_pb2.PartyRegistration), payload, me))
        return REGISTER, raw, _signed(me, REGISTER, raw)

    def huge_payload(me: SigningKey, other: SigningKey):  # type: ignore[no-untyped-def]
        payload = _registration(me, name="x").SerializeToString() + b"\x00" * 70_000
        raw = _request(dsse_sign(payload_type(party_pb2.PartyRegistration), payload, me))
        return REGISTER, raw, _signed(me, REGISTER, raw)

    def bad_request_id(me: SigningKey, other: SigningKey):  # type: ignore[no-untyped-def]
        raw = _request(sign_statement(_registration(me), me), request_id="bad id with spaces")
        return REGISTER, raw, _signed(me, REGISTER, raw)

    def bad_page_token(me: SigningKey, other: SigningKey):  # type: ignore[no-untyped-def]
        method = "/coalition.v1.LedgerService/ListEntries"
        return method, ledger_pb2.ListEntriesRequest(page_token="@@").SerializeToString(), ()

    def missing_envelope(me: SigningKey, other: SigningKey):  # type: ignore[no-untyped-def]
        raw = party_pb2.RegisterPartyRequest().SerializeToString()
        return REGISTER, raw, _signed(me, REGISTER, raw)

    def empty_signatures(me: SigningKey, other: SigningKey):  # type: ignore[no-untyped-def]
        genuine = sign_statement(_registration(me), me).to_proto()
        del genuine.signatures[:]
        raw = party_pb2.RegisterPartyRequest(registration=genuine).SerializeToString()
        return REGISTER, raw, _signed(me, REGISTER, raw)

    stale = datetime.now(UTC) - timedelta(days=2)
    return [
        ("garbage bytes", garbage, CODE.INVALID_ARGUMENT, "MALFORMED_REQUEST"),
        ("unsigned mutation", unsigned, CODE.UNAUTHENTICATED, "MISSING_CREDENTIALS"),
        ("bad call signature", bad_call_signature, CODE.UNAUTHENTICATED, "BAD_SIGNATURE"),
        ("signature over other bytes", signed_other_bytes, CODE.UNAUTHENTICATED, "BAD_SIGNATURE"),
        ("stale call", stale_call, CODE.UNAUTHENTICATED, "STALE_REQUEST"),
        (
            "malformed credentials",
            malformed_credentials,
            CODE.UNAUTHENTICATED,
            "MALFORMED_CREDENTIALS",
        ),
        ("unknown key", unknown_key, CODE.UNAUTHENTICATED, "UNKNOWN_KEY"),
        ("registering another's key", someone_elses_key, CODE.PERMISSION_DENIED, "NOT_YOUR_KEY"),
        ("extra signature", extra_signature, CODE.INVALID_ARGUMENT, "UNEXPECTED_SIGNATURES"),
        ("forged statement", forged_statement, CODE.UNAUTHENTICATED, "BAD_STATEMENT_SIGNATURE"),
        ("no role", statement(role=party_pb2.ROLE_UNSPECIFIED), CODE.INVALID_ARGUMENT, "BAD_ROLE"),
        ("unknown role", statement(role=42), CODE.INVALID_ARGUMENT, "BAD_ROLE"),
        ("empty name", statement(name=""), CODE.INVALID_ARGUMENT, "BAD_NAME"),
        ("long name", statement(name="n" * 129), CODE.INVALID_ARGUMENT, "BAD_NAME"),
        ("control chars", statement(name="a\u0000b"), CODE.INVALID_ARGUMENT, "BAD_NAME"),
        ("short nonce", statement(nonce=b"123"), CODE.INVALID_ARGUMENT, "BAD_NONCE"),
        (
            "bad encryption key",
            statement(encryption_key=b"x"),
            CODE.INVALID_ARGUMENT,
            "BAD_ENCRYPTION_KEY",
        ),
        (
            "stale statement",
            statement(created_time=stale),
            CODE.INVALID_ARGUMENT,
            "STALE_STATEMENT",
        ),
        ("time out of range", out_of_range_time, CODE.INVALID_ARGUMENT, "BAD_CREATED_TIME"),
        ("name with spaces around", statement(name=" Ada "), CODE.INVALID_ARGUMENT, "BAD_NAME"),
        ("wrong statement type", wrong_type, CODE.INVALID_ARGUMENT, "WRONG_STATEMENT_TYPE"),
        ("non-canonical payload", non_canonical, CODE.INVALID_ARGUMENT, "MALFORMED_STATEMENT"),
        ("oversized statement", huge_payload, CODE.RESOURCE_EXHAUSTED, "PAYLOAD_TOO_LARGE"),
        ("bad request_id", bad_request_id, CODE.INVALID_ARGUMENT, "BAD_REQUEST_ID"),
        ("bad page token", bad_page_token, CODE.INVALID_ARGUMENT, "BAD_PAGE_TOKEN"),
        ("missing envelope", missing_envelope, CODE.INVALID_ARGUMENT, "MISSING_FIELD"),
        ("no signatures", empty_signatures, CODE.INVALID_ARGUMENT, "MALFORMED_ENVELOPE"),
    ]


CASES = _cases()


@pytest.mark.parametrize(("name", "build", "code", "why"), CASES, ids=[c[0] for c in CASES])
async def test_refused_with_reason_and_nothing_written(
    target: str,
    db_url: str,
    anonymous: Client,
    name: str,
    build: Callable[[SigningKey, SigningKey], tuple[str, bytes, tuple[tuple[str, str], ...]]],
    code: grpc.StatusCode,
    why: str,
) -> None:
    before = await row_counts(db_url)
    method, raw, metadata = build(SigningKey.generate(), SigningKey.generate())
    with pytest.raises(ServerError) as refused:
        await raw_call(target, method, raw, metadata)
    assert (refused.value.code, refused.value.reason) == (code, why), refused.value
    assert await row_counts(db_url) == before
    assert (await anonymous.checkpoint()).tree_size == 1  # still up: only the coalition's entry


async def test_replayed_call_is_refused(target: str, db_url: str) -> None:
    me = SigningKey.generate()
    raw = _request(sign_statement(_registration(me), me))
    metadata = _signed(me, REGISTER, raw)
    await raw_call(target, REGISTER, raw, metadata)
    before = await row_counts(db_url)
    with pytest.raises(ServerError) as replayed:
        await raw_call(target, REGISTER, raw, metadata)
    assert (replayed.value.code, replayed.value.reason) == (
        CODE.UNAUTHENTICATED,
        "REPLAYED_REQUEST",
    )
    assert await row_counts(db_url) == before


async def test_message_over_the_transport_limit_is_refused(target: str, anonymous: Client) -> None:
    with pytest.raises(ServerError) as refused:
        await raw_call(target, REGISTER, b"\x0a" + b"\xff" * (9 * 1024 * 1024))
    assert refused.value.code == CODE.RESOURCE_EXHAUSTED
    assert (await anonymous.checkpoint()).tree_size == 1
