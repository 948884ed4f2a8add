// A party's identity: one Ed25519 key, exactly as the Python SDK keeps it (coalition/keys.py).
//
// - The key file is unencrypted PKCS#8 PEM, so `coalition keys new lab.key` and this client
//   read and write the same files.
// - The key id is the lowercase hex SHA-256 of the raw 32-byte public key.
// - The X25519 key that data keys are sealed to (RFC 9180 HPKE) is derived from the Ed25519
//   seed with HKDF-SHA256, info "coalition x25519 v1", no salt: one file, one identity.

import crypto from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';

const X25519_INFO = 'coalition x25519 v1';
// RFC 8410 PKCS#8 wrapping of a raw 32-byte X25519 private key: Node imports private keys
// as PKCS#8 (or JWK, which also wants the public half we are about to compute).
const X25519_PKCS8_PREFIX = Buffer.from('302e020100300506032b656e04220420', 'hex');
const ED25519_PKCS8_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');

/** Lowercase hex SHA-256 of a raw 32-byte Ed25519 public key. */
export function keyId(rawPublicKey) {
  if (rawPublicKey.length !== 32) throw new Error('an Ed25519 public key is 32 bytes');
  return crypto.createHash('sha256').update(rawPublicKey).digest('hex');
}

/** A Node KeyObject for a raw 32-byte Ed25519 public key. */
export function publicKeyFromRaw(raw) {
  if (raw.length !== 32) throw new Error('an Ed25519 public key is 32 bytes');
  return crypto.createPublicKey({
    key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(raw).toString('base64url') },
    format: 'jwk',
  });
}

/** A lab's (or any party's) signing key. */
export class SigningKey {
  constructor(privateKey) {
    if (privateKey.asymmetricKeyType !== 'ed25519') throw new Error('not an Ed25519 private key');
    this.privateKey = privateKey;
    const jwk = privateKey.export({ format: 'jwk' });
    /** Raw 32-byte public key: the party's identity on the wire. */
    this.publicKeyRaw = Buffer.from(jwk.x, 'base64url');
    this.seed = Buffer.from(jwk.d, 'base64url');
    /** Hex SHA-256 of the public key. */
    this.keyId = keyId(this.publicKeyRaw);
  }

  static generate() {
    return new SigningKey(crypto.generateKeyPairSync('ed25519').privateKey);
  }

  /** The key with this 32-byte RFC 8032 seed (tests use fixed seeds). */
  static fromSeed(seed) {
    if (seed.length !== 32) throw new Error('an Ed25519 seed is 32 bytes');
    return new SigningKey(crypto.createPrivateKey({
      key: Buffer.concat([ED25519_PKCS8_PREFIX, seed]), format: 'der', type: 'pkcs8',
    }));
  }

  static load(path) {
    return new SigningKey(crypto.createPrivateKey(readFileSync(path)));
  }

  /**
   * The key in `path`, or a new one written there (mode 0600, never overwriting a file).
   * Returns { key, created }.
   */
  static loadOrCreate(path) {
    try {
      return { key: SigningKey.load(path), created: false };
    } catch (err) {
      if (err.code !== 'ENOENT') throw err;
    }
    const key = SigningKey.generate();
    const pem = key.privateKey.export({ format: 'pem', type: 'pkcs8' });
    writeFileSync(path, pem, { mode: 0o600, flag: 'wx' });
    return { key, created: true };
  }

  /** The 64-byte Ed25519 signature of `message` (Ed25519 hashes internally: no digest name). */
  sign(message) {
    return crypto.sign(null, message, this.privateKey);
  }

  /** Raw 32-byte X25519 public key derived from the seed, as coalition.keys derives it. */
  encryptionPublicKeyRaw() {
    // HKDF without salt uses a zero salt of hash length (RFC 5869), as Python's HKDF(salt=None).
    const x25519Seed = Buffer.from(crypto.hkdfSync('sha256', this.seed, Buffer.alloc(0), X25519_INFO, 32));
    const x25519 = crypto.createPrivateKey({
      key: Buffer.concat([X25519_PKCS8_PREFIX, x25519Seed]), format: 'der', type: 'pkcs8',
    });
    return Buffer.from(crypto.createPublicKey(x25519).export({ format: 'jwk' }).x, 'base64url');
  }
}
