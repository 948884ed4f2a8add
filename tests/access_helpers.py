"""Items, agreements and leases for SDK and CLI tests.

Agreements are made directly through the domain layer, skipping negotiation (its own tests
cover it): the lab signs the Agreement, the coalition countersigns and logs it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from coalition.client import Client, price_floor
from coalition.keys import SigningKey
from coalition.statements import sign_statement
from coalition.v1 import access_pb2, ledger_pb2, terms_pb2
from coalition_server.agreements import conclude_agreement, item_ids_root
from coalition_server.server import CoalitionServer


def _duration(value: timedelta) -> Duration:
    out = Duration()
    out.FromTimedelta(value)
    return out


def _timestamp(value: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(value)
    return out


def licence_terms(
    *,
    purposes: Iterable[terms_pb2.Purpose.ValueType] = (terms_pb2.PURPOSE_TRAIN_AI,),
    price_micros: int = 2_000_000,
    deletion_deadline: timedelta = timedelta(days=7),
    lease_duration: timedelta = timedelta(hours=1),
    licence_duration: timedelta = timedelta(days=365),
    attribution: bool = False,
) -> terms_pb2.LicenceTerms:
    """Purchase terms in USD."""
    return terms_pb2.LicenceTerms(
        purposes=list(purposes),
        payment_model=terms_pb2.PAYMENT_MODEL_PURCHASE,
        price_per_item=terms_pb2.Money(currency_code="USD", micros=price_micros),
        licence_duration=_duration(licence_duration),
        deletion_deadline=_duration(deletion_deadline),
        lease_duration=_duration(lease_duration),
        attribution=attribution,
    )


async def make_agreement(
    server: CoalitionServer,
    lab: SigningKey,
    item_ids: Iterable[str],
    *,
    terms: terms_pb2.LicenceTerms | None = None,
    valid_for: timedelta = timedelta(days=365),
) -> tuple[str, ledger_pb2.Receipt]:
    """Conclude an agreement between a registered lab and the coalition; (id, receipt)."""
    ids = sorted(item_ids)
    now = datetime.now(UTC)
    statement = access_pb2.Agreement(
        lab_key_id=lab.key_id,
        terms=terms or licence_terms(),
        covered_item_ids=ids,
        covered_item_count=len(ids),
        covered_items_root=item_ids_root(ids),
        expiry_time=_timestamp(now + valid_for),
        created_time=_timestamp(now),
        nonce=os.urandom(16),
    )
    envelope = sign_statement(statement, lab)
    return await conclude_agreement(server.context, server.parties, envelope)


CONTENTS = [b"first item " * 100, os.urandom(1_300_000), b"", b"last"]
"""Item contents of several sizes: empty, small, and over one 1 MiB segment."""


async def stored_items(member: Client, contents: list[bytes] = CONTENTS) -> list[str]:
    """Register and upload ``contents`` as ``member``'s items, consent them for train-ai;
    their item ids."""
    response = await member.register_items(
        [(hashlib.sha256(c).digest(), len(c), "text/plain", ["set"]) for c in contents]
    )
    for item, data in zip(response.items, contents, strict=True):
        await member.upload(item.item_id, data)
    await member.grant_consent(
        tag="set", purposes=["train-ai"], floors=[price_floor("purchase", 1)]
    )
    return [i.item_id for i in response.items]


async def leased(server: CoalitionServer, lab: Client, ids: list[str], **terms: object) -> str:
    """An agreement of ``lab`` for ``ids`` on ``terms``, and the id of a lease taken on it."""
    assert lab.key is not None
    agreement_id, _ = await make_agreement(server, lab.key, ids, terms=licence_terms(**terms))  # type: ignore[arg-type]
    return (await lab.take_lease(agreement_id)).lease.lease_id
