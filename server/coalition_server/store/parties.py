"""Registered parties: the keys that may call authenticated RPCs."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from coalition.v1 import party_pb2
from coalition_server.domain.errors import AlreadyExistsError
from coalition_server.store import models
from coalition_server.store.database import Database


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
