"""The server's cap on glibc's malloc arenas (decision 39).

Arenas are counted in a fresh process, from glibc's own report (``malloc_info``), after
eight threads have each allocated: without the cap each gets an arena of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from coalition_server import allocator

from ..reliability.load import start_server

pytestmark = pytest.mark.skipif(not allocator.is_glibc(), reason="the arena cap is glibc's")

_COUNT_ARENAS = textwrap.dedent(
    """
    import ctypes, os, sys, tempfile, threading
    from coalition_server import allocator

    capped = allocator.cap_arenas() if sys.argv[1] == "cap" else False
    go = threading.Barrier(8)

    def allocate() -> None:
        go.wait()
        # Larger than pymalloc's 512 bytes: malloc itself, from this thread.
        blocks = [bytearray(4096) for _ in range(64)]
        go.wait()
        del blocks

    threads = [threading.Thread(target=allocate) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    libc = ctypes.CDLL(None)
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = (ctypes.c_char_p, ctypes.c_char_p)
    libc.malloc_info.argtypes = (ctypes.c_int, ctypes.c_void_p)
    libc.fclose.argtypes = (ctypes.c_void_p,)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "info.xml")
        stream = libc.fopen(path.encode(), b"w")
        libc.malloc_info(0, stream)
        libc.fclose(stream)
        report = open(path).read()
    print(capped, report.count("<heap nr="))
    """
)


def _arenas(mode: str, **env: str) -> tuple[bool, int]:
    environ = {k: v for k, v in os.environ.items() if k != allocator.ARENA_MAX_ENV}
    done = subprocess.run(
        [sys.executable, "-c", _COUNT_ARENAS, mode],
        env={**environ, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    capped, heaps = done.stdout.split()
    return capped == "True", int(heaps)


def test_eight_threads_share_two_arenas_once_capped() -> None:
    assert _arenas("cap") == (True, allocator.SERVER_ARENAS)


def test_without_the_cap_the_threads_take_more_arenas() -> None:
    # The control: what the cap changes is there to change on this machine.
    capped, heaps = _arenas("none")
    assert not capped
    assert heaps > allocator.SERVER_ARENAS


def test_an_operators_malloc_arena_max_stands() -> None:
    assert _arenas("cap", MALLOC_ARENA_MAX="3") == (False, 3)
    assert not allocator.cap_arenas(environ={allocator.ARENA_MAX_ENV: "3"})


def test_a_cap_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        allocator.cap_arenas(0, environ={})


def test_the_server_caps_its_arenas_before_serving(tmp_path: Path) -> None:
    server = start_server(tmp_path, "--log-level", "INFO")
    server.stop()
    _, log = server.output()
    assert f"malloc arenas capped at {allocator.SERVER_ARENAS}" in log.decode()
