"""Fixtures for SDK tests: registered parties over the real server (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from coalition.client import Client
from coalition.v1 import party_pb2

MakeParty = Callable[..., Awaitable[Client]]


@pytest.fixture
def make_party(make_client: Callable[..., Client]) -> MakeParty:
    """Factory of registered parties: ``await make_party(role, name)``."""

    async def make(
        role: party_pb2.Role.ValueType = party_pb2.ROLE_CONTRIBUTOR, name: str = "Ada"
    ) -> Client:
        client = make_client()
        await client.register(role, name)
        return client

    return make


@pytest.fixture
async def member(make_party: MakeParty) -> Client:
    """A registered contributor."""
    return await make_party(party_pb2.ROLE_CONTRIBUTOR, "Ada")


@pytest.fixture
async def lab(make_party: MakeParty) -> Client:
    """A registered lab."""
    return await make_party(party_pb2.ROLE_LAB, "Lab One")
