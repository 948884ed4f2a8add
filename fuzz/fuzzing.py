"""What the fuzz targets share: a fixed key, the seed corpus, and the libFuzzer entry point.

Each target (``envelope.py``, ``checkpoint.py``, ``proof.py``) is a script::

    python fuzz/envelope.py -max_total_time=30            # from its built-in seeds
    python fuzz/envelope.py -runs=100000 corpus/          # or from (and into) a corpus

Any libFuzzer flag works (``-max_total_time``, ``-runs``, ``-atheris_runs``,
``-artifact_prefix``, ...). With no corpus directory on the command line the target starts
from its seeds (valid inputs, so that mutation starts deep inside the decoders), written to
a fresh temporary directory. A crash is an exception outside the target's documented
``ALLOWED`` set, or a broken invariant (an ``AssertionError``); libFuzzer saves the input
as ``crash-<sha1>`` under ``-artifact_prefix`` and exits non-zero.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["coalition"]):
    from coalition.keys import SigningKey
    from coalition.note import NoteSigner, NoteVerifier

KEY = SigningKey.from_seed(hashlib.sha256(b"coalition fuzzing key").digest())
"""The key every seed statement is signed with, and that targets verify against: with it,
mutated seeds get past the signature check into what lies behind it."""
ORIGIN = "coalition.fuzz/log"
NOTE_SIGNER = NoteSigner(ORIGIN, KEY)
NOTE_VERIFIER: NoteVerifier = NOTE_SIGNER.verifier


def corpus_dir(argv: Sequence[str], seeds: Sequence[bytes]) -> list[str]:
    """``argv`` with a corpus directory holding ``seeds`` appended, unless it names one
    (libFuzzer's positional arguments are corpus directories)."""
    if any(not arg.startswith("-") for arg in argv[1:]):
        return list(argv)  # a corpus directory, or input files to replay
    directory = Path(tempfile.mkdtemp(prefix=f"coalition-fuzz-{Path(argv[0]).stem}-"))
    write_seeds(directory, seeds)
    print(f"seed corpus: {directory} ({len(seeds)} inputs)", file=sys.stderr)
    return [*argv, str(directory)]


def write_seeds(directory: Path, seeds: Sequence[bytes]) -> None:
    """Each seed as a file named by its hash, as libFuzzer names corpus entries."""
    directory.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        (directory / hashlib.sha1(seed).hexdigest()).write_bytes(seed)  # noqa: S324 - a name


MAX_LEN = 1 << 16
"""Largest input generated unless ``-max_len`` says otherwise. libFuzzer's own default
(4096 bytes) never reaches limits such as Python's 4300-digit int() conversion, which is
how a checkpoint size line once escaped as a ValueError (fuzz/regressions/checkpoint/)."""


def main(test_one_input: Callable[[bytes], None], seeds: Callable[[], Sequence[bytes]]) -> None:
    """Check the seeds pass, then fuzz ``test_one_input`` with the command line's flags.

    Given input files rather than a corpus directory (``fuzz/regressions/<target>/*``),
    libFuzzer runs each once, which is how the regressions are replayed.
    """
    initial = seeds()
    for seed in initial:
        # A seed that fails is a bug in the target (or the library): say so before fuzzing.
        test_one_input(seed)
    argv = corpus_dir(sys.argv, initial)
    if not any(arg.startswith("-max_len=") for arg in argv):
        argv.append(f"-max_len={MAX_LEN}")
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()
