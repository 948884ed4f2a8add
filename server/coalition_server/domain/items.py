"""Item registrations (pure): validation and the derived item id."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime

from coalition.v1 import items_pb2
from coalition_server.domain.errors import InvalidArgumentError
from coalition_server.domain.statements import check_fresh, check_nonce, check_tag

MAX_TAGS = 32
MAX_ITEM_BYTES = 2**40  # 1 TiB: anything larger is not one item
MEDIA_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")
MAX_ITEMS_PER_REQUEST = 1000


def item_id(contributor_key_id: str, commitment: bytes) -> str:
    """The item id: one contributor's content is one item, whoever computes it."""
    digest = hashlib.sha256(
        b"coalition-item-v1\n" + contributor_key_id.encode() + b"\n" + commitment
    )
    return digest.hexdigest()[:32]


def check_registration(statement: items_pb2.ItemRegistration, now: datetime) -> None:
    """Refuse a malformed item registration."""
    check_fresh(statement.created_time, statement.HasField("created_time"), now)
    check_nonce(statement.nonce)
    if len(statement.commitment) != 32:
        raise InvalidArgumentError("BAD_COMMITMENT", "commitment is the 32-byte SHA-256")
    if statement.size_bytes > MAX_ITEM_BYTES:
        raise InvalidArgumentError("BAD_SIZE", "an item is at most 1 TiB")
    if not MEDIA_TYPE.match(statement.media_type):
        raise InvalidArgumentError("BAD_MEDIA_TYPE", "media_type must be like text/plain")
    if len(statement.tags) > MAX_TAGS:
        raise InvalidArgumentError("BAD_TAG", f"at most {MAX_TAGS} tags")
    for tag in statement.tags:
        check_tag(tag)
    if len(set(statement.tags)) != len(statement.tags):
        raise InvalidArgumentError("BAD_TAG", "a tag appears twice")
