"""Consent tokens: validation, states, and whether a token permits given licence terms.

Pure functions. ``permits`` is THE rule that decides coverage: key release, notices,
shredding and (later) the coalition's reservation all call it, so they can never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from coalition import norms
from coalition.v1 import consent_pb2, norms_pb2, terms_pb2
from coalition_server.domain.errors import FailedPreconditionError, InvalidArgumentError
from coalition_server.domain.statements import (
    MAX_CLOCK_SKEW,
    check_fresh,
    check_item_id,
    check_key_id,
    check_nonce,
    check_tag,
    timestamp,
)

GIVEN = consent_pb2.CONSENT_STATE_GIVEN
WITHDRAWN = consent_pb2.CONSENT_STATE_WITHDRAWN
LAPSED = consent_pb2.CONSENT_STATE_LAPSED
INVALIDATED = consent_pb2.CONSENT_STATE_INVALIDATED

MAX_ITEMS_PER_TOKEN = 10_000
MAX_EXCLUDED_LABS = 1_000
MAX_VALIDITY = timedelta(days=3653)
MAX_DURATION = timedelta(days=36525)
# Money: up to a billion currency units per item is already absurd; beyond is refused.
MAX_MICROS = 10**15
DEFAULT_MAX_DELETION_DEADLINE = timedelta(days=30)
_MAX_DURATION_SECONDS = MAX_DURATION.total_seconds()
_ONE_HOUR = timedelta(hours=1)
KNOWN_PURPOSES = frozenset(v for v in terms_pb2.Purpose.values() if v)
KNOWN_PAYMENT_MODELS = frozenset(v for v in terms_pb2.PaymentModel.values() if v)


def duration(value: Duration, field: str) -> timedelta:
    """A protobuf duration as a timedelta, checked to be non-negative and not absurd."""
    seconds, nanos = _check_duration(value, field)
    return timedelta(seconds=seconds, microseconds=nanos // 1000)


def _check_duration(value: Duration, field: str) -> tuple[int, int]:
    """:func:`duration`'s checks; the duration's seconds and nanos."""
    seconds, nanos = value.seconds, value.nanos
    if seconds < 0 or nanos < 0:
        raise InvalidArgumentError("BAD_DURATION", f"{field} must not be negative")
    if seconds > _MAX_DURATION_SECONDS:
        raise InvalidArgumentError("BAD_DURATION", f"{field} is longer than 100 years")
    return seconds, nanos


@dataclass(frozen=True)
class Token:
    """A validated consent token, ready for coverage decisions."""

    consent_id: str
    contributor_key_id: str
    statement: consent_pb2.ConsentToken
    not_before: datetime
    not_after: datetime
    # Labs the member struck against after granting the token (executed strike pledges).
    struck_labs: frozenset[str] = frozenset()

    @property
    def purposes(self) -> frozenset[int]:
        """Permitted purposes."""
        return frozenset(self.statement.purposes)

    def state_at(self, recorded: int, at: datetime) -> int:
        """ISO/IEC TS 27560 state at ``at``: LAPSED is derived from not_after."""
        if recorded == GIVEN and at >= self.not_after:
            return LAPSED
        return recorded

    def in_force(self, at: datetime) -> bool:
        """Whether the validity window contains ``at``."""
        return self.not_before <= at < self.not_after


def parse_token(
    consent_id: str,
    contributor: str,
    statement: consent_pb2.ConsentToken,
    integrated_time: datetime,
    window: tuple[datetime | None, datetime] | None = None,
) -> Token:
    """A Token from a stored statement (already validated when it was granted).

    ``window`` is the statement's :func:`validity`, when the caller has it already.
    """
    not_before, not_after = validity(statement) if window is None else window
    return Token(
        consent_id,
        contributor,
        statement,
        integrated_time if not_before is None else not_before,
        not_after,
    )


def validity(statement: consent_pb2.ConsentToken) -> tuple[datetime | None, datetime]:
    """The token's own window: not_before (None when unset: it starts when it is sequenced)
    and not_after."""
    not_before = (
        _instant(statement.not_before, "not_before") if statement.HasField("not_before") else None
    )
    return not_before, _instant(statement.not_after, "not_after")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECONDS = range(-62_135_596_800, 253_402_300_800)
"""What a Timestamp may hold: 0001-01-01 to 9999-12-31."""


def _instant(value: Timestamp, field: str) -> datetime:
    """What :func:`timestamp` gives (protobuf's ``ToDatetime``), a few times faster: a batch
    of a thousand tokens reads two thousand of them. Out of range, :func:`timestamp` says why."""
    seconds, nanos = value.seconds, value.nanos
    if seconds in _SECONDS and 0 <= nanos < 1_000_000_000:
        return _EPOCH + timedelta(seconds=seconds, microseconds=nanos // 1000)
    return timestamp(value, field)


def named_items(statement: consent_pb2.ConsentToken) -> list[str]:
    """The item ids a token names one by one (none when it selects by tag or all items)."""
    items = statement.items
    return list(items.item_ids.item_ids) if items.WhichOneof("selector") == "item_ids" else []


def check_token(
    statement: consent_pb2.ConsentToken,
    currency: str,
    now: datetime,
    valid: set[bytes] | None = None,
) -> None:
    """Refuse a token that is malformed, outside its window, or not in the vocabulary.

    ``valid`` (shared by the tokens of one request) remembers the floors and norms already
    found valid, by their encoding: a member's tokens mostly repeat them, and checking them
    is most of a token's check. Each field is read once (a protobuf attribute costs a
    lookup): a batch of a thousand tokens is checked on the verifying threads, whose Python
    holds the GIL the event loop needs."""
    has_created = statement.HasField("created_time")
    created_time = statement.created_time
    # check_fresh's test, with a faster reading of the time: it is asked only to say why not.
    if not has_created:
        check_fresh(created_time, has_created, now)
    created = _instant(created_time, "created_time")
    if abs(created - now) > MAX_CLOCK_SKEW:
        check_fresh(created_time, has_created, now)
    check_nonce(statement.nonce)
    items = statement.items
    selector = items.WhichOneof("selector")
    if selector is None:
        raise InvalidArgumentError("MISSING_ITEMS", "name the items: ids, a tag or all_items")
    if selector == "item_ids":
        ids = list(items.item_ids.item_ids)
        if not 1 <= len(ids) <= MAX_ITEMS_PER_TOKEN:
            raise InvalidArgumentError("BAD_ITEMS", f"name 1 to {MAX_ITEMS_PER_TOKEN} item ids")
        for item_id in ids:
            check_item_id(item_id)
        if len(set(ids)) != len(ids):
            raise InvalidArgumentError("BAD_ITEMS", "an item id appears twice")
    elif selector == "tag":
        check_tag(items.tag)
    elif not items.all_items:
        raise InvalidArgumentError("MISSING_ITEMS", "all_items must be true when used")
    purposes = list(statement.purposes)
    if not purposes:
        raise InvalidArgumentError("MISSING_PURPOSES", "name at least one purpose")
    unknown = [p for p in purposes if p not in KNOWN_PURPOSES]
    if unknown:
        raise InvalidArgumentError(
            "UNKNOWN_PURPOSE",
            f"purpose {unknown[0]} is not in the vocabulary",
            {"purpose": str(unknown[0])},
        )
    if len(set(purposes)) != len(purposes):
        raise InvalidArgumentError("BAD_PURPOSES", "a purpose appears twice")
    floor = statement.floor
    if valid is None:
        check_floor(floor, currency)
    elif (key := b"f" + floor.SerializeToString(deterministic=True)) not in valid:
        check_floor(floor, currency)
        valid.add(key)
    norms_ = statement.norms
    if norms_:
        if valid is None:
            check_norms(norms_, currency)
        elif (key := _norms_key(norms_)) not in valid:
            check_norms(norms_, currency)
            valid.add(key)
    excluded = statement.excluded_lab_key_ids
    if len(excluded) > MAX_EXCLUDED_LABS:
        raise InvalidArgumentError("BAD_EXCLUDED_LABS", "too many excluded labs")
    for lab in excluded:
        check_key_id(lab, "excluded_lab_key_ids")
    if not statement.HasField("not_after"):
        raise InvalidArgumentError("MISSING_NOT_AFTER", "not_after is required")
    not_after = _instant(statement.not_after, "not_after")
    if not_after <= now:
        raise FailedPreconditionError("TOKEN_EXPIRED", "the token's not_after has passed")
    if not_after - created > MAX_VALIDITY:
        raise InvalidArgumentError("BAD_VALIDITY", "a token is valid for at most ten years")
    if statement.HasField("not_before"):
        not_before = _instant(statement.not_before, "not_before")
        if not_before >= not_after:
            raise InvalidArgumentError("BAD_VALIDITY", "not_before must be before not_after")
        if not_before > now + timedelta(minutes=10):
            raise FailedPreconditionError(
                "TOKEN_NOT_YET_VALID", "the token's not_before is in the future"
            )


def _norms_key(values: Sequence[norms_pb2.Norm]) -> bytes:
    """The norms' encoding, as :func:`check_token` remembers them (each length-prefixed)."""
    parts = [norm.SerializeToString(deterministic=True) for norm in values]
    return b"n" + b"".join(len(part).to_bytes(4, "big") + part for part in parts)


def check_norms(values: Sequence[norms_pb2.Norm], currency: str) -> None:
    """Norms from the vocabulary, well formed and not contradicting each other."""
    try:
        norms.validate_norms(values, currency)
    except norms.NormError as exc:
        raise InvalidArgumentError(exc.reason, exc.message, exc.metadata) from None


def check_declaration(declaration: terms_pb2.UseDeclaration) -> None:
    """A use declaration in the vocabulary with every required field."""
    try:
        norms.validate_declaration(declaration)
    except norms.NormError as exc:
        raise InvalidArgumentError(exc.reason, exc.message, exc.metadata) from None


def check_money(money: terms_pb2.Money, currency: str, field: str) -> None:
    """Money in the coalition's currency, not negative, not absurd."""
    if money.currency_code != currency:
        raise InvalidArgumentError(
            "BAD_CURRENCY", f"{field}: prices are in {currency}", {"currency": currency}
        )
    if money.micros < 0:
        raise InvalidArgumentError("NEGATIVE_PRICE", f"{field} must not be negative")
    if money.micros > MAX_MICROS:
        raise InvalidArgumentError("ABSURD_PRICE", f"{field} is above 10^9 units per item")


def check_floor(floor: terms_pb2.FloorTerms, currency: str) -> None:
    """Floor terms: one price per known payment model, sane durations."""
    prices = floor.prices
    if not prices:
        raise InvalidArgumentError("MISSING_PRICES", "give a floor price for a payment model")
    models = [price.payment_model for price in prices]
    if not KNOWN_PAYMENT_MODELS.issuperset(models):
        raise InvalidArgumentError("UNKNOWN_PAYMENT_MODEL", "payment model not in the vocabulary")
    if len(set(models)) != len(models):
        raise InvalidArgumentError("BAD_PRICES", "one floor per payment model")
    for price, model in zip(prices, models, strict=True):
        check_money(price.minimum_per_item, currency, "minimum_per_item")
        if model == terms_pb2.PAYMENT_MODEL_SUBSCRIPTION:
            if duration(price.period, "period") < _ONE_HOUR:
                raise InvalidArgumentError("BAD_PERIOD", "a subscription floor needs a period")
        elif price.HasField("period"):
            raise InvalidArgumentError("BAD_PERIOD", "only subscriptions have a period")
    _check_duration(floor.max_licence_duration, "max_licence_duration")
    _check_duration(floor.max_deletion_deadline, "max_deletion_deadline")


def norms_premium(token: Token, terms: terms_pb2.LicenceTerms) -> int | None:
    """The premium per item the terms' use declaration owes the token's priced norms, or
    None when it breaks a hard norm (the token then never covers the use)."""
    if not token.statement.norms:
        return 0
    # Terms without a declaration promise nothing: they break every norm.
    declared = terms.declaration if terms.HasField("declaration") else None
    assessment = norms.assess(token.statement.norms, declared)
    return assessment.premium_micros if assessment.admissible else None


def meets_floor(
    floor: terms_pb2.FloorTerms, terms: terms_pb2.LicenceTerms, premium_micros: int = 0
) -> bool:
    """Whether licence terms meet a member's floor terms (price, attribution, durations).

    ``premium_micros`` (owed to priced norms) is added to the floor, in the floor's units.
    """
    price = next((p for p in floor.prices if p.payment_model == terms.payment_model), None)
    if price is None or price.minimum_per_item.currency_code != terms.price_per_item.currency_code:
        return False
    offered = terms.price_per_item.micros
    minimum = price.minimum_per_item.micros + premium_micros
    if terms.payment_model == terms_pb2.PAYMENT_MODEL_SUBSCRIPTION:
        # Compare prices per unit of time without rounding: a/p >= b/q  <=>  a*q >= b*p.
        offered_period = terms.subscription_period.seconds
        floor_period = price.period.seconds
        if offered_period <= 0 or offered * floor_period < minimum * offered_period:
            return False
    elif offered < minimum:
        return False
    if floor.attribution_required and not terms.attribution:
        return False
    if floor.HasField("max_licence_duration") and (
        terms.licence_duration.seconds > floor.max_licence_duration.seconds
    ):
        return False
    max_deadline = (
        floor.max_deletion_deadline.seconds
        if floor.HasField("max_deletion_deadline")
        else DEFAULT_MAX_DELETION_DEADLINE.total_seconds()
    )
    return terms.deletion_deadline.seconds <= max_deadline


def permits(token: Token, terms: terms_pb2.LicenceTerms, lab_key_id: str, at: datetime) -> bool:
    """Whether a GIVEN token lets ``lab_key_id`` use its items under ``terms`` at ``at``:
    in force, lab not excluded, purposes permitted, no hard norm broken by the terms' use
    declaration, and the price meeting the floor plus the premium of every priced norm it
    breaks."""
    if not (
        token.in_force(at)
        and lab_key_id not in token.statement.excluded_lab_key_ids
        and lab_key_id not in token.struck_labs
        and set(terms.purposes) <= token.purposes
    ):
        return False
    premium = norms_premium(token, terms)
    return premium is not None and meets_floor(token.statement.floor, terms, premium)


def covers_item(token: Token, item_id: str, item_tags: frozenset[str]) -> bool:
    """Whether a token's selector names the item (which must be the same member's)."""
    selector = token.statement.items.WhichOneof("selector")
    if selector == "item_ids":
        return item_id in token.statement.items.item_ids.item_ids
    if selector == "tag":
        return token.statement.items.tag in item_tags
    return selector == "all_items"
