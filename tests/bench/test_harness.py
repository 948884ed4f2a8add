"""The harness's timed windows: the bench process's own objects kept out of the collector."""

from __future__ import annotations

import gc
import weakref

from bench.harness import Stopwatch, frozen_heap


def _tracked(obj: object) -> bool:
    return any(o is obj for o in gc.get_objects())


def test_a_timed_window_keeps_what_was_alive_out_of_the_collectors_passes() -> None:
    before = [[1], [2]]  # alive when the window opens: the harness's state
    assert _tracked(before)
    with Stopwatch() as watch:
        assert gc.get_freeze_count() > 0
        assert not _tracked(before)
        during = [[3]]
        assert _tracked(during)  # made in the window: collected as usual
    assert watch.seconds > 0


def test_the_harness_gives_its_objects_back_to_the_collector_after() -> None:
    kept = [[1]]
    with frozen_heap():
        assert not _tracked(kept)
    assert gc.get_freeze_count() == 0
    assert _tracked(kept)


def test_garbage_from_set_up_is_collected_not_frozen_for_the_window() -> None:
    class Node:
        other: object = None

    node = Node()
    node.other = node  # a cycle: only the collector frees it
    gone = weakref.ref(node)
    del node
    with frozen_heap():
        assert gone() is None
