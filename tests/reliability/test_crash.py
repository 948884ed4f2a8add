"""Crash safety (issue #7, point 1): kill -9 the server at random moments under load.

A real ``coalition-server`` process serves eight contributors appending as fast as they can
(each request with its own request_id); after a random delay (a seeded RNG, the seed is
printed; set COALITION_CRASH_SEED to replay a run) it gets SIGKILL, and is started again.
After every restart:

- every request whose outcome was unknown (in flight at the kill) is sent again, same bytes
  and request_id: it gets its original answer if it was committed, else it is appended now;
- each member's last acknowledged request is sent again: the answer must be the original's
  bytes exactly;
- the whole tree is read: every acknowledged statement is in it exactly once, at its
  receipt's index, and there is nothing else (only the coalition's own first entry);
- every checkpoint ever issued is a prefix of the new tree: recomputed from the leaves, and
  proven with the server's consistency proofs (see :class:`harness.Auditor`).

On the embedded SQLite store and on PostgreSQL (the shared test server, a fresh database).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path

import grpc
import pytest

from coalition.client import Client
from tests.integration.processes import ServerProcess, migrate, start_server

from .harness import Auditor, Load, Member, log_verifier, read_tree, replay_last_acks, report
from .harness import settle as settle_in_doubt

KILLS = 20
MEMBERS = 8
MIN_DELAY, MAX_DELAY = 0.05, 0.8
"""Seconds of load before each kill (uniform): from the first appends to busy batching."""


def _seed() -> int:
    given = os.environ.get("COALITION_CRASH_SEED")
    return int(given) if given else random.SystemRandom().randrange(2**32)


@pytest.mark.slow
async def test_kill_9_under_load_loses_nothing(
    db_url: str, tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    kind = "sqlite" if db_url.startswith("sqlite") else "postgres"
    seed = _seed()
    rng = random.Random(seed)
    print(f"crash[{kind}]: seed {seed} (COALITION_CRASH_SEED={seed} replays the delays)")
    data_dir = tmp_path / "data"
    migrate(db_url, data_dir)
    started = time.monotonic()
    server: ServerProcess = start_server(db_url, data_dir)
    auditor = Auditor(await log_verifier(server.target))
    load = Load(auditor)
    members = [Member(f"m{i}") for i in range(MEMBERS)]
    in_doubt = recovered = identical = proofs = 0
    restarting = auditing = 0.0
    try:
        for kill in range(KILLS + 1):
            if kill:
                # After a restart: resolve what was in doubt, replay answers, audit the tree.
                audit_started = time.monotonic()
                async with Client(server.target) as reader:
                    size_at_restart = (await reader.checkpoint()).tree_size
                async with grpc.aio.insecure_channel(server.target) as channel:
                    settled = await settle_in_doubt(members, channel, auditor)
                    identical += await replay_last_acks(members, channel)
                in_doubt += len(settled)
                # Committed before the kill, answered only now (with the original receipt).
                recovered += sum(ack.receipts[0].index < size_at_restart for ack in settled)
                result = await auditor.audit(
                    await read_tree(server.target, auditor.verifier), [server.target]
                )
                proofs += result.proofs
                auditing += time.monotonic() - audit_started
            if kill == KILLS:
                break
            stop = asyncio.Event()
            channels = [grpc.aio.insecure_channel(server.target) for _ in members]
            try:
                runs = [
                    asyncio.create_task(load.drive(member, channel, stop))
                    for member, channel in zip(members, channels, strict=True)
                ]
                await asyncio.sleep(rng.uniform(MIN_DELAY, MAX_DELAY))
                # Members stop sending once the kill is decided: what fails now is in doubt.
                stop.set()
                server.kill()
                await asyncio.wait_for(asyncio.gather(*runs), 30)
            finally:
                for channel in channels:
                    await channel.close()
            restart_started = time.monotonic()
            server = start_server(db_url, data_dir)
            restarting += time.monotonic() - restart_started
    except BaseException:
        print(f"server output (last lines):\n{server.tail()}")
        raise
    finally:
        server.stop()
    elapsed = time.monotonic() - started
    assert identical >= KILLS, "too few acknowledged requests to replay"
    # The kills landed mid-request: some calls were cut and answered on their retry.
    assert in_doubt > 0, "no request was in flight at any kill: the crash path went untested"
    report(
        pytestconfig,
        f"crash[{kind}]: {KILLS} kills (seed {seed}), {len(auditor.acks):,} acknowledged "
        f"({in_doubt} in doubt at a kill and answered on retry, {recovered} of them committed "
        f"before the kill), {auditor.statements:,} "
        f"present exactly once (tree size {result.tree_size:,}), "
        f"{result.checkpoints:,} checkpoints consistent ({proofs:,} consistency proofs), "
        f"{identical} retries answered identically, {len(load.failures)} calls cut by a kill, "
        f"{elapsed:.1f} s (restarts {restarting:.1f} s, audits {auditing:.1f} s)",
    )
