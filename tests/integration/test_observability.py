"""Observability over a real server: Prometheus metrics, JSON access logs, reflection.

The metrics are scraped over HTTP exactly as Prometheus would, and parsed with
prometheus_client's own text parser.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import json
import logging
import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from prometheus_client.parser import text_string_to_metric_families

from coalition.auth import SIGNATURE_HEADER, CallSigner
from coalition.client import Client, ServerError
from coalition.keys import SigningKey
from coalition.statements import sign_statement
from coalition.v1 import party_pb2
from coalition_server import logs
from coalition_server.config import Settings
from coalition_server.server import CoalitionServer

from . import builders
from .processes import SERVER
from .world import agree, lab, member

PARTY = "coalition.v1.PartyService"
ACCESS = "coalition.v1.AccessService"
REQUESTS = "coalition_grpc_requests_total"
PENDING = "coalition_withdrawal_notices_pending"
OVERDUE = "coalition_withdrawal_notices_overdue"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The shared test settings, with metrics on a free port and gauges refreshed often."""
    return dataclasses.replace(settings, metrics_listen="127.0.0.1:0", metrics_refresh_seconds=0.05)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


async def scrape(port: int | None) -> Samples:
    """Every sample on a metrics endpoint, by (name, labels)."""
    assert port
    body = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when the series is absent."""
    return samples.get((name, frozenset(labels.items())), 0.0)


async def eventually(
    server: CoalitionServer, check: Callable[[Samples], bool], seconds: float = 5.0
) -> Samples:
    """Scrape until ``check`` holds (database gauges are refreshed in the background)."""
    deadline = time.monotonic() + seconds
    while True:
        samples = await scrape(server.metrics_port)
        if check(samples) or time.monotonic() > deadline:
            return samples
        await asyncio.sleep(0.05)


async def test_sqlite_hand_overs_are_timed_on_sqlite(
    server: CoalitionServer, make_client: Callable[..., Client], db_url: str
) -> None:
    before = await scrape(server.metrics_port)
    await make_client().register(party_pb2.ROLE_CONTRIBUTOR, "ada")
    after = await scrape(server.metrics_port)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    seconds = "coalition_sqlite_hand_over_seconds_total"
    phases = ("to_thread", "on_thread", "to_loop")
    if db_url.startswith("sqlite"):
        # The registration's batch went through the writer's thread, each hand-over timed.
        assert grew("coalition_sqlite_hand_overs_total", pool="writer") >= 2
        for phase in phases:
            assert grew(seconds, pool="writer", phase=phase) > 0
    else:
        # No SQLite connection of this server's: nothing moved (the counters are the
        # process's, so other tests' SQLite servers may have left some behind).
        assert grew("coalition_sqlite_hand_overs_total", pool="writer") == 0
        assert grew("coalition_sqlite_hand_overs_total", pool="reader") == 0


async def test_metrics_count_rpcs_appends_and_batches(
    server: CoalitionServer, make_client: Callable[..., Client], anonymous: Client
) -> None:
    before = await scrape(server.metrics_port)
    # Every method is exported at zero before its first call, so rate() sees the first one.
    ok = {"service": PARTY, "method": "RegisterParty", "code": "OK"}
    assert (REQUESTS, frozenset(ok.items())) in before
    assert value(before, REQUESTS, **ok) == 0

    await make_client().register(party_pb2.ROLE_CONTRIBUTOR, "ada")
    with pytest.raises(ServerError) as missing:
        await anonymous.party("f" * 64)
    assert missing.value.code == grpc.StatusCode.NOT_FOUND
    tree_size = (await anonymous.checkpoint()).tree_size
    after = await scrape(server.metrics_port)

    assert value(after, REQUESTS, **ok) == 1
    assert value(after, REQUESTS, service=PARTY, method="GetParty", code="NOT_FOUND") == 1
    assert value(after, REQUESTS, service=PARTY, method="GetParty", code="OK") == 0
    latency = "coalition_grpc_request_duration_seconds_count"
    assert value(after, latency, service=PARTY, method="RegisterParty") == 1
    assert value(after, latency, service=PARTY, method="GetParty") == 1

    def grew(name: str) -> float:
        return value(after, name) - value(before, name)

    # One registration: one acknowledged append, one committed batch of one statement.
    assert grew("coalition_append_duration_seconds_count") == 1
    assert grew("coalition_append_duration_seconds_sum") > 0
    assert grew("coalition_sequencer_batches_committed_total") == 1
    assert grew("coalition_sequencer_batch_statements_count") == 1
    assert grew("coalition_sequencer_batch_statements_sum") == 1
    # The coalition's own registration (entry 0) and ada's.
    assert tree_size == 2
    assert value(after, "coalition_ledger_tree_size") == tree_size
    assert value(after, "coalition_metrics_refresh_timestamp_seconds") > 0
    assert value(after, "process_start_time_seconds") > 0  # the standard process metrics


async def test_gauges_follow_withdrawal_notices_and_receipts(
    server: CoalitionServer, make_client: Callable[..., Client]
) -> None:
    alice = await member(make_client)
    ids = await alice.add([b"one", b"two"])
    await alice.grant(builders.consent_token(item_ids=ids))
    prompt, late = await lab(make_client, "prompt"), await lab(make_client, "late")
    await agree(server, prompt, ids)  # seven days to answer
    await agree(server, late, ids, deletion_deadline=builders.seconds(1))
    quiet = await eventually(server, lambda s: value(s, "coalition_ledger_tree_size") > 0)
    assert value(quiet, PENDING) == 0

    await alice.withdraw(builders.withdrawal(item_ids=ids))
    pending = await eventually(server, lambda s: value(s, PENDING) == 2)
    assert value(pending, PENDING) == 2
    assert value(pending, OVERDUE) == 0
    # The late lab's second passes without a receipt: its notice is overdue.
    await asyncio.sleep(1.1)
    overdue = await eventually(server, lambda s: value(s, OVERDUE) == 1)
    assert (value(overdue, PENDING), value(overdue, OVERDUE)) == (2, 1)

    (notice,) = await late.notices(count=1)
    await late.acknowledge(notice.notice_id, sorted(ids))
    answered = await eventually(server, lambda s: value(s, OVERDUE) == 0)
    assert (value(answered, PENDING), value(answered, OVERDUE)) == (1, 0)
    # The tree size gauge is the log's size.
    checkpoint = await late.client.checkpoint()
    assert value(answered, "coalition_ledger_tree_size") == checkpoint.tree_size
    # Following the feed ends when the lab hangs up: that call counts as CANCELLED.
    watch = {"service": ACCESS, "method": "WatchWithdrawals", "code": "CANCELLED"}
    hung_up = await eventually(server, lambda s: value(s, REQUESTS, **watch) == 1)
    assert value(hung_up, REQUESTS, **watch) == 1


@pytest.fixture
def access_log() -> Iterator[io.StringIO]:
    """The server's log records at INFO and above, as JSON lines."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("coalition_server")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line]


async def test_access_log_is_json_with_call_fields_and_no_secrets(
    server: CoalitionServer, access_log: io.StringIO, make_client: Callable[..., Client]
) -> None:
    seed = os.urandom(32)
    key = SigningKey.from_seed(seed)
    method = f"/{PARTY}/RegisterParty"
    statement = sign_statement(make_client(key).registration(party_pb2.ROLE_LAB, "acme"), key)
    raw = party_pb2.RegisterPartyRequest(registration=statement.to_proto()).SerializeToString()
    metadata = CallSigner(key).metadata(method, raw)
    signature = dict(metadata)[SIGNATURE_HEADER]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        register: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
        await register(raw, metadata=metadata)
        who: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]
        who = channel.unary_unary(f"/{PARTY}/WhoAmI")
        with pytest.raises(grpc.aio.AioRpcError) as unsigned:
            await who(b"")
    assert unsigned.value.code() == grpc.StatusCode.UNAUTHENTICATED

    # A call's access line is written once its status has gone out, so the client can hold
    # the status first: wait (boundedly) for the refused call's line.
    for _ in range(200):
        if f"/{PARTY}/WhoAmI" in access_log.getvalue():
            break
        await asyncio.sleep(0.01)
    text = access_log.getvalue()
    lines = _json_lines(text)
    for line in lines:
        assert {"timestamp", "level", "logger", "message"} <= set(line)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["timestamp"])
    calls = {line["method"]: line for line in lines if line["logger"] == "coalition_server.access"}
    registered = calls[method]
    assert registered["level"] == "INFO"
    assert registered["code"] == "OK"
    assert registered["caller_key_id"] == key.key_id
    assert 0 < registered["duration_ms"] < 60_000
    refused = calls[f"/{PARTY}/WhoAmI"]
    assert (refused["code"], refused["caller_key_id"]) == ("UNAUTHENTICATED", None)
    # No key material, signature or request bytes, in any encoding.
    secrets = {
        "seed": seed,
        "private key": key.private_bytes_raw(),
        "signature": base64.b64decode(signature),
        "request": raw,
        "statement payload": statement.payload,
    }
    for name, secret in secrets.items():
        for encoded in (secret.hex(), base64.b64encode(secret).decode(), repr(secret)):
            assert encoded not in text, f"the {name} is in the log"
    assert signature not in text


def test_text_and_json_formats() -> None:
    record = logging.LogRecord(
        "coalition_server.x", logging.WARNING, __file__, 1, "a %s", ("b",), None
    )
    record.method = "/m"
    line = json.loads(logs.formatter(logs.JSON).format(record))
    assert (line["level"], line["logger"], line["message"], line["method"]) == (
        "WARNING",
        "coalition_server.x",
        "a b",
        "/m",
    )
    assert logs.formatter(logs.TEXT).format(record).endswith("WARNING coalition_server.x a b")
    with pytest.raises(ValueError, match="unknown log format"):
        logs.formatter("yaml")


def test_debug_logs_never_carry_the_drivers_sql_parameters() -> None:
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    try:
        logs.configure("DEBUG", stream=io.StringIO())
        assert root.getEffectiveLevel() == logging.DEBUG
        for name in ("aiosqlite", "asyncpg"):
            assert not logging.getLogger(name).isEnabledFor(logging.DEBUG), name
        logs.configure("WARNING", stream=io.StringIO())
        assert not logging.getLogger("aiosqlite").isEnabledFor(logging.INFO)
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _call(channel: grpc.Channel, pool: DescriptorPool, full_name: str, **fields: object) -> Any:
    """Call ``package.Service/Method`` knowing only what reflection described (as grpcurl)."""
    service, method = full_name.split("/")
    descriptor = pool.FindServiceByName(service).methods_by_name[method]
    stub: grpc.UnaryUnaryMultiCallable[Message, Message] = channel.unary_unary(
        f"/{full_name}",
        request_serializer=_serialize,
        response_deserializer=GetMessageClass(descriptor.output_type).FromString,
    )
    response: Any = stub(GetMessageClass(descriptor.input_type)(**fields), timeout=5)
    return response


async def test_generic_client_lists_services_and_calls_health_through_reflection(
    server: CoalitionServer,
) -> None:
    """What grpcurl or buf curl do: learn the schema from the server, then call with it."""

    def explore(target: str) -> tuple[set[str], bool, int]:
        with grpc.insecure_channel(target) as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            services = set(database.get_services())
            pool = DescriptorPool(database)
            health = _call(
                channel, pool, "grpc.health.v1.Health/Check", service="coalition.v1.LedgerService"
            )
            statuses = health.DESCRIPTOR.enum_types_by_name["ServingStatus"]
            serving = health.status == statuses.values_by_name["SERVING"].number
            # A Coalition method, described and called the same way.
            checkpoint = _call(channel, pool, "coalition.v1.LedgerService/GetCheckpoint")
            return services, serving, checkpoint.tree_size

    services, serving, size = await asyncio.to_thread(explore, f"127.0.0.1:{server.port}")
    assert {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services
    assert {"coalition.v1.LedgerService", "coalition.v1.AccessService"} <= services
    assert serving
    assert size == 1  # the coalition's own registration


def test_server_process_serves_metrics_and_json_logs(db_url: str, tmp_path: Path) -> None:
    """The flags as an operator passes them: --metrics-listen, --log-format json."""
    process = subprocess.Popen(
        [
            *SERVER,
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path / "data"),
            "--db",
            db_url,
            "--auto-migrate",
            "--metrics-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    assert process.stderr is not None
    try:
        port = None
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while port is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                break
            lines.append(line)
            found = re.search(r"metrics on http://[^:]+:(\d+)/metrics", json.loads(line)["message"])
            port = int(found.group(1)) if found else None
        assert port, "no metrics address logged:\n" + "".join(lines)
        samples = asyncio.run(scrape(port))
        assert value(samples, "coalition_ledger_tree_size") >= 1
        assert all(json.loads(line)["level"] for line in lines)
    finally:
        process.terminate()
        process.wait(10)
        process.stderr.close()
