"""Soak (issue #7, point 7): two minutes of mixed load with zero unexpected errors and the
server's memory growing less than 10% after warm-up.

A real ``coalition-server`` process on 127.0.0.1 (port 0), SQLite in a temporary directory,
and concurrent workers in this process playing a coalition through the SDK only (the demo's
steps, :mod:`tests.reliability.load`), each at a paced rate: members join, register and
upload items and consent, each on its own short-lived connection; labs negotiate
automatically to signed agreements, lease and fetch every released item (decrypted, checked
against its commitment) and renew leases on older deals; members withdraw (everything or
one item) and the labs answer each notice with a deletion receipt; an auditor follows the
log (checkpoint signatures, consistency and inclusion proofs, an incremental replay of every
entry); a reader verifies random members' consent states with their inclusion proofs.
Every refusal not on :data:`~tests.reliability.load.EXPECTED_REFUSALS`, and every failed
verification, is an unexpected error; so is an error in the server's log.

The run lasts ``COALITION_SOAK_SECONDS`` (default 120) and stops by itself. The server's
resident memory (VmRSS) is sampled every second; growth is measured from the sample at the
end of the warm-up (20 s, or a quarter of a shorter run) to the last sample. At the end the
whole ledger is replayed three times: by the auditor's incremental replay, by a fresh one,
and by ``coalition audit verify``, the auditor's own command.

SQLite only: the soak is about the server process (leaks, unbounded queues, errors under
concurrency), which is the same code on both stores, and a second two-minute run on
PostgreSQL would double the suite's longest test. PostgreSQL's concurrency is covered by
the withdrawal race and the two-replica tests.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

import pytest
from typer.testing import CliRunner

from coalition.cli import app as client_app

from .load import (
    Auditor,
    Lab,
    Member,
    ServerProcess,
    Tally,
    Transport,
    full_replay,
    join_lab,
    join_member,
    lease_and_fetch,
    negotiate,
    repeat,
    start_server,
    withdraw,
)

SECONDS: Final = float(os.environ.get("COALITION_SOAK_SECONDS", "120"))
WARM_UP: Final = min(20.0, SECONDS / 4)
MAX_GROWTH: Final = 0.10
JOINERS: Final = 3
LABS: Final = 2
# Seconds between the starts of one worker's steps: the load is paced, so it is the same on
# any machine fast enough (this one, 2 cores, keeps up), and figures compare across runs.
JOIN_PERIOD: Final = 2.0
LAB_PERIOD: Final = 1.5
WITHDRAW_PERIOD: Final = 2.0
AUDIT_PERIOD: Final = 2.0
READ_PERIOD: Final = 0.25
SETTLE_SECONDS: Final = 20.0
"""Most seconds to wait, after the load, for the labs' last deletion receipts."""


@pytest.mark.slow
@pytest.mark.timeout(SECONDS + 300)
async def test_soak_mixed_load_without_unexpected_errors_or_memory_growth(
    tmp_path: Path, figure: Callable[[str], None]
) -> None:
    server = start_server(
        tmp_path,
        "--log-level",
        "WARNING",
        "--negotiation-sweep-seconds",
        "1",
        "--metrics-refresh-seconds",
        "0.5",
        metrics=True,
    )
    tally = Tally()
    rng = random.Random(20260707)
    transport = Transport(server.target)
    members: list[Member] = []
    labs: list[Lab] = []
    public = transport.client()
    auditor = Auditor(transport.client(), rng)
    samples: list[tuple[float, int]] = []
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + SECONDS
        labs = [await join_lab(transport, tally, f"lab {i}") for i in range(LABS)]

        async def join() -> None:
            members.append(await join_member(transport, tally, rng, items=rng.randint(1, 3)))

        def lab_step(lab: Lab) -> Callable[[], Awaitable[None]]:
            async def step() -> None:
                agreement = await negotiate(lab, tally)
                if agreement is not None:
                    await lease_and_fetch(lab, agreement, tally)
                if len(lab.agreements) > 1:
                    # Renew a lease on an older deal: consent is re-checked, withdrawals since
                    # then are left out of the release.
                    await lease_and_fetch(lab, rng.choice(lab.agreements[:-1]), tally)

            return step

        async def withdraw_one() -> None:
            candidates = [m for m in members if not m.withdrawn and m.contents and m.consent_ids]
            if candidates:
                await withdraw(rng.choice(candidates), tally, rng)

        async def audit() -> None:
            await tally.attempt("audit", auditor.audit())

        async def read() -> None:
            await tally.attempt("catalogue", public.catalogue())
            consented = [m for m in members if m.consent_ids]
            if consented:
                member = rng.choice(consented)
                consent_id = rng.choice(member.consent_ids)
                await tally.attempt(
                    "consent state",
                    public.verified_consent_state(consent_id, member_key=member.key.public_key),
                )

        async def sample_memory() -> None:
            while loop.time() < deadline:
                samples.append((loop.time() - started, server.rss_bytes()))
                await asyncio.sleep(1.0)
            samples.append((loop.time() - started, server.rss_bytes()))

        workers = [
            *(repeat(f"joiner {i}", tally, deadline, join, JOIN_PERIOD) for i in range(JOINERS)),
            *(
                repeat(f"lab {i}", tally, deadline, lab_step(lab), LAB_PERIOD)
                for i, lab in enumerate(labs)
            ),
            repeat("withdrawer", tally, deadline, withdraw_one, WITHDRAW_PERIOD),
            repeat("auditor", tally, deadline, audit, AUDIT_PERIOD),
            repeat("reader", tally, deadline, read, READ_PERIOD),
            sample_memory(),
        ]
        await asyncio.gather(*workers)
        load_seconds = loop.time() - started

        # The labs answer the last notices; then, with nothing more appended, the log is
        # verified three times over (a lab still answering would grow it between them).
        pending = await _settle(server)
        for lab in labs:
            await lab.stop_answering()
        verify_started = time.perf_counter()
        final = await tally.attempt("final audit", auditor.finish())
        replayed = await tally.attempt("full replay", full_replay(public))
        agree = (
            final is None
            or replayed is None
            or ((replayed.size, replayed.root_hash) == (final.size, final.root_hash))
        )
        if not agree:
            tally.unexpected.append("the full replay and the auditor's disagree")
        verified = await asyncio.to_thread(
            CliRunner().invoke,
            client_app,
            ["--server", server.target, "audit", "verify", "--state", str(tmp_path / "state")],
            catch_exceptions=False,
        )
        verify_seconds = time.perf_counter() - verify_started
        if verified.exit_code != 0:
            tally.unexpected.append(f"coalition audit verify: {verified.output.strip()}")
        entries = final.size if final is not None else 0
    finally:
        for lab in labs:
            await lab.close()
        await public.close()
        await auditor.client.close()
        status = server.stop()
    _, log = server.output()

    warm = next(rss for at, rss in samples if at >= WARM_UP)
    end = samples[-1][1]
    peak = max(rss for _, rss in samples)
    growth = (end - warm) / warm
    mib = 1024 * 1024
    operations = ", ".join(f"{kind} {n}" for kind, n in sorted(tally.done.items()))
    refusals = ", ".join(f"{kind} {n}" for kind, n in sorted(tally.refused.items())) or "none"
    summary = (
        f"\nsoak: {load_seconds:.0f} s of load on SQLite, {sum(tally.done.values())} operations "
        f"({sum(tally.done.values()) / load_seconds:.0f}/s)"
        f"\nsoak: operations: {operations}"
        f"\nsoak: expected refusals: {refusals}"
        f"\nsoak: unexpected errors: {len(tally.unexpected)}"
        f"\nsoak: {len(members)} members ({sum(m.withdrawn for m in members)} withdrew all), "
        f"{sum(len(lab.agreements) for lab in labs)} agreements, "
        f"{sum(lab.fetched_items for lab in labs)} items fetched "
        f"({sum(lab.fetched_bytes for lab in labs) / mib:.1f} MiB), "
        f"{sum(lab.receipts for lab in labs)} deletion receipts, {pending} notices left open"
        f"\nsoak: server RSS warm ({WARM_UP:.0f} s) {warm / mib:.1f} MiB, end {end / mib:.1f} "
        f"MiB, peak {peak / mib:.1f} MiB, growth {growth:+.1%} (limit {MAX_GROWTH:.0%})"
        f"\nsoak: ledger {entries} entries verified ({auditor.rounds} audit rounds, "
        f"incremental replay, full replay and `coalition audit verify` in {verify_seconds:.1f} s)"
    )
    for line in summary.strip().splitlines():
        figure(line)
    curve = "  ".join(f"{at:.0f}s {rss / mib:.1f}" for at, rss in samples[::10])
    print(f"soak: server RSS (MiB) every 10 s: {curve}")
    for line in tally.unexpected[:20]:
        print(f"soak: unexpected: {line}")

    assert not tally.unexpected, f"{len(tally.unexpected)} unexpected errors"
    _check_server_log(log, status)
    for kind in ("join", "upload", "consent", "agreement", "fetch", "withdraw", "receipt", "audit"):
        assert tally.done[kind] > 0, f"no {kind} in the whole run"
    assert pending == 0, f"{pending} withdrawal notices were never answered"
    assert growth < MAX_GROWTH, f"server memory grew {growth:.1%} after warm-up"


async def _settle(server: ServerProcess) -> int:
    """Wait until no withdrawal notice is left unanswered (per the server's own gauge, read
    from the database); the number still pending when giving up."""
    deadline = time.monotonic() + SETTLE_SECONDS
    pending = -1
    while time.monotonic() < deadline:
        text = await asyncio.to_thread(server.scrape)
        for line in text.splitlines():
            if line.startswith("coalition_withdrawal_notices_pending "):
                pending = int(float(line.split()[1]))
        if pending == 0:
            return 0
        await asyncio.sleep(0.5)
    return pending


def _check_server_log(log: bytes, status: int) -> None:
    """The server logged no error (an unexpected exception is logged at ERROR with its
    traceback) and stopped cleanly on SIGTERM."""
    text = log.decode(errors="replace")
    errors = [line for line in text.splitlines() if " ERROR " in line or " CRITICAL " in line]
    assert not errors, "the server logged errors:\n" + text[-5000:]
    assert "Traceback" not in text, "the server logged a traceback:\n" + text[-5000:]
    assert status == 0, f"the server exited with {status}:\n{text[-2000:]}"
