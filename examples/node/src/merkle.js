// RFC 6962 / RFC 9162 Merkle trees, as the ledger hashes them (coalition/merkle.py):
// leaf SHA-256(0x00 || leaf), interior node SHA-256(0x01 || left || right).
// Indices and sizes are BigInt: a log may outgrow JavaScript's 32-bit bitwise operators.

import crypto from 'node:crypto';

function sha256(...parts) {
  const hash = crypto.createHash('sha256');
  for (const part of parts) hash.update(part);
  return hash.digest();
}

const LEAF = Buffer.from([0x00]);
const NODE = Buffer.from([0x01]);

export function leafHash(leaf) {
  return sha256(LEAF, leaf);
}

export function nodeHash(left, right) {
  return sha256(NODE, left, right);
}

/** Merkle Tree Hash of a list of leaf hashes (RFC 9162 2.1.1); fine for small lists. */
export function rootOfLeafHashes(hashes) {
  if (hashes.length === 0) return sha256();
  if (hashes.length === 1) return hashes[0];
  let k = 1;
  while (k * 2 < hashes.length) k *= 2; // the largest power of two below the count
  return nodeHash(rootOfLeafHashes(hashes.slice(0, k)), rootOfLeafHashes(hashes.slice(k)));
}

function bitLength(n) {
  return n === 0n ? 0 : n.toString(2).length;
}

function popCount(n) {
  return [...n.toString(2)].filter((bit) => bit === '1').length;
}

/**
 * The root implied by an inclusion proof of leaf `index` in a tree of `size` (RFC 9162
 * 2.1.3.2). Throws if the proof has the wrong length for that position.
 */
export function rootFromInclusionProof(leafHashValue, index, size, proof) {
  let fn = BigInt(index);
  let sn = BigInt(size) - 1n;
  if (fn < 0n || fn > sn) throw new Error(`leaf index ${index} is not in a tree of size ${size}`);
  // The path has one hash per level below the split of index and last leaf, plus one per
  // left border subtree above it.
  const inner = bitLength(fn ^ sn);
  const border = popCount(fn >> BigInt(inner));
  if (proof.length !== inner + border) {
    throw new Error(`inclusion proof for leaf ${index} of ${size} needs ${inner + border} hashes, got ${proof.length}`);
  }
  let r = leafHashValue;
  for (const p of proof) {
    if (p.length !== 32) throw new Error('proof hashes are 32 bytes');
    if ((fn & 1n) === 1n || fn === sn) {
      r = nodeHash(p, r);
      while ((fn & 1n) === 0n && fn !== 0n) {
        fn >>= 1n;
        sn >>= 1n;
      }
    } else {
      r = nodeHash(r, p);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) throw new Error('inclusion proof is too short');
  return r;
}

/** Throw unless `proof` shows leaf `index` of a `size`-leaf tree with root `root` has this hash. */
export function verifyInclusion(leafHashValue, index, size, proof, root) {
  const computed = rootFromInclusionProof(leafHashValue, index, size, proof);
  if (!crypto.timingSafeEqual(computed, root)) {
    throw new Error(`inclusion proof for leaf ${index} does not lead to the checkpoint's root`);
  }
}
