"""Fuzz target: Merkle proofs and receipts (``coalition.merkle``, ``coalition.receipts``).

The first input byte picks what the rest is (integers are big-endian):

* 0: an inclusion proof: index (8 bytes), tree size (8), leaf hash (32), root (32), then
  the proof in 32-byte hashes (a shorter tail is passed as a short hash) for
  ``verify_inclusion``;
* 1: a consistency proof: old size (8), new size (8), old root (32), new root (32), then
  the proof, for ``verify_consistency``;
* 2: a serialised ``coalition.v1.Receipt`` for ``verify_receipt`` with the fuzzing log key;
* 3: two integers of 9 bytes (so beyond 2**64) for the proof planners the server uses
  (``inclusion_plan``, ``consistency_plan``, ``range_nodes``, ``root_plan``, ``NodeId``);
* 4: a differential check: a tree of 1 to 64 leaves and a leaf index and old size drawn
  from the input; the real proofs must verify, and the same proofs with one bit flipped
  (position drawn from the input) must not.

ALLOWED: ``CoalitionError`` (ProofError, NoteError, CheckpointError, ...), and protobuf's
``DecodeError`` for bytes that are not a Receipt message at all. Anything else escaping is
a finding, as is a proof that verifies when it should not (or does not when it should).

    python fuzz/proof.py -max_total_time=30
"""

from __future__ import annotations

import sys

import atheris
from google.protobuf.message import DecodeError

import fuzzing

with atheris.instrument_imports(include=["coalition"]):
    from coalition import merkle
    from coalition.checkpoint import Checkpoint, sign_checkpoint
    from coalition.errors import CoalitionError, ProofError
    from coalition.receipts import verify_receipt
    from coalition.v1 import ledger_pb2

ALLOWED: tuple[type[Exception], ...] = (CoalitionError,)
INCLUSION, CONSISTENCY, RECEIPT, PLANS, DIFFERENTIAL = range(5)


def _int(data: bytes) -> int:
    return int.from_bytes(data, "big")


def _hashes(data: bytes) -> list[bytes]:
    return [data[i : i + 32] for i in range(0, len(data), 32)]


def _flip(hashes: list[bytes], bit: int) -> list[bytes]:
    flat = bytearray(b"".join(hashes))
    flat[bit // 8 % len(flat)] ^= 1 << bit % 8
    return _hashes(bytes(flat))


def differential(body: bytes) -> None:
    """Real proofs verify; one flipped bit makes them fail (with ProofError, nothing else)."""
    size = body[0] % 64 + 1 if body else 1
    tree = merkle.InMemoryTree(bytes([i]) + body[:4] for i in range(size))
    index = body[1] % size if len(body) > 1 else 0
    old = body[2] % size + 1 if len(body) > 2 else size
    bit = _int(body[3:5]) if len(body) > 4 else 0
    root, old_root = tree.root(), tree.root(old)
    path = tree.inclusion_proof(index)
    merkle.verify_inclusion(tree.leaf_hash(index), index, size, path, root)
    consistency = tree.consistency_proof(old)
    merkle.verify_consistency(old, size, old_root, root, consistency)
    # The server's planned proofs are the reference's.
    plan = merkle.inclusion_plan(index, size)
    assert len(plan.elements) == len(path)
    if path:
        try:
            merkle.verify_inclusion(tree.leaf_hash(index), index, size, _flip(path, bit), root)
        except ProofError:
            pass
        else:
            raise AssertionError("an inclusion proof with a flipped bit verified")
    if consistency:
        try:
            merkle.verify_consistency(old, size, old_root, root, _flip(consistency, bit))
        except ProofError:
            pass
        else:
            raise AssertionError("a consistency proof with a flipped bit verified")


def test_one_input(data: bytes) -> None:
    """One input, as selected by its first byte; only ALLOWED exceptions may escape."""
    if not data:
        return
    mode, body = data[0] % 5, data[1:]
    try:
        if mode == INCLUSION:
            merkle.verify_inclusion(
                body[16:48], _int(body[:8]), _int(body[8:16]), _hashes(body[80:]), body[48:80]
            )
        elif mode == CONSISTENCY:
            merkle.verify_consistency(
                _int(body[:8]), _int(body[8:16]), body[16:48], body[48:80], _hashes(body[80:])
            )
        elif mode == RECEIPT:
            try:
                receipt = ledger_pb2.Receipt.FromString(body)
            except DecodeError:
                return  # not a message: protobuf's refusal, before our code runs
            checkpoint = verify_receipt(receipt, fuzzing.NOTE_VERIFIER)
            assert checkpoint.size == receipt.tree_size
        elif mode == PLANS:
            first, second = _int(body[:9]), _int(body[9:18])
            merkle.range_nodes(min(first, second), max(first, second))
            merkle.root_plan(second)
            merkle.consistency_plan(first, second)
            merkle.inclusion_plan(first, second)
            merkle.NodeId(first % 70, second)
        else:
            differential(body)
    except ALLOWED:
        pass


def seeds() -> list[bytes]:
    """A valid inclusion proof, consistency proof and receipt, and planner inputs."""
    tree = merkle.InMemoryTree(bytes([i]) for i in range(7))
    size = tree.size

    def u64(value: int) -> bytes:
        return value.to_bytes(8, "big")

    inclusion = (
        bytes([INCLUSION])
        + u64(3)
        + u64(size)
        + tree.leaf_hash(3)
        + tree.root()
        + b"".join(tree.inclusion_proof(3))
    )
    consistency = (
        bytes([CONSISTENCY])
        + u64(3)
        + u64(size)
        + tree.root(3)
        + tree.root()
        + b"".join(tree.consistency_proof(3))
    )
    note = sign_checkpoint(Checkpoint(fuzzing.ORIGIN, size, tree.root()), fuzzing.NOTE_SIGNER)
    receipt = ledger_pb2.Receipt(
        index=3,
        leaf=bytes([3]),
        leaf_hash=tree.leaf_hash(3),
        checkpoint=note,
        tree_size=size,
        inclusion_proof=tree.inclusion_proof(3),
    )
    return [
        inclusion,
        consistency,
        bytes([RECEIPT]) + receipt.SerializeToString(),
        bytes([PLANS]) + (5).to_bytes(9, "big") + (13).to_bytes(9, "big"),
        bytes([PLANS]) + (2**64).to_bytes(9, "big") + (2**64 - 1).to_bytes(9, "big"),
        bytes([DIFFERENTIAL]) + bytes([33, 17, 9, 1, 2]),
    ]


if __name__ == "__main__":
    fuzzing.main(test_one_input, seeds)
    sys.exit(0)
