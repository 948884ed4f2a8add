"""A call's time in a timed window (``bench.calls``): read from the server's own metrics,
served over HTTP as the server serves them, and their table in the report.

No speed is asserted: only that the window counts the calls made inside it, of the methods
asked for, and does the arithmetic on them right."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from bench.calls import CallWindow, parse
from bench.harness import free_port
from bench.report import markdown
from prometheus_client import generate_latest

from coalition_server.metrics import ServerMetrics
from coalition_server.store import round_trip
from tests.bench.reports import figure, report

MOVE = "/coalition.v1.NegotiationService/Move"
OPEN = "/coalition.v1.NegotiationService/OpenNegotiation"
SERVICE = "coalition.v1.NegotiationService"
WANTED = [(SERVICE, "Move"), (SERVICE, "OpenNegotiation")]


@pytest.fixture
def served() -> Iterator[tuple[ServerMetrics, str]]:
    """The server's metrics, served on a loopback port as ``--metrics-listen`` serves them."""
    metrics = ServerMetrics()
    port = metrics.serve(f"127.0.0.1:{free_port()}")
    try:
        yield metrics, f"http://127.0.0.1:{port}/metrics"
    finally:
        metrics.close()


def test_the_window_counts_only_its_own_calls_of_the_methods_asked_for(
    served: tuple[ServerMetrics, str],
) -> None:
    metrics, url = served
    # Before the window: not counted.
    metrics.rpc_finished(MOVE, grpc.StatusCode.OK, 5.0)
    metrics.append_acknowledged(5.0)
    metrics.batch_committed(100, 100)
    with CallWindow(url, WANTED) as window:
        metrics.rpc_finished(MOVE, grpc.StatusCode.OK, 0.010)
        metrics.rpc_finished(MOVE, grpc.StatusCode.OK, 0.020)
        metrics.rpc_finished(OPEN, grpc.StatusCode.OK, 0.030)
        metrics.rpc_finished(MOVE, grpc.StatusCode.FAILED_PRECONDITION, 0.004)  # errors too
        # Another method: not one of the figure's calls.
        metrics.rpc_finished("/coalition.v1.LedgerService/GetLogInfo", grpc.StatusCode.OK, 1.0)
        for seconds in (0.008, 0.012):
            metrics.append_acknowledged(seconds)
        metrics.batch_committed(6, 106)
        metrics.batch_committed(2, 108)
    details = window.details(round_trip_seconds=0.025, seconds=4.0)
    assert details["calls"] == 4
    assert details["handler_ms"] == pytest.approx((10 + 20 + 30 + 4) / 4)
    assert details["sequencer_ms"] == pytest.approx(10.0)
    assert details["round_trip_ms"] == pytest.approx(25.0)
    assert details["outside_handler_ms"] == pytest.approx(25.0 - 16.0)
    assert details["batches_per_s"] == pytest.approx(0.5)
    assert details["statements_per_batch"] == pytest.approx(4.0)


def test_the_window_reads_each_sqlite_pools_hand_overs(served: tuple[ServerMetrics, str]) -> None:
    metrics, url = served
    writer = round_trip.HAND_OVERS.setdefault("writer", round_trip.HandOverTimes())
    # The reader's pool is there, idle in the window: it gets no row.
    round_trip.HAND_OVERS.setdefault("reader", round_trip.HandOverTimes())
    writer.add(0.0, 5.0, 6.0, 7.0)  # before the window: not counted
    with CallWindow(url, WANTED) as window:
        metrics.rpc_finished(MOVE, grpc.StatusCode.OK, 0.010)
        metrics.batch_committed(6, 106)
        metrics.batch_committed(2, 108)
        # (queued, started on the thread, finished, resumed on the loop), in seconds
        writer.add(10.000, 10.001, 10.004, 10.006)  # 1, 3, 2 ms
        writer.add(20.000, 20.003, 20.004, 20.005)  # 3, 1, 1 ms
        writer.add(30.000, 30.002, 30.004, 30.0075)  # 2, 2, 3.5 ms
    details = window.details(round_trip_seconds=0.025, seconds=2.0)
    found = details["sqlite_hand_overs"]
    assert set(found) == {"writer"}  # the reader's pool did none in the window
    assert found["writer"]["hand_overs"] == 3
    assert found["writer"]["per_s"] == pytest.approx(1.5)
    assert found["writer"]["per_batch"] == pytest.approx(1.5)
    assert found["writer"]["to_thread_ms"] == pytest.approx(2.0)
    assert found["writer"]["on_thread_ms"] == pytest.approx(2.0)
    assert found["writer"]["to_loop_ms"] == pytest.approx(6.5 / 3, abs=0.001)  # rounded


def test_a_window_without_the_figures_calls_is_an_error(served: tuple[ServerMetrics, str]) -> None:
    metrics, url = served
    with CallWindow(url, WANTED) as window:
        metrics.rpc_finished("/coalition.v1.LedgerService/GetLogInfo", grpc.StatusCode.OK, 1.0)
    with pytest.raises(ValueError, match="none of the window's calls"):
        window.details(round_trip_seconds=0.01, seconds=1.0)


def test_samples_are_keyed_by_name_and_labels() -> None:
    metrics = ServerMetrics()
    metrics.rpc_finished(MOVE, grpc.StatusCode.OK, 0.5)
    samples = parse(generate_latest(metrics.registry).decode())
    labels = frozenset({("service", "coalition.v1.NegotiationService"), ("method", "Move")})
    assert samples[("coalition_grpc_request_duration_seconds_count", labels)] == 1
    assert samples[("coalition_grpc_request_duration_seconds_sum", labels)] == 0.5


def test_free_ports_are_free() -> None:
    metrics = ServerMetrics()
    port = free_port()
    try:
        assert metrics.serve(f"127.0.0.1:{port}") == port
    finally:
        metrics.close()


def test_the_report_tabulates_each_window_once() -> None:
    window = {
        "calls": 100,
        "round_trip_ms": 25.0,
        "handler_ms": 16.0,
        "sequencer_ms": 15.5,
        "outside_handler_ms": 9.0,
        "batches_per_s": 100.0,
        "statements_per_batch": 28.5,
        "sqlite_hand_overs": {
            "writer": {
                "hand_overs": 900,
                "per_s": 1200.0,
                "per_batch": 12.0,
                "to_thread_ms": 0.5,
                "on_thread_ms": 0.75,
                "to_loop_ms": 1.25,
            }
        },
    }
    figures = [
        figure("echo", None, {"calls": 5}),  # a baseline's count of calls: not a window
        figure("appends", "sqlite", {"call_time": window}),
        figure("appends-p99", "sqlite", {"call_time": window}),  # the same window
    ]
    text = markdown(report(figures))
    table = text.split("A call's time in the timed windows")[1]
    assert "| appends | sqlite | 25.00 | 16.00 | 15.50 | 9.00 | 100 | 28.5 |" in table
    assert "| appends-p99 |" not in table
    hand_overs = text.split("SQLite hand-overs to the driver's thread")[1]
    assert "| appends | sqlite | writer | 1,200 | 12.0 | 0.50 | 0.75 | 1.25 |" in hand_overs
    assert "| appends-p99 |" not in hand_overs
    on_postgres = dict(window, sqlite_hand_overs={})
    postgres = markdown(report([figure("appends", "postgres", {"call_time": on_postgres})]))
    assert "A call's time in the timed windows" in postgres
    assert "SQLite hand-overs" not in postgres
    assert "| echo |" not in table
    no_window = report([figure("echo", None, {"calls": 5})])
    assert "A call's time in the timed windows" not in markdown(no_window)


def test_a_server_without_metrics_has_no_window() -> None:
    with pytest.raises(ValueError, match="without metrics"):
        CallWindow(None, WANTED)
