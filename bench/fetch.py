"""Figure 7, fetch: 1 MiB items streamed to a lab with HPKE key release, decrypted and checked.

Untimed set-up: a member registers and uploads ``items`` items of 1 MiB of random bytes (the
server stores them encrypted under per-item data keys) and grants consent for them; a lab
concludes an agreement covering them over gRPC and takes a lease. Timed: the lab fetches
everything the lease releases with the SDK (``Client.fetch_items``): the server streams each
page's KeyRelease (logged) with every item's data key sealed to the lab by HPKE and the
item's encrypted segments; the lab checks the release receipt, opens each data key, decrypts
and checks each item's SHA-256 and size against its commitment. MB/s is 10^6 bytes of
plaintext delivered per second.

Target: at least 100 MB/s.
"""

from __future__ import annotations

import hashlib
import os

from bench import world
from bench.harness import Benchmark, Context, DbKind, Figure, Stopwatch, Target, coalition_server
from coalition.client import consent_token, price_floor

NAME = "fetch"
ITEM_BYTES = 1 << 20


async def measure(ctx: Context, db: DbKind | None) -> list[Figure]:
    """Plaintext MB/s of a lab fetching every item of its lease."""
    assert db is not None
    count = ctx.pick(8, 256)
    async with coalition_server(ctx, db, NAME) as server:
        member = await world.member(server.target, "member", 0)
        lab = await world.lab(server.target, "lab")
        try:
            ctx.log(f"{NAME}: uploading {count} items of 1 MiB")
            contents = [os.urandom(ITEM_BYTES) for _ in range(count)]
            registered = await member.client.register_items(
                (hashlib.sha256(c).digest(), len(c), "application/octet-stream", ["bench"])
                for c in contents
            )
            item_ids = [item.item_id for item in registered.items]
            for item_id, content in zip(item_ids, contents, strict=True):
                await member.client.upload(item_id, content)
            del contents
            await member.client.grant_consent(
                consent_token(
                    item_ids=item_ids,
                    purposes=[world.PURPOSE],
                    floors=[price_floor("purchase", world.USD)],
                )
            )
            agreement_id = await world.conclude_agreement(lab)
            lease = (await lab.client.take_lease(agreement_id)).lease
            ctx.log(f"{NAME}: fetching")
            received = 0
            fetched = 0
            with Stopwatch() as watch:
                async for fetched_item in lab.client.fetch_items(lease.lease_id):
                    received += len(fetched_item.data)
                    fetched += 1
        finally:
            await world.close_all([member, lab])
    if fetched != count:
        raise RuntimeError(f"fetched {fetched} items of {count}")
    return [
        Figure(
            NAME,
            "7 fetch, 1 MiB items",
            received / watch.seconds / 1e6,
            "MB/s",
            db=db,
            target=Target(">=", 100),
            note=f"{count} items, verified",
            details={"items": count, "bytes": received, "seconds": round(watch.seconds, 3)},
        )
    ]


BENCHMARK = Benchmark(NAME, "figure", per_db=True, run=measure)
