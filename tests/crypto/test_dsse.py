"""DSSE v1 envelopes: PAE, signing, verification and the protobuf/JSON forms."""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

import pytest

from coalition import dsse
from coalition.dsse import Envelope, Signature, pae
from coalition.errors import EnvelopeError, SignatureError, VerificationError
from coalition.keys import SigningKey
from coalition.v1 import envelope_pb2

PAYLOAD_TYPE = "application/vnd.coalition.v1.Test+proto"


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


def test_pae_matches_the_spec_example() -> None:
    # From the DSSE protocol document.
    assert (
        pae("http://example.com/HelloWorld", b"hello world")
        == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_pae_lengths_are_byte_lengths() -> None:
    assert pae("", b"") == b"DSSEv1 0  0 "
    assert pae("é", b"\x00\x01") == b"DSSEv1 2 \xc3\xa9 2 \x00\x01"


def test_sign_and_verify(key: SigningKey) -> None:
    env = dsse.sign(PAYLOAD_TYPE, b"\x08\x01payload", key)
    assert env.payload_type == PAYLOAD_TYPE
    assert env.signatures[0].keyid == key.key_id
    key.public_key.verify(env.signatures[0].sig, pae(PAYLOAD_TYPE, b"\x08\x01payload"))
    assert dsse.verify(env, key.public_key) == b"\x08\x01payload"


def test_verify_rejects_other_keys_and_tampering(key: SigningKey) -> None:
    env = dsse.sign(PAYLOAD_TYPE, b"payload", key)
    with pytest.raises(SignatureError, match="no signature"):
        dsse.verify(env, SigningKey.generate().public_key)
    for tampered in (
        Envelope(PAYLOAD_TYPE, b"payloaD", env.signatures),
        Envelope(PAYLOAD_TYPE + "x", b"payload", env.signatures),
        Envelope(
            PAYLOAD_TYPE,
            b"payload",
            (Signature(env.signatures[0].keyid, bytes(64)),),
        ),
    ):
        with pytest.raises(SignatureError):
            dsse.verify(tampered, key.public_key)


def test_signature_under_a_claimed_keyid_of_another_key_fails(key: SigningKey) -> None:
    # A signature by one key labelled with the victim's keyid must not pass.
    mallory = SigningKey.generate()
    forged = Signature(key.key_id, mallory.sign(pae(PAYLOAD_TYPE, b"x")))
    with pytest.raises(SignatureError):
        dsse.verify(Envelope(PAYLOAD_TYPE, b"x", (forged,)), key.public_key)


def test_multiple_signatures(key: SigningKey) -> None:
    other = SigningKey.generate()
    a = dsse.sign(PAYLOAD_TYPE, b"joint", key)
    b = dsse.sign(PAYLOAD_TYPE, b"joint", other)
    env = Envelope(PAYLOAD_TYPE, b"joint", a.signatures + b.signatures)
    assert dsse.verify(env, key.public_key) == b"joint"
    assert dsse.verify(env, other.public_key) == b"joint"


def test_errors_are_verification_errors() -> None:
    assert issubclass(EnvelopeError, VerificationError)
    assert issubclass(SignatureError, VerificationError)


GOOD_SIG = Signature("ab" * 32, bytes(64))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"payload_type": ""}, "payload_type"),
        ({"payload_type": "x" * 257}, "longer"),
        ({"payload_type": "\ud800"}, "Unicode"),
        ({"payload_type": 5}, "payload_type"),
        ({"payload": "text"}, "bytes"),
        ({"signatures": ()}, "at least one"),
        ({"signatures": (GOOD_SIG, GOOD_SIG)}, "same keyid"),
        ({"signatures": ("sig",)}, "Signature objects"),
    ],
)
def test_envelope_validates_on_construction(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {
        "payload_type": PAYLOAD_TYPE,
        "payload": b"p",
        "signatures": (GOOD_SIG,),
    }
    args.update(kwargs)
    with pytest.raises(EnvelopeError, match=match):
        Envelope(**args)


def test_envelope_limits_are_inclusive() -> None:
    assert Envelope("x" * 256, b"", (GOOD_SIG,)).signatures == (GOOD_SIG,)


@pytest.mark.parametrize(
    ("keyid", "sig"),
    [
        ("AB" * 32, bytes(64)),
        ("ab" * 31, bytes(64)),
        ("ab" * 33, bytes(64)),
        ("zz" * 32, bytes(64)),
        ("ab" * 32, bytes(63)),
        ("ab" * 32, bytes(65)),
        ("ab" * 32, "0" * 64),
        (None, bytes(64)),
    ],
)
def test_signature_validates_on_construction(keyid: Any, sig: Any) -> None:
    with pytest.raises(EnvelopeError):
        Signature(keyid, sig)


def test_proto_round_trip(key: SigningKey) -> None:
    env = dsse.sign(PAYLOAD_TYPE, b"\x00\xffbytes", key)
    msg = env.to_proto()
    assert isinstance(msg, envelope_pb2.Envelope)
    assert msg.payload_type == PAYLOAD_TYPE
    assert msg.signatures[0].keyid == key.key_id
    wire = msg.SerializeToString()
    back = Envelope.from_proto(envelope_pb2.Envelope.FromString(wire))
    assert back == env
    assert dsse.verify(back, key.public_key) == b"\x00\xffbytes"


@pytest.mark.parametrize(
    "msg",
    [
        envelope_pb2.Envelope(),
        envelope_pb2.Envelope(payload_type=PAYLOAD_TYPE, payload=b"x"),
        envelope_pb2.Envelope(
            payload_type=PAYLOAD_TYPE,
            payload=b"x",
            signatures=[envelope_pb2.Signature(keyid="nothex", sig=bytes(64))],
        ),
        envelope_pb2.Envelope(
            payload_type=PAYLOAD_TYPE,
            payload=b"x",
            signatures=[envelope_pb2.Signature(keyid="ab" * 32, sig=b"short")],
        ),
    ],
)
def test_from_proto_rejects_invalid_content(msg: envelope_pb2.Envelope) -> None:
    with pytest.raises(EnvelopeError):
        Envelope.from_proto(msg)


def test_from_proto_rejects_other_types() -> None:
    with pytest.raises(EnvelopeError):
        Envelope.from_proto(envelope_pb2.Signature())  # type: ignore[arg-type]


def test_json_form(key: SigningKey) -> None:
    env = dsse.sign(PAYLOAD_TYPE, b"hello", key)
    obj = json.loads(env.to_json())
    assert obj == {
        "payload": base64.b64encode(b"hello").decode(),
        "payloadType": PAYLOAD_TYPE,
        "signatures": [
            {"keyid": key.key_id, "sig": base64.b64encode(env.signatures[0].sig).decode()}
        ],
    }
    assert Envelope.from_json(env.to_json()) == env
    assert Envelope.from_json(env.to_json().encode()) == env


def test_json_accepts_url_safe_base64_and_ignores_unknown_fields(key: SigningKey) -> None:
    payload = b"\xfb\xff\xfe?"  # encodes with + and / in standard base64
    env = dsse.sign(PAYLOAD_TYPE, payload, key)
    obj = json.loads(env.to_json())
    obj["payload"] = base64.urlsafe_b64encode(payload).decode().rstrip("=")
    obj["signatures"][0]["sig"] = base64.urlsafe_b64encode(env.signatures[0].sig).decode()
    obj["extra"] = 1
    assert Envelope.from_json(json.dumps(obj)) == env


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        "{}",
        '{"payloadType": "t", "payload": "aGk=", "signatures": {}}',
        '{"payloadType": 1, "payload": "aGk=", "signatures": []}',
        '{"payloadType": "t", "payload": "aGk=", "signatures": []}',
        '{"payloadType": "t", "payload": "!!!!", "signatures": []}',
        '{"payloadType": "t", "payload": 5, "signatures": []}',
        '{"payloadType": "t", "payload": "aGk=", "signatures": ["x"]}',
        '{"payloadType": "t", "payload": "aGk=", "signatures": [{"sig": "AAAA"}]}',
        '{"payloadType": "t", "payload": "a+_k", "signatures": []}',
        '{"payloadType": "t", "payload": "aGk=", "signatures": [{"keyid": "'
        + "ab" * 32
        + '", "sig": "AAAA"}]}',
        "[" * 100000,
    ],
)
def test_from_json_rejects_malformed(text: str) -> None:
    with pytest.raises(EnvelopeError):
        Envelope.from_json(text)


def test_sign_rejects_bad_input(key: SigningKey) -> None:
    with pytest.raises(EnvelopeError):
        dsse.sign("", b"x", key)
    with pytest.raises(EnvelopeError):
        dsse.sign(PAYLOAD_TYPE, "x", key)  # type: ignore[arg-type]


def test_envelope_is_immutable(key: SigningKey) -> None:
    env = dsse.sign(PAYLOAD_TYPE, b"x", key)
    with pytest.raises(AttributeError):
        env.payload = b"y"  # type: ignore[misc]


def test_the_signed_bytes_follow_the_envelope(key: SigningKey) -> None:
    env = dsse.sign(PAYLOAD_TYPE, b"x", key)
    assert env.pae() == pae(PAYLOAD_TYPE, b"x")
    assert env.pae() is env.pae()  # encoded once
    other = dataclasses.replace(env, payload=b"y")
    assert other.pae() == pae(PAYLOAD_TYPE, b"y")
    assert env == dsse.Envelope.from_proto(env.to_proto())  # still compared by its fields
