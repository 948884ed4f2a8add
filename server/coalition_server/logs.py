"""Logging set-up: readable text for a terminal, or one JSON object per line for collectors.

JSON lines carry ``timestamp`` (RFC 3339, UTC, milliseconds), ``level``, ``logger`` and
``message``, then any fields the call passed with ``extra=`` (the access log adds
``method``, ``code``, ``duration_ms`` and ``caller_key_id``), and ``exception`` with the
traceback when there is one. What is logged is chosen where it is logged: the server never
passes key material, tokens, signatures or payload bytes to a logger.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

TEXT = "text"
JSON = "json"
FORMATS = (TEXT, JSON)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON object on one line."""
        stamp = datetime.fromtimestamp(record.created, UTC)
        entry: dict[str, Any] = {
            "timestamp": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def formatter(log_format: str) -> logging.Formatter:
    """The formatter for ``log_format`` (``text`` or ``json``)."""
    if log_format == JSON:
        return JsonFormatter()
    if log_format == TEXT:
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"unknown log format {log_format!r}: expected one of {', '.join(FORMATS)}")


def configure(level: str, log_format: str = TEXT, stream: IO[str] | None = None) -> None:
    """Send every log record at ``level`` or above to ``stream`` (stderr) in ``log_format``.

    Replaces the root logger's handlers, so calling it again (tests, a re-read config)
    does not duplicate lines.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter(log_format))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # These print each SQL statement with its parameters at DEBUG: never below INFO, so row
    # values (statements, ciphertext, key material) stay out of the logs at any level.
    floor = max(logging.INFO, logging.getLogger().getEffectiveLevel())
    for name in ROW_VALUE_LOGGERS:
        logging.getLogger(name).setLevel(floor)


ROW_VALUE_LOGGERS = ("aiosqlite", "asyncpg")
"""Database drivers that log parameters (SQLAlchemy hides its own: hide_parameters)."""


__all__ = ["FORMATS", "JSON", "TEXT", "JsonFormatter", "configure", "formatter"]
