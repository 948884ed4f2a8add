"""Where a call's time went during a timed window: the clients' round trip against the
server's own account of the same calls, read from its Prometheus metrics.

The server under test serves its metrics on a loopback port (``coalition_server(...,
metrics=True)``, which passes ``--metrics-listen``); :class:`CallWindow` reads them at the
start and the end of the window and keeps the differences:

- the time each call spent in its handler (``coalition_grpc_request_duration_seconds``:
  from the handler's start, once gRPC has accepted the call and read its request, to its
  answer), for the methods the figure calls;
- of that, the time its statements waited for the sequencer to commit them
  (``coalition_append_duration_seconds``);
- the batches committed and the statements in them;
- on SQLite, the hand-overs of work to each pool's driver thread
  (``coalition_sqlite_hand_overs_total`` and ``coalition_sqlite_hand_over_seconds_total``):
  how many, per batch, and each one's mean time waiting for the thread, running on it, and
  waiting for the event loop to resume the coroutine that waits for it. The writer's are
  the sequencer's (and the few read-write transactions outside it); a batch waits for
  each of its hand-overs in turn.

The round trip as the clients saw it, less the time in the handler, is what no handler
accounts for: the clients' own work (signing, encoding), the transport, and gRPC accepting
the call, reading its request and sending the answer, each of which waits for the server's
event loop. Figures 2 and 6 record these in their details (``call_time``), and
``python -m bench.report`` prints them as a table: every run then shows which part of a
round trip grew, without a probe in the server.

Reading the metrics costs the server a few counter updates per call, as it does in
production, where metrics are on; the two scrapes happen outside the timed calls.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from coalition_server.store.round_trip import HAND_OVER_PHASES

_HANDLER = "coalition_grpc_request_duration_seconds"
_APPEND = "coalition_append_duration_seconds"
_BATCH_STATEMENTS = "coalition_sequencer_batch_statements"
_BATCHES = "coalition_sequencer_batches_committed_total"
_HAND_OVERS = "coalition_sqlite_hand_overs_total"
_HAND_OVER_SECONDS = "coalition_sqlite_hand_over_seconds_total"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
"""Every sample of a scrape, keyed by its name and labels."""


def parse(text: str) -> Samples:
    """The samples of a Prometheus text exposition."""
    return {
        (sample.name, frozenset(sample.labels.items())): float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(url: str) -> Samples:
    """The samples the server at ``url`` exposes now."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return parse(response.read().decode("utf-8"))


class CallWindow:
    """The server's account of the calls made during a ``with`` block.

    ``methods`` are the figure's RPCs as (service, method), e.g.
    ``("coalition.v1.NegotiationService", "Move")``. Used around the timed calls (outside
    their stopwatch), then read into the figure with the clients' mean round trip::

        with CallWindow(server.metrics_url, methods) as window:
            ...  # the timed calls
        details["call_time"] = window.details(round_trip_seconds, seconds)
    """

    def __init__(self, url: str | None, methods: Sequence[tuple[str, str]]) -> None:
        if url is None:
            raise ValueError("the server was started without metrics")
        self.url = url
        self._methods = [frozenset({("service", s), ("method", m)}) for s, m in methods]
        self._before: Samples = {}
        self._after: Samples = {}

    def __enter__(self) -> CallWindow:
        self._before = scrape(self.url)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self._after = scrape(self.url)

    def _delta(self, name: str, labels: frozenset[tuple[str, str]] = frozenset()) -> float:
        key = (name, labels)
        return self._after.get(key, 0.0) - self._before.get(key, 0.0)

    def details(self, round_trip_seconds: float, seconds: float) -> dict[str, Any]:
        """The window's figures, in ms, for calls whose mean round trip, as the clients saw
        it, was ``round_trip_seconds``, over a window of ``seconds``."""
        calls = sum(self._delta(f"{_HANDLER}_count", labels) for labels in self._methods)
        if calls <= 0:
            raise ValueError("the server counted none of the window's calls")
        in_handler = sum(self._delta(f"{_HANDLER}_sum", labels) for labels in self._methods)
        appends = self._delta(f"{_APPEND}_count")
        batches = self._delta(f"{_BATCH_STATEMENTS}_count")
        round_trip_ms = round_trip_seconds * 1000
        handler_ms = in_handler / calls * 1000
        return {
            "calls": int(calls),
            "round_trip_ms": round(round_trip_ms, 3),
            "handler_ms": round(handler_ms, 3),
            "sequencer_ms": round(self._delta(f"{_APPEND}_sum") / appends * 1000, 3)
            if appends
            else None,
            "outside_handler_ms": round(round_trip_ms - handler_ms, 3),
            "batches_per_s": round(self._delta(_BATCHES) / seconds, 1),
            "statements_per_batch": round(self._delta(f"{_BATCH_STATEMENTS}_sum") / batches, 2)
            if batches
            else None,
            "sqlite_hand_overs": self._hand_overs(batches, seconds),
        }

    def _hand_overs(self, batches: float, seconds: float) -> dict[str, dict[str, float | None]]:
        """Each SQLite pool's hand-overs in the window (none on PostgreSQL)."""
        pools = sorted(
            dict(labels)["pool"]
            for name, labels in self._after
            if name == _HAND_OVERS and self._delta(name, labels) > 0
        )
        found: dict[str, dict[str, float | None]] = {}
        for pool in pools:
            count = self._delta(_HAND_OVERS, frozenset({("pool", pool)}))
            found[pool] = {
                "hand_overs": int(count),
                "per_s": round(count / seconds, 1),
                "per_batch": round(count / batches, 2) if batches else None,
                **{
                    f"{phase}_ms": round(
                        self._delta(
                            _HAND_OVER_SECONDS, frozenset({("pool", pool), ("phase", phase)})
                        )
                        / count
                        * 1000,
                        3,
                    )
                    for phase in HAND_OVER_PHASES
                },
            }
        return found
