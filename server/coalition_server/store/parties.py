"""Registered parties: the keys that may call authenticated RPCs."""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, replace

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from coalition.keys import SigningKey
from coalition.statements import sign_statement
from coalition.v1 import party_pb2
from coalition_server.domain.errors import AlreadyExistsError
from coalition_server.store import models
from coalition_server.store.database import Database
from coalition_server.store.sequencer import EffectContext, Sequencer, Submission


@dataclass(frozen=True)
class PartyRecord:
    """A registered party as stored."""

    key_id: str
    role: int
    name: str
    signing_key: bytes
    encryption_key: bytes
    registration_index: int

    def to_proto(self) -> party_pb2.Party:
        """The API representation."""
        return party_pb2.Party(
            key_id=self.key_id,
            role=party_pb2.Role.ValueType(self.role),
            name=self.name,
            signing_key=self.signing_key,
            encryption_key=self.encryption_key,
            registration_index=self.registration_index,
        )


class PartyStore:
    """Lookups of registered parties. Registrations never change, so hits are cached."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self._cache: dict[str, PartyRecord] = {}

    async def get(self, key_id: str) -> PartyRecord | None:
        """The party with this key id, or None."""
        cached = self._cache.get(key_id)
        if cached is not None:
            return cached
        async with self._db.reader.connect() as conn:
            row = (
                await conn.execute(select(models.Party).where(models.Party.key_id == key_id))
            ).one_or_none()
        if row is None:
            return None
        record = PartyRecord(
            row.key_id,
            row.role,
            row.name,
            row.signing_key,
            row.encryption_key,
            row.registration_idx,
        )
        if len(self._cache) < 100_000:
            self._cache[key_id] = record
        return record


async def insert_party(conn: AsyncConnection, record: PartyRecord) -> None:
    """Insert a registration inside the sequencer's transaction (refusing a second one)."""
    exists = (
        await conn.execute(select(models.Party.key_id).where(models.Party.key_id == record.key_id))
    ).first()
    if exists is not None:
        raise AlreadyExistsError(
            "PARTY_ALREADY_REGISTERED", "this key is already registered", {"key_id": record.key_id}
        )
    await conn.execute(
        insert(models.Party),
        [
            {
                "key_id": record.key_id,
                "role": record.role,
                "name": record.name,
                "signing_key": record.signing_key,
                "encryption_key": record.encryption_key,
                "registration_idx": record.registration_index,
            }
        ],
    )


async def register_coalition(
    sequencer: Sequencer, parties: PartyStore, key: SigningKey, name: str
) -> None:
    """Log the coalition's own statement key as a party, once (the log's first entry).

    Auditors then take the key that signs agreements, releases and notices from the ledger
    itself. Every replica tries; all but the first find it registered.
    """
    if await parties.get(key.key_id) is not None:
        return
    created = Timestamp()
    created.GetCurrentTime()
    registration = party_pb2.PartyRegistration(
        role=party_pb2.ROLE_COALITION,
        name=name,
        signing_key=key.public_key.raw,
        encryption_key=key.encryption_public_key_raw(),
        created_time=created,
        # Deterministic: two replicas registering at once produce statements that differ
        # only in time; the party row decides who was first.
        nonce=hashlib.sha256(b"coalition-registration" + key.public_key.raw).digest()[:16],
    )
    record = PartyRecord(
        key.key_id,
        party_pb2.ROLE_COALITION,
        name,
        key.public_key.raw,
        key.encryption_public_key_raw(),
        0,
    )

    async def effect(context: EffectContext) -> None:
        await insert_party(context.conn, replace(record, registration_index=context.index))

    with contextlib.suppress(AlreadyExistsError):  # a sibling replica was first
        await sequencer.submit_one(
            Submission(sign_statement(registration, key), key.key_id, effect=effect),
            lambda receipt: b"",
        )
