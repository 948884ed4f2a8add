"""Setting up a coalition over gRPC with the SDK, before anything is timed.

Members register items and grant consent; labs register and conclude agreements by the
shortest real path (open a negotiation, accept the coalition's offer, sign its draft: with the
default policy no ratification is required, so the agreement is then final).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import dataclass
from datetime import timedelta

from google.protobuf.duration_pb2 import Duration

from bench.harness import OWN_CONNECTION
from coalition.client import Client, consent_token, price_floor
from coalition.keys import SigningKey
from coalition.v1 import negotiation_pb2, party_pb2, terms_pb2

USD = 1_000_000
PURPOSE = "train-ai"


@dataclass
class Party:
    """A registered party: its key and its own connection."""

    client: Client
    key: SigningKey
    item_ids: list[str]


async def member(
    target: str, name: str, items: int, *, floor_micros: int = USD, grant: bool = True
) -> Party:
    """A contributor with ``items`` registered items and (``grant``) one consent token for
    all of them: purpose train-ai, purchase at ``floor_micros`` per item at least."""
    key = SigningKey.generate()
    client = Client(target, key, channel_options=OWN_CONNECTION)
    await client.register(party_pb2.ROLE_CONTRIBUTOR, name)
    item_ids: list[str] = []
    if items:
        registered = await client.register_items(
            (hashlib.sha256(os.urandom(32)).digest(), 1024, "text/plain", ["bench"])
            for _ in range(items)
        )
        item_ids = [item.item_id for item in registered.items]
        if grant:
            await client.grant_consent(
                consent_token(
                    item_ids=item_ids,
                    purposes=[PURPOSE],
                    floors=[price_floor("purchase", floor_micros)],
                )
            )
    return Party(client, key, item_ids)


async def lab(target: str, name: str) -> Party:
    """A registered lab."""
    key = SigningKey.generate()
    client = Client(target, key, channel_options=OWN_CONNECTION)
    await client.register(party_pb2.ROLE_LAB, name)
    return Party(client, key, [])


def licence_terms(price_micros: int) -> terms_pb2.LicenceTerms:
    """Purchase terms for train-ai at ``price_micros`` per item, a week to delete."""
    return terms_pb2.LicenceTerms(
        purposes=[terms_pb2.PURPOSE_TRAIN_AI],
        payment_model=terms_pb2.PAYMENT_MODEL_PURCHASE,
        price_per_item=terms_pb2.Money(currency_code="USD", micros=price_micros),
        licence_duration=_duration(timedelta(days=365)),
        deletion_deadline=_duration(timedelta(days=7)),
        lease_duration=_duration(timedelta(hours=1)),
    )


def _duration(value: timedelta) -> Duration:
    duration = Duration()
    duration.FromTimedelta(value)
    return duration


async def conclude_agreement(lab_: Party) -> str:
    """Open a negotiation, accept the coalition's offer, sign its draft; the agreement id."""
    opened = await lab_.client.open_negotiation(licence_terms(USD))
    negotiation = opened.negotiation
    if negotiation.state != negotiation_pb2.NEGOTIATION_STATE_OFFERED:
        raise RuntimeError(f"the coalition did not offer: state {negotiation.state}")
    accepted = await lab_.client.accept(negotiation.negotiation_id, negotiation.round + 1)
    if accepted.negotiation.state != negotiation_pb2.NEGOTIATION_STATE_AGREED:
        raise RuntimeError(f"accepting did not agree: state {accepted.negotiation.state}")
    signed = await lab_.client.sign_agreement(accepted.negotiation.agreement_draft)
    if signed.negotiation.state != negotiation_pb2.NEGOTIATION_STATE_FINALIZED:
        raise RuntimeError(f"signing did not finalise: state {signed.negotiation.state}")
    return signed.negotiation.agreement_id


async def close_all(parties: list[Party]) -> None:
    """Close every party's connection."""
    await asyncio.gather(*(p.client.close() for p in parties))
