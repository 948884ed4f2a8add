"""Baseline: bare gRPC unary echo calls per second between two processes.

A tiny grpc.aio server (a generic handler, raw bytes, no protobuf, no auth, no database)
runs in a subprocess; the bench process keeps :data:`CONCURRENCY` calls in flight, one
channel per caller, as the negotiation figure does with its labs. The Coalition server is
grpc.aio Python too, so this is the ceiling of any unary RPC it serves on this machine.

Run as ``python -m bench.baselines.echo`` it is the echo server: it prints ``port N``.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable

import grpc

from bench.cpu import CpuWindow
from bench.harness import (
    OWN_CONNECTION,
    Benchmark,
    Context,
    DbKind,
    Figure,
    run_for,
    subprocess_with_port,
)

NAME = "echo"
SERVICE = "bench.Echo"
CONCURRENCY = 32
"""Calls in flight: the same as the negotiation figure's negotiations at once."""
PAYLOAD = os.urandom(512)
"""About the size of a signed negotiation move."""


async def _echo(request: bytes, _context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


Behaviour = Callable[[bytes, grpc.aio.ServicerContext[bytes, bytes]], Awaitable[bytes]]


async def serve(service: str = SERVICE, behaviour: Behaviour = _echo) -> None:
    """Serve ``service``'s one method, Echo, on 127.0.0.1, port 0, until terminated; print
    ``port N`` once listening."""
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        service, {"Echo": grpc.unary_unary_rpc_method_handler(behaviour)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"port {port}", flush=True)
    await server.wait_for_termination()


async def rate_figure(
    ctx: Context,
    key: str,
    title: str,
    server: tuple[str, str],
    concurrency: int,
    request: Callable[[int], bytes],
    check: Callable[[bytes], None] = lambda _answer: None,
) -> Figure:
    """Calls per second made by ``concurrency`` callers, one channel each, to the Echo
    method of ``server`` (module, service): ``python -m module`` runs a :func:`serve` of
    that service. For the scale's time, after a warm-up; caller ``worker`` sends
    ``request(worker)`` and checks the answer."""
    server_module, service = server
    seconds = ctx.pick_seconds(1.5, 10.0)
    log = ctx.fresh_dir(key) / "server.log"
    with subprocess_with_port([sys.executable, "-m", server_module], log) as (pid, port):
        channels = [
            grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION)
            for _ in range(concurrency)
        ]
        stubs: list[grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = [
            channel.unary_unary(f"/{service}/Echo") for channel in channels
        ]
        try:

            async def call(worker: int) -> None:
                check(await stubs[worker](request(worker), timeout=10))

            await run_for(min(1.0, seconds / 3), concurrency, call)  # warm-up: connections
            # The machine's CPU per call, to set a figure's own beside it (bench.cpu).
            with CpuWindow(pid) as cpu:
                calls, elapsed = await run_for(seconds, concurrency, call)
        finally:
            await asyncio.gather(*(channel.close() for channel in channels))
    return Figure(
        key,
        title,
        calls / elapsed,
        "calls/s",
        details={
            "calls": calls,
            "seconds": round(elapsed, 3),
            "concurrency": concurrency,
            "cpu": cpu.details(),
        },
    )


async def measure(ctx: Context, _db: DbKind | None) -> list[Figure]:
    """Echo calls per second with CONCURRENCY callers for a fixed time."""
    figure = await rate_figure(
        ctx,
        NAME,
        "gRPC echo, 32 in flight",
        ("bench.baselines.echo", SERVICE),
        CONCURRENCY,
        lambda _worker: PAYLOAD,
    )
    return [figure]


BENCHMARK = Benchmark(NAME, "baseline", per_db=False, run=measure)

if __name__ == "__main__":
    asyncio.run(serve())
