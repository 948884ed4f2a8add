"""Signed statements for server tests, built the way a client would."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from coalition.dsse import Envelope
from coalition.keys import SigningKey
from coalition.statements import sign_statement
from coalition.v1 import access_pb2, consent_pb2, items_pb2, terms_pb2
from coalition_server.agreements import item_ids_root
from coalition_server.domain.items import item_id

USD = "USD"


def ts(value: datetime) -> Timestamp:
    """A protobuf Timestamp."""
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def now() -> datetime:
    """The current UTC time."""
    return datetime.now(UTC)


def days(n: float) -> Duration:
    """A protobuf Duration of n days."""
    duration = Duration()
    duration.FromTimedelta(timedelta(days=n))
    return duration


def seconds(n: float) -> Duration:
    """A protobuf Duration of n seconds."""
    duration = Duration()
    duration.FromTimedelta(timedelta(seconds=n))
    return duration


def usd(micros: int) -> terms_pb2.Money:
    """Money in USD micros."""
    return terms_pb2.Money(currency_code=USD, micros=micros)


def item_registration(
    key: SigningKey, content: bytes, tags: Iterable[str] = (), media_type: str = "text/plain"
) -> tuple[str, Envelope]:
    """(item id, signed ItemRegistration) for ``content``."""
    commitment = hashlib.sha256(content).digest()
    statement = items_pb2.ItemRegistration(
        commitment=commitment,
        size_bytes=len(content),
        media_type=media_type,
        tags=list(tags),
        created_time=ts(now()),
        nonce=os.urandom(16),
    )
    return item_id(key.key_id, commitment), sign_statement(statement, key)


def consent_token(
    *,
    item_ids: Iterable[str] | None = None,
    tag: str | None = None,
    purposes: Iterable[terms_pb2.Purpose.ValueType] = (terms_pb2.PURPOSE_TRAIN_AI,),
    purchase_floor: int = 1_000_000,
    attribution_required: bool = False,
    excluded_labs: Iterable[str] = (),
    valid_days: float = 30,
    not_before: datetime | None = None,
) -> consent_pb2.ConsentToken:
    """A consent token: explicit ids, a tag, or (neither) all items."""
    selector = terms_pb2.ItemSelector()
    if item_ids is not None:
        selector.item_ids.item_ids.extend(item_ids)
    elif tag is not None:
        selector.tag = tag
    else:
        selector.all_items = True
    token = consent_pb2.ConsentToken(
        items=selector,
        purposes=list(purposes),
        floor=terms_pb2.FloorTerms(
            prices=[
                terms_pb2.PriceFloor(
                    payment_model=terms_pb2.PAYMENT_MODEL_PURCHASE,
                    minimum_per_item=usd(purchase_floor),
                )
            ],
            attribution_required=attribution_required,
        ),
        excluded_lab_key_ids=list(excluded_labs),
        not_after=ts(now() + timedelta(days=valid_days)),
        nonce=os.urandom(16),
        created_time=ts(now()),
    )
    if not_before is not None:
        token.not_before.CopyFrom(ts(not_before))
    return token


def withdrawal(
    *, consent_id: str | None = None, item_ids: Iterable[str] | None = None
) -> consent_pb2.Withdrawal:
    """A withdrawal of a token, of items, or (neither) of everything."""
    statement = consent_pb2.Withdrawal(created_time=ts(now()), nonce=os.urandom(16))
    if consent_id is not None:
        statement.consent_id = consent_id
    elif item_ids is not None:
        statement.items.item_ids.extend(item_ids)
    else:
        statement.everything = True
    return statement


def licence_terms(
    *,
    price: int = 2_000_000,
    purposes: Iterable[terms_pb2.Purpose.ValueType] = (terms_pb2.PURPOSE_TRAIN_AI,),
    deletion_deadline: Duration | None = None,
    lease_duration: Duration | None = None,
) -> terms_pb2.LicenceTerms:
    """Purchase terms at ``price`` micros per item."""
    return terms_pb2.LicenceTerms(
        purposes=list(purposes),
        payment_model=terms_pb2.PAYMENT_MODEL_PURCHASE,
        price_per_item=usd(price),
        licence_duration=days(365),
        deletion_deadline=deletion_deadline or days(7),
        lease_duration=lease_duration or seconds(3600),
    )


def agreement(
    lab: SigningKey,
    item_ids: Iterable[str],
    terms: terms_pb2.LicenceTerms | None = None,
    valid_days: float = 365,
) -> Envelope:
    """An Agreement signed by the lab (the coalition countersigns)."""
    ids = sorted(item_ids)
    statement = access_pb2.Agreement(
        lab_key_id=lab.key_id,
        terms=terms or licence_terms(),
        covered_items_root=item_ids_root(ids),
        covered_item_count=len(ids),
        covered_item_ids=ids,
        expiry_time=ts(now() + timedelta(days=valid_days)),
        created_time=ts(now()),
        nonce=os.urandom(16),
    )
    return sign_statement(statement, lab)


def lease_request(agreement_id: str) -> access_pb2.LeaseRequest:
    """A lease request."""
    return access_pb2.LeaseRequest(
        agreement_id=agreement_id, created_time=ts(now()), nonce=os.urandom(16)
    )


def deletion_receipt(notice_id: str, item_ids: Iterable[str]) -> access_pb2.DeletionReceipt:
    """A deletion receipt for a notice."""
    return access_pb2.DeletionReceipt(
        notice_id=notice_id,
        item_ids=list(item_ids),
        deleted_time=ts(now()),
        nonce=os.urandom(16),
    )
