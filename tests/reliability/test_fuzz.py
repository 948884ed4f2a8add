"""The coverage-guided fuzzers of ``fuzz/`` (issue #7, point 6), for a bounded time.

Each target (envelope, checkpoint, proof; see their docstrings for what they decode and
which exceptions they allow) runs in its own process, as CI and a developer run it:
``python fuzz/<target>.py -max_total_time=T``. It must exit 0 having found nothing: no
exception outside the library's closed error hierarchy, no broken invariant, no
``crash-*`` input saved. A quick smoke run (a few hundred inputs) and the replay of
every input a fuzzer once crashed on (``fuzz/regressions/<target>/``) are part of the fast
suite; the timed run (COALITION_FUZZ_SECONDS, 20 by default) is marked slow.

atheris has wheels for x86-64 Linux only (see pyproject.toml): elsewhere these skip.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from coalition.checkpoint import Checkpoint, verify_checkpoint
from coalition.errors import CheckpointError
from coalition.keys import SigningKey
from coalition.merkle import InMemoryTree
from coalition.note import NoteSigner
from coalition.receipts import verify_receipt
from coalition.v1 import ledger_pb2

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ("envelope", "checkpoint", "proof")
REGRESSIONS = ROOT / "fuzz" / "regressions"
REGRESSED = sorted(path.name for path in REGRESSIONS.iterdir() if path.is_dir())
"""Targets with inputs they once crashed on (replayed by every run of the suite)."""
SECONDS = int(os.environ.get("COALITION_FUZZ_SECONDS", "20"))


def _fuzz(target: str, tmp_path: Path, *flags: str, timeout: float) -> tuple[int, int, str]:
    """Run one target; (runs, coverage edges, output), failing on any crash."""
    pytest.importorskip("atheris", reason="atheris has wheels for x86-64 Linux only")
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "fuzz" / f"{target}.py"),
            *flags,
            f"-artifact_prefix={tmp_path}/",
        ],
        cwd=tmp_path,
        # The seed corpus goes to a temporary directory: this test's.
        env={**os.environ, "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = result.stdout + result.stderr
    crashes = sorted(p.name for p in tmp_path.glob("crash-*"))
    assert result.returncode == 0, f"fuzz/{target}.py found a crash {crashes}:\n{output[-4000:]}"
    assert crashes == []
    done = re.search(r"Done (\d+) runs in (\d+) second", output)
    # Replaying files, libFuzzer reports each ("Executed <file>") instead of a total.
    runs = int(done.group(1)) if done else len(re.findall(r"^Executed ", output, re.M))
    edges = re.findall(r"cov: (\d+)", output)
    return runs, int(edges[-1]) if edges else 0, output


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target_starts_from_its_seeds(
    target: str, tmp_path: Path, figure: Callable[[str], None]
) -> None:
    runs, edges, _ = _fuzz(target, tmp_path, "-runs=300", timeout=120)
    figure(f"fuzz[{target}] smoke: {runs:,} executions, coverage {edges} edges")
    assert runs >= 300


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target_finds_nothing(
    target: str, tmp_path: Path, figure: Callable[[str], None]
) -> None:
    runs, edges, _ = _fuzz(
        target, tmp_path, f"-max_total_time={SECONDS}", timeout=SECONDS * 3 + 120
    )
    figure(f"fuzz[{target}]: {runs:,} executions in {SECONDS} s, coverage {edges} edges, 0 crashes")
    assert runs > 0


@pytest.mark.parametrize("target", REGRESSED)
def test_fuzz_target_replays_its_regressions(
    target: str, tmp_path: Path, figure: Callable[[str], None]
) -> None:
    found = sorted((REGRESSIONS / target).glob("*"))
    runs, _, _ = _fuzz(target, tmp_path, *(str(path) for path in found), timeout=120)
    figure(f"fuzz[{target}] regressions: {len(found)} inputs replayed")
    assert runs >= len(found)


def _huge_size_checkpoint() -> str:
    """A checkpoint body whose size line has 5000 digits (int() refuses over 4300)."""
    root = Checkpoint("o", 0, bytes(32)).body().split("\n")[2]
    return f"example.com/log\n{'1' * 5000}\n{root}\n"


def test_a_size_line_past_the_int_digit_limit_is_a_checkpoint_error() -> None:
    """Found by fuzz/checkpoint.py: it escaped as ValueError from int() (4300 digits)."""
    body = _huge_size_checkpoint()
    with pytest.raises(CheckpointError, match="canonical decimal"):
        Checkpoint.parse_body(body)
    signer = NoteSigner("example.com/log", SigningKey.generate())
    note = signer.sign(body)
    with pytest.raises(CheckpointError):
        verify_checkpoint(note, signer.verifier)
    tree = InMemoryTree([b"leaf"])
    receipt = ledger_pb2.Receipt(
        index=0, leaf=b"leaf", leaf_hash=tree.leaf_hash(0), checkpoint=note, tree_size=1
    )
    with pytest.raises(CheckpointError):
        verify_receipt(receipt, signer.verifier)
    # The largest size there is still parses; one more is a CheckpointError, not a crash.
    largest = body.replace("1" * 5000, str(2**64 - 1))
    assert Checkpoint.parse_body(largest).size == 2**64 - 1
    with pytest.raises(CheckpointError):
        Checkpoint.parse_body(body.replace("1" * 5000, str(2**64)))
