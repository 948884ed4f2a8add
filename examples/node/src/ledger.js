// Checking what the ledger says, with nothing but the log's verifier key: signed checkpoints,
// receipts and inclusion proofs (coalition/receipts.py, coalition/checkpoint.py).

import { leafHash, verifyInclusion } from './merkle.js';
import { parseVerifierKey, verifyCheckpoint } from './note.js';

/**
 * The log's note verifier. A lab should pin the key it got out of band (`pinned`, e.g. from
 * `coalition audit log-key` run by someone it trusts); without one it trusts the server's
 * GetLogInfo, which still lets it detect a server that later changes its story.
 */
export async function logVerifier(client, pinned) {
  const info = await client.logInfo();
  const verifier = parseVerifierKey(pinned || info.verifier_key);
  if (pinned && pinned !== info.verifier_key) {
    throw new Error(`the server's log key ${info.verifier_key} is not the pinned ${pinned}`);
  }
  return { verifier, origin: info.origin, coalitionKeyRaw: info.coalition_public_key };
}

/**
 * Throw unless a Receipt (the acknowledgement of an append) is sound: its leaf hashes to its
 * leaf hash, its checkpoint is signed by the log, and the inclusion proof puts the leaf at its
 * index in that checkpoint's tree. Returns the checkpoint.
 */
export function verifyReceipt(receipt, verifier, origin) {
  if (!leafHash(receipt.leaf).equals(receipt.leaf_hash)) throw new Error('the receipt leaf does not match its hash');
  const checkpoint = verifyCheckpoint(receipt.checkpoint, verifier, origin);
  if (checkpoint.size !== BigInt(receipt.tree_size)) throw new Error("the receipt's tree size is not its checkpoint's");
  verifyInclusion(receipt.leaf_hash, BigInt(receipt.index), checkpoint.size, receipt.inclusion_proof, checkpoint.rootHash);
  return checkpoint;
}

/**
 * Fetch the latest checkpoint and verify its signature; then, for each index in `indices`,
 * fetch its inclusion proof in that very tree and verify it. Returns the checkpoint and the
 * proven leaves (exact bytes), by index.
 */
export async function verifyLatest(client, verifier, origin, indices = []) {
  const latest = await client.checkpoint();
  const checkpoint = verifyCheckpoint(latest.checkpoint, verifier, origin);
  const leaves = new Map();
  for (const index of indices) {
    const proof = await client.inclusionProof(index, checkpoint.size);
    verifyInclusion(leafHash(proof.leaf), BigInt(index), checkpoint.size, proof.proof, checkpoint.rootHash);
    leaves.set(String(index), proof.leaf);
  }
  return { checkpoint, note: latest.checkpoint, leaves };
}
