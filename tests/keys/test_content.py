"""Streaming content encryption: round trips and every way a stream can be broken."""

from __future__ import annotations

import math
import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from coalition.content import (
    DATA_KEY_SIZE,
    SEGMENT_SIZE,
    TAG_SIZE,
    ContentError,
    ContentIntegrityError,
    SegmentDecryptor,
    SegmentEncryptor,
    decrypt_all,
    new_data_key,
)

ITEM = "item-7f3a"
CONTRIBUTOR = "contributor-c0ffee"
KEY = bytes(range(32))


def encrypt(
    data: bytes,
    chunks: list[int] | None = None,
    *,
    key: bytes = KEY,
    item: str = ITEM,
    contributor: str = CONTRIBUTOR,
    segment_size: int = SEGMENT_SIZE,
) -> list[bytes]:
    """Feed ``data`` in chunks of the given sizes (cycled), then finish."""
    encryptor = SegmentEncryptor(key, item, contributor, segment_size)
    sizes = chunks or [len(data) or 1]
    segments: list[bytes] = []
    offset, turn = 0, 0
    while offset < len(data):
        size = sizes[turn % len(sizes)]
        segments += encryptor.update(data[offset : offset + size])
        offset += size
        turn += 1
    segments += encryptor.finish()
    return segments


def expected_segments(length: int, segment_size: int) -> int:
    return max(1, math.ceil(length / segment_size))


# --- round trips ----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=600),
    segment_size=st.integers(min_value=1, max_value=64),
    chunks=st.lists(st.integers(min_value=0, max_value=200), min_size=1, max_size=8).filter(any),
)
def test_any_content_and_chunking_round_trips(
    data: bytes, segment_size: int, chunks: list[int]
) -> None:
    segments = encrypt(data, chunks, segment_size=segment_size)
    assert len(segments) == expected_segments(len(data), segment_size)
    assert decrypt_all(KEY, ITEM, CONTRIBUTOR, segments, segment_size=segment_size) == data
    # Canonical: every segment but the last is full; the last is non-empty unless data is.
    plain_sizes = [len(s) - TAG_SIZE for s in segments]
    assert all(n == segment_size for n in plain_sizes[:-1])
    assert 0 < plain_sizes[-1] <= segment_size or data == b""


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=300), segment_size=st.integers(min_value=1, max_value=32))
def test_segments_open_in_any_order(data: bytes, segment_size: int) -> None:
    segments = encrypt(data, [7], segment_size=segment_size)
    decryptor = SegmentDecryptor(KEY, ITEM, CONTRIBUTOR, segment_size)
    last = len(segments) - 1
    parts = {i: decryptor.open(i, segments[i], i == last) for i in reversed(range(len(segments)))}
    assert b"".join(parts[i] for i in range(len(segments))) == data


def test_empty_content_is_one_empty_final_segment() -> None:
    segments = encrypt(b"")
    assert len(segments) == 1
    assert len(segments[0]) == TAG_SIZE
    assert decrypt_all(KEY, ITEM, CONTRIBUTOR, segments) == b""


@pytest.mark.parametrize("multiple", [1, 2, 3])
def test_exact_multiple_ends_with_its_last_full_segment_flagged_final(multiple: int) -> None:
    data = os.urandom(16 * multiple)
    segments = encrypt(data, [16], segment_size=16)
    assert len(segments) == multiple
    assert all(len(s) == 16 + TAG_SIZE for s in segments)
    # The last full segment opens only as final; there is no empty trailer.
    decryptor = SegmentDecryptor(KEY, ITEM, CONTRIBUTOR, 16)
    with pytest.raises(ContentIntegrityError):
        decryptor.open(multiple - 1, segments[-1], final=False)
    assert decrypt_all(KEY, ITEM, CONTRIBUTOR, segments, segment_size=16) == data


def test_default_segment_size_is_one_mebibyte() -> None:
    assert SEGMENT_SIZE == 1 << 20
    data = os.urandom(3 * SEGMENT_SIZE + 1)
    segments = encrypt(data, [300_000])
    assert [len(s) - TAG_SIZE for s in segments] == [SEGMENT_SIZE] * 3 + [1]
    assert decrypt_all(KEY, ITEM, CONTRIBUTOR, segments) == data


def test_update_returns_only_segments_known_not_to_be_last() -> None:
    encryptor = SegmentEncryptor(KEY, ITEM, CONTRIBUTOR, 4)
    out = encryptor.update(b"abcd")
    assert out == []  # full, but it may still be the last one
    out += encryptor.update(b"e")
    assert len(out) == 1
    assert encryptor.update(b"") == []
    out += encryptor.update(b"fghijklm")  # now "efgh" and "ijkl" are complete, "m" is held
    assert len(out) == 3
    out += encryptor.finish()
    assert len(out) == 4
    assert decrypt_all(KEY, ITEM, CONTRIBUTOR, out, segment_size=4) == b"abcdefghijklm"


def test_wire_format_is_counter_nonce_with_final_flag_and_prefixed_ids() -> None:
    # Pins the format independently of the module: nonce = 11-byte counter || flag, AAD =
    # label || u32 len || item || u32 len || contributor.
    data = b"0123456789abcdefXYZ"
    segments = encrypt(data, segment_size=8)
    aad = (
        b"coalition-content-v1"
        + len(ITEM).to_bytes(4, "big")
        + ITEM.encode()
        + len(CONTRIBUTOR).to_bytes(4, "big")
        + CONTRIBUTOR.encode()
    )
    aead = AESGCM(KEY)
    opened = []
    for i, sealed in enumerate(segments):
        flag = b"\x01" if i == len(segments) - 1 else b"\x00"
        opened.append(aead.decrypt(i.to_bytes(11, "big") + flag, sealed, aad))
    assert b"".join(opened) == data


# --- integrity ------------------------------------------------------------------------------

CONTENT = bytes(range(256)) * 5  # 1280 bytes: 10 segments of 128
SIZE = 128


@pytest.fixture
def segments() -> list[bytes]:
    return encrypt(CONTENT, [100], segment_size=SIZE)


def refused(segments: list[bytes], **kwargs: str) -> None:
    args = {"item_id": ITEM, "contributor_id": CONTRIBUTOR, **kwargs}
    with pytest.raises(ContentIntegrityError):
        decrypt_all(KEY, args["item_id"], args["contributor_id"], segments, segment_size=SIZE)


def test_fixture_round_trips(segments: list[bytes]) -> None:
    assert len(segments) == 10
    assert decrypt_all(KEY, ITEM, CONTRIBUTOR, segments, segment_size=SIZE) == CONTENT


def test_truncation_is_detected(segments: list[bytes]) -> None:
    for keep in range(len(segments)):
        refused(segments[:keep])


def test_dropping_a_middle_segment_is_detected(segments: list[bytes]) -> None:
    for drop in range(len(segments) - 1):
        refused(segments[:drop] + segments[drop + 1 :])


def test_reordering_is_detected(segments: list[bytes]) -> None:
    refused([segments[1], segments[0], *segments[2:]])
    refused([*segments[:-2], segments[-1], segments[-2]])
    refused(segments[::-1])


def test_extension_is_detected(segments: list[bytes]) -> None:
    refused([*segments, segments[-1]])
    refused([*segments, segments[0]])
    refused([*segments[:3], segments[3], *segments[3:]])


def test_segments_of_another_content_are_refused(segments: list[bytes]) -> None:
    # Every content has its own fresh data key (the module's precondition: a key seals one
    # content, once), so a segment of another upload of the same item does not splice in.
    other = encrypt(CONTENT[::-1], [100], key=new_data_key(), segment_size=SIZE)
    refused([*segments[:4], other[4], *segments[5:]])


@settings(max_examples=200, deadline=None)
@given(segment=st.integers(min_value=0, max_value=9), offset=st.integers(min_value=0))
def test_any_flipped_bit_is_detected(segment: int, offset: int) -> None:
    sealed = encrypt(CONTENT, [100], segment_size=SIZE)
    target = bytearray(sealed[segment])
    target[offset % len(target)] ^= 1 << (offset % 8)
    sealed[segment] = bytes(target)
    refused(sealed)


@pytest.mark.parametrize(
    ("item", "contributor"),
    [
        ("item-other", CONTRIBUTOR),
        (ITEM, "contributor-other"),
        (CONTRIBUTOR, ITEM),  # swapped
        (ITEM + "c", CONTRIBUTOR[1:]),  # same concatenation, other split
    ],
)
def test_wrong_item_or_contributor_is_detected(
    segments: list[bytes], item: str, contributor: str
) -> None:
    refused(segments, item_id=item, contributor_id=contributor)


def test_wrong_key_is_detected(segments: list[bytes]) -> None:
    with pytest.raises(ContentIntegrityError):
        decrypt_all(new_data_key(), ITEM, CONTRIBUTOR, segments, segment_size=SIZE)


def test_mismatched_segment_size_is_detected(segments: list[bytes]) -> None:
    with pytest.raises(ContentIntegrityError):
        decrypt_all(KEY, ITEM, CONTRIBUTOR, segments, segment_size=SIZE * 2)
    with pytest.raises(ContentIntegrityError):
        decrypt_all(KEY, ITEM, CONTRIBUTOR, segments, segment_size=SIZE // 2)


def test_impossible_segment_lengths_are_refused() -> None:
    decryptor = SegmentDecryptor(KEY, ITEM, CONTRIBUTOR, 16)
    for sealed in (b"", bytes(TAG_SIZE - 1), bytes(16 + TAG_SIZE + 1)):
        with pytest.raises(ContentIntegrityError):
            decryptor.open(0, sealed, final=True)
    with pytest.raises(ContentIntegrityError):
        decryptor.open(-1, bytes(TAG_SIZE), final=True)


def test_integrity_error_is_a_content_error() -> None:
    assert issubclass(ContentIntegrityError, ContentError)


# --- API hygiene ----------------------------------------------------------------------------


def test_finish_twice_and_update_after_finish_are_refused() -> None:
    encryptor = SegmentEncryptor(KEY, ITEM, CONTRIBUTOR)
    encryptor.update(b"data")
    encryptor.finish()
    with pytest.raises(ContentError):
        encryptor.finish()
    with pytest.raises(ContentError):
        encryptor.update(b"more")


def test_new_data_keys_are_fresh_32_bytes() -> None:
    keys = {new_data_key() for _ in range(50)}
    assert len(keys) == 50
    assert all(len(k) == DATA_KEY_SIZE for k in keys)


@pytest.mark.parametrize("bad_key", [b"", bytes(16), bytes(31), bytes(33), "0" * 32])
def test_bad_keys_are_refused_without_echoing_them(bad_key: bytes) -> None:
    for cls in (SegmentEncryptor, SegmentDecryptor):
        with pytest.raises(ValueError, match="32 bytes") as excinfo:
            cls(bad_key, ITEM, CONTRIBUTOR)
        assert repr(bad_key) not in str(excinfo.value)


@pytest.mark.parametrize(("item", "contributor"), [("", CONTRIBUTOR), (ITEM, ""), ("\ud800", "c")])
def test_bad_ids_are_refused(item: str, contributor: str) -> None:
    with pytest.raises(ValueError, match="id"):
        SegmentEncryptor(KEY, item, contributor)


@pytest.mark.parametrize("size", [0, -1, (1 << 30) + 1])
def test_bad_segment_sizes_are_refused(size: int) -> None:
    with pytest.raises(ValueError, match="segment size"):
        SegmentEncryptor(KEY, ITEM, CONTRIBUTOR, size)


def test_reprs_and_errors_hold_no_key_material(segments: list[bytes]) -> None:
    encryptor = SegmentEncryptor(KEY, ITEM, CONTRIBUTOR, SIZE)
    decryptor = SegmentDecryptor(KEY, ITEM, CONTRIBUTOR, SIZE)
    texts = [repr(encryptor), repr(decryptor), str(encryptor)]
    with pytest.raises(ContentIntegrityError) as excinfo:
        decryptor.open(0, segments[1], final=False)
    texts += [str(excinfo.value), repr(excinfo.value)]
    for text in texts:
        assert KEY.hex() not in text
        assert repr(KEY)[2:-1] not in text
        assert str(list(KEY)) not in text
