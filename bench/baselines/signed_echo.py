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

import grpc
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from bench.baselines import echo
from bench.harness import Benchmark, Context, DbKind, Figure

NAME = "signed-echo"
SERVICE = "bench.SignedEcho"
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


async def measure(ctx: Context, _db: DbKind | None) -> list[Figure]:
    """Signed echo calls per second with CONCURRENCY callers for a fixed time."""
    keys = [Ed25519PrivateKey.generate() for _ in range(CONCURRENCY)]
    statements = [key.sign(STATEMENT) for key in keys]  # beforehand, as the appends figure

    def check_answer(answer: bytes) -> None:
        if len(answer) != _SIG:
            raise RuntimeError("the signed echo answered something else")

    figure = await echo.rate_figure(
        ctx,
        NAME,
        "gRPC echo, 2 signatures per call, 64 in flight",
        ("bench.baselines.signed_echo", SERVICE),
        CONCURRENCY,
        lambda worker: signed_request(keys[worker], statements[worker]),
        check_answer,
    )
    return [figure]


BENCHMARK = Benchmark(NAME, "baseline", per_db=False, run=measure)

if __name__ == "__main__":
    asyncio.run(echo.serve(SERVICE, _echo))
