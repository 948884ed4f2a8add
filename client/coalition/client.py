"""The async Python SDK: every RPC as a typed method, with calls signed by your key.

    async with Client("127.0.0.1:50051", key=SigningKey.load("me.key")) as client:
        response = await client.register(Role.CONTRIBUTOR, "Ada")

Errors from the server arrive as :class:`ServerError` with the gRPC status code and the
ErrorInfo reason, so callers can branch on ``error.reason``.

Contributors register items (:meth:`Client.register_files`), upload their content
(:meth:`Client.upload`), grant consent (:meth:`Client.grant_consent`) and withdraw it
(:meth:`Client.withdraw`); labs lease (:meth:`Client.take_lease`), fetch verified plaintext
(:meth:`Client.fetch`), follow the withdrawal feed (:meth:`Client.watch_withdrawals`) and
answer it (:meth:`Client.acknowledge`). Members may pledge to strike together
(:meth:`Client.pledge`, :meth:`Client.strikes`), vote with reasons
(:meth:`Client.cast_ballot`) and dispute an agreement that covers them
(:meth:`Client.file_dispute`), which its lab answers (:meth:`Client.respond_to_dispute`).
Mutations given a ``request_id`` are retried with the same bytes while the server is
UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import mimetypes
import os
import re
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, BinaryIO, Final, Literal, NamedTuple, TypeVar

import grpc
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2

from coalition import dsse, hpke, payouts, statements
from coalition.auth import CallSigner
from coalition.consent_state import VerifiedConsentState, verify_consent_state
from coalition.content import ContentError, SegmentDecryptor
from coalition.errors import CoalitionError, VerificationError
from coalition.keys import PublicKey, SigningKey
from coalition.merkle import CompactRange, leaf_hash
from coalition.norms import DeclarationLimits, canonical_norms, declaration_changes
from coalition.note import NoteVerifier
from coalition.receipts import verify_receipt
from coalition.strategy import (
    BOULWARE_BETA,
    CONCEDER_BETA,
    LINEAR_BETA,
    AutoMove,
    AutoNegotiator,
    ConcessionStrategy,
)
from coalition.v1 import (
    access_pb2,
    consent_pb2,
    disputes_pb2,
    envelope_pb2,
    items_pb2,
    ledger_pb2,
    negotiation_pb2,
    norms_pb2,
    party_pb2,
    strike_pb2,
    terms_pb2,
)

R = TypeVar("R", bound=Message)

LEDGER = "/coalition.v1.LedgerService/"
PARTY = "/coalition.v1.PartyService/"
ITEMS = "/coalition.v1.ItemService/"
CONSENT = "/coalition.v1.ConsentService/"
ACCESS = "/coalition.v1.AccessService/"
NEGOTIATION = "/coalition.v1.NegotiationService/"
STRIKE = "/coalition.v1.StrikeService/"
DISPUTE = "/coalition.v1.DisputeService/"

MAX_CHUNK: Final = 1 << 20
"""Largest chunk of content one upload message carries (the server's limit)."""
MAX_BATCH: Final = 1000
"""Most statements one RegisterItems or GrantConsent request carries."""
RETRIES: Final = 3
"""Retries of a mutation that carries a request_id, when the server is UNAVAILABLE."""
DEFAULT_CURRENCY: Final = "USD"
DEFAULT_MEDIA_TYPE: Final = "application/octet-stream"
DEFAULT_VALIDITY: Final = timedelta(days=365)
FULL_SHARE_BASIS_POINTS: Final = 10_000
"""A strike threshold's share of the covered items is at most 100%, in basis points."""

PURPOSES: Final[Mapping[str, terms_pb2.Purpose.ValueType]] = {
    "train-ai": terms_pb2.PURPOSE_TRAIN_AI,
    "train-genai": terms_pb2.PURPOSE_TRAIN_GENAI,
    "ai-input": terms_pb2.PURPOSE_AI_INPUT,
    "ai-index": terms_pb2.PURPOSE_AI_INDEX,
    "search": terms_pb2.PURPOSE_SEARCH,
    "evaluation": terms_pb2.PURPOSE_EVALUATION,
}
"""The purpose vocabulary by its names (IETF AI-preferences / RSL usage tokens)."""

PAYMENT_MODELS: Final[Mapping[str, terms_pb2.PaymentModel.ValueType]] = {
    "purchase": terms_pb2.PAYMENT_MODEL_PURCHASE,
    "subscription": terms_pb2.PAYMENT_MODEL_SUBSCRIPTION,
    "per-use": terms_pb2.PAYMENT_MODEL_PER_USE,
}
"""Payment models by name."""

EXPORT_FORMATS: Final[Mapping[str, consent_pb2.ExportFormat.ValueType]] = {
    "odrl": consent_pb2.EXPORT_FORMAT_ODRL,
    "rsl": consent_pb2.EXPORT_FORMAT_RSL,
}
"""Consent export formats by name."""

_MEDIA_TYPE: Final = re.compile(
    r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$"
)


@dataclass
class ServerError(CoalitionError):
    """The server refused a call: gRPC status code, ErrorInfo reason and message."""

    code: grpc.StatusCode
    reason: str
    message: str
    metadata: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        reason = f" [{self.reason}]" if self.reason else ""
        return f"{self.code.name}{reason}: {self.message}"


def _server_error(error: grpc.aio.AioRpcError) -> ServerError:
    reason, metadata = "", {}
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    reason, metadata = info.reason, dict(info.metadata)
    return ServerError(error.code(), reason, error.details() or "", metadata)


class FetchError(VerificationError):
    """Fetched data did not verify: a release, a sealed key, a segment or a commitment."""


def item_id(contributor_key_id: str, commitment: bytes) -> str:
    """The item id of a contributor's content: one contributor's content is one item.

    The first 32 hex characters of SHA-256("coalition-item-v1\\n" || key id || "\\n" ||
    commitment), exactly as the server derives it.
    """
    digest = hashlib.sha256(
        b"coalition-item-v1\n" + contributor_key_id.encode() + b"\n" + commitment
    )
    return digest.hexdigest()[:32]


def purpose(value: str | int) -> terms_pb2.Purpose.ValueType:
    """A purpose from its name (``train-ai``, ...) or enum value; CoalitionError if unknown."""
    if isinstance(value, str):
        found = PURPOSES.get(value.strip().lower())
        if found is None:
            raise CoalitionError(f"unknown purpose {value!r}: use one of {', '.join(PURPOSES)}")
        return found
    if value not in PURPOSES.values():
        raise CoalitionError(f"unknown purpose {value}")
    return terms_pb2.Purpose.ValueType(value)


def payment_model(value: str | int) -> terms_pb2.PaymentModel.ValueType:
    """A payment model from its name (``purchase``, ``subscription``, ``per-use``) or value."""
    if isinstance(value, str):
        found = PAYMENT_MODELS.get(value.strip().lower())
        if found is None:
            raise CoalitionError(
                f"unknown payment model {value!r}: use one of {', '.join(PAYMENT_MODELS)}"
            )
        return found
    if value not in PAYMENT_MODELS.values():
        raise CoalitionError(f"unknown payment model {value}")
    return terms_pb2.PaymentModel.ValueType(value)


def micros(amount: str | Decimal | int) -> int:
    """Integer micros of a decimal amount (``"0.25"`` is 250000); never floating point."""
    try:
        value = Decimal(amount)
    except InvalidOperation:
        raise CoalitionError(f"not an amount: {amount!r}") from None
    scaled = value * 1_000_000
    if not value.is_finite() or scaled != scaled.to_integral_value():
        raise CoalitionError(f"{amount} has more than 6 decimal places")
    if scaled < 0:
        raise CoalitionError(f"{amount} is negative")
    return int(scaled)


def price_floor(
    model: str | int,
    minimum_micros: int,
    *,
    period: timedelta | None = None,
    currency: str = DEFAULT_CURRENCY,
) -> terms_pb2.PriceFloor:
    """A member's minimum price per item for one payment model (per ``period`` for
    subscriptions, which need one)."""
    floor = terms_pb2.PriceFloor(
        payment_model=payment_model(model),
        minimum_per_item=terms_pb2.Money(currency_code=currency, micros=minimum_micros),
    )
    if period is not None:
        floor.period.CopyFrom(_duration(period))
    return floor


def consent_token(
    *,
    item_ids: Iterable[str] | None = None,
    tag: str | None = None,
    all_items: bool = False,
    purposes: Iterable[str | int],
    floors: Iterable[terms_pb2.PriceFloor],
    attribution_required: bool = False,
    max_licence_duration: timedelta | None = None,
    max_deletion_deadline: timedelta | None = None,
    excluded_labs: Iterable[str] = (),
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    valid_for: timedelta = DEFAULT_VALIDITY,
    norms: Iterable[norms_pb2.Norm] = (),
) -> consent_pb2.ConsentToken:
    """A fresh ConsentToken (created now, random nonce) naming exactly one item selector.

    ``not_after`` defaults to ``valid_for`` after now (or after ``not_before``). ``norms``
    (see coalition.norms) are put in the canonical order the server requires.
    """
    chosen = [item_ids is not None, tag is not None, all_items]
    if sum(chosen) != 1:
        raise CoalitionError("name the items one way: item_ids, a tag, or all_items")
    selector = terms_pb2.ItemSelector()
    if item_ids is not None:
        selector.item_ids.item_ids.extend(item_ids)
    elif tag is not None:
        selector.tag = tag
    else:
        selector.all_items = True
    now = datetime.now(UTC)
    floor = terms_pb2.FloorTerms(prices=list(floors), attribution_required=attribution_required)
    if max_licence_duration is not None:
        floor.max_licence_duration.CopyFrom(_duration(max_licence_duration))
    if max_deletion_deadline is not None:
        floor.max_deletion_deadline.CopyFrom(_duration(max_deletion_deadline))
    token = consent_pb2.ConsentToken(
        items=selector,
        purposes=[purpose(p) for p in purposes],
        floor=floor,
        excluded_lab_key_ids=list(excluded_labs),
        not_after=_timestamp(not_after or (not_before or now) + valid_for),
        nonce=os.urandom(16),
        created_time=_timestamp(now),
        norms=canonical_norms(norms),
    )
    if not_before is not None:
        token.not_before.CopyFrom(_timestamp(not_before))
    return token


class NewItem(NamedTuple):
    """An item to register: SHA-256 commitment, size, media type and tags."""

    commitment: bytes
    size_bytes: int
    media_type: str = DEFAULT_MEDIA_TYPE
    tags: Sequence[str] = ()


@dataclass(frozen=True)
class RegisteredFile:
    """A file registered as an item, with the registration's receipt."""

    path: Path
    item: items_pb2.Item
    receipt: ledger_pb2.Receipt


@dataclass(frozen=True)
class FetchProgress:
    """Where a fetch stands, reported after every decrypted segment."""

    item: access_pb2.FetchedItem
    """The item being fetched."""
    item_bytes: int
    """Bytes of this item decrypted so far."""
    items_done: int
    """Items fetched and verified so far (including this one once ``done``)."""
    total_bytes: int
    """Bytes decrypted so far, all items."""
    done: bool
    """This item is complete and its commitment verified."""


@dataclass(frozen=True)
class FetchedContent:
    """An item's verified plaintext: its SHA-256 is the commitment, its size the size."""

    item: access_pb2.FetchedItem
    data: bytes


@dataclass(frozen=True)
class FetchedFile:
    """An item written to a file after its commitment was verified."""

    item: access_pb2.FetchedItem
    path: Path


@dataclass
class FetchResult:
    """What a fetch got: the verified items (and files), and each page's release receipt."""

    lease_id: str
    agreement_id: str = ""
    items: list[access_pb2.FetchedItem] = field(default_factory=list)
    files: list[FetchedFile] = field(default_factory=list)
    releases: list[ledger_pb2.Receipt] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        """Plaintext bytes fetched."""
        return sum(item.size_bytes for item in self.items)


@dataclass(frozen=True)
class _FetchEvent:
    item: access_pb2.FetchedItem
    data: bytes
    done: bool


_SEGMENT_TAG: Final = 0x1A  # FetchResponse.segment: field 3, length-delimited


def _segment_payload(raw: bytes) -> bytes | None:
    """The segment of a serialised FetchResponse that is exactly one ``segment`` field, else
    None (the caller parses it as a FetchResponse): a 1 MiB segment is copied once, not
    decoded into a message and copied out of it."""
    if not raw or raw[0] != _SEGMENT_TAG:
        return None
    length = shift = 0
    for offset in range(1, min(len(raw), 11)):
        byte = raw[offset]
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            start = offset + 1
            return raw[start:] if len(raw) - start == length else None
        shift += 7
    return None


@dataclass
class _ItemReader:
    """Decrypts and checks one item's segments, in order."""

    header: access_pb2.FetchedItem
    decryptor: SegmentDecryptor | None
    next_segment: int = 0
    size: int = 0
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)

    @property
    def complete(self) -> bool:
        return self.next_segment >= self.header.segment_count

    def open(self, sealed: bytes) -> bytes:
        header = self.header
        if self.decryptor is None or self.complete:
            raise FetchError(f"item {header.item_id}: more segments than announced")
        index = self.next_segment
        try:
            plaintext = self.decryptor.open(index, sealed, index == header.segment_count - 1)
        except ContentError as exc:
            raise FetchError(f"item {header.item_id}: {exc}") from None
        self.next_segment += 1
        self.size += len(plaintext)
        if self.size > header.size_bytes:
            raise FetchError(f"item {header.item_id}: more content than its size")
        self.digest.update(plaintext)
        return plaintext

    def verify(self) -> None:
        header = self.header
        if self.size != header.size_bytes:
            raise FetchError(
                f"item {header.item_id}: {self.size} bytes, not the committed {header.size_bytes}"
            )
        if self.digest.digest() != header.commitment:
            raise FetchError(f"item {header.item_id}: content does not match its commitment")


class _FileSink:
    """Writes fetched items to a directory: a private partial file, renamed once verified."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._partial: Path | None = None
        self._handle: BinaryIO | None = None

    @property
    def open(self) -> bool:
        return self._handle is not None

    def prepare(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    def write(self, item: access_pb2.FetchedItem, data: bytes) -> None:
        if self._handle is None:
            self._partial = self.directory / f".{item.item_id}.partial"
            fd = os.open(self._partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            self._handle = os.fdopen(fd, "wb")
        self._handle.write(data)

    def finish(self, item: access_pb2.FetchedItem) -> Path:
        if self._handle is None:
            self.write(item, b"")
        assert self._handle is not None
        assert self._partial is not None
        self._handle.close()
        self._handle = None
        final = self.directory / (item.item_id + _extension(item.media_type))
        os.replace(self._partial, final)
        self._partial = None
        return final

    def abort(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if self._partial is not None:
            with contextlib.suppress(FileNotFoundError):
                self._partial.unlink()
            self._partial = None


def _timestamp(value: datetime) -> Timestamp:
    if value.tzinfo is None:
        raise CoalitionError("use timezone-aware datetimes")
    stamp = Timestamp()
    stamp.FromDatetime(value.astimezone(UTC))
    return stamp


def _duration(value: timedelta) -> Duration:
    out = Duration()
    out.FromTimedelta(value)
    return out


def media_type_of(path: str | os.PathLike[str], given: str | None = None) -> str:
    """``given``, or the media type guessed from the file name; application/octet-stream
    when unknown or not a valid media type."""
    media = given or mimetypes.guess_type(Path(path).name)[0] or DEFAULT_MEDIA_TYPE
    media = media.lower()
    return media if _MEDIA_TYPE.match(media) else DEFAULT_MEDIA_TYPE


def file_commitment(path: str | os.PathLike[str]) -> tuple[bytes, int]:
    """A file's SHA-256 commitment and size, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with Path(path).open("rb") as f:
        while chunk := f.read(MAX_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.digest(), size


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while chunk := await asyncio.to_thread(f.read, MAX_CHUNK):
            yield chunk


async def _source_chunks(
    source: str | os.PathLike[str] | bytes | AsyncIterable[bytes] | Iterable[bytes],
) -> AsyncIterator[bytes]:
    if isinstance(source, bytes):
        yield source
    elif isinstance(source, str | os.PathLike):
        async for chunk in _file_chunks(Path(source)):
            yield chunk
    elif isinstance(source, AsyncIterable):
        async for chunk in source:
            yield chunk
    else:
        for chunk in source:
            yield chunk


def _request_id(request_id: str, part: int, parts: int) -> str:
    """The request_id of one part of a split batch: the id itself when there is one part."""
    if not request_id or parts == 1:
        return request_id
    return f"{request_id}.{part}"


def _merge_register(
    responses: list[items_pb2.RegisterItemsResponse],
) -> items_pb2.RegisterItemsResponse:
    merged = items_pb2.RegisterItemsResponse()
    for response in responses:
        merged.items.extend(response.items)
        merged.receipts.extend(response.receipts)
    return merged


def _notice_statement(envelope: dsse.Envelope) -> access_pb2.WithdrawalNotice:
    if envelope.payload_type != statements.payload_type(access_pb2.WithdrawalNotice):
        raise VerificationError(f"not a withdrawal notice: {envelope.payload_type}")
    return statements.parse_payload(access_pb2.WithdrawalNotice, envelope.payload)


OFFERED: Final = negotiation_pb2.NEGOTIATION_STATE_OFFERED
AGREED: Final = negotiation_pb2.NEGOTIATION_STATE_AGREED
RATIFYING: Final = negotiation_pb2.NEGOTIATION_STATE_RATIFYING
FINALIZED: Final = negotiation_pb2.NEGOTIATION_STATE_FINALIZED
TERMINATED: Final = negotiation_pb2.NEGOTIATION_STATE_TERMINATED
ENDED_STATES: Final = frozenset({FINALIZED, TERMINATED})
"""States a negotiation never leaves."""

STRATEGIES: Final[Mapping[str, float]] = {
    "boulware": BOULWARE_BETA,
    "linear": LINEAR_BETA,
    "conceder": CONCEDER_BETA,
}
"""The named concession tactics and their exponents (beta)."""

StepKind = Literal["request", "offer", "accept", "terminate", "sign"]


def negotiation_state_name(state: int) -> str:
    """``offered`` for NEGOTIATION_STATE_OFFERED, and so on; the number if unknown."""
    try:
        name = negotiation_pb2.NegotiationState.Name(
            negotiation_pb2.NegotiationState.ValueType(state)
        )
    except ValueError:
        return str(int(state))
    return name.removeprefix("NEGOTIATION_STATE_").lower()


def pledge_state_name(state: int) -> str:
    """``active`` for PLEDGE_STATE_ACTIVE, and so on; the number if unknown."""
    try:
        name = strike_pb2.PledgeState.Name(strike_pb2.PledgeState.ValueType(state))
    except ValueError:
        return str(int(state))
    return name.removeprefix("PLEDGE_STATE_").lower()


def strike_pledge(
    target_lab_key_id: str = "",
    *,
    min_members: int = 0,
    min_share_basis_points: int = 0,
    expires_in: timedelta,
    now: datetime | None = None,
) -> strike_pb2.StrikePledge:
    """A fresh StrikePledge (created now, random nonce): withdraw everything from the target
    lab (``""``: every lab) once at least ``min_members`` members, and/or members holding at
    least ``min_share_basis_points`` of the items the target's agreements cover, pledge too.

    CoalitionError for a pledge that can never be valid (no threshold, a negative one, a
    share above 100%, an expiry not in the future); the server checks the rest.
    """
    if min_members < 0 or min_share_basis_points < 0:
        raise CoalitionError("thresholds cannot be negative")
    if not min_members and not min_share_basis_points:
        raise CoalitionError("a pledge needs a threshold: min_members and/or a share")
    if min_share_basis_points > FULL_SHARE_BASIS_POINTS:
        raise CoalitionError("a share is at most 10000 basis points (100%)")
    if expires_in <= timedelta(0):
        raise CoalitionError("a pledge must expire in the future")
    created = now or datetime.now(UTC)
    return strike_pb2.StrikePledge(
        target_lab_key_id=target_lab_key_id,
        min_members=min_members,
        min_share_basis_points=min_share_basis_points,
        expiry_time=_timestamp(created + expires_in),
        created_time=_timestamp(created),
        nonce=os.urandom(16),
    )


def lab_strategy(
    name: str,
    opening_micros: int,
    budget_micros: int,
    *,
    max_rounds: int = 20,
    deadline_seconds: float = 86400.0,
) -> ConcessionStrategy:
    """A buyer's strategy by name (``boulware``, ``linear``, ``conceder``): bids from
    ``opening_micros`` up to ``budget_micros``; CoalitionError if it makes no sense."""
    beta = STRATEGIES.get(name.strip().lower())
    if beta is None:
        raise CoalitionError(f"unknown strategy {name!r}: use one of {', '.join(STRATEGIES)}")
    if opening_micros > budget_micros:
        raise CoalitionError("the opening price must not exceed the budget")
    try:
        return ConcessionStrategy(opening_micros, budget_micros, beta, max_rounds, deadline_seconds)
    except ValueError as exc:
        raise CoalitionError(str(exc)) from None


@dataclass(frozen=True)
class NegotiationStep:
    """One move of a negotiation, as :meth:`Client.negotiate_auto` made or received it."""

    by: Literal["lab", "coalition"]
    """Who moved."""
    kind: StepKind
    """The opening ``request``, an ``offer``, ``accept``, ``terminate``, or the lab's
    signature of the agreement (``sign``)."""
    round: int
    """The move's round (0: the opening request)."""
    price_micros: int | None
    """The price proposed (request, offer) or accepted; None otherwise."""
    state: negotiation_pb2.NegotiationState.ValueType
    """The negotiation's state after the move."""
    reason: str = ""
    """For terminations: why (e.g. ``DEADLINE``, ``OVER_BUDGET``)."""
    receipt: ledger_pb2.Receipt | None = None
    """For the lab's moves: the receipt of its logged statement."""
    changes: tuple[str, ...] = ()
    """For offers: how the offered use declaration differs from the lab's own, one line
    per field (:func:`coalition.norms.declaration_changes`); empty when it does not."""


_LAB_STATES: Final[Mapping[str, negotiation_pb2.NegotiationState.ValueType]] = {
    "request": negotiation_pb2.NEGOTIATION_STATE_REQUESTED,
    "offer": negotiation_pb2.NEGOTIATION_STATE_COUNTERED,
    "accept": negotiation_pb2.NEGOTIATION_STATE_AGREED,
    "terminate": negotiation_pb2.NEGOTIATION_STATE_TERMINATED,
}
"""The state right after each kind of lab move (before the coalition answers)."""


def negotiation_move(
    envelope: envelope_pb2.Envelope | dsse.Envelope,
) -> negotiation_pb2.NegotiationMove:
    """The NegotiationMove inside an envelope (signatures not checked)."""
    if isinstance(envelope, envelope_pb2.Envelope):
        envelope = dsse.Envelope.from_proto(envelope)
    if envelope.payload_type != statements.payload_type(negotiation_pb2.NegotiationMove):
        raise VerificationError(f"not a negotiation move: {envelope.payload_type}")
    return statements.parse_payload(negotiation_pb2.NegotiationMove, envelope.payload)


def coalition_answer(
    answer: envelope_pb2.Envelope | None,
    negotiation: negotiation_pb2.Negotiation,
    coalition: PublicKey | None,
    own: terms_pb2.UseDeclaration | None = None,
) -> NegotiationStep | None:
    """The coalition's answer in an OpenNegotiation or Move response, as a step; None when
    it did not answer. Checked to be a move about this negotiation and, given the
    coalition's key, signed by it (VerificationError otherwise). Given the lab's ``own``
    declaration, an offer's step lists how the coalition's differs (``changes``)."""
    if answer is None or not answer.payload:
        return None
    envelope = dsse.Envelope.from_proto(answer)
    if coalition is not None:
        dsse.verify(envelope, coalition)
    move = negotiation_move(envelope)
    if move.negotiation_id != negotiation.negotiation_id:
        raise VerificationError("the coalition answered about another negotiation")
    kinds: dict[int, StepKind] = {
        negotiation_pb2.MOVE_KIND_OFFER: "offer",
        negotiation_pb2.MOVE_KIND_ACCEPT: "accept",
        negotiation_pb2.MOVE_KIND_TERMINATE: "terminate",
    }
    kind = kinds.get(move.kind)
    if kind is None:
        raise VerificationError("the coalition's answer is not an offer, accept or terminate")
    price: int | None = None
    changes: tuple[str, ...] = ()
    if kind == "offer":
        price = move.terms.price_per_item.micros
        if own is not None:
            changes = tuple(declaration_changes(own, move.terms.declaration))
    elif kind == "accept":
        price = negotiation.current_terms.price_per_item.micros
    return NegotiationStep(
        "coalition", kind, move.round, price, negotiation.state, move.reason, changes=changes
    )


def covered_items_root(item_ids: Iterable[str]) -> bytes:
    """RFC 6962 root over sorted item ids (leaf: the id's ASCII bytes), as agreements name
    their covered set."""
    tree = CompactRange.empty()
    for value in sorted(item_ids):
        tree.append(leaf_hash(value.encode()))
    return tree.root()


def check_draft(negotiation: negotiation_pb2.Negotiation, lab_key_id: str) -> access_pb2.Agreement:
    """The agreement draft of an AGREED negotiation, checked before the lab signs it: it
    concludes this negotiation, names this lab, fixes the terms on the table, and its
    covered set matches its Merkle root. VerificationError otherwise."""
    if not negotiation.agreement_draft:
        raise CoalitionError(f"negotiation {negotiation.negotiation_id} has no agreement draft")
    draft = statements.parse_payload(access_pb2.Agreement, bytes(negotiation.agreement_draft))
    if draft.negotiation_id != negotiation.negotiation_id:
        raise VerificationError("the draft concludes another negotiation")
    if draft.lab_key_id != lab_key_id:
        raise VerificationError("the draft names another lab")
    if draft.terms.SerializeToString(
        deterministic=True
    ) != negotiation.current_terms.SerializeToString(deterministic=True):
        raise VerificationError("the draft's terms are not the terms agreed")
    ids = list(draft.covered_item_ids)
    if draft.covered_item_count != len(ids) or len(set(ids)) != len(ids):
        raise VerificationError("the draft's covered item count does not match its items")
    if covered_items_root(ids) != bytes(draft.covered_items_root):
        raise VerificationError("the draft's covered items do not match its Merkle root")
    return draft


def _statement_type(message_class: type[Message]) -> str:
    """The payload type of a statement class, known to :mod:`statements` or not (yet)."""
    return (
        f"{statements.PAYLOAD_TYPE_PREFIX}{message_class.DESCRIPTOR.name}"
        f"{statements.PAYLOAD_TYPE_SUFFIX}"
    )


def _sign_any(statement: Message, key: SigningKey) -> dsse.Envelope:
    return dsse.sign(_statement_type(type(statement)), statement.SerializeToString(), key)


def _copy_terms(terms: terms_pb2.LicenceTerms, price_micros: int) -> terms_pb2.LicenceTerms:
    out = terms_pb2.LicenceTerms()
    out.CopyFrom(terms)
    out.price_per_item.micros = price_micros
    if not out.price_per_item.currency_code:
        out.price_per_item.currency_code = DEFAULT_CURRENCY
    return out


def _fit_strategy(
    strategy: ConcessionStrategy, negotiation: negotiation_pb2.Negotiation, opened: datetime
) -> ConcessionStrategy:
    """The lab's strategy with its deadline no later than the negotiation's own (in rounds
    and time), so the lab reaches its budget before the negotiation ends."""
    rounds = strategy.max_rounds
    if negotiation.max_rounds:
        rounds = min(rounds, int(negotiation.max_rounds))
    seconds = strategy.deadline_seconds
    if negotiation.HasField("deadline"):
        left = (negotiation.deadline.ToDatetime(tzinfo=UTC) - opened).total_seconds()
        if left > 0:
            seconds = min(seconds, left)
    return replace(strategy, max_rounds=rounds, deadline_seconds=seconds)


_EVENT_NEGOTIATION: Final[Mapping[str, Callable[[bytes], str]]] = {
    "NegotiationMove": lambda payload: (
        statements.parse_payload(negotiation_pb2.NegotiationMove, payload).negotiation_id
    ),
    "Agreement": lambda payload: (
        statements.parse_payload(access_pb2.Agreement, payload).negotiation_id
    ),
    "RatificationCall": lambda payload: (
        statements.parse_payload(negotiation_pb2.RatificationCall, payload).negotiation_id
    ),
    "RatificationResult": lambda payload: (
        statements.parse_payload(negotiation_pb2.RatificationResult, payload).negotiation_id
    ),
    "Ballot": lambda payload: (
        statements.parse_payload(negotiation_pb2.Ballot, payload).negotiation_id
    ),
}
"""The negotiation a statement of each kind (other than the opening request) is about."""


def check_negotiation_event(
    event: negotiation_pb2.WatchNegotiationResponse,
    negotiation_id: str,
    coalition: PublicKey,
    lab: PublicKey,
) -> None:
    """Raise VerificationError unless a negotiation event is about this negotiation and,
    but for members' ballots, signed by the coalition or the lab, every such signature
    valid."""
    envelope = dsse.Envelope.from_proto(event.statement)
    kind = statements.kind(envelope.payload_type)
    if kind == "NegotiationRequest":
        about = statements.statement_id(envelope)
    elif kind in _EVENT_NEGOTIATION:
        about = _EVENT_NEGOTIATION[kind](envelope.payload)
    else:
        raise VerificationError(f"entry {event.index}: unexpected {envelope.payload_type}")
    if about != negotiation_id:
        raise VerificationError(f"entry {event.index}: about another negotiation")
    if kind == "Ballot":
        return  # signed by a member; the coalition counted it
    known = {coalition.key_id: coalition, lab.key_id: lab}
    signers = {s.keyid for s in envelope.signatures if s.keyid in known}
    if not signers:
        raise VerificationError(f"entry {event.index}: signed by neither the coalition nor the lab")
    for keyid in signers:
        dsse.verify(envelope, known[keyid])


class Client:
    """A connection to a Coalition server, optionally acting as one party (``key``)."""

    def __init__(
        self,
        target: str,
        key: SigningKey | None = None,
        *,
        root_certificates: bytes | None = None,
        tls: bool = False,
        client_cert: bytes | None = None,
        client_key: bytes | None = None,
        timeout: float = 30.0,
        channel_options: Sequence[tuple[str, str | int]] = (),
    ) -> None:
        """Connect to ``target`` (HOST:PORT); calls that need it are signed with ``key``.

        Plaintext unless ``tls`` or ``root_certificates`` (PEM roots to trust for the
        server's certificate; the system's roots with ``tls`` alone). ``client_cert`` and
        ``client_key`` (PEM: a certificate chain and its private key) are presented to a
        server that requires mutual TLS; they imply TLS. They are the transport's identity
        only: who signs calls and statements is still ``key``.

        ``channel_options`` are gRPC channel arguments (``grpc.keepalive_time_ms``, ...).
        gRPC lets every channel of a process to the same target with the same options share
        one connection; ``("grpc.use_local_subchannel_pool", 1)`` gives this client its own.
        """
        if (client_cert is None) != (client_key is None):
            raise CoalitionError("client_cert and client_key go together")
        self.key = key
        self.timeout = timeout
        self.retry_delay = 0.2
        """Seconds before the first retry of an UNAVAILABLE mutation; doubled each time."""
        self._signer = CallSigner(key) if key is not None else None
        if tls or root_certificates is not None or client_cert is not None:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=root_certificates,
                private_key=client_key,
                certificate_chain=client_cert,
            )
            self._channel = grpc.aio.secure_channel(target, credentials, options=channel_options)
        else:
            self._channel = grpc.aio.insecure_channel(target, options=channel_options)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    def _metadata(self, method: str, raw: bytes, sign: bool) -> tuple[tuple[str, str], ...]:
        if not sign:
            return ()
        if self._signer is None:
            raise CoalitionError("this call needs a key: pass key= to Client")
        return self._signer.metadata(method, raw)

    async def call(
        self,
        method: str,
        request: Message,
        response_type: type[R],
        *,
        sign: bool,
        retry: bool = False,
    ) -> R:
        """Make one unary call; the request is serialised once and those bytes are signed.

        ``retry``: for a mutation carrying a request_id, retry up to :data:`RETRIES` times
        while the server is UNAVAILABLE, sending the very same request bytes (each attempt
        freshly call-signed); the server answers a repeated request_id with its first answer.
        """
        raw = request.SerializeToString()
        stub: grpc.aio.UnaryUnaryMultiCallable[bytes, R] = self._channel.unary_unary(
            method, response_deserializer=response_type.FromString
        )
        attempt = 0
        while True:
            try:
                response: R = await stub(
                    raw, metadata=self._metadata(method, raw, sign), timeout=self.timeout
                )
            except grpc.aio.AioRpcError as exc:
                if retry and exc.code() == grpc.StatusCode.UNAVAILABLE and attempt < RETRIES:
                    await asyncio.sleep(self.retry_delay * 2**attempt)
                    attempt += 1
                    continue
                raise _server_error(exc) from None
            return response

    async def paged(
        self,
        method: str,
        request: Message,
        response_type: type[Message],
        field: str,
        *,
        sign: bool,
    ) -> AsyncIterator[Any]:
        """Every element of a paginated listing (AIP-158): the request is sent again with
        each ``next_page_token`` until there is none."""
        while True:
            response: Any = await self.call(method, request, response_type, sign=sign)
            for element in getattr(response, field):
                yield element
            if not response.next_page_token:
                return
            following = type(request)()
            following.CopyFrom(request)
            following.page_token = response.next_page_token  # type: ignore[attr-defined]
            request = following

    # --- ledger (public) -------------------------------------------------------------

    async def log_info(self) -> ledger_pb2.GetLogInfoResponse:
        """Origin and verifier key of the log."""
        return await self.call(
            LEDGER + "GetLogInfo",
            ledger_pb2.GetLogInfoRequest(),
            ledger_pb2.GetLogInfoResponse,
            sign=False,
        )

    async def checkpoint(self) -> ledger_pb2.GetCheckpointResponse:
        """The latest signed checkpoint."""
        return await self.call(
            LEDGER + "GetCheckpoint",
            ledger_pb2.GetCheckpointRequest(),
            ledger_pb2.GetCheckpointResponse,
            sign=False,
        )

    def entries(
        self, start: int = 0, end: int = 0, page_size: int = 1000
    ) -> AsyncIterator[ledger_pb2.Entry]:
        """Entries from ``start`` to ``end`` (0 = the current tree size), page by page."""
        return self.paged(
            LEDGER + "ListEntries",
            ledger_pb2.ListEntriesRequest(start=start, end=end, page_size=page_size),
            ledger_pb2.ListEntriesResponse,
            "entries",
            sign=False,
        )

    async def entry(self, index: int) -> ledger_pb2.Entry:
        """One entry by index."""
        response = await self.call(
            LEDGER + "GetEntry",
            ledger_pb2.GetEntryRequest(index=index),
            ledger_pb2.GetEntryResponse,
            sign=False,
        )
        return response.entry

    async def inclusion_proof(
        self, index: int, tree_size: int = 0
    ) -> ledger_pb2.GetInclusionProofResponse:
        """Inclusion proof of entry ``index`` (tree_size 0 = latest checkpoint)."""
        return await self.call(
            LEDGER + "GetInclusionProof",
            ledger_pb2.GetInclusionProofRequest(index=index, tree_size=tree_size),
            ledger_pb2.GetInclusionProofResponse,
            sign=False,
        )

    async def consistency_proof(
        self, first_size: int, second_size: int = 0
    ) -> ledger_pb2.GetConsistencyProofResponse:
        """Consistency proof between two sizes (second_size 0 = latest checkpoint)."""
        return await self.call(
            LEDGER + "GetConsistencyProof",
            ledger_pb2.GetConsistencyProofRequest(first_size=first_size, second_size=second_size),
            ledger_pb2.GetConsistencyProofResponse,
            sign=False,
        )

    def entries_by_subject(
        self, subject_key_id: str = "", kind: str = "", page_size: int = 1000
    ) -> AsyncIterator[ledger_pb2.Entry]:
        """Entries about a party and/or of a kind, in index order."""
        return self.paged(
            LEDGER + "ListEntriesBySubject",
            ledger_pb2.ListEntriesBySubjectRequest(
                subject_key_id=subject_key_id, kind=kind, page_size=page_size
            ),
            ledger_pb2.ListEntriesBySubjectResponse,
            "entries",
            sign=False,
        )

    # --- parties ----------------------------------------------------------------------

    def registration(
        self, role: party_pb2.Role.ValueType, name: str
    ) -> party_pb2.PartyRegistration:
        """A fresh PartyRegistration statement for this client's key."""
        key = self._require_key()
        created = Timestamp()
        created.GetCurrentTime()
        return party_pb2.PartyRegistration(
            role=role,
            name=name,
            signing_key=key.public_key.raw,
            encryption_key=key.encryption_public_key_raw(),
            created_time=created,
            nonce=os.urandom(16),
        )

    async def register(
        self, role: party_pb2.Role.ValueType, name: str, *, request_id: str = ""
    ) -> party_pb2.RegisterPartyResponse:
        """Register this client's key as a party (a ledger append; returns the receipt)."""
        envelope = statements.sign_statement(self.registration(role, name), self._require_key())
        return await self.call(
            PARTY + "RegisterParty",
            party_pb2.RegisterPartyRequest(registration=envelope.to_proto(), request_id=request_id),
            party_pb2.RegisterPartyResponse,
            sign=True,
        )

    async def who_am_i(self) -> party_pb2.Party:
        """This key's registration."""
        response = await self.call(
            PARTY + "WhoAmI", party_pb2.WhoAmIRequest(), party_pb2.WhoAmIResponse, sign=True
        )
        return response.party

    async def party(self, key_id: str) -> party_pb2.Party:
        """A registered party by key id."""
        response = await self.call(
            PARTY + "GetParty",
            party_pb2.GetPartyRequest(key_id=key_id),
            party_pb2.GetPartyResponse,
            sign=False,
        )
        return response.party

    # --- items (contributors) ---------------------------------------------------------

    def item_id_for(self, commitment: bytes) -> str:
        """The id this client's key gets for content with this SHA-256 commitment."""
        return item_id(self._require_key().key_id, commitment)

    def item_registration(
        self, commitment: bytes, size_bytes: int, media_type: str, tags: Iterable[str] = ()
    ) -> items_pb2.ItemRegistration:
        """A fresh ItemRegistration statement (created now, random nonce)."""
        return items_pb2.ItemRegistration(
            commitment=commitment,
            size_bytes=size_bytes,
            media_type=media_type,
            tags=list(tags),
            created_time=_timestamp(datetime.now(UTC)),
            nonce=os.urandom(16),
        )

    async def register_items(
        self,
        items: Iterable[tuple[bytes, int, str, Iterable[str]]],
        *,
        request_id: str = "",
    ) -> items_pb2.RegisterItemsResponse:
        """Register items (commitment, size, media type, tags); items and receipts in order.

        More than :data:`MAX_BATCH` items go in several requests (request_id suffixed
        ``.0``, ``.1``, ... when given); each request is all or nothing.
        """
        key = self._require_key()
        envelopes = [
            statements.sign_statement(
                self.item_registration(commitment, size, media_type, tags), key
            ).to_proto()
            for commitment, size, media_type, tags in items
        ]
        if not envelopes:
            raise CoalitionError("no items to register")
        batches = [envelopes[i : i + MAX_BATCH] for i in range(0, len(envelopes), MAX_BATCH)]
        responses = []
        for part, batch in enumerate(batches):
            rid = _request_id(request_id, part, len(batches))
            responses.append(
                await self.call(
                    ITEMS + "RegisterItems",
                    items_pb2.RegisterItemsRequest(registrations=batch, request_id=rid),
                    items_pb2.RegisterItemsResponse,
                    sign=True,
                    retry=bool(rid),
                )
            )
        return _merge_register(responses)

    async def register_files(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        tags: Iterable[str] = (),
        media_type: str | None = None,
        request_id: str = "",
    ) -> list[RegisteredFile]:
        """Register files as items: each file's SHA-256, size, media type (guessed from its
        name unless given) and ``tags``. Content is not uploaded: see :meth:`upload`."""
        files = [Path(p) for p in paths]
        tag_list = list(tags)
        specs = []
        for path in files:
            commitment, size = await asyncio.to_thread(file_commitment, path)
            specs.append((commitment, size, media_type_of(path, media_type), tag_list))
        response = await self.register_items(specs, request_id=request_id)
        return [
            RegisteredFile(path, item, receipt)
            for path, item, receipt in zip(files, response.items, response.receipts, strict=True)
        ]

    async def upload(
        self,
        item_id: str,
        source: str | os.PathLike[str] | bytes | AsyncIterable[bytes] | Iterable[bytes],
        *,
        progress: Callable[[int], object] | None = None,
    ) -> items_pb2.UploadContentResponse:
        """Upload an item's content: a file path, bytes, or chunks (of any size).

        The content is streamed in chunks of at most 1 MiB; ``progress`` is called with the
        number of bytes handed to the stream so far. The server checks the content against
        the registered commitment and size, and stores it encrypted.
        """
        method = ITEMS + "UploadContent"
        # A client stream is call-signed once, over the digest of an empty request.
        metadata = self._metadata(method, b"", True)
        stub: grpc.aio.StreamUnaryMultiCallable[
            items_pb2.UploadContentRequest, items_pb2.UploadContentResponse
        ] = self._channel.stream_unary(
            method,
            request_serializer=items_pb2.UploadContentRequest.SerializeToString,
            response_deserializer=items_pb2.UploadContentResponse.FromString,
        )

        async def requests() -> AsyncIterator[items_pb2.UploadContentRequest]:
            yield items_pb2.UploadContentRequest(header=items_pb2.UploadHeader(item_id=item_id))
            sent = 0
            async for chunk in _source_chunks(source):
                for start in range(0, len(chunk), MAX_CHUNK):
                    piece = chunk[start : start + MAX_CHUNK]
                    yield items_pb2.UploadContentRequest(chunk=piece)
                    sent += len(piece)
                    if progress is not None:
                        progress(sent)

        try:
            response: items_pb2.UploadContentResponse = await stub(
                requests(), metadata=metadata, timeout=None
            )
        except grpc.aio.AioRpcError as exc:
            raise _server_error(exc) from None
        return response

    def items(self, page_size: int = 0) -> AsyncIterator[items_pb2.Item]:
        """This contributor's items, in registration order, page by page."""
        return self.paged(
            ITEMS + "ListItems",
            items_pb2.ListItemsRequest(page_size=page_size),
            items_pb2.ListItemsResponse,
            "items",
            sign=True,
        )

    async def item(self, item_id: str) -> items_pb2.Item:
        """One of this contributor's items."""
        response = await self.call(
            ITEMS + "GetItem",
            items_pb2.GetItemRequest(item_id=item_id),
            items_pb2.GetItemResponse,
            sign=True,
        )
        return response.item

    # --- consent (members) ------------------------------------------------------------

    async def grant_consent(
        self,
        token: consent_pb2.ConsentToken | Sequence[consent_pb2.ConsentToken] | None = None,
        *,
        item_ids: Iterable[str] | None = None,
        tag: str | None = None,
        all_items: bool = False,
        purposes: Iterable[str | int] = (),
        floors: Iterable[terms_pb2.PriceFloor] = (),
        attribution_required: bool = False,
        max_licence_duration: timedelta | None = None,
        max_deletion_deadline: timedelta | None = None,
        excluded_labs: Iterable[str] = (),
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        valid_for: timedelta = DEFAULT_VALIDITY,
        request_id: str = "",
    ) -> consent_pb2.GrantConsentResponse:
        """Grant consent: one or more ready ConsentTokens, or one built from the keywords
        (see :func:`consent_token`). Ready tokens get a created_time and nonce if they lack
        them. Returns the recorded tokens (with their ids) and a receipt for each."""
        if token is None:
            tokens = [
                consent_token(
                    item_ids=item_ids,
                    tag=tag,
                    all_items=all_items,
                    purposes=purposes,
                    floors=floors,
                    attribution_required=attribution_required,
                    max_licence_duration=max_licence_duration,
                    max_deletion_deadline=max_deletion_deadline,
                    excluded_labs=excluded_labs,
                    not_before=not_before,
                    not_after=not_after,
                    valid_for=valid_for,
                )
            ]
        else:
            if item_ids is not None or tag is not None or all_items or purposes:
                raise CoalitionError("pass either a ready token or the keywords, not both")
            ready = [token] if isinstance(token, consent_pb2.ConsentToken) else list(token)
            tokens = [_complete_token(t) for t in ready]
        if not 1 <= len(tokens) <= MAX_BATCH:
            raise CoalitionError(f"grant 1 to {MAX_BATCH} tokens at a time")
        key = self._require_key()
        return await self.call(
            CONSENT + "GrantConsent",
            consent_pb2.GrantConsentRequest(
                tokens=[statements.sign_statement(t, key).to_proto() for t in tokens],
                request_id=request_id,
            ),
            consent_pb2.GrantConsentResponse,
            sign=True,
            retry=bool(request_id),
        )

    def consents(self, page_size: int = 0) -> AsyncIterator[consent_pb2.ConsentRecord]:
        """This member's consent tokens with their states, in ledger order."""
        return self.paged(
            CONSENT + "ListConsents",
            consent_pb2.ListConsentsRequest(page_size=page_size),
            consent_pb2.ListConsentsResponse,
            "consents",
            sign=True,
        )

    async def consent_state(self, consent_id: str) -> consent_pb2.GetConsentStateResponse:
        """Public: a token's state with the evidence to check it offline
        (:func:`coalition.consent_state.verify_consent_state`)."""
        return await self.call(
            CONSENT + "GetConsentState",
            consent_pb2.GetConsentStateRequest(consent_id=consent_id),
            consent_pb2.GetConsentStateResponse,
            sign=False,
        )

    async def verified_consent_state(
        self,
        consent_id: str,
        *,
        verifier: NoteVerifier | None = None,
        member_key: PublicKey | None = None,
        now: datetime | None = None,
    ) -> VerifiedConsentState:
        """A token's state, verified against the log key (``verifier``, default: the
        server's own, trusted on use). Raises VerificationError if it does not verify."""
        if verifier is None:
            verifier = NoteVerifier.parse((await self.log_info()).verifier_key)
        response = await self.consent_state(consent_id)
        return verify_consent_state(response, verifier, consent_id, member_key=member_key, now=now)

    async def withdraw(
        self,
        *,
        consent_id: str | None = None,
        item_ids: Iterable[str] | None = None,
        everything: bool = False,
        request_id: str = "",
    ) -> consent_pb2.WithdrawResponse:
        """Withdraw one consent token, some items (from every token), or everything.

        The response is the member's receipt; the server has then stopped releasing keys for
        the items that lost consent, destroyed their data keys, and notified the labs.
        """
        statement = consent_pb2.Withdrawal(
            created_time=_timestamp(datetime.now(UTC)), nonce=os.urandom(16)
        )
        ids = list(item_ids) if item_ids is not None else None
        if sum([consent_id is not None, ids is not None, everything]) != 1:
            raise CoalitionError("withdraw one thing: consent_id, item_ids or everything")
        if consent_id is not None:
            statement.consent_id = consent_id
        elif ids is not None:
            statement.items.item_ids.extend(ids)
        else:
            statement.everything = True
        envelope = statements.sign_statement(statement, self._require_key())
        return await self.call(
            CONSENT + "Withdraw",
            consent_pb2.WithdrawRequest(withdrawal=envelope.to_proto(), request_id=request_id),
            consent_pb2.WithdrawResponse,
            sign=True,
            retry=bool(request_id),
        )

    async def export_consent(
        self, consent_id: str, format: str | int = "odrl"
    ) -> consent_pb2.ExportConsentResponse:
        """One of this member's tokens as an ODRL 2.2 policy (JSON-LD) or an RSL licence."""
        if isinstance(format, str):
            chosen = EXPORT_FORMATS.get(format.lower())
            if chosen is None:
                raise CoalitionError(f"unknown format {format!r}: use odrl or rsl")
        else:
            chosen = consent_pb2.ExportFormat.ValueType(format)
        return await self.call(
            CONSENT + "ExportConsent",
            consent_pb2.ExportConsentRequest(consent_id=consent_id, format=chosen),
            consent_pb2.ExportConsentResponse,
            sign=True,
        )

    # --- access (labs) ----------------------------------------------------------------

    async def export_agreement(self, agreement_id: str) -> access_pb2.ExportAgreementResponse:
        """An agreement as an ODRL 2.2 Agreement (JSON-LD) with the lab's use declaration.

        Public: anyone may ask, as anyone may read the agreement in the ledger.
        """
        return await self.call(
            ACCESS + "ExportAgreement",
            access_pb2.ExportAgreementRequest(agreement_id=agreement_id),
            access_pb2.ExportAgreementResponse,
            sign=False,
        )

    def agreements(self, page_size: int = 0) -> AsyncIterator[access_pb2.AgreementRecord]:
        """This lab's agreements, in ledger order."""
        return self.paged(
            ACCESS + "ListAgreements",
            access_pb2.ListAgreementsRequest(page_size=page_size),
            access_pb2.ListAgreementsResponse,
            "agreements",
            sign=True,
        )

    async def take_lease(
        self, agreement_id: str, *, request_id: str = ""
    ) -> access_pb2.TakeLeaseResponse:
        """Take (or renew) a lease on one of this lab's agreements."""
        statement = access_pb2.LeaseRequest(
            agreement_id=agreement_id,
            created_time=_timestamp(datetime.now(UTC)),
            nonce=os.urandom(16),
        )
        envelope = statements.sign_statement(statement, self._require_key())
        return await self.call(
            ACCESS + "TakeLease",
            access_pb2.TakeLeaseRequest(lease_request=envelope.to_proto(), request_id=request_id),
            access_pb2.TakeLeaseResponse,
            sign=True,
            retry=bool(request_id),
        )

    async def fetch_items(
        self,
        lease_id: str,
        *,
        page_size: int = 0,
        progress: Callable[[FetchProgress], object] | None = None,
        result: FetchResult | None = None,
    ) -> AsyncIterator[FetchedContent]:
        """Fetch the items a lease releases, each decrypted and verified, in memory.

        For every page, the release receipt is checked against the log key, and its
        KeyRelease must be signed by the coalition and name this lease, this lab and exactly
        the items streamed. Each item's id must derive from its contributor and commitment;
        its data key is opened with this key's X25519 key (HPKE, bound to agreement, lease
        and item); its segments are decrypted in order; its SHA-256 and size must equal the
        commitment and size. Anything else raises :class:`FetchError` (a VerificationError).
        """
        chunks: list[bytes] = []
        async for event in self._fetch_events(lease_id, page_size, progress, result):
            if event.done:
                yield FetchedContent(event.item, b"".join(chunks))
                chunks = []
            else:
                chunks.append(event.data)

    async def fetch(
        self,
        lease_id: str,
        destination: str
        | os.PathLike[str]
        | Callable[[FetchedContent], Awaitable[object] | object],
        *,
        page_size: int = 0,
        progress: Callable[[FetchProgress], object] | None = None,
    ) -> FetchResult:
        """Fetch every item the lease releases, verified as in :meth:`fetch_items`.

        ``destination`` is a directory, where each item is written as a file named by its
        id (plus an extension guessed from its media type) once it verified, or a callback
        (sync or async) given each :class:`FetchedContent`. Files are streamed to disk
        segment by segment, so items of any size fit.
        """
        result = FetchResult(lease_id)
        if callable(destination):
            callback = destination
            async for content in self.fetch_items(
                lease_id, page_size=page_size, progress=progress, result=result
            ):
                outcome = callback(content)
                if asyncio.iscoroutine(outcome) or isinstance(outcome, asyncio.Future):
                    await outcome
            return result
        sink = _FileSink(Path(destination))
        await asyncio.to_thread(sink.prepare)
        try:
            async for event in self._fetch_events(lease_id, page_size, progress, result):
                if event.data or not sink.open:
                    await asyncio.to_thread(sink.write, event.item, event.data)
                if event.done:
                    path = await asyncio.to_thread(sink.finish, event.item)
                    result.files.append(FetchedFile(event.item, path))
        finally:
            await asyncio.to_thread(sink.abort)
        return result

    async def _fetch_events(
        self,
        lease_id: str,
        page_size: int,
        progress: Callable[[FetchProgress], object] | None,
        result: FetchResult | None,
    ) -> AsyncIterator[_FetchEvent]:
        key = self._require_key()
        private = key.encryption_private_key()
        info = await self.log_info()
        verifier = NoteVerifier.parse(info.verifier_key)
        coalition = PublicKey(bytes(info.coalition_public_key))
        method = ACCESS + "Fetch"
        # Messages arrive undecoded: a segment's bytes are taken from the wire directly
        # (_segment_payload), anything else is parsed as a FetchResponse.
        stub: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = self._channel.unary_stream(method)
        items_done = 0
        total = 0
        page_token = ""
        while True:
            raw = access_pb2.FetchRequest(
                lease_id=lease_id, page_size=page_size, page_token=page_token
            ).SerializeToString()
            call = stub(raw, metadata=self._metadata(method, raw, True), timeout=None)
            released: set[str] = set()
            seen: set[str] = set()
            agreement_id = ""
            reader: _ItemReader | None = None
            next_token = ""
            first = True
            try:
                async for raw_message in call:
                    part: str | None = "segment"
                    segment = _segment_payload(raw_message)
                    if segment is None:
                        try:
                            message = access_pb2.FetchResponse.FromString(raw_message)
                        except DecodeError:
                            raise FetchError("a fetch message does not parse") from None
                        part = message.WhichOneof("part")
                        if part == "segment":
                            segment = bytes(message.segment)
                    if first:
                        if part != "release":
                            raise FetchError("the fetch stream does not start with its release")
                        first = False
                        next_token = message.release.next_page_token
                        if message.release.HasField("receipt"):
                            receipt = message.release.receipt
                            release = _check_release(
                                receipt, verifier, coalition, lease_id, key.key_id
                            )
                            released = set(release.item_ids)
                            agreement_id = release.agreement_id
                            if result is not None:
                                result.agreement_id = agreement_id
                                result.releases.append(receipt)
                        continue
                    if part == "item":
                        if reader is not None and not reader.complete:
                            raise FetchError(f"item {reader.header.item_id} ended early")
                        header = message.item
                        reader = self._open_item(
                            header, released, seen, agreement_id, lease_id, private
                        )
                        seen.add(header.item_id)
                        if reader.decryptor is None or header.segment_count == 0:
                            # Commitment only: nothing to decrypt (the server sends none).
                            items_done += 1
                            if result is not None:
                                result.items.append(header)
                            continue
                    elif part == "segment" and segment is not None:
                        if reader is None:
                            raise FetchError("a segment arrived before any item")
                        plaintext = reader.open(segment)
                        total += len(plaintext)
                        yield _FetchEvent(reader.header, plaintext, False)
                        if reader.complete:
                            reader.verify()
                            items_done += 1
                            if result is not None:
                                result.items.append(reader.header)
                        if progress is not None:
                            progress(
                                FetchProgress(
                                    reader.header, reader.size, items_done, total, reader.complete
                                )
                            )
                        if reader.complete:
                            yield _FetchEvent(reader.header, b"", True)
                    else:
                        raise FetchError(f"unexpected part {part!r} in the fetch stream")
            except grpc.aio.AioRpcError as exc:
                raise _server_error(exc) from None
            finally:
                call.cancel()
            if reader is not None and not reader.complete:
                raise FetchError(f"item {reader.header.item_id} ended early")
            if seen != released:
                raise FetchError("the items streamed are not the items the release names")
            if not next_token:
                return
            page_token = next_token

    @staticmethod
    def _open_item(
        header: access_pb2.FetchedItem,
        released: set[str],
        seen: set[str],
        agreement_id: str,
        lease_id: str,
        private: X25519PrivateKey,
    ) -> _ItemReader:
        if header.item_id not in released or header.item_id in seen:
            raise FetchError(f"item {header.item_id} is not (or no longer) in the release")
        if item_id(header.contributor_key_id, bytes(header.commitment)) != header.item_id:
            raise FetchError(f"item {header.item_id}: id does not derive from its commitment")
        if not header.has_content:
            return _ItemReader(header, None)
        if header.segment_count < 1:
            raise FetchError(f"item {header.item_id}: stored content has no segments")
        data_key = hpke.open_data_key(
            private,
            bytes(header.sealed_data_key),
            hpke.release_info(agreement_id, lease_id, header.item_id),
        )
        decryptor = SegmentDecryptor(data_key, header.item_id, header.contributor_key_id)
        return _ItemReader(header, decryptor)

    async def watch_withdrawals(
        self,
        since_index: int = 0,
        *,
        idle_timeout: float | None = None,
        verify: bool = True,
    ) -> AsyncIterator[access_pb2.WatchWithdrawalsResponse]:
        """This lab's withdrawal notices from ledger index ``since_index`` on; waits for new
        ones. Resume after a disconnect from the last index seen plus one.

        ``idle_timeout``: stop after that many seconds without a notice (None: never).
        ``verify``: check each notice is signed by the coalition, names this lab, and has the
        id it is listed under (VerificationError otherwise).
        """
        key = self._require_key()
        coalition: PublicKey | None = None
        if verify:
            coalition = PublicKey(bytes((await self.log_info()).coalition_public_key))
        method = ACCESS + "WatchWithdrawals"
        raw = access_pb2.WatchWithdrawalsRequest(since_index=since_index).SerializeToString()
        stub: grpc.aio.UnaryStreamMultiCallable[bytes, access_pb2.WatchWithdrawalsResponse] = (
            self._channel.unary_stream(
                method, response_deserializer=access_pb2.WatchWithdrawalsResponse.FromString
            )
        )
        call = stub(raw, metadata=self._metadata(method, raw, True), timeout=None)
        stream = call.__aiter__()
        try:
            while True:
                try:
                    if idle_timeout is None:
                        message = await anext(stream)
                    else:
                        message = await asyncio.wait_for(anext(stream), idle_timeout)
                except (StopAsyncIteration, TimeoutError):
                    return
                if coalition is not None:
                    _check_notice(message, coalition, key.key_id)
                yield message
        except grpc.aio.AioRpcError as exc:
            raise _server_error(exc) from None
        finally:
            call.cancel()

    async def find_notice(
        self, notice_id: str, *, since_index: int = 0, idle_timeout: float = 2.0
    ) -> access_pb2.WatchWithdrawalsResponse | None:
        """One of this lab's notices, looked up on the feed (None if not there)."""
        async for notice in self.watch_withdrawals(since_index, idle_timeout=idle_timeout):
            if notice.notice_id == notice_id:
                return notice
        return None

    async def acknowledge(
        self,
        notice: access_pb2.WatchWithdrawalsResponse | envelope_pb2.Envelope | dsse.Envelope | str,
        *,
        item_ids: Iterable[str] | None = None,
        deleted_time: datetime | None = None,
        request_id: str = "",
    ) -> access_pb2.AcknowledgeWithdrawalResponse:
        """Answer a withdrawal notice with a signed DeletionReceipt.

        ``notice``: the notice as the feed gave it (or its envelope), whose id and items
        are taken from it; or a notice id, with ``item_ids`` the notice's items.
        """
        if isinstance(notice, str):
            if item_ids is None:
                raise CoalitionError("acknowledging by notice id needs the notice's item ids")
            notice_id, ids = notice, sorted(item_ids)
        else:
            if isinstance(notice, access_pb2.WatchWithdrawalsResponse):
                envelope = dsse.Envelope.from_proto(notice.notice)
            elif isinstance(notice, envelope_pb2.Envelope):
                envelope = dsse.Envelope.from_proto(notice)
            else:
                envelope = notice
            notice_id = statements.statement_id(envelope)
            ids = (
                sorted(item_ids)
                if item_ids is not None
                else list(_notice_statement(envelope).item_ids)
            )
        statement = access_pb2.DeletionReceipt(
            notice_id=notice_id,
            item_ids=ids,
            deleted_time=_timestamp(deleted_time or datetime.now(UTC)),
            nonce=os.urandom(16),
        )
        envelope = statements.sign_statement(statement, self._require_key())
        return await self.call(
            ACCESS + "AcknowledgeWithdrawal",
            access_pb2.AcknowledgeWithdrawalRequest(
                receipt=envelope.to_proto(), request_id=request_id
            ),
            access_pb2.AcknowledgeWithdrawalResponse,
            sign=True,
            retry=bool(request_id),
        )

    # --- negotiation (labs) -----------------------------------------------------------

    async def catalogue(self) -> negotiation_pb2.GetCatalogueResponse:
        """Public: the pool in aggregate, per purpose and payment model (groups smaller
        than the coalition's minimum are not shown)."""
        return await self.call(
            NEGOTIATION + "GetCatalogue",
            negotiation_pb2.GetCatalogueRequest(),
            negotiation_pb2.GetCatalogueResponse,
            sign=False,
        )

    async def estimate_supply(
        self, terms: terms_pb2.LicenceTerms
    ) -> negotiation_pb2.EstimateSupplyResponse:
        """A lab's what-if for ``terms`` with a use declaration (their price is ignored):
        the supply curve, the reservation and quorum the coalition would apply now, and
        what keeping each norm the declaration breaks would bring in (k-anonymous)."""
        return await self.call(
            NEGOTIATION + "EstimateSupply",
            negotiation_pb2.EstimateSupplyRequest(terms=terms),
            negotiation_pb2.EstimateSupplyResponse,
            sign=True,
        )

    async def open_negotiation(
        self, terms: terms_pb2.LicenceTerms, *, request_id: str = ""
    ) -> negotiation_pb2.OpenNegotiationResponse:
        """Open a negotiation with a signed request proposing ``terms``.

        The coalition answers in the same call: the response carries the negotiation after
        its answer (usually OFFERED, with its price in ``current_terms``) and the answer.
        """
        statement = negotiation_pb2.NegotiationRequest(
            terms=terms, created_time=_timestamp(datetime.now(UTC)), nonce=os.urandom(16)
        )
        envelope = statements.sign_statement(statement, self._require_key())
        return await self.call(
            NEGOTIATION + "OpenNegotiation",
            negotiation_pb2.OpenNegotiationRequest(
                request=envelope.to_proto(), request_id=request_id
            ),
            negotiation_pb2.OpenNegotiationResponse,
            sign=True,
            retry=bool(request_id),
        )

    async def move(
        self,
        negotiation_id: str,
        round: int,
        kind: negotiation_pb2.MoveKind.ValueType,
        *,
        terms: terms_pb2.LicenceTerms | None = None,
        reason: str = "",
        request_id: str = "",
    ) -> negotiation_pb2.MoveResponse:
        """A signed move in round ``round`` (the negotiation's round + 1); the response
        carries the negotiation after it and the coalition's answer, if any."""
        statement = negotiation_pb2.NegotiationMove(
            negotiation_id=negotiation_id,
            round=round,
            kind=kind,
            created_time=_timestamp(datetime.now(UTC)),
            nonce=os.urandom(16),
            reason=reason,
        )
        if terms is not None:
            statement.terms.CopyFrom(terms)
        envelope = statements.sign_statement(statement, self._require_key())
        return await self.call(
            NEGOTIATION + "Move",
            negotiation_pb2.MoveRequest(move=envelope.to_proto(), request_id=request_id),
            negotiation_pb2.MoveResponse,
            sign=True,
            retry=bool(request_id),
        )

    async def offer(
        self,
        negotiation_id: str,
        round: int,
        terms: terms_pb2.LicenceTerms,
        *,
        request_id: str = "",
    ) -> negotiation_pb2.MoveResponse:
        """Counter the coalition's offer with ``terms``."""
        return await self.move(
            negotiation_id,
            round,
            negotiation_pb2.MOVE_KIND_OFFER,
            terms=terms,
            request_id=request_id,
        )

    async def accept(
        self, negotiation_id: str, round: int, *, request_id: str = ""
    ) -> negotiation_pb2.MoveResponse:
        """Accept the coalition's offer: the negotiation becomes AGREED with an agreement
        draft to sign (:meth:`sign_agreement`), or ends if the pool no longer supports it."""
        return await self.move(
            negotiation_id, round, negotiation_pb2.MOVE_KIND_ACCEPT, request_id=request_id
        )

    async def terminate(
        self, negotiation_id: str, round: int, *, reason: str = "", request_id: str = ""
    ) -> negotiation_pb2.MoveResponse:
        """End the negotiation without agreement."""
        return await self.move(
            negotiation_id,
            round,
            negotiation_pb2.MOVE_KIND_TERMINATE,
            reason=reason,
            request_id=request_id,
        )

    async def sign_agreement(
        self, draft: bytes, *, request_id: str = ""
    ) -> negotiation_pb2.SignAgreementResponse:
        """Sign the agreement draft of an AGREED negotiation, byte for byte as drafted.

        The coalition countersigns and logs it: the negotiation is then FINALIZED, or
        RATIFYING when the covered members must vote first. See :func:`check_draft` to check
        a draft before signing it.
        """
        key = self._require_key()
        agreement = statements.parse_payload(access_pb2.Agreement, bytes(draft))
        if agreement.lab_key_id != key.key_id:
            raise CoalitionError("the draft names another lab")
        envelope = dsse.sign(statements.payload_type(access_pb2.Agreement), bytes(draft), key)
        return await self.call(
            NEGOTIATION + "SignAgreement",
            negotiation_pb2.SignAgreementRequest(
                agreement=envelope.to_proto(), request_id=request_id
            ),
            negotiation_pb2.SignAgreementResponse,
            sign=True,
            retry=bool(request_id),
        )

    async def negotiation(self, negotiation_id: str) -> negotiation_pb2.Negotiation:
        """One of this lab's negotiations."""
        response = await self.call(
            NEGOTIATION + "GetNegotiation",
            negotiation_pb2.GetNegotiationRequest(negotiation_id=negotiation_id),
            negotiation_pb2.GetNegotiationResponse,
            sign=True,
        )
        return response.negotiation

    def negotiations(self, page_size: int = 0) -> AsyncIterator[negotiation_pb2.Negotiation]:
        """This lab's negotiations, in ledger order, page by page."""
        return self.paged(
            NEGOTIATION + "ListNegotiations",
            negotiation_pb2.ListNegotiationsRequest(page_size=page_size),
            negotiation_pb2.ListNegotiationsResponse,
            "negotiations",
            sign=True,
        )

    async def watch_negotiation(
        self,
        negotiation_id: str,
        since: int = 0,
        *,
        idle_timeout: float | None = None,
        verify: bool = True,
        request_id: str = "",
    ) -> AsyncIterator[negotiation_pb2.WatchNegotiationResponse]:
        """A negotiation's events from ledger index ``since`` on, as they happen; ends when
        the negotiation is FINALIZED or TERMINATED.

        ``idle_timeout``: stop after that many seconds without an event (None: never).
        ``verify``: check each event is about this negotiation and signed by the coalition
        or this lab (VerificationError otherwise).
        """
        key = self._require_key()
        coalition: PublicKey | None = None
        if verify:
            coalition = PublicKey(bytes((await self.log_info()).coalition_public_key))
        method = NEGOTIATION + "WatchNegotiation"
        raw = negotiation_pb2.WatchNegotiationRequest(
            negotiation_id=negotiation_id, since_index=since, request_id=request_id
        ).SerializeToString()
        stub: grpc.aio.UnaryStreamMultiCallable[bytes, negotiation_pb2.WatchNegotiationResponse] = (
            self._channel.unary_stream(
                method, response_deserializer=negotiation_pb2.WatchNegotiationResponse.FromString
            )
        )
        call = stub(raw, metadata=self._metadata(method, raw, True), timeout=None)
        stream = call.__aiter__()
        try:
            while True:
                try:
                    if idle_timeout is None:
                        event = await anext(stream)
                    else:
                        event = await asyncio.wait_for(anext(stream), idle_timeout)
                except (StopAsyncIteration, TimeoutError):
                    return
                if coalition is not None:
                    check_negotiation_event(event, negotiation_id, coalition, key.public_key)
                yield event
        except grpc.aio.AioRpcError as exc:
            raise _server_error(exc) from None
        finally:
            call.cancel()

    async def negotiation_history(
        self, negotiation_id: str, *, idle_timeout: float = 2.0, verify: bool = True
    ) -> tuple[negotiation_pb2.Negotiation, list[negotiation_pb2.WatchNegotiationResponse]]:
        """A negotiation as it stands and its events so far (the request, every move and,
        once signed, the agreement), each checked as in :meth:`watch_negotiation`."""
        negotiation = await self.negotiation(negotiation_id)
        events: list[negotiation_pb2.WatchNegotiationResponse] = []
        moves = 0
        async for event in self.watch_negotiation(
            negotiation_id, negotiation.index, idle_timeout=idle_timeout, verify=verify
        ):
            events.append(event)
            if event.statement.payload_type == statements.payload_type(
                negotiation_pb2.NegotiationMove
            ):
                moves += 1
            if moves >= negotiation.round and negotiation.state not in ENDED_STATES:
                # Everything up to the state we read; an open negotiation's stream waits.
                break
        return negotiation, events

    async def negotiate_auto(
        self,
        terms: terms_pb2.LicenceTerms,
        strategy: ConcessionStrategy,
        *,
        on_step: Callable[[NegotiationStep], object] | None = None,
        sign: bool = True,
        limits: DeclarationLimits | None = None,
    ) -> negotiation_pb2.Negotiation:
        """Negotiate ``terms`` automatically within a budget, by a buyer ``strategy``.

        Opens at the strategy's initial price (``strategy.initial_micros``; the terms' own
        price is ignored), then answers each coalition offer as an
        :class:`~coalition.strategy.AutoNegotiator` decides: accept, counter with the
        strategy's bid, or terminate (``OVER_BUDGET``) once the deadline has come with the
        price still above ``strategy.reservation_micros`` (the budget). The strategy's
        deadline is brought forward to the negotiation's own (rounds and time) if later.
        Once AGREED, the draft is checked (:func:`check_draft`) and, with ``sign``, signed.

        ``on_step`` is called with every move made or received. Returns the negotiation as
        it ends: FINALIZED, RATIFYING (members vote first), TERMINATED, or AGREED when not
        ``sign``. The coalition's answers must carry its signature.

        The coalition may counter with changes to the terms' use declaration: they are
        taken only within ``limits`` (what the lab may concede; default nothing), see
        :meth:`~coalition.strategy.AutoNegotiator.decide_terms`.
        """
        key = self._require_key()
        limits = limits or DeclarationLimits()
        try:
            negotiator = AutoNegotiator(strategy, limits)
        except ValueError as exc:
            raise CoalitionError(str(exc)) from None
        coalition = PublicKey(bytes((await self.log_info()).coalition_public_key))

        def report(step: NegotiationStep) -> None:
            if on_step is not None:
                on_step(step)

        def answered(
            answer: envelope_pb2.Envelope | None, negotiation: negotiation_pb2.Negotiation
        ) -> None:
            step = coalition_answer(answer, negotiation, coalition, terms.declaration)
            if step is not None:
                report(step)

        opened_at = datetime.now(UTC)
        opening = _copy_terms(terms, negotiator.opening_bid())
        opened = await self.open_negotiation(opening)
        negotiation = opened.negotiation
        report(
            NegotiationStep(
                "lab",
                "request",
                0,
                opening.price_per_item.micros,
                _LAB_STATES["request"],
                receipt=opened.receipt,
            )
        )
        answered(opened.coalition_move if opened.HasField("coalition_move") else None, negotiation)
        negotiator = AutoNegotiator(_fit_strategy(strategy, negotiation, opened_at), limits)
        while negotiation.state == OFFERED:
            round_ = negotiation.round + 1
            elapsed = (datetime.now(UTC) - opened_at).total_seconds()
            decision: AutoMove = negotiator.decide_terms(
                opening, negotiation.current_terms, round_, elapsed
            )
            nid = negotiation.negotiation_id
            if decision.kind == "accept":
                response = await self.accept(nid, round_)
            elif decision.kind == "counter":
                assert decision.price_micros is not None
                counter = _copy_terms(terms, decision.price_micros)
                if decision.declaration is not None:
                    counter.declaration.CopyFrom(decision.declaration)
                response = await self.offer(nid, round_, counter)
            else:
                response = await self.terminate(nid, round_, reason=decision.reason)
            negotiation = response.negotiation
            kind: StepKind = "offer" if decision.kind == "counter" else decision.kind
            report(
                NegotiationStep(
                    "lab",
                    kind,
                    round_,
                    decision.price_micros,
                    _LAB_STATES[kind],
                    decision.reason,
                    response.receipt,
                )
            )
            answered(
                response.coalition_move if response.HasField("coalition_move") else None,
                negotiation,
            )
        if negotiation.state == AGREED and sign:
            check_draft(negotiation, key.key_id)
            signed = await self.sign_agreement(bytes(negotiation.agreement_draft))
            negotiation = signed.negotiation
            report(
                NegotiationStep(
                    "lab",
                    "sign",
                    negotiation.round,
                    negotiation.current_terms.price_per_item.micros,
                    negotiation.state,
                    receipt=signed.receipt,
                )
            )
        return negotiation

    # --- ratification and payouts (members) -------------------------------------------

    async def cast_ballot(
        self,
        negotiation_id: str,
        approve: bool,
        *,
        reasons: Iterable[str] = (),
        request_id: str = "",
    ) -> negotiation_pb2.CastBallotResponse:
        """Vote on an agreement being ratified that covers some of this member's items.

        ``reasons``: why, as norm ids of the vocabulary (``coalition.norms``), e.g.
        ``["prohibited-use"]``; sent in their one canonical order. The result tallies them,
        k-anonymously.
        """
        statement = negotiation_pb2.Ballot(
            negotiation_id=negotiation_id,
            approve=approve,
            created_time=_timestamp(datetime.now(UTC)),
            nonce=os.urandom(16),
            reasons=sorted(set(reasons)),
        )
        envelope = _sign_any(statement, self._require_key())
        return await self.call(
            NEGOTIATION + "CastBallot",
            negotiation_pb2.CastBallotRequest(ballot=envelope.to_proto(), request_id=request_id),
            negotiation_pb2.CastBallotResponse,
            sign=True,
            retry=bool(request_id),
        )

    async def ratifications(self) -> list[negotiation_pb2.Ratification]:
        """The open ratifications covering this member's items."""
        response = await self.call(
            NEGOTIATION + "ListRatifications",
            negotiation_pb2.ListRatificationsRequest(),
            negotiation_pb2.ListRatificationsResponse,
            sign=True,
        )
        return list(response.ratifications)

    async def earnings(self) -> list[negotiation_pb2.Earning]:
        """This member's payout lines, in ledger order, each with its proof (unchecked: see
        :meth:`verified_earnings`)."""
        response = await self.call(
            NEGOTIATION + "GetEarnings",
            negotiation_pb2.GetEarningsRequest(),
            negotiation_pb2.GetEarningsResponse,
            sign=True,
        )
        return list(response.earnings)

    async def payout_statement(
        self, agreement_id: str
    ) -> negotiation_pb2.GetPayoutStatementResponse:
        """Public: an agreement's signed payout statement, verbatim, and its ledger index."""
        return await self.call(
            NEGOTIATION + "GetPayoutStatement",
            negotiation_pb2.GetPayoutStatementRequest(agreement_id=agreement_id),
            negotiation_pb2.GetPayoutStatementResponse,
            sign=False,
        )

    async def verify_earning(
        self,
        earning: negotiation_pb2.Earning,
        statement_envelope: envelope_pb2.Envelope | dsse.Envelope,
    ) -> payouts.VerifiedEarning:
        """Check an earning against its signed statement with the coalition's key (see
        :func:`coalition.payouts.verify_earning`); with a key, the line must be this
        client's. PayoutError if it does not verify."""
        coalition = PublicKey(bytes((await self.log_info()).coalition_public_key))
        return payouts.verify_earning(
            earning,
            statement_envelope,
            coalition,
            member_key_id=self.key.key_id if self.key is not None else None,
        )

    async def verified_earnings(self) -> list[payouts.VerifiedEarning]:
        """This member's earnings, each checked against its payout statement (fetched once
        per agreement, signed by the coalition, logged at the index the earning names)."""
        key = self._require_key()
        coalition = PublicKey(bytes((await self.log_info()).coalition_public_key))
        found: dict[str, negotiation_pb2.GetPayoutStatementResponse] = {}
        out = []
        for earning in await self.earnings():
            statement = found.get(earning.agreement_id)
            if statement is None:
                statement = await self.payout_statement(earning.agreement_id)
                found[earning.agreement_id] = statement
            if statement.index != earning.statement_index:
                raise payouts.PayoutError(
                    f"the statement of agreement {earning.agreement_id} is logged at "
                    f"{statement.index}, not {earning.statement_index}"
                )
            out.append(
                payouts.verify_earning(
                    earning, statement.statement, coalition, member_key_id=key.key_id
                )
            )
        return out

    # --- strikes (members) -------------------------------------------------------------

    async def pledge(
        self,
        target_lab_key_id: str = "",
        *,
        min_members: int = 0,
        min_share_basis_points: int = 0,
        expires_in: timedelta,
        request_id: str = "",
    ) -> strike_pb2.PledgeResponse:
        """Pledge to strike: withdraw all your consent from a lab (``""``: every lab) once
        enough members pledge too (see :func:`strike_pledge` for the thresholds).

        The response carries the pledge id and its receipt; ``executed`` is true when this
        pledge completed a set, and then ``executed_pledges`` pledges (this one among them)
        executed together, in the same sequenced batch, with every withdrawal they pledged.
        """
        statement = strike_pledge(
            target_lab_key_id,
            min_members=min_members,
            min_share_basis_points=min_share_basis_points,
            expires_in=expires_in,
        )
        envelope = statements.sign_statement(statement, self._require_key())
        return await self.call(
            STRIKE + "Pledge",
            strike_pb2.PledgeRequest(pledge=envelope.to_proto(), request_id=request_id),
            strike_pb2.PledgeResponse,
            sign=True,
            retry=bool(request_id),
        )

    async def retract_pledge(
        self, pledge_id: str, *, request_id: str = ""
    ) -> strike_pb2.RetractPledgeResponse:
        """Take back one of your pledges that is still active (signed, logged)."""
        statement = strike_pb2.PledgeRetraction(
            pledge_id=pledge_id,
            created_time=_timestamp(datetime.now(UTC)),
            nonce=os.urandom(16),
        )
        envelope = statements.sign_statement(statement, self._require_key())
        return await self.call(
            STRIKE + "RetractPledge",
            strike_pb2.RetractPledgeRequest(retraction=envelope.to_proto(), request_id=request_id),
            strike_pb2.RetractPledgeResponse,
            sign=True,
            retry=bool(request_id),
        )

    async def strikes(self) -> list[strike_pb2.StrikeProgress]:
        """Public: progress toward each target's threshold (aggregate counts only), one row
        per target with pledges, ordered by target (``""``, every lab, first)."""
        response = await self.call(
            STRIKE + "ListStrikes",
            strike_pb2.ListStrikesRequest(),
            strike_pb2.ListStrikesResponse,
            sign=False,
        )
        return list(response.strikes)

    async def pledges(self) -> list[strike_pb2.PledgeRecord]:
        """Your pledges with their states, in ledger order."""
        response = await self.call(
            STRIKE + "ListPledges",
            strike_pb2.ListPledgesRequest(),
            strike_pb2.ListPledgesResponse,
            sign=True,
        )
        return list(response.pledges)

    # --- disputes (members file, labs answer; anyone reads) --------------------------

    async def file_dispute(
        self,
        agreement_id: str,
        *,
        norm_ids: Iterable[str] = (),
        declaration_fields: Iterable[str] = (),
        text: str = "",
        request_id: str = "",
    ) -> disputes_pb2.FileDisputeResponse:
        """Allege that an agreement covering your items is broken: name the norms
        (``norm_ids``) and/or the use-declaration fields (``declaration_fields``, e.g.
        ``"jurisdictions"``) its lab breaks, and optionally say what happened (``text``, at
        most 1000 characters). Signed and logged; the response carries the dispute id."""
        statement = disputes_pb2.Dispute(
            agreement_id=agreement_id,
            norm_ids=sorted(set(norm_ids)),
            declaration_fields=sorted(set(declaration_fields)),
            text=text,
            created_time=_timestamp(datetime.now(UTC)),
            nonce=os.urandom(16),
        )
        envelope = statements.sign_statement(statement, self._require_key())
        return await self.call(
            DISPUTE + "FileDispute",
            disputes_pb2.FileDisputeRequest(dispute=envelope.to_proto(), request_id=request_id),
            disputes_pb2.FileDisputeResponse,
            sign=True,
            retry=bool(request_id),
        )

    async def respond_to_dispute(
        self, dispute_id: str, text: str, *, request_id: str = ""
    ) -> disputes_pb2.RespondToDisputeResponse:
        """As the disputed agreement's lab, answer a dispute (once; signed and logged)."""
        statement = disputes_pb2.DisputeResponse(
            dispute_id=dispute_id,
            text=text,
            created_time=_timestamp(datetime.now(UTC)),
            nonce=os.urandom(16),
        )
        envelope = statements.sign_statement(statement, self._require_key())
        return await self.call(
            DISPUTE + "RespondToDispute",
            disputes_pb2.RespondToDisputeRequest(
                response=envelope.to_proto(), request_id=request_id
            ),
            disputes_pb2.RespondToDisputeResponse,
            sign=True,
            retry=bool(request_id),
        )

    def disputes(
        self,
        *,
        agreement_id: str = "",
        lab_key_id: str = "",
        member_key_id: str = "",
        page_size: int = 0,
    ) -> AsyncIterator[disputes_pb2.DisputeRecord]:
        """Public: disputes in ledger order, each with its response if answered; every
        filter given must match."""
        return self.paged(
            DISPUTE + "ListDisputes",
            disputes_pb2.ListDisputesRequest(
                agreement_id=agreement_id,
                lab_key_id=lab_key_id,
                member_key_id=member_key_id,
                page_size=page_size,
            ),
            disputes_pb2.ListDisputesResponse,
            "disputes",
            sign=False,
        )

    async def dispute(self, dispute_id: str) -> disputes_pb2.DisputeRecord:
        """Public: one dispute and its response, if any."""
        response = await self.call(
            DISPUTE + "GetDispute",
            disputes_pb2.GetDisputeRequest(dispute_id=dispute_id),
            disputes_pb2.GetDisputeResponse,
            sign=False,
        )
        return response.dispute

    def _require_key(self) -> SigningKey:
        if self.key is None:
            raise CoalitionError("this call needs a key: pass key= to Client")
        return self.key


def _complete_token(token: consent_pb2.ConsentToken) -> consent_pb2.ConsentToken:
    """A copy of a ready token, with a created_time and a nonce if it lacks them."""
    out = consent_pb2.ConsentToken()
    out.CopyFrom(token)
    if not out.HasField("created_time"):
        out.created_time.CopyFrom(_timestamp(datetime.now(UTC)))
    if not out.nonce:
        out.nonce = os.urandom(16)
    return out


def _extension(media_type: str) -> str:
    if media_type == DEFAULT_MEDIA_TYPE:
        return ""
    return mimetypes.guess_extension(media_type) or ""


def _check_release(
    receipt: ledger_pb2.Receipt,
    verifier: NoteVerifier,
    coalition: PublicKey,
    lease_id: str,
    lab_key_id: str,
) -> access_pb2.KeyRelease:
    """The KeyRelease a fetch page's receipt proves, checked to be ours and the coalition's."""
    try:
        verify_receipt(receipt, verifier)
        envelope = dsse.Envelope.from_proto(ledger_pb2.LedgerLeaf.FromString(receipt.leaf).envelope)
        if envelope.payload_type != statements.payload_type(access_pb2.KeyRelease):
            raise FetchError(f"the release entry is a {envelope.payload_type}")
        dsse.verify(envelope, coalition)
        release = statements.parse_payload(access_pb2.KeyRelease, envelope.payload)
    except (DecodeError, VerificationError) as exc:
        raise FetchError(f"the release receipt does not verify: {exc}") from None
    if release.lease_id != lease_id or release.lab_key_id != lab_key_id:
        raise FetchError("the release is for another lease or lab")
    return release


def _check_notice(
    message: access_pb2.WatchWithdrawalsResponse, coalition: PublicKey, lab_key_id: str
) -> None:
    try:
        envelope = dsse.Envelope.from_proto(message.notice)
        dsse.verify(envelope, coalition)
        notice = _notice_statement(envelope)
    except VerificationError as exc:
        raise VerificationError(f"notice {message.notice_id} does not verify: {exc}") from None
    if statements.statement_id(envelope) != message.notice_id:
        raise VerificationError(f"notice {message.notice_id} is listed under another id")
    if notice.lab_key_id != lab_key_id:
        raise VerificationError(f"notice {message.notice_id} is for another lab")
