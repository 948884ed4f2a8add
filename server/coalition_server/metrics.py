"""Prometheus metrics of one server process, served over HTTP on ``--metrics-listen``.

Each :class:`ServerMetrics` has its own ``CollectorRegistry`` (never the process-global one),
so several servers in one process (tests, replicas in one interpreter) do not collide.

Where the numbers come from:

* RPCs: the dispatcher (``api/dispatch.py``), the one place every Coalition RPC passes,
  reports each finished call through :meth:`ServerMetrics.rpc_finished` (the
  ``RpcObserver`` protocol). Health and reflection are served by grpcio's own servicers
  and are not counted.
* Appends and batches: the sequencer reports through :meth:`ServerMetrics.append_acknowledged`
  and :meth:`ServerMetrics.batch_committed` (the ``SequencerMetrics`` protocol), so the store
  does not depend on a metrics library.
* SQLite hand-overs: each hand-over of work to a SQLite connection's driver thread is timed
  by the connection itself (``store/round_trip.py``, :data:`~coalition_server.store.
  round_trip.HAND_OVERS`) and exported at scrape time, by pool and phase. Absent on
  PostgreSQL.
* Tree size, pending withdrawal notices and overdue receipts: read from the database by
  :meth:`ServerMetrics.refresh`, which the server runs in a background task every
  ``metrics_refresh_seconds``. A scrape only reads gauges and never waits for the database
  (the async engine cannot be queried from the exporter's HTTP thread anyway); the tree size
  is also moved on each of this process's commits so it is current between refreshes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from wsgiref.simple_server import WSGIServer

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select

from coalition_server.store import models, round_trip
from coalition_server.store.database import Database
from coalition_server.timeutil import utcnow

log = logging.getLogger(__name__)

# Seconds, from a cached read (sub-millisecond) to a slow signed append under load.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
# Statements per batch: one registration up to a thousand-token grant with its follow-ups.
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


class SqliteHandOvers(Collector):
    """Exports this process's SQLite hand-overs (``round_trip.HAND_OVERS``) when scraped:
    how many per pool, and the seconds they spent in each phase, summed."""

    def collect(self) -> Iterator[Metric]:
        """The two counter families; nothing before a SQLite connection exists."""
        pools = sorted(round_trip.HAND_OVERS.items())
        if not pools:
            return
        count = CounterMetricFamily(
            "coalition_sqlite_hand_overs",
            "Hand-overs of work to a SQLite connection's driver thread, by connection pool.",
            labels=["pool"],
        )
        seconds = CounterMetricFamily(
            "coalition_sqlite_hand_over_seconds",
            "Seconds SQLite hand-overs spent, summed, by pool and phase: to_thread (until "
            "the driver's thread starts the work), on_thread (running it), to_loop (until "
            "the waiting coroutine resumes on the event loop).",
            labels=["pool", "phase"],
        )
        for pool, times in pools:
            count.add_metric([pool], times.count)
            for phase in round_trip.HAND_OVER_PHASES:
                seconds.add_metric([pool, phase], getattr(times, phase))
        yield count
        yield seconds


def split_method(full_method: str) -> tuple[str, str]:
    """``/coalition.v1.PartyService/Register`` -> ``("coalition.v1.PartyService", "Register")``."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9464`` for IPv6) -> (host, port); port 0 picks a free one."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"expected HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)


class ServerMetrics:
    """The metrics of one server, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        # CPU, memory, file descriptors: in our registry, as the global one would have them.
        ProcessCollector(registry=registry)
        registry.register(SqliteHandOvers())
        self.requests = Counter(
            "coalition_grpc_requests",
            "Coalition RPCs finished, by service, method and gRPC status code.",
            ["service", "method", "code"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "coalition_grpc_request_duration_seconds",
            "Time from a Coalition RPC's arrival to its last response or error.",
            ["service", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.append_duration = Histogram(
            "coalition_append_duration_seconds",
            "Time from submitting a group of statements to the sequencer to its acknowledgement "
            "(durable, integrated, signed over); acknowledged appends only.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_statements = Histogram(
            "coalition_sequencer_batch_statements",
            "Statements appended per committed batch (follow-up statements included).",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.batches = Counter(
            "coalition_sequencer_batches_committed",
            "Batches committed by this process, each one signed checkpoint.",
            registry=registry,
        )
        self.tree_size = Gauge(
            "coalition_ledger_tree_size",
            "Entries in the ledger (size of the committed tree head).",
            registry=registry,
        )
        self.pending_notices = Gauge(
            "coalition_withdrawal_notices_pending",
            "Withdrawal notices to labs not yet answered by a deletion receipt.",
            registry=registry,
        )
        self.overdue_notices = Gauge(
            "coalition_withdrawal_notices_overdue",
            "Withdrawal notices past their respond-by deadline without a deletion receipt.",
            registry=registry,
        )
        self.refreshed = Gauge(
            "coalition_metrics_refresh_timestamp_seconds",
            "Unix time of the last successful read of the database gauges above.",
            registry=registry,
        )
        self._tree_size = 0
        self._http: WSGIServer | None = None

    # --- what the dispatcher and the sequencer report ------------------------------------

    def declare_methods(self, services: Iterable[ServiceDescriptor]) -> None:
        """Export every method's OK count and latency at zero before its first call.

        A series that appears only after its first increment makes ``rate()`` miss that call.
        """
        for service in services:
            for method in service.methods:
                self.requests.labels(service.full_name, method.name, grpc.StatusCode.OK.name)
                self.request_duration.labels(service.full_name, method.name)

    def rpc_finished(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        """One RPC finished with ``code`` after ``seconds`` (dispatcher's RpcObserver)."""
        service, name = split_method(method)
        self.requests.labels(service, name, code.name).inc()
        self.request_duration.labels(service, name).observe(seconds)

    def append_acknowledged(self, seconds: float) -> None:
        """A group was acknowledged ``seconds`` after it was submitted (SequencerMetrics)."""
        self.append_duration.observe(seconds)

    def batch_committed(self, statements: int, tree_size: int) -> None:
        """A batch of ``statements`` committed, the tree now has ``tree_size`` entries."""
        self.batches.inc()
        self.batch_statements.observe(statements)
        self._grow(tree_size)

    def _grow(self, tree_size: int) -> None:
        # The tree only grows: a refresh that read the head just before a commit must not
        # move the gauge back.
        if tree_size > self._tree_size:
            self._tree_size = tree_size
            self.tree_size.set(tree_size)

    # --- gauges read from the database ---------------------------------------------------

    async def refresh(self, database: Database) -> None:
        """Read the tree size and the open withdrawal notices (two small queries)."""
        now = utcnow()
        notices = models.NoticeRow
        async with database.reader.connect() as conn:
            size = (
                await conn.execute(select(models.TreeHead.size).where(models.TreeHead.id == 1))
            ).scalar_one_or_none()
            pending, overdue = (
                await conn.execute(
                    select(
                        func.count(),
                        func.coalesce(func.sum(case((notices.respond_by < now, 1), else_=0)), 0),
                    ).where(notices.receipt_idx.is_(None))
                )
            ).one()
        if size is not None:
            self._grow(int(size))
        self.pending_notices.set(int(pending))
        self.overdue_notices.set(int(overdue))
        self.refreshed.set(time.time())

    # --- the HTTP endpoint ---------------------------------------------------------------

    def serve(self, listen: str) -> int:
        """Serve ``/metrics`` (any path, in fact) on ``listen``; return the bound port.

        prometheus_client's exporter runs in a daemon thread: a scrape never blocks the
        event loop, and the metrics it reads are thread-safe.
        """
        host, port = parse_listen(listen)
        self._http, _thread = start_http_server(port, host, registry=self.registry)
        bound = int(self._http.server_port)
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def close(self) -> None:
        """Stop serving (blocks for up to the exporter's poll interval, half a second)."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


__all__ = ["ServerMetrics", "SqliteHandOvers", "parse_listen", "split_method"]
