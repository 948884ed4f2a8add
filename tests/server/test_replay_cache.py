"""The authenticator's replay cache: every nonce refused a second time for at least twice
the freshness window, bounded, and compact."""

from __future__ import annotations

import os
import tracemalloc

import pytest

from coalition_server.api.auth import ReplayCache
from coalition_server.domain.errors import ResourceExhaustedError, UnauthenticatedError

WINDOW = 300.0


def test_a_nonce_is_refused_again_for_twice_the_window_then_forgotten() -> None:
    cache = ReplayCache(WINDOW)
    cache.check_and_add("key a", b"nonce 1", now=1_000.0)
    cache.check_and_add("key b", b"nonce 1", now=1_000.0)  # another caller's nonce
    for later in (1_000.0, 1_300.0, 1_599.9, 1_000.0 + 2 * WINDOW):
        with pytest.raises(UnauthenticatedError) as replayed:
            cache.check_and_add("key a", b"nonce 1", now=later)
        assert replayed.value.reason == "REPLAYED_REQUEST"
    # Past twice the window (and the bucket it fell in) the call's timestamp alone refuses
    # it, so the nonce is forgotten.
    cache.check_and_add("key c", b"other", now=1_000.0 + 2 * WINDOW + 2 * WINDOW / 30)
    assert len(cache) == 1
    cache.check_and_add("key a", b"nonce 1", now=1_000.0 + 2 * WINDOW + 2 * WINDOW / 30)


def test_a_full_cache_refuses_new_calls_rather_than_forget() -> None:
    cache = ReplayCache(WINDOW, max_entries=3)
    for n in range(3):
        cache.check_and_add("key", b"%d" % n, now=10.0)
    with pytest.raises(ResourceExhaustedError) as full:
        cache.check_and_add("key", b"3", now=11.0)
    assert full.value.reason == "AUTH_CACHE_FULL"
    with pytest.raises(UnauthenticatedError):
        cache.check_and_add("key", b"0", now=11.0)


def test_a_remembered_call_takes_under_two_hundred_bytes() -> None:
    """As the authenticator calls it: a key id and a nonce decoded afresh for each call
    (keeping them, as an ordered map of them did, took about 320 bytes a call)."""
    calls = 20_000
    cache = ReplayCache(WINDOW)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(calls):
            key_id = f"{n % 50:064x}"  # 50 callers
            cache.check_and_add(key_id, os.urandom(16), now=n / 100)  # 200 s of calls
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(cache) == calls
    assert used / calls < 200, f"{used / calls:.0f} bytes a call"
