"""Bad input against every RPC (issue #7, point 6), on SQLite and on PostgreSQL.

For each RPC of the generated descriptors, starting from a well-formed request of that RPC
(``rpcs.BUILDERS``, made by a caller the RPC is for), hypothesis sends:

(a) random bytes;
(b) truncations of the request (of one message, or of the stream, for UploadContent);
(c) the request with one field, at any depth, re-encoded with a wrong wire type;
(d) deeply nested unknown groups and messages, 200,000 unknown fields, a 4 MiB unknown
    field, and a message over the server's 8 MiB limit;
(e) unicode edge cases in every string field of the request (NUL, bidirectional overrides,
    combining marks, non-characters, 10,000-character strings, invalid UTF-8 bytes), and,
    re-signed by the caller, in the string fields of the statement it carries; likewise
    the extremes of every numeric field's type (2**64-1, -2**63, unknown enum values);
(f) forged call signatures (another key's, a flipped bit, another method's, other bytes,
    a stale or future timestamp), a flipped bit in the statement's signature, and the
    same call sent twice (the second is a replay).

Every call must end with OK (the garbage happened to be a valid read), or a status code
and ErrorInfo reason that ``docs/protocol.md`` documents for that code; never UNKNOWN or
INTERNAL. A message over the transport limit is RESOURCE_EXHAUSTED from gRPC itself (no
ErrorInfo). Forgeries and replays must be refused with exactly the documented reason.
After each RPC: the server still answers its health check, and no table gained or lost a
row. The request a mutation is built from was sent once before counting rows ("priming"),
so that everything derived from it is a duplicate at best: a write would be a bug.

Inputs are derandomised (the same on every run); a failure lists the RPC, the category
and the start of the request bytes.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import cast

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from coalition import auth, dsse
from coalition.keys import SigningKey
from coalition.statements import STATEMENT_TYPES, sign_statement
from coalition.v1 import access_pb2, consent_pb2, envelope_pb2
from coalition_server.config import Settings
from tests.integration import builders
from tests.integration.world import pledge

from .rpcs import (
    BUILDERS,
    CODE,
    Builder,
    Metadata,
    Outcome,
    Request,
    RowCounter,
    Rpc,
    Who,
    World,
    all_rpcs,
    build,
    build_world,
    call_metadata,
    changed,
    documented_reasons,
    invoke,
    invoke_sync,
    ratifying_server,
    serialise,
)

DOCUMENTED = documented_reasons()
EXAMPLES = 10
"""Hypothesis examples per RPC and category (the categories are listed above)."""
TRANSPORT_LIMIT = 8 * 1024 * 1024
"""The server's largest message (Settings.max_message_bytes, default)."""

# The base requests that differ from the authorisation matrix's, so that no variant of
# them (a statement edited and re-signed by its caller) can be a valid new mutation:
# caller name and request builder.
BASES: dict[str, tuple[str, Builder]] = {
    # A member the agreement does not cover: NOT_COVERED whatever the dispute says.
    "DisputeService.FileDispute": ("second_contributor", BUILDERS["DisputeService.FileDispute"]),
    # The lease on withdrawn items: accepted, and releases (writes) nothing.
    "AccessService.Fetch": (
        "lab",
        lambda w, who: access_pb2.FetchRequest(lease_id=w.idle_lease_id),
    ),
    # A lease on the agreement nothing is consented for any more: NO_CONSENTED_ITEMS.
    "AccessService.TakeLease": (
        "lab",
        lambda w, who: access_pb2.TakeLeaseRequest(
            lease_request=sign_statement(
                builders.lease_request(w.idle_agreement_id), who.key
            ).to_proto()
        ),
    ),
    # Everything, by the member with no consent in force: NOTHING_TO_WITHDRAW, and a
    # re-signed variant naming a token or items finds none it may withdraw.
    "ConsentService.Withdraw": (
        "second_contributor",
        lambda w, who: consent_pb2.WithdrawRequest(
            withdrawal=sign_statement(builders.withdrawal(), who.key).to_proto()
        ),
    ),
}
# Statement fields edited and re-signed by the caller: everywhere except where a valid
# changed statement would be accepted and written (a new token, a new negotiation).
NO_STATEMENT_EDITS = {"ConsentService.GrantConsent", "NegotiationService.OpenNegotiation"}

EDGE_STRINGS = (
    "",
    "\x00",
    "a\x00b",
    "\u202eevil\u202c",  # right-to-left override
    "\u200f\u200e",  # right-to-left and left-to-right marks
    "\u200b",  # zero-width space
    "e\u0301",  # a combining acute accent
    "\u0301" * 10_000,  # nothing but combining marks
    "\ufeff",  # byte order mark
    "\U0001f600",
    "\uffff\U0010ffff",  # non-characters
    "１２３٣",  # full-width and Arabic-Indic digits
    "x" * 10_000,
    "é" * 10_000,
    "\u2028\r\n\t",
    "../../etc/passwd",
    "' OR 1=1 --",
    "%s%n{0}",
)
MARKER = "QZQZQZQZ"
INVALID_UTF8 = (
    b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8",
    b"\xed\xa0\x80AAAAA",  # an encoded surrogate
    b"\xc0\x80AAAAAA",  # an overlong NUL
    b"\xf4\x90\x80\x80AAAA",  # beyond U+10FFFF
    b"AAAAAA\xe2\x82",  # a truncated sequence
    b"\x80\x80\x80\x80\x80\x80\x80\x80",  # lone continuation bytes
)
assert all(len(bad) == len(MARKER) for bad in INVALID_UTF8)


# --- the protobuf wire format --------------------------------------------------------------

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5


def varint(value: int) -> bytes:
    """An unsigned varint."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    """A field's key."""
    return varint(number << 3 | wire_type)


@dataclass(frozen=True)
class WireField:
    """One field as encoded: number, wire type, and the bytes after its key."""

    number: int
    wire_type: int
    body: bytes

    def encode(self) -> bytes:
        return tag(self.number, self.wire_type) + self.body

    @property
    def payload(self) -> bytes:
        """A LEN field's content (without its length)."""
        _, start = _read_varint(self.body, 0)
        return self.body[start:]


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def wire_fields(data: bytes) -> list[WireField] | None:
    """The top-level fields of an encoded message, or None if it does not parse as one
    (groups are not expected in our messages and end the attempt)."""
    fields: list[WireField] = []
    pos = 0
    try:
        while pos < len(data):
            key, body_start = _read_varint(data, pos)
            number, wire_type = key >> 3, key & 7
            if number == 0:
                return None
            if wire_type == VARINT:
                _, end = _read_varint(data, body_start)
            elif wire_type == I64:
                end = body_start + 8
            elif wire_type == I32:
                end = body_start + 4
            elif wire_type == LEN:
                length, start = _read_varint(data, body_start)
                end = start + length
            else:
                return None
            if end > len(data):
                return None
            fields.append(WireField(number, wire_type, data[body_start:end]))
            pos = end
    except ValueError:
        return None
    return fields


def with_length(payload: bytes) -> bytes:
    """A LEN field's body."""
    return varint(len(payload)) + payload


@st.composite
def wrong_wire_type(draw: st.DrawFn, data: bytes, depth: int = 0) -> bytes:
    """``data`` with one field (top level, or inside a nested message) re-encoded with
    another wire type and a plausible body for that type."""
    fields = wire_fields(data)
    if not fields:
        return data + tag(draw(st.integers(1, 20)), draw(st.sampled_from([SGROUP, EGROUP])))
    index = draw(st.integers(0, len(fields) - 1))
    chosen = fields[index]
    nested = wire_fields(chosen.payload) if chosen.wire_type == LEN else None
    if nested and depth < 4 and draw(st.booleans()):
        inner = draw(wrong_wire_type(chosen.payload, depth + 1))
        fields[index] = replace(chosen, body=with_length(inner))
    else:
        wire_type = draw(st.sampled_from([t for t in (0, 1, 2, 3, 4, 5) if t != chosen.wire_type]))
        bodies = {
            VARINT: varint(draw(st.integers(0, 2**64 - 1))),
            I64: draw(st.binary(min_size=8, max_size=8)),
            LEN: with_length(draw(st.binary(max_size=64))),
            # A whole group (its end key closes it), or an end key with no start.
            SGROUP: tag(chosen.number, EGROUP),
            EGROUP: b"",
            I32: draw(st.binary(min_size=4, max_size=4)),
        }
        fields[index] = WireField(chosen.number, wire_type, bodies[wire_type])
    return b"".join(f.encode() for f in fields)


def inject(data: bytes, blob: bytes) -> bytes:
    """``blob`` (encoded unknown fields) inside the request's first sub-message, so that
    it is parsed at depth; at the top level if there is none."""
    fields = wire_fields(data) or []
    for index, f in enumerate(fields):
        if f.wire_type == LEN and wire_fields(f.payload):
            fields[index] = replace(f, body=with_length(f.payload + blob))
            return b"".join(x.encode() for x in fields)
    return data + blob


def nested_groups(depth: int) -> bytes:
    """An unknown group nested ``depth`` deep (each level opens one more)."""
    return tag(1000, SGROUP) * depth + tag(1000, EGROUP) * depth


def nested_messages(depth: int) -> bytes:
    """An unknown length-delimited field nested ``depth`` deep."""
    blob = b""
    for _ in range(depth):
        blob = tag(1000, LEN) + with_length(blob)
    return blob


def big_field(size: int) -> bytes:
    """One unknown length-delimited field of ``size`` bytes."""
    return tag(1001, LEN) + with_length(b"\x00" * size)


# --- scalar fields -------------------------------------------------------------------------

Slot = tuple[tuple[str, int | None], ...]
"""A path to a scalar field: (field name, index in a repeated field or None) per level."""


def field_slots(
    message: Message, wanted: Callable[[FieldDescriptor], bool], depth: int = 0
) -> list[tuple[Slot, FieldDescriptor]]:
    """Every ``wanted`` scalar field of ``message``'s type, through set repeated elements
    and through singular sub-messages (set or not) to a bounded depth."""
    slots: list[tuple[Slot, FieldDescriptor]] = []
    for field_ in message.DESCRIPTOR.fields:
        f = cast(FieldDescriptor, field_)  # the upb descriptor implements this interface
        if f.type != f.TYPE_MESSAGE:
            if wanted(f):
                slots.append((((f.name, 0 if f.is_repeated else None),), f))
        elif depth < 4 and not (f.message_type and f.message_type.GetOptions().map_entry):
            if f.is_repeated:
                elements = getattr(message, f.name)
                if not elements:
                    continue
                sub, index = elements[0], 0
            else:
                sub, index = getattr(message, f.name), None
            slots.extend(
                (((f.name, index), *tail), d) for tail, d in field_slots(sub, wanted, depth + 1)
            )
    return slots


def is_string(f: FieldDescriptor) -> bool:
    """A string field (bytes fields are not text)."""
    return bool(f.type == f.TYPE_STRING)


def is_number(f: FieldDescriptor) -> bool:
    """A numeric (or enum, or bool) field."""
    return bool(extremes(f))


def extremes(f: FieldDescriptor) -> tuple[object, ...]:
    """The edge values of a numeric field's type (in range: the wire can carry no more);
    empty for a field that is not numeric."""
    t = FieldDescriptor
    by_type: dict[int, tuple[object, ...]] = {
        t.TYPE_INT32: (-(2**31), -1, 0, 2**31 - 1),
        t.TYPE_SINT32: (-(2**31), -1, 2**31 - 1),
        t.TYPE_SFIXED32: (-(2**31), -1, 2**31 - 1),
        t.TYPE_INT64: (-(2**63), -1, 0, 2**53 + 1, 2**63 - 1),
        t.TYPE_SINT64: (-(2**63), -1, 2**63 - 1),
        t.TYPE_SFIXED64: (-(2**63), -1, 2**63 - 1),
        t.TYPE_UINT32: (0, 2**31, 2**32 - 1),
        t.TYPE_FIXED32: (0, 2**31, 2**32 - 1),
        t.TYPE_UINT64: (0, 2**31, 2**63 - 1, 2**63, 2**64 - 1),
        t.TYPE_FIXED64: (0, 2**63, 2**64 - 1),
        # Open enums: values no version of the API defines.
        t.TYPE_ENUM: (-1, 999, 2**31 - 1),
        t.TYPE_BOOL: (True, False),
        t.TYPE_DOUBLE: (float("inf"), float("-inf"), float("nan"), -0.0, 1e308),
        t.TYPE_FLOAT: (float("inf"), float("nan"), 3.4e38),
    }
    return by_type.get(f.type, ())


def set_value(message: Message, slot: Slot, value: object) -> None:
    """Set the scalar at ``slot`` (appending to an empty repeated field)."""
    target = message
    for name, index in slot[:-1]:
        target = getattr(target, name) if index is None else getattr(target, name)[index]
    name, index = slot[-1]
    if index is None:
        setattr(target, name, value)
        return
    values = getattr(target, name)
    if len(values) > index:
        values[index] = value
    else:
        values.append(value)


def with_value(cls: type[Message], data: bytes, slot: Slot, value: object) -> bytes:
    """``data`` (a ``cls``) with the scalar at ``slot`` replaced. Bytes given for a string
    are put on the wire as they are (invalid UTF-8), through a marker of their length."""
    message = cls.FromString(data)
    set_value(message, slot, MARKER if isinstance(value, bytes) else value)
    encoded = message.SerializeToString()
    if isinstance(value, bytes):
        assert encoded.count(MARKER.encode()) == 1
        encoded = encoded.replace(MARKER.encode(), value)
    return encoded


def first_envelope(message: Message) -> tuple[str, int | None] | None:
    """The request's first Envelope field: (name, index or None)."""
    for f in message.DESCRIPTOR.fields:
        if f.message_type is not None and f.message_type.full_name == "coalition.v1.Envelope":
            if f.is_repeated:
                return (f.name, 0) if getattr(message, f.name) else None
            return (f.name, None) if message.HasField(f.name) else None
    return None


def _envelope_at(message: Message, where: tuple[str, int | None]) -> envelope_pb2.Envelope:
    name, index = where
    found = getattr(message, name) if index is None else getattr(message, name)[index]
    assert isinstance(found, envelope_pb2.Envelope)
    return found


def resigned(rpc: Rpc, data: bytes, key: SigningKey, slot: Slot, value: object) -> bytes:
    """The request with a scalar of its (first) statement replaced and re-signed by
    ``key``: the statement is well signed, so the server judges its content."""
    request = rpc.request_class.FromString(data)
    where = first_envelope(request)
    assert where is not None
    envelope = _envelope_at(request, where)
    payload = with_value(STATEMENT_TYPES[envelope.payload_type], envelope.payload, slot, value)
    # Sign the payload bytes as they are (invalid UTF-8 would not parse back).
    envelope.CopyFrom(dsse.sign(envelope.payload_type, payload, key).to_proto())
    return request.SerializeToString()


# --- probes --------------------------------------------------------------------------------

FORGERIES = ("other_key", "flip", "swap_key", "other_method", "other_bytes", "stale", "future")


@dataclass(frozen=True)
class Probe:
    """One call to make: the request bytes, and how to sign the call."""

    category: str
    request: Request
    signing: str = "valid"
    """``valid``, one of FORGERIES, or ``none``."""
    bit: int = 0
    """The bit flipped by the ``flip`` forgery."""
    expect: tuple[grpc.StatusCode, str] | None = None
    """The exact outcome a forgery must have; None: any documented outcome."""
    wait: float = 0.5
    """Seconds a server stream may stay open before it counts as accepted (longer for
    the large probes: the upload itself takes a while)."""

    def describe(self) -> str:
        data = self.request if isinstance(self.request, bytes) else b"|".join(self.request)
        return f"{self.category}/{self.signing} {len(data)} bytes {data[:40].hex()}"


def forged(probe: Probe, rpc: Rpc, key: SigningKey, other: SigningKey) -> Metadata:
    """The call credentials a probe asks for, made now (fresh timestamp and nonce)."""
    if probe.signing == "none":
        return ()
    if probe.signing == "valid":
        return call_metadata(key, rpc, probe.request)
    signed = b"" if rpc.client_streaming else probe.request
    assert isinstance(signed, bytes)
    timestamp = time.time_ns() // 1_000_000
    nonce = os.urandom(auth.NONCE_BYTES)
    method, signer, public = rpc.method, key, key.public_key.raw
    if probe.signing == "other_key":
        signer = other
    elif probe.signing == "swap_key":
        public = other.public_key.raw
    elif probe.signing == "other_method":
        method = "/coalition.v1.PartyService/WhoAmI"
        if method == rpc.method:
            method = "/coalition.v1.LedgerService/GetCheckpoint"
    elif probe.signing == "other_bytes":
        signed += b"\x00"
    elif probe.signing == "stale":
        timestamp -= 10 * 60 * 1000
    elif probe.signing == "future":
        timestamp += 10 * 60 * 1000
    signature = signer.sign(auth.call_message(method, timestamp, nonce, signed))
    if probe.signing == "flip":
        signature = _flip(signature, probe.bit)
    return (
        (auth.PUBLIC_KEY_HEADER, base64.b64encode(public).decode()),
        (auth.TIMESTAMP_HEADER, str(timestamp)),
        (auth.NONCE_HEADER, base64.b64encode(nonce).decode()),
        (auth.SIGNATURE_HEADER, base64.b64encode(signature).decode()),
    )


def _flip(data: bytes, bit: int) -> bytes:
    flipped = bytearray(data)
    flipped[bit // 8 % len(data)] ^= 1 << bit % 8
    return bytes(flipped)


def _first(request: Request) -> bytes:
    return request if isinstance(request, bytes) else request[0]


def _with_first(request: Request, first: bytes) -> Request:
    return first if isinstance(request, bytes) else (first, *request[1:])


def strategies(rpc: Rpc, base: Request, key: SigningKey) -> dict[str, st.SearchStrategy[Probe]]:
    """Hypothesis strategies of probes for ``rpc``, by category, from its base request."""
    first = _first(base)
    cls = rpc.request_class
    random_request: st.SearchStrategy[Request] = (
        st.lists(st.binary(max_size=512), max_size=4).map(tuple)
        if rpc.client_streaming
        else st.binary(max_size=2048)
    )

    @st.composite
    def truncated(draw: st.DrawFn) -> Probe:
        if isinstance(base, bytes):
            return Probe("truncation", base[: draw(st.integers(0, len(base) - 1))])
        index = draw(st.integers(0, len(base) - 1))
        cut = base[index][: draw(st.integers(0, max(0, len(base[index]) - 1)))]
        stream = (
            (*base[:index], cut)
            if draw(st.booleans())
            else (*base[:index], cut, *base[index + 1 :])
        )
        return Probe("truncation", stream)

    def edit(
        statement: bool, wanted: Callable[[FieldDescriptor], bool]
    ) -> st.SearchStrategy[Probe] | None:
        """Probes setting one ``wanted`` field of the request (or, re-signed, of its
        statement) to an edge value of its type; None if there is no such field."""
        request = cls.FromString(first)
        if statement:
            where = first_envelope(request)
            assert where is not None
            envelope = _envelope_at(request, where)
            statement_cls = STATEMENT_TYPES[envelope.payload_type]
            slots = field_slots(statement_cls.FromString(envelope.payload), wanted)
        else:
            slots = field_slots(request, wanted)
        category = ("statement-" if statement else "") + (
            "unicode" if wanted is is_string else "numbers"
        )

        @st.composite
        def probe(draw: st.DrawFn) -> Probe:
            slot, descriptor = draw(st.sampled_from(slots))
            value: object = draw(
                st.one_of(
                    st.sampled_from(EDGE_STRINGS),
                    st.text(max_size=40),
                    st.sampled_from(INVALID_UTF8),
                )
                if wanted is is_string
                else st.sampled_from(extremes(descriptor))
            )
            if statement:
                return Probe(category, _with_first(base, resigned(rpc, first, key, slot, value)))
            return Probe(category, _with_first(base, with_value(cls, first, slot, value)))

        return probe() if slots else None

    @st.composite
    def forgery(draw: st.DrawFn) -> Probe:
        kind = draw(st.sampled_from(FORGERIES))
        reason = "STALE_REQUEST" if kind in ("stale", "future") else "BAD_SIGNATURE"
        return Probe(
            "forgery", base, kind, draw(st.integers(0, 511)), (CODE.UNAUTHENTICATED, reason)
        )

    found: dict[str, st.SearchStrategy[Probe]] = {
        "random": random_request.map(lambda r: Probe("random", r)),
        "wire-type": wrong_wire_type(first).map(lambda d: Probe("wire-type", _with_first(base, d))),
        "forgery": forgery(),
    }
    if first:  # an empty request has no truncation
        found["truncation"] = truncated()
    edits = [(False, is_string), (False, is_number)]
    carries_statement = first_envelope(cls.FromString(first)) is not None
    if carries_statement and rpc.label not in NO_STATEMENT_EDITS:
        edits += [(True, is_string), (True, is_number)]
    for statement, wanted in edits:
        strategy = edit(statement, wanted)
        if strategy is not None:
            kind = "unicode" if wanted is is_string else "numbers"
            found[("statement-" if statement else "") + kind] = strategy
    if carries_statement:
        found["statement-forgery"] = st.integers(0, 511).map(
            lambda bit: Probe(
                "statement-forgery",
                flip_statement_signature(rpc, first, bit),
                expect=(CODE.UNAUTHENTICATED, "BAD_STATEMENT_SIGNATURE"),
            )
        )
    return found


def flip_statement_signature(rpc: Rpc, data: bytes, bit: int) -> bytes:
    """The request with one bit of its first statement's first signature flipped."""
    request = rpc.request_class.FromString(data)
    where = first_envelope(request)
    assert where is not None
    signature = _envelope_at(request, where).signatures[0]
    signature.sig = _flip(signature.sig, bit)
    return request.SerializeToString()


def fixed_probes(rpc: Rpc, base: Request) -> list[Probe]:
    """Depth and size, the same for every RPC: (d) of the module docstring."""
    first = _first(base)
    return [
        Probe("nested", _with_first(base, inject(first, nested_groups(100_000)))),
        Probe("nested", _with_first(base, inject(first, nested_messages(3_000)))),
        Probe("nested", _with_first(base, first + (tag(1002, VARINT) + b"\x01") * 200_000)),
        Probe("large", _with_first(base, first + big_field(4 * 1024 * 1024)), wait=10),
        Probe(
            "oversized",
            _with_first(base, first + big_field(TRANSPORT_LIMIT + 1024)),
            expect=(CODE.RESOURCE_EXHAUSTED, ""),
            wait=10,
        ),
    ]


# --- judging -------------------------------------------------------------------------------


def verdict(probe: Probe, outcome: Outcome) -> str | None:
    """Why ``outcome`` is wrong for ``probe``, or None if it is fine."""
    got = (outcome.code, outcome.reason)
    if probe.expect is not None:
        return None if got == probe.expect else f"expected {probe.expect[0].name}/{probe.expect[1]}"
    if outcome.ok:
        return None
    if outcome.code.name not in DOCUMENTED:
        return "undocumented status code"
    if outcome.domain != "coalition" or outcome.reason not in DOCUMENTED[outcome.code.name]:
        return "reason not documented for this code"
    return None


@dataclass
class Tally:
    """What one database's campaign saw."""

    calls: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    categories: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)

    def record(self, rpc: Rpc, probe: Probe, outcome: Outcome) -> None:
        self.calls += 1
        self.codes[outcome.code.name] += 1
        if outcome.reason:
            self.reasons[outcome.reason] += 1
        self.categories[probe.category] += 1
        problem = verdict(probe, outcome)
        if problem is not None:
            self.unexpected.append(f"{rpc.label} {probe.describe()}: {outcome} ({problem})")


HYPOTHESIS = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    # Nothing is raised inside (outcomes are tallied), so there is nothing to shrink.
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def campaign(channel: grpc.Channel, rpc: Rpc, base: Request, who: Who, tally: Tally) -> None:
    """Every probe for one RPC (runs in a worker thread: the calls block)."""
    other = SigningKey.generate()

    def send(probe: Probe) -> Outcome:
        metadata = forged(probe, rpc, who.key, other)
        outcome = invoke_sync(channel, rpc, probe.request, metadata, stream_wait=probe.wait)
        tally.record(rpc, probe, outcome)
        return outcome

    for strategy in strategies(rpc, base, who.key).values():

        @HYPOTHESIS
        @given(strategy)
        def run(probe: Probe) -> None:
            send(probe)

        run()
    for probe in fixed_probes(rpc, base):
        send(probe)
    # The same call twice: the second is a replay, whatever became of the first.
    metadata = call_metadata(who.key, rpc, base)
    for expect in (None, (CODE.UNAUTHENTICATED, "REPLAYED_REQUEST")):
        probe = Probe("replay", base, expect=expect)
        tally.record(rpc, probe, invoke_sync(channel, rpc, base, metadata))


async def _prime(channel: grpc.aio.Channel, world: World, rpc: Rpc) -> tuple[Who, Request, Outcome]:
    """The base request of ``rpc`` and its caller, sent once (see the module docstring).

    The caller is the one of BASES, else the contributor or the lab, whichever the RPC is
    for (the first not refused for who it is)."""
    if rpc.label in BASES:
        name, builder = BASES[rpc.label]
        who = world.who(name)
        request = serialise(builder(world, who))
        return (
            who,
            request,
            await invoke(channel, rpc, request, call_metadata(who.key, rpc, request)),
        )
    for name in ("contributor", "lab"):
        who = world.who(name)
        request = build(world, rpc, who)
        outcome = await invoke(channel, rpc, request, call_metadata(who.key, rpc, request))
        if outcome.code not in (CODE.UNAUTHENTICATED, CODE.PERMISSION_DENIED):
            break
    return who, request, outcome


def _health(channel: grpc.Channel) -> bool:
    stub = health_pb2_grpc.HealthStub(channel)
    response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


@pytest.mark.slow
async def test_garbage_against_every_rpc(
    settings: Settings, tmp_path: Path, db_url: str, figure: Callable[[str], None]
) -> None:
    database = db_url.partition("+")[0]
    rpcs = all_rpcs()
    tally = Tally()
    wrote: list[str] = []
    down: list[str] = []
    started = time.monotonic()
    async with ratifying_server(settings, tmp_path) as server:
        world = await build_world(server)
        counter = RowCounter(db_url)
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        blocking = grpc.insecure_channel(world.target, options=options)
        try:
            async with grpc.aio.insecure_channel(world.target) as channel:
                primed = [(rpc, *await _prime(channel, world, rpc)) for rpc in rpcs]
            for rpc, _, _, outcome in primed:
                assert outcome.ok or verdict(Probe("prime", b""), outcome) is None, (rpc, outcome)
            # A re-signed pledge whose target became "" (every lab) is a valid new pledge:
            # with one live already, it is refused (PLEDGE_EXISTS) like any duplicate.
            assert not (await pledge(world.contributor, "", min_members=2)).executed
            before = await counter.counts()
            for rpc, who, base, _ in primed:
                await asyncio.to_thread(campaign, blocking, rpc, base, who, tally)
                if not await asyncio.to_thread(_health, blocking):
                    down.append(rpc.label)
                after = await counter.counts()
                difference = changed(before, after)
                if difference:
                    wrote.append(f"{rpc.label}: {difference}")
                    before = after
        finally:
            blocking.close()
            await counter.close()
            await world.close()
    seconds = time.monotonic() - started
    codes = ", ".join(f"{code}: {n:,}" for code, n in tally.codes.most_common())
    categories = ", ".join(f"{name}: {n:,}" for name, n in tally.categories.most_common())
    reasons = ", ".join(f"{name}: {n:,}" for name, n in tally.reasons.most_common(8))
    rows = "unchanged" if not wrote else "CHANGED"
    figure(
        f"\ngarbage[{database}]: {tally.calls:,} calls over {len(rpcs)} RPCs in {seconds:.0f} s,"
        f" codes {{{codes}}}, {len(tally.unexpected)} unexpected, row counts {rows},"
        f" server {'up' if not down else 'DOWN'}\n  by category {{{categories}}}"
        f"\n  {len(tally.reasons)} distinct reasons, most often {{{reasons}}}"
    )
    for line in tally.unexpected[:60]:
        print("  unexpected:", line)
    for line in wrote:
        print("  rows changed after:", line)
    assert tally.unexpected == [], f"{len(tally.unexpected)} unexpected outcomes (printed above)"
    assert wrote == [], wrote
    assert down == [], down


def test_the_contract_is_read_from_the_docs() -> None:
    assert "MALFORMED_REQUEST" in DOCUMENTED["INVALID_ARGUMENT"]
    assert "REPLAYED_REQUEST" in DOCUMENTED["UNAUTHENTICATED"]
    assert "UNKNOWN_NORM" in DOCUMENTED["INVALID_ARGUMENT"]  # from docs/norms.md
    assert "MISSING_DECLARATION_FIELD" in DOCUMENTED["INVALID_ARGUMENT"]
    assert "INTERNAL" not in DOCUMENTED
    assert "UNKNOWN" not in DOCUMENTED


def test_the_judge_refuses_what_the_contract_does_not_allow() -> None:
    garbage = Probe("random", b"")
    assert verdict(garbage, Outcome(CODE.OK)) is None
    assert (
        verdict(garbage, Outcome(CODE.INVALID_ARGUMENT, "MALFORMED_REQUEST", "coalition")) is None
    )
    assert verdict(garbage, Outcome(CODE.INTERNAL)) is not None
    assert verdict(garbage, Outcome(CODE.UNKNOWN)) is not None
    assert verdict(garbage, Outcome(CODE.INVALID_ARGUMENT, "NOT_A_REASON", "coalition"))
    assert verdict(garbage, Outcome(CODE.INVALID_ARGUMENT, "MALFORMED_REQUEST", "elsewhere"))
    # A reason documented for another code is not enough.
    assert verdict(garbage, Outcome(CODE.NOT_FOUND, "MALFORMED_REQUEST", "coalition"))
    forged = Probe("forgery", b"", "flip", expect=(CODE.UNAUTHENTICATED, "BAD_SIGNATURE"))
    assert verdict(forged, Outcome(CODE.UNAUTHENTICATED, "BAD_SIGNATURE", "coalition")) is None
    assert verdict(forged, Outcome(CODE.UNAUTHENTICATED, "STALE_REQUEST", "coalition"))
    assert verdict(forged, Outcome(CODE.OK)) is not None


def test_the_wire_helpers_encode_what_protobuf_reads() -> None:
    request = access_pb2.FetchRequest(lease_id="ab" * 16, page_size=300, page_token="t")
    data = request.SerializeToString()
    fields = wire_fields(data)
    assert fields is not None
    assert [(f.number, f.wire_type) for f in fields] == [(1, LEN), (2, VARINT), (3, LEN)]
    assert b"".join(f.encode() for f in fields) == data
    # Unknown fields, however deep, are kept aside: the request still reads the same.
    padded = access_pb2.FetchRequest.FromString(inject(data, nested_messages(50) + big_field(9)))
    assert padded.lease_id == request.lease_id
    assert padded.page_size == 300
    slots = field_slots(request, is_number)
    assert [slot for slot, _ in slots] == [(("page_size", None),)]
    edited = access_pb2.FetchRequest.FromString(
        with_value(access_pb2.FetchRequest, data, (("lease_id", None),), b"\xff" * 8).replace(
            b"\xff" * 8, b"A" * 8
        )
    )
    assert edited.lease_id == "A" * 8
