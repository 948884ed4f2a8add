"""The server's event loop: uvloop where installed (``auto``), or the one asked for."""

from __future__ import annotations

import asyncio
import inspect
import warnings

import pytest

from coalition_server import event_loop


async def _running() -> str:
    return event_loop.name(asyncio.get_running_loop())


def test_auto_means_uvloop_where_it_is_installed() -> None:
    assert event_loop.uvloop_installed()  # a server dependency on every platform we test
    assert event_loop.resolve("auto") == "uvloop"
    assert event_loop.run(_running(), "auto") == "uvloop"


@pytest.mark.parametrize("choice", ["uvloop", "asyncio"])
def test_the_loop_asked_for_is_the_loop_that_runs(choice: str) -> None:
    assert event_loop.run(_running(), choice) == choice


def test_without_uvloop_auto_falls_back_and_uvloop_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(event_loop, "uvloop_installed", lambda: False)
    assert event_loop.resolve("auto") == "asyncio"
    assert event_loop.run(_running(), "auto") == "asyncio"
    with pytest.raises(event_loop.EventLoopError, match="uvloop is not installed"):
        event_loop.resolve("uvloop")


def test_an_unknown_loop_is_refused_and_its_coroutine_closed() -> None:
    main = _running()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "coroutine ... was never awaited" would fail here
        with pytest.raises(event_loop.EventLoopError, match="unknown event loop 'trio'"):
            event_loop.run(main, "trio")
    assert inspect.getcoroutinestate(main) == inspect.CORO_CLOSED
