"""Baseline: signed gRPC echo calls per second, the ceiling of a one-process signed mutation.

As :mod:`bench.baselines.echo` (a grpc.aio server in a subprocess, raw bytes, no protobuf,
no database), but each call carries what a single append carries: a statement signed by the
caller and a call signature over it and a fresh nonce. As in the appends figure, the
statements are signed beforehand and each call is signed as it is sent; the server verifies
both signatures on its event loop, as Coalition's server does, with
:data:`CONCURRENCY` calls in flight, as the appends figure has. Coalition's server does this
and more (decoding, authorisation, sequencing, the database, the receipt) on one event loop,
so a single append cannot go faster than this on the same machine.

Run as ``python -m bench.baselines.signed_echo`` it is the server: it prints ``port N``.
"""

from __future__ import annotations

import asyncio
import os
import sys

import grpc
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from bench.harness import Benchmark, Context, DbKind, Figure, run_for, subprocess_with_port

NAME = "signed-echo"
METHOD = "/bench.SignedEcho/Echo"
CONCURRENCY = 64
"""Calls in flight: the same as the appends figure's clients."""
STATEMENT = os.urandom(400)
"""About the size of a signed withdrawal statement."""
_KEY, _SIG, _NONCE = 32, 64, 16


def _split(request: bytes) -> tuple[bytes, bytes, bytes, bytes, bytes]:
    """Public key, call signature, the signed call (statement signature, nonce, statement),
    statement signature, statement."""
    key, call_signature = request[:_KEY], request[_KEY : _KEY + _SIG]
    signed = request[_KEY + _SIG :]
    return key, call_signature, signed, signed[:_SIG], signed[_SIG + _NONCE :]


def check(request: bytes) -> bytes:
    """The statement's signature, once both signatures verify; InvalidSignature if not."""
    key, call_signature, signed, statement_signature, statement = _split(request)
    public_key = Ed25519PublicKey.from_public_bytes(key)
    public_key.verify(call_signature, signed)
    public_key.verify(statement_signature, statement)
    return statement_signature


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    try:
        return check(request)
    except (InvalidSignature, ValueError):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad signature")


def signed_request(private_key: Ed25519PrivateKey, statement_signature: bytes) -> bytes:
    """One call's request: the call signed over a fresh nonce and the signed statement."""
    signed = statement_signature + os.urandom(_NONCE) + STATEMENT
    key = private_key.public_key().public_bytes_raw()
    return key + private_key.sign(signed) + signed


async def serve() -> None:
    """Serve the signed echo method on 127.0.0.1, port 0, until terminated."""
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "bench.SignedEcho", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"port {port}", flush=True)
    await server.wait_for_termination()


async def measure(ctx: Context, _db: DbKind | None) -> list[Figure]:
    """Signed echo calls per second with CONCURRENCY callers for a fixed time."""
    seconds = ctx.pick_seconds(1.5, 10.0)
    log = ctx.fresh_dir(NAME) / "signed-echo.log"
    keys = [Ed25519PrivateKey.generate() for _ in range(CONCURRENCY)]
    statements = [key.sign(STATEMENT) for key in keys]  # beforehand, as the appends figure
    with subprocess_with_port([sys.executable, "-m", "bench.baselines.signed_echo"], log) as (
        _,
        port,
    ):
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(CONCURRENCY)]
        stubs: list[grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = [
            channel.unary_unary(METHOD) for channel in channels
        ]
        try:

            async def call(worker: int) -> None:
                request = signed_request(keys[worker], statements[worker])
                answer = await stubs[worker](request, timeout=10)
                if len(answer) != _SIG:
                    raise RuntimeError("the signed echo answered something else")

            await run_for(min(1.0, seconds / 3), CONCURRENCY, call)  # warm-up: connections
            calls, elapsed = await run_for(seconds, CONCURRENCY, call)
        finally:
            await asyncio.gather(*(channel.close() for channel in channels))
    return [
        Figure(
            NAME,
            "gRPC echo, 2 signatures per call, 64 in flight",
            calls / elapsed,
            "calls/s",
            details={"calls": calls, "seconds": round(elapsed, 3), "concurrency": CONCURRENCY},
        )
    ]


BENCHMARK = Benchmark(NAME, "baseline", per_db=False, run=measure)

if __name__ == "__main__":
    asyncio.run(serve())
