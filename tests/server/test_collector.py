"""The serving process's start-up objects, frozen out of the garbage collector (decision 40).

Freezing changes the whole interpreter, so each check runs in a fresh process.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

from ..reliability.load import start_server

_FREEZE = textwrap.dedent(
    """
    import gc, sys
    from coalition_server import collector

    # Start-up state: containers the collector tracks, alive for the process's life.
    kept = [[i] for i in range(50_000)]
    if sys.argv[1] == "freeze":
        frozen = collector.freeze_start_up()
    else:
        frozen = 0
    visited = len(gc.get_objects())  # what a full collection walks now

    # Made after start-up: a reference cycle no one holds is still collected.
    cycle = [[]]
    cycle[0].append(cycle)
    del cycle
    print(frozen, visited, gc.collect())
    """
)


def _run(mode: str) -> tuple[int, int, int]:
    done = subprocess.run(
        [sys.executable, "-c", _FREEZE, mode],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    frozen, visited, collected = (int(part) for part in done.stdout.split())
    return frozen, visited, collected


def test_full_collections_skip_what_was_alive_at_start_up() -> None:
    frozen, visited, _ = _run("freeze")
    assert frozen >= 50_000
    assert visited < 1_000


def test_without_freezing_a_full_collection_walks_the_start_up_objects() -> None:
    # The control: the objects frozen above are there to be walked otherwise.
    frozen, visited, _ = _run("none")
    assert frozen == 0
    assert visited >= 50_000


def test_cycles_made_after_start_up_are_still_collected() -> None:
    _, _, collected = _run("freeze")
    assert collected >= 2


def test_the_server_freezes_its_start_up_objects_before_serving(tmp_path: Path) -> None:
    server = start_server(tmp_path, "--log-level", "INFO")
    server.stop()
    _, log = server.output()
    found = re.search(r"(\d+) start-up objects frozen", log.decode())
    assert found, log.decode()[-2000:]
    # The server's modules, classes and tables: tens of thousands of objects.
    assert int(found.group(1)) > 20_000
