// Call signing, as docs/protocol.md ("Calls") and coalition/auth.py define it.
//
// Every call that changes state or reads private data carries four metadata entries; the
// signature covers the full method name, the timestamp, a fresh nonce and the SHA-256 of the
// exact request bytes sent, so a captured call can be neither replayed nor altered.

import crypto from 'node:crypto';

import grpc from '@grpc/grpc-js';

const DOMAIN = 'coalition-call-v1';
const NONCE_BYTES = 16;

/** The exact bytes a call signature covers: five lines joined by "\n". */
export function callMessage(methodPath, timestampMs, nonce, requestBytes) {
  return Buffer.from([
    DOMAIN,
    methodPath,
    String(timestampMs),
    nonce.toString('base64'),
    crypto.createHash('sha256').update(requestBytes).digest('hex'),
  ].join('\n'));
}

/** gRPC metadata authenticating one call of `methodPath` whose serialised request is `requestBytes`. */
export function callMetadata(key, methodPath, requestBytes, now = Date.now()) {
  const nonce = crypto.randomBytes(NONCE_BYTES);
  const signature = key.sign(callMessage(methodPath, now, nonce, requestBytes));
  const metadata = new grpc.Metadata();
  // Text headers, base64 by hand: these names do not end in "-bin", as the server expects.
  metadata.set('coalition-public-key', key.publicKeyRaw.toString('base64'));
  metadata.set('coalition-timestamp', String(now));
  metadata.set('coalition-nonce', nonce.toString('base64'));
  metadata.set('coalition-signature', signature.toString('base64'));
  return metadata;
}
