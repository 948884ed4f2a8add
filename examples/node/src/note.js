// C2SP signed notes (https://c2sp.org/signed-note) and tlog checkpoints
// (https://c2sp.org/tlog-checkpoint), Ed25519 only: how the ledger's tree heads are signed.
// Follows coalition/note.py and coalition/checkpoint.py, which follow Go's sumdb/note.
//
//   <origin>\n<tree size>\n<base64 root hash>\n[extension lines]\n
//   \n
//   — <key name> <base64(key hash[4] || signature[64])>\n
//
// The log's verifier key is "<name>+<hex key hash>+<base64(0x01 || public key)>", the key hash
// being the first 4 bytes of SHA-256(name || "\n" || 0x01 || public key).

import crypto from 'node:crypto';

import { publicKeyFromRaw } from './keys.js';

const ALG_ED25519 = 0x01;
const MAX_NOTE_SIZE = 1 << 20;
const MAX_SIGNATURES = 100;
const SIG_PREFIX = '\u2014 '; // em dash, space

export class NoteError extends Error {}

function checkName(name) {
  if (!name || name.includes('+') || /\s/u.test(name) || hasControl(name)) {
    throw new NoteError(`bad key name ${JSON.stringify(name)}`);
  }
}

function hasControl(text) {
  return /[\u0000-\u0009\u000b-\u001f]/u.test(text);
}

/** Strict base64 (standard alphabet, padded), as Python's b64decode(validate=True). */
function b64decode(text, what) {
  if (!/^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/u.test(text)) {
    throw new NoteError(`${what} is not valid base64`);
  }
  return Buffer.from(text, 'base64');
}

/** The 4-byte key hash of a named Ed25519 key. */
export function keyHash(name, publicKeyRaw) {
  return crypto.createHash('sha256')
    .update(Buffer.concat([Buffer.from(`${name}\n`, 'utf8'), Buffer.from([ALG_ED25519]), publicKeyRaw]))
    .digest()
    .subarray(0, 4);
}

/** Parse a verifier key string; NoteError unless well formed, Ed25519 and self-consistent. */
export function parseVerifierKey(vkey) {
  // The name cannot contain "+", the base64 key can: split at the first two only.
  const first = vkey.indexOf('+');
  const second = vkey.indexOf('+', first + 1);
  if (first < 0 || second < 0) throw new NoteError('verifier key must be <name>+<hash>+<key>');
  const name = vkey.slice(0, first);
  const hashHex = vkey.slice(first + 1, second);
  checkName(name);
  if (!/^[0-9a-fA-F]{8}$/u.test(hashHex)) throw new NoteError('verifier key hash must be 8 hex digits');
  const key = b64decode(vkey.slice(second + 1), 'verifier key');
  if (key.length !== 33 || key[0] !== ALG_ED25519) {
    throw new NoteError('verifier key must be an Ed25519 key (0x01 and 32 bytes)');
  }
  const publicKeyRaw = key.subarray(1);
  const hash = keyHash(name, publicKeyRaw);
  if (!hash.equals(Buffer.from(hashHex, 'hex'))) {
    throw new NoteError('verifier key hash does not match its name and key');
  }
  return { name, hash, publicKeyRaw, publicKey: publicKeyFromRaw(publicKeyRaw) };
}

/**
 * The text of `note` if a signature by one of `verifiers` verifies. As the spec requires,
 * signatures by unknown keys are ignored, a failing signature by a known key rejects the note,
 * and a note with no verified signature is rejected. Throws NoteError.
 */
export function verifyNote(note, verifiers) {
  const raw = Buffer.from(note, 'utf8');
  if (raw.length > MAX_NOTE_SIZE) throw new NoteError('note is too large');
  if (hasControl(note)) throw new NoteError('note contains a control character');
  // The text ends at the last blank line and keeps its final newline.
  const split = note.lastIndexOf('\n\n');
  if (split < 0) throw new NoteError('note has no blank line before its signatures');
  const text = note.slice(0, split + 1);
  const sigs = note.slice(split + 2);
  if (!sigs || !sigs.endsWith('\n')) throw new NoteError('note signatures must end in a newline');
  const lines = sigs.slice(0, -1).split('\n');
  if (lines.length > MAX_SIGNATURES) throw new NoteError('note has too many signatures');

  const textBytes = Buffer.from(text, 'utf8');
  let verified = 0;
  for (const line of lines) {
    if (!line.startsWith(SIG_PREFIX)) throw new NoteError('malformed signature line');
    const rest = line.slice(SIG_PREFIX.length);
    const space = rest.indexOf(' ');
    if (space <= 0 || space === rest.length - 1) throw new NoteError('malformed signature line');
    const name = rest.slice(0, space);
    checkName(name);
    const blob = b64decode(rest.slice(space + 1), 'signature');
    if (blob.length <= 4) throw new NoteError('signature too short');
    const hash = blob.subarray(0, 4);
    const signature = blob.subarray(4);
    const verifier = verifiers.find((v) => v.name === name && v.hash.equals(hash));
    if (!verifier) continue; // an unknown key (a witness, say): not ours to judge
    if (signature.length !== 64 || !crypto.verify(null, textBytes, verifier.publicKey, signature)) {
      throw new NoteError(`signature by known key ${name} does not verify`);
    }
    verified += 1;
  }
  if (verified === 0) throw new NoteError('note has no signature from a known key');
  return text;
}

/** Parse a checkpoint's text strictly: { origin, size (BigInt), rootHash, extensions }. */
export function parseCheckpoint(text) {
  if (!text.endsWith('\n')) throw new NoteError('checkpoint text must end in a newline');
  const [origin, sizeLine, rootLine, ...extensions] = text.slice(0, -1).split('\n');
  if (rootLine === undefined || !origin) throw new NoteError('checkpoint needs origin, size and root hash');
  if (!/^(?:0|[1-9][0-9]*)$/u.test(sizeLine)) throw new NoteError(`checkpoint size ${JSON.stringify(sizeLine)} is not a canonical decimal`);
  const size = BigInt(sizeLine);
  if (size >= 1n << 64n) throw new NoteError('checkpoint size is beyond 2^64-1');
  const rootHash = b64decode(rootLine, 'checkpoint root hash');
  if (rootHash.length !== 32) throw new NoteError('checkpoint root hash must be 32 bytes');
  if (rootHash.toString('base64') !== rootLine) throw new NoteError('checkpoint root hash is not canonical base64');
  return { origin, size, rootHash, extensions };
}

/**
 * Verify a signed checkpoint with the log's verifier (from parseVerifierKey) and return it.
 * With `origin`, the checkpoint must be that log's. Throws NoteError.
 */
export function verifyCheckpoint(note, verifier, origin) {
  const checkpoint = parseCheckpoint(verifyNote(note, [verifier]));
  if (origin !== undefined && checkpoint.origin !== origin) {
    throw new NoteError(`checkpoint is for origin ${checkpoint.origin}, expected ${origin}`);
  }
  return checkpoint;
}
