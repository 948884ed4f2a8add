"""Verification of append receipts: pure, offline, needs only the log's verifier key."""

from __future__ import annotations

from coalition import merkle
from coalition.checkpoint import Checkpoint, verify_checkpoint
from coalition.errors import ProofError
from coalition.note import NoteVerifier
from coalition.v1 import ledger_pb2


def verify_receipt(receipt: ledger_pb2.Receipt, verifier: NoteVerifier) -> Checkpoint:
    """Check a receipt: signed checkpoint, leaf hash and inclusion; return the checkpoint."""
    checkpoint = verify_checkpoint(receipt.checkpoint, verifier)
    if checkpoint.size != receipt.tree_size:
        raise ProofError("receipt tree_size differs from its checkpoint's size")
    if merkle.leaf_hash(receipt.leaf) != receipt.leaf_hash:
        raise ProofError("receipt leaf does not hash to its leaf_hash")
    merkle.verify_inclusion(
        receipt.leaf_hash,
        receipt.index,
        checkpoint.size,
        list(receipt.inclusion_proof),
        checkpoint.root_hash,
    )
    return checkpoint
