"""Database outage (issue #7, point 3): PostgreSQL restarted under load.

The machine's shared PostgreSQL is never touched: each test runs a private cluster (initdb in
a temporary directory, loopback, a free port; see :class:`harness.PrivatePostgres`), one
``coalition-server`` process on it and eight contributors appending continuously. After a
second of load the cluster is stopped (``fast``: connections terminated, a clean shutdown;
``immediate``: a crash, with WAL recovery on start), kept down for three seconds and started
again, while the members keep calling, each retrying its request with the same request_id
when told UNAVAILABLE. Then:

- every call that failed, failed with UNAVAILABLE and the reason DATABASE_UNAVAILABLE, and
  calls made while the database was down did fail (none was acknowledged);
- the server recovers by itself: appends are acknowledged again within a bounded time of the
  database coming back, with no restart of the server (its sequencer did not wedge);
- nothing acknowledged is lost: every acknowledged statement, before, during the transitions
  and after, is in the tree exactly once, with nothing else, and every checkpoint issued is
  consistent with the final tree.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import asyncpg
import grpc
import pytest
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_dbapi
from sqlalchemy.exc import DBAPIError

from coalition_server.store.database import is_unavailable
from tests.integration.processes import migrate, start_server

from .harness import (
    Auditor,
    Load,
    Member,
    log_verifier,
    private_postgres,
    read_tree,
    replay_last_acks,
    report,
    settle,
)

MEMBERS = 8
REASON = "DATABASE_UNAVAILABLE"
BEFORE, OUTAGE, AFTER = 1.0, 3.0, 1.0
"""Seconds of load with the database up, down, and up again once the server has recovered."""
RECOVERY_LIMIT = 15.0
"""Seconds the server may take, once the database is back, to acknowledge appends again."""


def _translated(error: Exception) -> DBAPIError:
    """``error`` as SQLAlchemy's asyncpg dialect hands it to the server."""
    dbapi = AsyncAdapt_asyncpg_dbapi(asyncpg)  # type: ignore[no-untyped-call]
    try:
        raise dbapi.Error(str(error), error) from error  # type: ignore[no-untyped-call]
    except dbapi.Error as driver_error:
        translated = DBAPIError.instance(None, None, driver_error, dbapi.Error)
    assert isinstance(translated, DBAPIError)
    return translated


@pytest.mark.parametrize(
    ("error", "unavailable"),
    [
        # What a restarting PostgreSQL answers a new connection: retry, not a bug.
        (asyncpg.exceptions.CannotConnectNowError("the database system is shutting down"), True),
        (asyncpg.exceptions.AdminShutdownError("terminating connection"), True),
        (asyncpg.exceptions.TooManyConnectionsError("too many clients"), True),
        (asyncpg.exceptions.UniqueViolationError("duplicate key"), False),
    ],
    ids=["cannot-connect-now", "admin-shutdown", "too-many-connections", "unique-violation"],
)
def test_postgres_errors_of_a_restart_are_unavailable(error: Exception, unavailable: bool) -> None:
    # The server answers these UNAVAILABLE/DATABASE_UNAVAILABLE, not INTERNAL (found by the
    # outage test below: PostgreSQL refuses connections with 57P03 while it shuts down).
    assert is_unavailable(_translated(error)) is unavailable


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_postgres_restart_under_load_loses_nothing(
    mode: str, tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    started = time.monotonic()
    with private_postgres() as postgres:
        data_dir = tmp_path / "data"
        migrate(postgres.url, data_dir)
        server = start_server(postgres.url, data_dir)
        try:
            auditor = Auditor(await log_verifier(server.target))
            load = Load(auditor)
            members = [Member(f"m{i}") for i in range(MEMBERS)]
            stop = asyncio.Event()
            channels = [grpc.aio.insecure_channel(server.target) for _ in members]
            runs: list[asyncio.Task[None]] = []
            try:
                runs += [
                    asyncio.create_task(load.drive(member, channel, stop, retry_unavailable=True))
                    for member, channel in zip(members, channels, strict=True)
                ]
                await asyncio.sleep(BEFORE)
                # pg_ctl blocks: run it in a thread so the members keep calling meanwhile.
                await asyncio.to_thread(postgres.stop, mode)
                down = time.monotonic()
                await asyncio.sleep(OUTAGE)
                restarting = time.monotonic()
                await asyncio.to_thread(postgres.start)
                up = time.monotonic()
                recovered = await _first_answer_after(load, up, RECOVERY_LIMIT, runs)
                await asyncio.sleep(AFTER)
                stop.set()
                await asyncio.wait_for(asyncio.gather(*runs), 30)
                assert server.process.poll() is None, "the server exited"
                # Members stopped mid-retry leave requests in doubt: settle them.
                in_doubt = await settle(members, channels[0], auditor)
                identical = await replay_last_acks(members, channels[0])
            finally:
                for run in runs:
                    run.cancel()
                await asyncio.gather(*runs, return_exceptions=True)
                for channel in channels:
                    await channel.close()
            tree = await read_tree(server.target, auditor.verifier)
            result = await auditor.audit(tree, [server.target])
        except BaseException:
            print(f"server output (last lines):\n{server.tail()}")
            print(f"postgres log (last lines):\n{postgres.log_tail()}")
            raise
        finally:
            server.stop()

    # Every failure was the retryable one, with its reason.
    reasons = {(f.code, f.reason) for f in load.failures}
    assert reasons <= {(grpc.StatusCode.UNAVAILABLE, REASON)}, reasons
    # While the database was down, calls failed and none was acknowledged.
    during = [f for f in load.failures if down <= f.sent and f.failed <= restarting]
    assert during, "no call was made while the database was down"
    sent_while_down = [a for a in load.answered if down <= a[0] <= restarting]
    assert not sent_while_down, f"{len(sent_while_down)} calls answered with no database"
    retried = sum(1 for ack in auditor.acks if ack.attempts > 1)
    before = sum(1 for sent, _ in load.answered if sent < down)
    after = sum(1 for sent, _ in load.answered if sent >= up)
    assert before, "nothing acknowledged before the outage"
    assert after, "nothing acknowledged after the outage"
    report(
        pytestconfig,
        f"outage[postgres stop -m {mode}]: down {restarting - down:.1f} s, "
        f"{len(during):,} calls during it failed UNAVAILABLE/DATABASE_UNAVAILABLE "
        f"({len(load.failures):,} failures in all, none of another kind), recovered "
        f"{recovered:.2f} s after the database was up (restart took {up - restarting:.1f} s), "
        f"{len(auditor.acks):,} acknowledged ({before:,} sent before, {after:,} after; "
        f"{retried} only on a retry with the same request_id, {len(in_doubt)} of them settled "
        f"after the load) all present exactly once "
        f"(tree size {result.tree_size:,}), {result.checkpoints:,} checkpoints consistent, "
        f"{identical} retries answered identically, {time.monotonic() - started:.1f} s",
    )


async def _first_answer_after(
    load: Load, since: float, limit: float, runs: Sequence[asyncio.Task[None]]
) -> float:
    """Seconds from ``since`` until a call sent after it is acknowledged (at most ``limit``).

    A member that failed (a status other than UNAVAILABLE) fails the test at once.
    """
    deadline = since + limit
    while time.monotonic() < deadline:
        for run in runs:
            if run.done() and run.exception() is not None:
                await run
        answers = [answered for sent, answered in load.answered if sent >= since]
        if answers:
            return min(answers) - since
        await asyncio.sleep(0.05)
    raise AssertionError(f"no append acknowledged within {limit} s of the database's restart")
