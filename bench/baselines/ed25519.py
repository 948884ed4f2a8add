"""Baseline: Ed25519 signature verifications per second in one process (one core).

Verifying every token's signature is the one thing ingest cannot skip, so this rate (with
the ``cryptography`` library the server uses, over messages the size of a signed consent
token's PAE) bounds ingest on one core.
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.harness import Benchmark, Context, DbKind, Figure, Stopwatch

NAME = "ed25519"
MESSAGE_BYTES = 300
"""About PAE(type, payload) of a one-item consent token."""


async def measure(ctx: Context, _db: DbKind | None) -> list[Figure]:
    """Verify ``count`` distinct signatures (one key, loaded once) and time it."""
    count = ctx.pick(2_000, 30_000)
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    messages = [os.urandom(MESSAGE_BYTES) for _ in range(count)]
    signatures = [key.sign(m) for m in messages]
    for message, signature in zip(messages[:200], signatures, strict=False):  # warm-up
        public.verify(signature, message)
    with Stopwatch() as watch:
        for message, signature in zip(messages, signatures, strict=True):
            public.verify(signature, message)
    return [
        Figure(
            NAME,
            "Ed25519 verify, one core",
            count / watch.seconds,
            "verifications/s",
            details={"verifications": count, "seconds": round(watch.seconds, 3)},
        )
    ]


BENCHMARK = Benchmark(NAME, "baseline", per_db=False, run=measure)
