// Signed statements: DSSE v1 envelopes around canonical protobuf payloads (coalition/dsse.py,
// coalition/statements.py). Signatures cover PAE(payload_type, payload), the payload bytes
// exactly as signed; we never re-serialise a payload we verify or countersign.

import crypto from 'node:crypto';

import { keyId, publicKeyFromRaw } from './keys.js';
import { encode } from './proto.js';

/** "application/vnd.coalition.v1.<Message>+proto". */
export function payloadType(messageName) {
  return `application/vnd.coalition.v1.${messageName}+proto`;
}

/** DSSE Pre-Authentication Encoding: "DSSEv1" SP len(type) SP type SP len(payload) SP payload. */
export function pae(type, payload) {
  const typeBytes = Buffer.from(type, 'utf8');
  return Buffer.concat([
    Buffer.from(`DSSEv1 ${typeBytes.length} `),
    typeBytes,
    Buffer.from(` ${payload.length} `),
    payload,
  ]);
}

/** An envelope (coalition.v1.Envelope as a plain object) holding `payload`, signed by `key`. */
export function signPayload(messageName, payload, key) {
  const type = payloadType(messageName);
  return {
    payload_type: type,
    payload,
    signatures: [{ keyid: key.keyId, sig: key.sign(pae(type, payload)) }],
  };
}

/** Encode `statement` as coalition.v1.<messageName> once, canonically, and sign those bytes. */
export function signStatement(messageName, statement, key) {
  return signPayload(messageName, encode(messageName, statement), key);
}

/** A statement's id: the first 32 hex of SHA-256(PAE); signatures are not part of it. */
export function statementId(envelope) {
  return crypto.createHash('sha256').update(pae(envelope.payload_type, envelope.payload)).digest('hex').slice(0, 32);
}

/** Throw unless the envelope carries a valid signature by the key with this raw public key. */
export function verifyEnvelope(envelope, publicKeyRaw) {
  const id = keyId(publicKeyRaw);
  const signature = envelope.signatures.find((s) => s.keyid === id);
  if (!signature) throw new Error(`envelope has no signature by key ${id}`);
  const ok = signature.sig.length === 64
    && crypto.verify(null, pae(envelope.payload_type, envelope.payload), publicKeyFromRaw(publicKeyRaw), signature.sig);
  if (!ok) throw new Error(`signature by key ${id} does not verify`);
  return envelope.payload;
}
