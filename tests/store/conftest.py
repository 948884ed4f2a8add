"""Fixtures of the storage tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiosqlite
import pytest


@pytest.fixture
def hand_overs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The functions handed to aiosqlite's threads, every connection's (each still runs)."""
    seen: list[str] = []
    passed_on: Callable[..., Awaitable[Any]] = aiosqlite.Connection._execute  # untyped

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(getattr(fn, "__name__", repr(fn)))
        return await passed_on(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    return seen
