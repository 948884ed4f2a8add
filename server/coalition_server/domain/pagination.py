"""Opaque page tokens (AIP-158): the next index to read, versioned and base64url-encoded."""

from __future__ import annotations

import base64
import binascii

from coalition_server.domain.errors import InvalidArgumentError

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_PREFIX = "v1:"


def page_size(requested: int) -> int:
    """The effective page size: the default for 0, capped at the maximum."""
    return DEFAULT_PAGE_SIZE if requested == 0 else min(requested, MAX_PAGE_SIZE)


def encode_token(next_index: int) -> str:
    """Token that resumes a listing at ``next_index``."""
    return base64.urlsafe_b64encode(f"{_PREFIX}{next_index}".encode()).decode().rstrip("=")


def decode_token(token: str) -> int:
    """The index a token resumes at; INVALID_ARGUMENT for a token we did not issue."""
    try:
        padded = token + "=" * (-len(token) % 4)
        text = base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii")
        if not text.startswith(_PREFIX):
            raise ValueError(text)
        value = int(text[len(_PREFIX) :])
        if not 0 <= value < 2**63:
            raise ValueError(value)
    except (binascii.Error, UnicodeError, ValueError):
        raise InvalidArgumentError("BAD_PAGE_TOKEN", "page_token is not valid") from None
    return value
