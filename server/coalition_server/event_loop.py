"""Which asyncio event loop the server runs on: uvloop where it is installed, else asyncio's.

uvloop (libuv, written in Cython) does the loop's own work, waking tasks and handing
results over from the database drivers' threads, at a fraction of the cost of asyncio's
pure-Python loop; on the 2-core benchmark machine it gave 23% more negotiation rounds in
the median of eight paired runs (-3% to +47%; decision 37, docs/benchmarks.md). Nothing
in the server depends on which loop runs it, and the in-process test servers run on
asyncio's own, so both stay tested.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar

AUTO: Final = "auto"
ASYNCIO: Final = "asyncio"
UVLOOP: Final = "uvloop"
CHOICES: Final = (AUTO, UVLOOP, ASYNCIO)

T = TypeVar("T")


class EventLoopError(ValueError):
    """The event loop asked for is not known or not installed."""


def uvloop_installed() -> bool:
    """Whether uvloop can be imported here (it has no wheels for Windows)."""
    return importlib.util.find_spec("uvloop") is not None


def resolve(choice: str) -> str:
    """The loop ``choice`` means here: ``auto`` becomes uvloop where installed, else asyncio.

    Raises EventLoopError for an unknown choice, or uvloop asked for but not installed.
    """
    if choice not in CHOICES:
        raise EventLoopError(f"unknown event loop {choice!r}: expected one of {', '.join(CHOICES)}")
    if choice == AUTO:
        return UVLOOP if uvloop_installed() else ASYNCIO
    if choice == UVLOOP and not uvloop_installed():
        raise EventLoopError("event loop uvloop is not installed (pip install uvloop)")
    return choice


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """A function that makes a new event loop of the kind ``choice`` resolves to."""
    if resolve(choice) == UVLOOP:
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(main: Coroutine[Any, Any, T], choice: str) -> T:
    """Run ``main`` to completion on a new loop of the kind ``choice`` resolves to, as
    :func:`asyncio.run` does (Python 3.11's has no loop factory)."""
    try:
        factory = loop_factory(choice)
    except EventLoopError:
        main.close()  # never started: no "coroutine was never awaited" warning
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def name(loop: asyncio.AbstractEventLoop) -> str:
    """The running loop's kind, as ``resolve`` names it (for the start-up log)."""
    return UVLOOP if type(loop).__module__.startswith("uvloop") else ASYNCIO
