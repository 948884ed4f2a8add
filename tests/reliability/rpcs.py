"""Every RPC of coalition.v1, a world to call them in, and a well-formed request for each.

Shared by the authorisation matrix (``test_authorization.py``) and the bad-input campaign
(``test_garbage.py``), issue #7 points 5 and 6:

* :func:`all_rpcs` enumerates the RPCs from the generated descriptors, so a new RPC is seen
  by both tests without anyone remembering to add it;
* :func:`build_world` makes one small coalition on a running server (a contributor, a
  second contributor, a lab, another lab, an auditor) with one object of every kind: an
  agreement, a lease, a withdrawal notice, a dispute, negotiations in each interesting
  state, a pledge;
* :data:`BUILDERS` gives, for each RPC, a well-formed request made *by a given caller*:
  statements inside are signed by that caller's key, as a real client would sign them;
* :func:`invoke` and :func:`invoke_sync` send raw request bytes (unary, server-streaming or
  client-streaming) with or without a call signature and report the outcome: status code,
  ErrorInfo reason, messages received;
* :func:`documented_reasons` reads the error table of ``docs/protocol.md`` (and the norms
  reasons of ``docs/norms.md`` it refers to), the contract both tests hold the server to.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pkgutil
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import grpc
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import coalition.v1
from coalition.auth import CallSigner
from coalition.client import Client
from coalition.keys import SigningKey
from coalition.statements import sign_statement, statement_id
from coalition.v1 import (
    access_pb2,
    consent_pb2,
    disputes_pb2,
    envelope_pb2,
    items_pb2,
    ledger_pb2,
    negotiation_pb2,
    party_pb2,
    strike_pb2,
    terms_pb2,
)
from coalition_server.config import Settings
from coalition_server.server import CoalitionServer
from coalition_server.store import models
from tests.integration import builders
from tests.integration.world import (
    NEGOTIATION,
    Lab,
    Member,
    agree,
    lab,
    member,
    move,
    open_negotiation,
    pledge,
    sign_agreement,
)

ROOT = Path(__file__).resolve().parents[2]
USD = 1_000_000
CODE = grpc.StatusCode

CALLERS = ("contributor", "lab", "other_lab", "auditor", "unknown_key", "no_key")
"""Who calls, in the order of the authorisation table's columns.

``other_lab`` is a registered lab party to none of the world's objects; ``unknown_key`` a
valid Ed25519 key never registered (a fresh one per call, so that registering it in one
cell cannot make it known in the next); ``no_key`` sends no call credentials at all."""

# Ratification on, so that CastBallot has a vote to count and SignAgreement starts one; a
# window long enough that no vote closes while the tests run (the sweep would write rows).
POLICY = (
    "ratification:\n  required: true\n  basis: members\n  threshold: 0.5\n  window_seconds: 3600\n"
)


# --- the RPCs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rpc:
    """One RPC of the API, as its descriptor describes it."""

    service: str
    name: str
    request_class: type[Message]
    client_streaming: bool
    server_streaming: bool

    @property
    def method(self) -> str:
        """The full method name on the wire, ``/coalition.v1.Service/Method``."""
        return f"/coalition.v1.{self.service}/{self.name}"

    @property
    def label(self) -> str:
        """``Service.Method``, for tables and messages."""
        return f"{self.service}.{self.name}"


def all_rpcs() -> list[Rpc]:
    """Every RPC of every service in the generated ``coalition.v1`` modules, in the order
    of the services' names and then of the methods in their service."""
    rpcs = []
    for module_info in pkgutil.iter_modules(coalition.v1.__path__):
        if not module_info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"coalition.v1.{module_info.name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                rpcs.append(
                    Rpc(
                        service.name,
                        method.name,
                        GetMessageClass(method.input_type),
                        method.client_streaming,
                        method.server_streaming,
                    )
                )
    return sorted(rpcs, key=lambda rpc: rpc.service)  # stable: methods keep their order


# --- the documented contract ---------------------------------------------------------------


def documented_reasons() -> dict[str, frozenset[str]]:
    """Status code name -> the ErrorInfo reasons ``docs/protocol.md`` documents for it.

    The INVALID_ARGUMENT (norms) row points at the refusals table of ``docs/norms.md``;
    those reasons are INVALID_ARGUMENT too.
    """
    text = (ROOT / "docs" / "protocol.md").read_text()
    table = text[text.index("## Errors") :]
    documented: dict[str, set[str]] = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not re.fullmatch(r"[A-Z_]+( \(norms\))?", cells[0]):
            continue
        code = cells[0].split()[0]
        documented.setdefault(code, set()).update(re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[1]))
    norms = (ROOT / "docs" / "norms.md").read_text()
    refusals = norms[norms.index("## Refusals") :]
    documented["INVALID_ARGUMENT"].update(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", refusals, re.M))
    return {code: frozenset(reasons) for code, reasons in documented.items()}


# --- calling -------------------------------------------------------------------------------

Request = bytes | tuple[bytes, ...]
"""A serialised request: one message, or (client streaming) the messages of the stream."""

Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Outcome:
    """How one call ended."""

    code: grpc.StatusCode
    reason: str = ""
    domain: str = ""
    messages: int = 0
    """Response messages received (for a stream: before we stopped reading)."""
    open: bool = False
    """A server stream that was still open, with no status, when we stopped waiting."""
    response: bytes = field(default=b"", compare=False)
    """A unary call's response, serialised (to check what an allowed call revealed)."""

    @property
    def ok(self) -> bool:
        """Not refused: OK, or a stream still open."""
        return self.code == CODE.OK

    def __str__(self) -> str:
        if self.ok:
            return "OK"
        return f"{self.code.name}/{self.reason}" if self.reason else self.code.name


def _error_info(trailing: Any) -> tuple[str, str]:
    """(reason, domain) of the google.rpc.ErrorInfo in a grpc-status-details-bin trailer."""
    for key, value in trailing or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info.reason, info.domain
    return "", ""


def _refused(code: grpc.StatusCode, trailing: Any, got: int) -> Outcome:
    if code == CODE.DEADLINE_EXCEEDED and got >= 0:
        # Our own deadline on a stream the server kept open: it accepted the call.
        return Outcome(CODE.OK, messages=got, open=True)
    reason, domain = _error_info(trailing)
    return Outcome(code, reason, domain, got)


def _call_error(exc: grpc.RpcError, got: int) -> Outcome:
    # The blocking API raises RpcError objects that are also grpc.Call (code, trailers).
    call = cast(grpc.Call, exc)
    return _refused(call.code(), call.trailing_metadata(), got)


def call_metadata(key: SigningKey | None, rpc: Rpc, request: Request) -> Metadata:
    """Fresh call credentials for ``request`` (none without a key). A client stream is
    signed over the empty request: the server checks the signature on the stream's
    metadata, before any message arrives (coalition_server.api.dispatch)."""
    if key is None:
        return ()
    signed = b"" if rpc.client_streaming else request
    assert isinstance(signed, bytes)
    return CallSigner(key).metadata(rpc.method, signed)


async def invoke(
    channel: grpc.aio.Channel,
    rpc: Rpc,
    request: Request,
    metadata: Metadata,
    *,
    deadline: float = 15.0,
    stream_wait: float = 1.0,
    max_messages: int = 1,
) -> Outcome:
    """Send ``request`` and report how the call ended; never raises for a gRPC status.

    ``deadline`` bounds a unary or client-streaming call (seconds).
    A server stream is read until it ends, ``max_messages`` arrived (then cancelled), or
    ``stream_wait`` seconds passed with the stream still open (an accepted call: the
    feeds never end by themselves).
    """
    try:
        if rpc.client_streaming:
            assert isinstance(request, tuple)
            upload: grpc.aio.StreamUnaryMultiCallable[bytes, bytes]
            upload = channel.stream_unary(rpc.method)

            async def messages() -> AsyncIterator[bytes]:
                for message in request:
                    yield message

            await upload(messages(), metadata=metadata, timeout=deadline)
            return Outcome(CODE.OK, messages=1)
        assert isinstance(request, bytes)
        if not rpc.server_streaming:
            unary: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]
            unary = channel.unary_unary(rpc.method)
            raw = await unary(request, metadata=metadata, timeout=deadline)
            return Outcome(CODE.OK, messages=1, response=raw)
        streaming: grpc.aio.UnaryStreamMultiCallable[bytes, bytes]
        streaming = channel.unary_stream(rpc.method)
        stream = streaming(request, metadata=metadata, timeout=stream_wait)
        got = 0
        try:
            async for _ in stream:
                got += 1
                if got >= max_messages:
                    return Outcome(CODE.OK, messages=got, open=True)
        except grpc.aio.AioRpcError as exc:
            return _refused(exc.code(), exc.trailing_metadata(), got)
        finally:
            stream.cancel()
        return Outcome(CODE.OK, messages=got)
    except grpc.aio.AioRpcError as exc:
        return _refused(exc.code(), exc.trailing_metadata(), -1)


def invoke_sync(
    channel: grpc.Channel,
    rpc: Rpc,
    request: Request,
    metadata: Metadata,
    *,
    deadline: float = 15.0,
    stream_wait: float = 0.5,
    max_messages: int = 1,
) -> Outcome:
    """:func:`invoke` with a blocking channel, for code running in a worker thread (the
    server's event loop stays free to answer)."""
    try:
        if rpc.client_streaming:
            assert isinstance(request, tuple)
            upload: grpc.StreamUnaryMultiCallable[bytes, bytes]
            upload = channel.stream_unary(rpc.method)
            upload(iter(request), metadata=metadata, timeout=deadline)
            return Outcome(CODE.OK, messages=1)
        assert isinstance(request, bytes)
        if not rpc.server_streaming:
            unary: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(rpc.method)
            unary(request, metadata=metadata, timeout=deadline)
            return Outcome(CODE.OK, messages=1)
        streaming: grpc.UnaryStreamMultiCallable[bytes, bytes]
        streaming = channel.unary_stream(rpc.method)
        stream = streaming(request, metadata=metadata, timeout=stream_wait)
        got = 0
        try:
            for _ in stream:
                got += 1
                if got >= max_messages:
                    return Outcome(CODE.OK, messages=got, open=True)
        except grpc.RpcError as exc:
            return _call_error(exc, got)
        finally:
            stream.cancel()
        return Outcome(CODE.OK, messages=got)
    except grpc.RpcError as exc:
        return _call_error(exc, -1)


class RowCounter:
    """Rows in every table, on one engine kept open (a refused call must not change them)."""

    def __init__(self, db_url: str) -> None:
        self._engine: AsyncEngine = create_async_engine(db_url)

    async def counts(self) -> dict[str, int]:
        """Table name -> rows."""
        async with self._engine.connect() as conn:
            return {
                table.name: (
                    await conn.execute(select(func.count()).select_from(table))
                ).scalar_one()
                for table in models.Base.metadata.sorted_tables
            }

    async def close(self) -> None:
        """Dispose of the engine."""
        await self._engine.dispose()


def changed(before: dict[str, int], after: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Tables whose row count differs: name -> (before, after)."""
    return {t: (before[t], after[t]) for t in before if before[t] != after.get(t)}


# --- the world -----------------------------------------------------------------------------


@asynccontextmanager
async def ratifying_server(settings: Settings, tmp_path: Path) -> AsyncIterator[CoalitionServer]:
    """A running server whose deals go to a vote of the covered members (see POLICY)."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    server = CoalitionServer(dataclasses.replace(settings, policy_file=policy))
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace=1.0)


@dataclass
class Who:
    """The caller of one request: the key that signs its statements, and whether the call
    itself is signed with it (``no_key`` signs statements but sends no credentials)."""

    name: str
    key: SigningKey
    signs_call: bool = True

    @property
    def call_key(self) -> SigningKey | None:
        """The key the call is signed with, if any."""
        return self.key if self.signs_call else None


@dataclass
class World:
    """A small coalition with one object of every kind (see :func:`build_world`)."""

    server: CoalitionServer
    target: str
    contributor: Member
    second: Member
    lab: Lab
    other_lab: Lab
    auditor: SigningKey
    consent_id: str
    """The contributor's token over its licensed items."""
    spare_consent_id: str
    """A token over an unlicensed item, for the Withdraw cell."""
    grant_item: str
    """A registered item with no consent yet, for the GrantConsent cell."""
    upload_item: str
    """A registered item without content, for the UploadContent cell."""
    garbage_upload_item: str
    """Another, that the bad-input campaign's garbage chunks aim at."""
    item_id: str
    agreement_id: str
    lease_id: str
    idle_agreement_id: str
    """An agreement of the lab whose items were all withdrawn (no lease can be taken)."""
    idle_lease_id: str
    """A lease on that agreement, taken before: fetching it releases (writes) nothing."""
    notice_id: str
    notice_items: tuple[str, ...]
    dispute_id: str
    open_negotiation: negotiation_pb2.Negotiation
    """Opened by the lab, answered by a coalition offer: the lab's move is next."""
    agreed_negotiation: negotiation_pb2.Negotiation
    """Agreed, with a draft the lab has not signed yet."""
    ratifying_negotiation_id: str
    """Signed by the lab, waiting for the contributor's ballot."""
    pledge_id: str
    clients: list[Client] = field(default_factory=list)

    def who(self, name: str) -> Who:
        """The caller ``name`` of :data:`CALLERS` (a fresh key for the keyless ones)."""
        keys = {
            "contributor": self.contributor.key,
            "lab": self.lab.key,
            "other_lab": self.other_lab.key,
            "auditor": self.auditor,
            "second_contributor": self.second.key,
        }
        if name in keys:
            return Who(name, keys[name])
        if name == "unknown_key":
            return Who(name, SigningKey.generate())
        if name == "no_key":
            return Who(name, SigningKey.generate(), signs_call=False)
        raise KeyError(name)

    async def close(self) -> None:
        """Close the world's clients."""
        for client in self.clients:
            await client.close()


async def _ballot(m: Member, negotiation_id: str) -> negotiation_pb2.CastBallotResponse:
    return await m.client.call(
        NEGOTIATION + "CastBallot",
        negotiation_pb2.CastBallotRequest(
            ballot=sign_statement(_ballot_statement(negotiation_id), m.key).to_proto()
        ),
        negotiation_pb2.CastBallotResponse,
        sign=True,
    )


def _ballot_statement(negotiation_id: str) -> negotiation_pb2.Ballot:
    return negotiation_pb2.Ballot(
        negotiation_id=negotiation_id,
        approve=True,
        created_time=builders.ts(builders.now()),
        nonce=os.urandom(16),
    )


async def _agreed(acme: Lab) -> negotiation_pb2.Negotiation:
    """A negotiation the lab opened below the floor and then accepted the coalition's offer."""
    opened = await open_negotiation(acme, builders.licence_terms(price=USD // 2))
    negotiation = opened.negotiation
    assert negotiation.state == negotiation_pb2.NEGOTIATION_STATE_OFFERED, negotiation
    accepted = await move(
        acme, negotiation.negotiation_id, negotiation.round + 1, negotiation_pb2.MOVE_KIND_ACCEPT
    )
    assert accepted.negotiation.state == negotiation_pb2.NEGOTIATION_STATE_AGREED
    return accepted.negotiation


async def build_world(server: CoalitionServer) -> World:
    """One coalition, built the way its parties would over gRPC (about 40 ledger entries).

    The contributor has three stored items consented for training at 1 USD; the lab
    negotiated them (ratified by the contributor's ballot), leases them, and was notified
    when the third was withdrawn; the contributor disputes the agreement. Three more
    negotiations wait in the states the mutating RPCs need; the second contributor's only
    item went to the lab under an agreement concluded directly and was then withdrawn.
    """
    target = f"127.0.0.1:{server.port}"
    clients: list[Client] = []

    def make(key: SigningKey | None = None) -> Client:
        client = Client(target, key=key or SigningKey.generate())
        clients.append(client)
        return client

    contributor = await member(make, "contributor")
    second = await member(make, "second contributor")
    acme = await lab(make, "lab")
    other = await lab(make, "other lab")
    auditor = SigningKey.generate()
    await make(auditor).register(party_pb2.ROLE_AUDITOR, "auditor")

    # The second contributor's item: licensed to the lab directly, leased, then withdrawn,
    # so that the lease releases nothing (a Fetch on it is accepted and writes no row).
    (idle_item,) = await second.add([b"second contributor's item"])
    await second.grant(builders.consent_token(item_ids=[idle_item], purchase_floor=USD))
    idle_agreement = await agree(server, acme, [idle_item])
    idle_lease = (await acme.lease(idle_agreement)).lease.lease_id
    await second.withdraw(builders.withdrawal(item_ids=[idle_item]))

    items = await contributor.add([b"item one", b"item two", b"item three"])
    consent_id = await contributor.grant(builders.consent_token(item_ids=items, purchase_floor=USD))
    spare = await contributor.register(
        [b"spare consented", b"to consent", b"to upload", b"garbage target"]
    )
    spare_consent_id = await contributor.grant(
        builders.consent_token(item_ids=[spare[0]], purchase_floor=1000 * USD)
    )

    # The agreement: negotiated, signed by the lab, ratified by the contributor's ballot.
    finalised = await _agreed(acme)
    signed = await sign_agreement(acme, finalised.agreement_draft)
    assert signed.negotiation.state == negotiation_pb2.NEGOTIATION_STATE_RATIFYING
    decided = await _ballot(contributor, finalised.negotiation_id)
    assert decided.state == negotiation_pb2.NEGOTIATION_STATE_FINALIZED
    agreement_id = (
        await acme.client.call(
            NEGOTIATION + "GetNegotiation",
            negotiation_pb2.GetNegotiationRequest(negotiation_id=finalised.negotiation_id),
            negotiation_pb2.GetNegotiationResponse,
            sign=True,
        )
    ).negotiation.agreement_id
    lease_id = (await acme.lease(agreement_id)).lease.lease_id
    await contributor.withdraw(builders.withdrawal(item_ids=[items[2]]))
    notices = await acme.notices(count=2)
    (notice,) = [
        n
        for n in notices
        if access_pb2.WithdrawalNotice.FromString(n.notice.payload).agreement_id == agreement_id
    ]
    dispute = sign_statement(_dispute(agreement_id), contributor.key)
    await contributor.client.call(
        "/coalition.v1.DisputeService/FileDispute",
        disputes_pb2.FileDisputeRequest(dispute=dispute.to_proto()),
        disputes_pb2.FileDisputeResponse,
        sign=True,
    )

    # Negotiations in the states the mutations need (over the two items still consented).
    ratifying = await _agreed(acme)
    await sign_agreement(acme, ratifying.agreement_draft)
    agreed = await _agreed(acme)
    offered = (await open_negotiation(acme, builders.licence_terms(price=USD // 2))).negotiation
    assert offered.state == negotiation_pb2.NEGOTIATION_STATE_OFFERED

    # Two contributors: a pledge needing both never executes on one member's word.
    pledged = await pledge(contributor, acme.key.key_id, min_members=2)
    assert not pledged.executed

    return World(
        server=server,
        target=target,
        contributor=contributor,
        second=second,
        lab=acme,
        other_lab=other,
        auditor=auditor,
        consent_id=consent_id,
        spare_consent_id=spare_consent_id,
        grant_item=spare[1],
        upload_item=spare[2],
        garbage_upload_item=spare[3],
        item_id=items[0],
        agreement_id=agreement_id,
        lease_id=lease_id,
        idle_agreement_id=idle_agreement,
        idle_lease_id=idle_lease,
        notice_id=notice.notice_id,
        notice_items=tuple(access_pb2.WithdrawalNotice.FromString(notice.notice.payload).item_ids),
        dispute_id=statement_id(dispute),
        open_negotiation=offered,
        agreed_negotiation=agreed,
        ratifying_negotiation_id=ratifying.negotiation_id,
        pledge_id=pledged.pledge_id,
        clients=clients,
    )


# --- one well-formed request per RPC -------------------------------------------------------


def _now() -> Timestamp:
    return builders.ts(builders.now())


def _envelope(statement: Message, who: Who) -> envelope_pb2.Envelope:
    return sign_statement(statement, who.key).to_proto()


def _dispute(agreement_id: str) -> disputes_pb2.Dispute:
    return disputes_pb2.Dispute(
        agreement_id=agreement_id,
        norm_ids=["prohibited-use"],
        declaration_fields=["application_domains"],
        text="Their model is sold for mass surveillance.",
        created_time=_now(),
        nonce=os.urandom(16),
    )


ROLES = {
    "contributor": party_pb2.ROLE_CONTRIBUTOR,
    "second_contributor": party_pb2.ROLE_CONTRIBUTOR,
    "lab": party_pb2.ROLE_LAB,
    "other_lab": party_pb2.ROLE_LAB,
}


def _register_party(w: World, who: Who) -> Message:
    # Each caller registers its own key in its own role (a newcomer as an auditor).
    registration = party_pb2.PartyRegistration(
        role=ROLES.get(who.name, party_pb2.ROLE_AUDITOR),
        name=who.name.replace("_", " "),
        signing_key=who.key.public_key.raw,
        encryption_key=who.key.encryption_public_key_raw(),
        created_time=_now(),
        nonce=os.urandom(16),
    )
    return party_pb2.RegisterPartyRequest(registration=_envelope(registration, who))


def _register_items(w: World, who: Who) -> Message:
    _, envelope = builders.item_registration(who.key, os.urandom(32))
    return items_pb2.RegisterItemsRequest(registrations=[envelope.to_proto()])


def _upload(w: World, who: Who) -> tuple[Message, ...]:
    content = w.contributor.contents[w.upload_item]
    return (
        items_pb2.UploadContentRequest(header=items_pb2.UploadHeader(item_id=w.upload_item)),
        items_pb2.UploadContentRequest(chunk=content),
    )


def _grant(w: World, who: Who) -> Message:
    # A floor no deal meets: granting it changes no negotiation's pool.
    token = builders.consent_token(item_ids=[w.grant_item], purchase_floor=1000 * USD)
    return consent_pb2.GrantConsentRequest(tokens=[_envelope(token, who)])


def _withdraw(w: World, who: Who) -> Message:
    statement = builders.withdrawal(consent_id=w.spare_consent_id)
    return consent_pb2.WithdrawRequest(withdrawal=_envelope(statement, who))


def _take_lease(w: World, who: Who) -> Message:
    statement = builders.lease_request(w.agreement_id)
    return access_pb2.TakeLeaseRequest(lease_request=_envelope(statement, who))


def _acknowledge(w: World, who: Who) -> Message:
    statement = builders.deletion_receipt(w.notice_id, w.notice_items)
    return access_pb2.AcknowledgeWithdrawalRequest(receipt=_envelope(statement, who))


def _file_dispute(w: World, who: Who) -> Message:
    return disputes_pb2.FileDisputeRequest(dispute=_envelope(_dispute(w.agreement_id), who))


def _respond(w: World, who: Who) -> Message:
    statement = disputes_pb2.DisputeResponse(
        dispute_id=w.dispute_id,
        text="We sell to no such customer.",
        created_time=_now(),
        nonce=os.urandom(16),
    )
    return disputes_pb2.RespondToDisputeRequest(response=_envelope(statement, who))


def _what_if_terms() -> terms_pb2.LicenceTerms:
    terms = builders.licence_terms(price=USD)
    terms.declaration.CopyFrom(
        terms_pb2.UseDeclaration(model_release=terms_pb2.MODEL_RELEASE_CLOSED, jurisdictions=["DE"])
    )
    return terms


def _open(w: World, who: Who) -> Message:
    statement = negotiation_pb2.NegotiationRequest(
        terms=builders.licence_terms(price=USD // 2), created_time=_now(), nonce=os.urandom(16)
    )
    return negotiation_pb2.OpenNegotiationRequest(request=_envelope(statement, who))


def _move(w: World, who: Who) -> Message:
    # The lab ends the negotiation waiting for its move (the next round is its own).
    statement = negotiation_pb2.NegotiationMove(
        negotiation_id=w.open_negotiation.negotiation_id,
        round=w.open_negotiation.round + 1,
        kind=negotiation_pb2.MOVE_KIND_TERMINATE,
        created_time=_now(),
        nonce=os.urandom(16),
    )
    return negotiation_pb2.MoveRequest(move=_envelope(statement, who))


def _sign_agreement(w: World, who: Who) -> Message:
    # The caller signs the agreed draft exactly as drafted (the draft names the lab).
    draft = access_pb2.Agreement.FromString(w.agreed_negotiation.agreement_draft)
    envelope = sign_statement(draft, who.key)
    assert envelope.payload == w.agreed_negotiation.agreement_draft
    return negotiation_pb2.SignAgreementRequest(agreement=envelope.to_proto())


def _cast_ballot(w: World, who: Who) -> Message:
    statement = _ballot_statement(w.ratifying_negotiation_id)
    return negotiation_pb2.CastBallotRequest(ballot=_envelope(statement, who))


def _pledge(w: World, who: Who) -> Message:
    # Against the other lab, needing both contributors: it cannot execute on its own.
    statement = strike_pb2.StrikePledge(
        target_lab_key_id=w.other_lab.key.key_id,
        min_members=2,
        expiry_time=builders.ts(builders.now() + timedelta(days=7)),
        created_time=_now(),
        nonce=os.urandom(16),
    )
    return strike_pb2.PledgeRequest(pledge=_envelope(statement, who))


def _retract(w: World, who: Who) -> Message:
    statement = strike_pb2.PledgeRetraction(
        pledge_id=w.pledge_id, created_time=_now(), nonce=os.urandom(16)
    )
    return strike_pb2.RetractPledgeRequest(retraction=_envelope(statement, who))


Builder = Callable[[World, Who], Message | tuple[Message, ...]]

BUILDERS: dict[str, Builder] = {
    # AccessService
    "AccessService.ListAgreements": lambda w, who: access_pb2.ListAgreementsRequest(),
    "AccessService.TakeLease": _take_lease,
    "AccessService.Fetch": lambda w, who: access_pb2.FetchRequest(lease_id=w.lease_id),
    "AccessService.WatchWithdrawals": lambda w, who: access_pb2.WatchWithdrawalsRequest(),
    "AccessService.AcknowledgeWithdrawal": _acknowledge,
    "AccessService.ExportAgreement": lambda w, who: access_pb2.ExportAgreementRequest(
        agreement_id=w.agreement_id
    ),
    # ConsentService
    "ConsentService.GrantConsent": _grant,
    "ConsentService.ListConsents": lambda w, who: consent_pb2.ListConsentsRequest(),
    "ConsentService.GetConsentState": lambda w, who: consent_pb2.GetConsentStateRequest(
        consent_id=w.consent_id
    ),
    "ConsentService.Withdraw": _withdraw,
    "ConsentService.ExportConsent": lambda w, who: consent_pb2.ExportConsentRequest(
        consent_id=w.consent_id, format=consent_pb2.EXPORT_FORMAT_ODRL
    ),
    # DisputeService
    "DisputeService.FileDispute": _file_dispute,
    "DisputeService.RespondToDispute": _respond,
    "DisputeService.ListDisputes": lambda w, who: disputes_pb2.ListDisputesRequest(
        agreement_id=w.agreement_id
    ),
    "DisputeService.GetDispute": lambda w, who: disputes_pb2.GetDisputeRequest(
        dispute_id=w.dispute_id
    ),
    # ItemService
    "ItemService.RegisterItems": _register_items,
    "ItemService.UploadContent": _upload,
    "ItemService.ListItems": lambda w, who: items_pb2.ListItemsRequest(),
    "ItemService.GetItem": lambda w, who: items_pb2.GetItemRequest(item_id=w.item_id),
    # LedgerService
    "LedgerService.GetLogInfo": lambda w, who: ledger_pb2.GetLogInfoRequest(),
    "LedgerService.GetCheckpoint": lambda w, who: ledger_pb2.GetCheckpointRequest(),
    "LedgerService.ListEntries": lambda w, who: ledger_pb2.ListEntriesRequest(page_size=5),
    "LedgerService.GetEntry": lambda w, who: ledger_pb2.GetEntryRequest(index=1),
    "LedgerService.GetInclusionProof": lambda w, who: ledger_pb2.GetInclusionProofRequest(index=1),
    "LedgerService.GetConsistencyProof": lambda w, who: ledger_pb2.GetConsistencyProofRequest(
        first_size=1
    ),
    "LedgerService.ListEntriesBySubject": lambda w, who: ledger_pb2.ListEntriesBySubjectRequest(
        subject_key_id=w.lab.key.key_id
    ),
    # NegotiationService
    "NegotiationService.GetCatalogue": lambda w, who: negotiation_pb2.GetCatalogueRequest(),
    "NegotiationService.EstimateSupply": lambda w, who: negotiation_pb2.EstimateSupplyRequest(
        terms=_what_if_terms()
    ),
    "NegotiationService.OpenNegotiation": _open,
    "NegotiationService.Move": _move,
    "NegotiationService.SignAgreement": _sign_agreement,
    "NegotiationService.GetNegotiation": lambda w, who: negotiation_pb2.GetNegotiationRequest(
        negotiation_id=w.open_negotiation.negotiation_id
    ),
    "NegotiationService.ListNegotiations": lambda w, who: negotiation_pb2.ListNegotiationsRequest(),
    "NegotiationService.WatchNegotiation": lambda w, who: negotiation_pb2.WatchNegotiationRequest(
        negotiation_id=w.open_negotiation.negotiation_id
    ),
    "NegotiationService.CastBallot": _cast_ballot,
    "NegotiationService.ListRatifications": lambda w, who: (
        negotiation_pb2.ListRatificationsRequest()
    ),
    "NegotiationService.GetEarnings": lambda w, who: negotiation_pb2.GetEarningsRequest(),
    "NegotiationService.GetPayoutStatement": lambda w, who: (
        negotiation_pb2.GetPayoutStatementRequest(agreement_id=w.agreement_id)
    ),
    # PartyService
    "PartyService.RegisterParty": _register_party,
    "PartyService.GetParty": lambda w, who: party_pb2.GetPartyRequest(key_id=w.lab.key.key_id),
    "PartyService.WhoAmI": lambda w, who: party_pb2.WhoAmIRequest(),
    # StrikeService
    "StrikeService.Pledge": _pledge,
    "StrikeService.RetractPledge": _retract,
    "StrikeService.ListStrikes": lambda w, who: strike_pb2.ListStrikesRequest(),
    "StrikeService.ListPledges": lambda w, who: strike_pb2.ListPledgesRequest(),
}
"""``Service.Method`` -> a well-formed request of that RPC made by a caller."""


def serialise(message: Message | tuple[Message, ...]) -> Request:
    """The bytes on the wire: one message, or each message of a client stream."""
    if isinstance(message, tuple):
        return tuple(m.SerializeToString() for m in message)
    return message.SerializeToString()


def build(world: World, rpc: Rpc, who: Who) -> Request:
    """A well-formed request of ``rpc`` by ``who``, serialised."""
    return serialise(BUILDERS[rpc.label](world, who))
