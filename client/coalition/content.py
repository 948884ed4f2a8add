"""Streaming encryption of uploaded content under its item's data key.

Content of any size is cut into fixed-size plaintext segments, each sealed with AES-256-GCM
under the item's data key: the segmented "STREAM" construction of Hoang, Reyhanitabar, Rogaway
and Vizár (2015), as used by age and Tink's streaming AEAD.

* Nonce of segment *i*: 11-byte big-endian *i* || 1-byte final flag (0x01 on the last
  segment, 0x00 otherwise). The counter stops reordering and dropping segments in the middle;
  the flag stops truncation at a segment boundary and appending after the end.
* Associated data of every segment: ``b"coalition-content-v1"`` || u32 length || item id ||
  u32 length || contributor id (UTF-8, lengths big-endian), so a segment opens only as part of
  the item and contributor it was sealed for.
* Segmentation is canonical: every segment but the last holds exactly ``segment_size`` bytes;
  the last holds 1 to ``segment_size`` bytes. Content that is an exact multiple of the
  segment size ends with its last *full* segment flagged final (no empty trailer, as in age);
  only empty content is a single empty final segment. The encryptor therefore holds back up to
  one segment of plaintext until it knows whether more follows.

A counter nonce is safe because a data key seals exactly one content, once: encrypt every
upload under a fresh :func:`new_data_key`, never re-encrypt under a key already used.

Each sealed segment is the AES-GCM ciphertext and 16-byte tag (the nonce is implied by the
segment's position). Key material never appears in a repr or an exception message.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "DATA_KEY_SIZE",
    "SEGMENT_SIZE",
    "TAG_SIZE",
    "ContentError",
    "ContentIntegrityError",
    "SegmentDecryptor",
    "SegmentEncryptor",
    "decrypt_all",
    "new_data_key",
]

SEGMENT_SIZE: Final = 1 << 20
"""Default plaintext bytes per segment (1 MiB)."""
DATA_KEY_SIZE: Final = 32
"""Bytes in a data key (AES-256)."""
TAG_SIZE: Final = 16
"""Bytes the AES-GCM tag adds to every segment."""

_LABEL: Final = b"coalition-content-v1"
_COUNTER_SIZE: Final = 11
_MAX_SEGMENTS: Final = 1 << (8 * _COUNTER_SIZE)
_LAST: Final = b"\x01"
_NOT_LAST: Final = b"\x00"
# AES-GCM takes at most 2**36 - 32 bytes under one nonce; stay far below it.
_MAX_SEGMENT_SIZE: Final = 1 << 30


class ContentError(Exception):
    """Base of every error this module raises on purpose."""


class ContentIntegrityError(ContentError):
    """Content was altered, truncated, extended, reordered, or belongs to another item."""


def new_data_key() -> bytes:
    """A fresh random 32-byte data key; use it for one content only."""
    return os.urandom(DATA_KEY_SIZE)


class SegmentEncryptor:
    """Seals one content, fed in chunks of any size, into segments.

    Feed the content with :meth:`update` and end it with :meth:`finish`; store the sealed
    segments in the order returned. Holds at most one segment of plaintext at a time.
    """

    __slots__ = ("_aad", "_aead", "_buffer", "_finished", "_index", "_segment_size")

    def __init__(
        self,
        dek: bytes,
        item_id: str,
        contributor_id: str,
        segment_size: int = SEGMENT_SIZE,
    ) -> None:
        """Raises ValueError on a key that is not 32 bytes, empty ids or a bad segment size."""
        self._aead = _aead(dek)
        self._aad = _associated_data(item_id, contributor_id)
        self._segment_size = _check_segment_size(segment_size)
        self._buffer = bytearray()
        self._index = 0
        self._finished = False

    def __repr__(self) -> str:
        return (
            f"SegmentEncryptor(segment_size={self._segment_size}, "
            f"sealed={self._index}, finished={self._finished})"
        )

    def update(self, data: bytes) -> list[bytes]:
        """Add ``data``; returns the segments completed so far (possibly none)."""
        if self._finished:
            raise ContentError("the encryptor has already finished")
        self._buffer += data
        size = self._segment_size
        out: list[bytes] = []
        # Seal a segment only once more data follows it: only then is it known not to be last.
        done = 0
        with memoryview(self._buffer) as view:
            while len(view) - done > size:
                out.append(self._seal(view[done : done + size], last=False))
                done += size
        # After the view is released (a bytearray with a live view cannot shrink).
        del self._buffer[:done]
        return out

    def finish(self) -> list[bytes]:
        """Seal the final segment (empty only for empty content); callable once."""
        if self._finished:
            raise ContentError("the encryptor has already finished")
        self._finished = True
        sealed = self._seal(self._buffer, last=True)
        self._buffer = bytearray()
        return [sealed]

    def _seal(self, plaintext: bytes | bytearray | memoryview, *, last: bool) -> bytes:
        if self._index >= _MAX_SEGMENTS:
            raise ContentError("content has too many segments")
        sealed = self._aead.encrypt(_nonce(self._index, last), plaintext, self._aad)
        self._index += 1
        return sealed


class SegmentDecryptor:
    """Opens the sealed segments of one content, in any order (random access)."""

    __slots__ = ("_aad", "_aead", "_segment_size")

    def __init__(
        self,
        dek: bytes,
        item_id: str,
        contributor_id: str,
        segment_size: int = SEGMENT_SIZE,
    ) -> None:
        """Same arguments as :class:`SegmentEncryptor`'s; ``segment_size`` must match it."""
        self._aead = _aead(dek)
        self._aad = _associated_data(item_id, contributor_id)
        self._segment_size = _check_segment_size(segment_size)

    def __repr__(self) -> str:
        return f"SegmentDecryptor(segment_size={self._segment_size})"

    def open(self, index: int, sealed: bytes, final: bool) -> bytes:
        """The plaintext of segment ``index``, which must be the last one iff ``final``.

        Raises ContentIntegrityError unless the segment is authentic, sealed for this item
        and contributor, at this position, with this final flag, and canonically sized.
        """
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError("a segment index is an int")
        if not 0 <= index < _MAX_SEGMENTS:
            raise ContentIntegrityError(f"segment index {index} is out of range")
        if len(sealed) < TAG_SIZE or len(sealed) > self._segment_size + TAG_SIZE:
            raise ContentIntegrityError(f"segment {index} has an impossible length")
        try:
            plaintext = self._aead.decrypt(_nonce(index, final), sealed, self._aad)
        except InvalidTag:
            where = "the final" if final else "a non-final"
            raise ContentIntegrityError(
                f"segment {index} does not open as {where} segment of this item: "
                "altered, reordered, truncated, or another item's"
            ) from None
        # Authentic, yet not what SegmentEncryptor makes: refuse, so every content has one
        # encoding (a mismatched segment_size also shows up here).
        if not final and len(plaintext) != self._segment_size:
            raise ContentIntegrityError(f"non-final segment {index} is not full")
        if final and index > 0 and not plaintext:
            raise ContentIntegrityError(f"final segment {index} is empty")
        return plaintext


def decrypt_all(
    dek: bytes,
    item_id: str,
    contributor_id: str,
    segments: Sequence[bytes],
    *,
    segment_size: int = SEGMENT_SIZE,
) -> bytes:
    """The whole content from its sealed segments, in order.

    The last segment must carry the final flag and no other may: missing, extra or
    reordered segments, or any altered byte, raise ContentIntegrityError.
    """
    decryptor = SegmentDecryptor(dek, item_id, contributor_id, segment_size)
    if not segments:
        raise ContentIntegrityError("content has no segments (not even a final one)")
    last = len(segments) - 1
    return b"".join(decryptor.open(i, s, i == last) for i, s in enumerate(segments))


def _aead(dek: bytes) -> AESGCM:
    if not isinstance(dek, bytes) or len(dek) != DATA_KEY_SIZE:
        raise ValueError(f"a data key is {DATA_KEY_SIZE} bytes")
    return AESGCM(dek)


def _associated_data(item_id: str, contributor_id: str) -> bytes:
    return (
        _LABEL
        + _length_prefixed(item_id, "item id")
        + _length_prefixed(contributor_id, "contributor id")
    )


def _length_prefixed(value: str, what: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise ValueError(f"the {what} is a non-empty string")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"the {what} is not valid Unicode") from None
    if len(raw) >= 1 << 32:
        raise ValueError(f"the {what} is too long")
    return len(raw).to_bytes(4, "big") + raw


def _check_segment_size(segment_size: int) -> int:
    if isinstance(segment_size, bool) or not isinstance(segment_size, int):
        raise TypeError("a segment size is an int")
    if not 1 <= segment_size <= _MAX_SEGMENT_SIZE:
        raise ValueError(f"a segment size is between 1 and {_MAX_SEGMENT_SIZE} bytes")
    return segment_size


def _nonce(index: int, last: bool) -> bytes:
    return index.to_bytes(_COUNTER_SIZE, "big") + (_LAST if last else _NOT_LAST)
