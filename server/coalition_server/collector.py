"""Python's cyclic garbage collector, kept off the start-up objects of a serving process.

A full (generation 2) collection walks every container object the collector tracks. Once
the server has started, most of those are its modules, classes, SQLAlchemy's and
protobuf's tables and the caches built at start: about 100,000 objects that live as long as
the process. Measured in the single-appends benchmark (figure 2), a full collection came
every 1.5 to 2 s and took 42 to 77 ms, stopping every call in the process: its p99
acknowledgement latency was the batches those pauses fell in (decision 40).

:func:`freeze_start_up` collects once, then moves every object alive at that moment into
the collector's permanent generation (:func:`gc.freeze`), which later collections skip.
Frozen objects are still freed by reference counting; only a reference cycle among them
would outlive its last use, which is why it runs once, after start-up, and never again.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def freeze_start_up() -> int:
    """Collect, then freeze every object alive now; return how many are frozen in all.

    Call it once the process has started and before it serves: what is alive then lives
    as long as the process.
    """
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("%d start-up objects frozen out of the garbage collector's passes", frozen)
    return frozen
