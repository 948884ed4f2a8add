"""The C allocator's arenas, capped for a long-running server process (glibc only).

glibc's malloc gives each new thread an arena of its own, up to eight per core (16 on a
2-core machine), and each arena keeps the chunks freed into it for that arena alone. The
server's threads hand memory to one another: gRPC's I/O threads fill buffers the event loop
frees, SQLite's connection threads build the rows the loop drops. In the two-minute soak
(tests/reliability/test_soak.py) the free memory held in arenas grew from 3 to 11 MiB while
the memory in use grew by 3 to 4. With two arenas the free memory stayed at 2 to 5 MiB and
the soak's growth after warm-up was +6.2 and +6.4% instead of +8.9 to +10.5%; appends,
negotiation and fetch benchmarks were unchanged (decision 39 in docs/decisions.md).

glibc reads ``MALLOC_ARENA_MAX`` itself; when an operator sets it, that choice stands.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Mapping
from typing import Final

ARENA_MAX_ENV: Final = "MALLOC_ARENA_MAX"
"""glibc's own variable: when set, the server leaves the arenas to it."""

SERVER_ARENAS: Final = 2
"""The server's cap: one arena for the event loop's thread, one shared by the others."""

_M_ARENA_MAX: Final = -8
"""``mallopt``'s parameter number for the arena cap, from glibc's ``malloc.h``."""

log = logging.getLogger(__name__)


def is_glibc() -> bool:
    """Whether this process runs on glibc (musl and others have no arena cap)."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError):
        return False


def cap_arenas(count: int = SERVER_ARENAS, environ: Mapping[str, str] = os.environ) -> bool:
    """Cap glibc malloc's arenas at ``count`` for threads that start from now on.

    Call it before the process starts its threads. Returns whether the cap was set: not when
    ``MALLOC_ARENA_MAX`` is in ``environ`` (glibc applied the operator's value at start), nor
    on another C library.
    """
    if count < 1:
        raise ValueError("an arena cap is at least 1")
    if ARENA_MAX_ENV in environ or not is_glibc():
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 on error.
    applied = bool(mallopt(_M_ARENA_MAX, count) == 1)
    if applied:
        log.info("malloc arenas capped at %d (set %s to choose)", count, ARENA_MAX_ENV)
    return applied
