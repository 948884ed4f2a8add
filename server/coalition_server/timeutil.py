"""UTC time helpers shared by the store and the domain."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """Attach UTC to a naive datetime read back from SQLite."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def to_timestamp(value: datetime) -> Timestamp:
    """A protobuf Timestamp of ``value``."""
    stamp = Timestamp()
    stamp.FromDatetime(as_utc(value))
    return stamp
