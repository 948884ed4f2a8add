"""Fuzz target: signed notes and checkpoints (``coalition.note``, ``coalition.checkpoint``).

The first input byte picks what the rest is:

* 0: a signed checkpoint note, verified with the fuzzing log key (``verify_checkpoint``);
  the bytes are decoded as UTF-8 with ``surrogateescape``, so that invalid UTF-8 arrives
  as the lone surrogates a ``str`` can carry;
* 1: the same, given as bytes to ``verify_note`` (with a second, unrelated verifier);
* 2: a verifier key string (``NoteVerifier.parse``); the canonical form of one that
  parses must parse back to the same verifier;
* 3: a checkpoint body, first signed with the fuzzing log key (when the signer accepts it
  as note text) and then verified and parsed: the path behind a good signature, which
  mutation alone would never reach. A body that parses must render back byte for byte
  (the parser is strict: one encoding per checkpoint);
* 4: the same with a size line of ``count`` copies of one character (a 2-byte count, the
  character, then the lines after it). Coverage cannot tell 43 digits from 4,301 (the
  limit is inside int(), which is not instrumented), and libFuzzer shortens inputs that
  add no coverage: only a count makes long lines reachable by mutation.

ALLOWED: ``CoalitionError`` (NoteError, CheckpointError, SignatureError, KeyFormatError).
Anything else escaping is a finding, as is a broken invariant.

    python fuzz/checkpoint.py -max_total_time=30
"""

from __future__ import annotations

import base64
import hashlib
import sys

import atheris

import fuzzing

with atheris.instrument_imports(include=["coalition"]):
    from coalition.checkpoint import Checkpoint, sign_checkpoint, verify_checkpoint
    from coalition.errors import CoalitionError
    from coalition.keys import SigningKey
    from coalition.merkle import InMemoryTree
    from coalition.note import NoteSigner, NoteVerifier, verify_note

ALLOWED: tuple[type[Exception], ...] = (CoalitionError,)
SIGNED, REPEATED = 3, 4
OTHER = NoteSigner("witness.example/w1", SigningKey.from_seed(hashlib.sha256(b"w").digest()))


def test_one_input(data: bytes) -> None:
    """One input, as selected by its first byte; only ALLOWED exceptions may escape."""
    if not data:
        return
    mode, body = data[0] % 5, data[1:]
    if mode == REPEATED:
        count = int.from_bytes(body[:2], "big")
        line = (body[2:3] or b"9").decode("utf-8", "surrogateescape") * count
        body = f"{fuzzing.ORIGIN}\n{line}\n".encode("utf-8", "surrogateescape") + body[3:]
        mode = SIGNED
    text = body.decode("utf-8", "surrogateescape")
    try:
        if mode == 0:
            checkpoint = verify_checkpoint(text, fuzzing.NOTE_VERIFIER, fuzzing.ORIGIN)
            assert checkpoint.origin == fuzzing.ORIGIN
        elif mode == 1:
            signed_text = verify_note(body, [OTHER.verifier, fuzzing.NOTE_VERIFIER])
            assert body.startswith(signed_text.encode("utf-8"))
        elif mode == 2:
            verifier = NoteVerifier.parse(text)
            # Not ``== text``: non-canonical base64 padding bits are tolerated, as Go's
            # sumdb/note does; the key they decode to is the same.
            assert NoteVerifier.parse(verifier.verifier_key) == verifier, "round trip"
        else:
            note = fuzzing.NOTE_SIGNER.sign(text)
            checkpoint = verify_checkpoint(note, fuzzing.NOTE_VERIFIER)
            assert checkpoint.body() == text, "checkpoint body round trip"
            assert Checkpoint.parse_body(checkpoint.body()) == checkpoint
    except ALLOWED:
        pass


def seeds() -> list[bytes]:
    """A checkpoint signed by the log (and countersigned by a witness), its body, and the
    log's verifier key."""
    tree = InMemoryTree(bytes([i]) for i in range(7))
    checkpoint = Checkpoint(fuzzing.ORIGIN, tree.size, tree.root(), ("extension line",))
    note = sign_checkpoint(checkpoint, fuzzing.NOTE_SIGNER)
    witnessed = note + OTHER.sign(checkpoint.body()).split("\n\n", 1)[1]
    empty = Checkpoint(fuzzing.ORIGIN, 0, base64.b64decode(base64.b64encode(bytes(32))))
    # A size line at the 4300 digits int() converts: one more digit crosses the limit.
    long_size = empty.body().replace("\n0\n", "\n" + "9" * 4300 + "\n")
    return [
        b"\x00" + note.encode(),
        b"\x01" + witnessed.encode(),
        b"\x02" + fuzzing.NOTE_VERIFIER.verifier_key.encode(),
        b"\x03" + checkpoint.body().encode(),
        b"\x03" + empty.body().encode(),
        b"\x03" + long_size.encode(),
        b"\x04" + (7).to_bytes(2, "big") + b"7" + empty.body().split("\n", 2)[2].encode(),
    ]


if __name__ == "__main__":
    fuzzing.main(test_one_input, seeds)
    sys.exit(0)
