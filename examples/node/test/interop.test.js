// Offline checks against vectors the Python SDK computed (fixtures.json, written by
// `python -m tests.integration.test_node_example`): if these pass, the server and any
// Python auditor see exactly the bytes and signatures this client produces.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import { callMessage, callMetadata } from '../src/auth.js';
import { pae, signStatement, statementId, verifyEnvelope } from '../src/dsse.js';
import { SigningKey } from '../src/keys.js';
import { leafHash, rootOfLeafHashes, verifyInclusion } from '../src/merkle.js';
import { checkDraft } from '../src/negotiate.js';
import { NoteError, parseVerifierKey, verifyCheckpoint, verifyNote } from '../src/note.js';
import { encode, parsePayload } from '../src/proto.js';

const fixtures = JSON.parse(readFileSync(new URL('./fixtures.json', import.meta.url), 'utf8'));
const b64 = (text) => Buffer.from(text, 'base64');
const party = SigningKey.fromSeed(Buffer.from(fixtures.key.seed_hex, 'hex'));

test('key id and derived X25519 key match the Python SDK', () => {
  assert.deepEqual(party.publicKeyRaw, b64(fixtures.key.public_key_b64));
  assert.equal(party.keyId, fixtures.key.key_id);
  assert.deepEqual(party.encryptionPublicKeyRaw(), b64(fixtures.key.x25519_public_key_b64));
});

test('call signatures cover the same message', () => {
  const { call } = fixtures;
  const message = callMessage(call.method, call.timestamp_ms, b64(call.nonce_b64), b64(call.request_b64));
  assert.deepEqual(message, b64(call.message_b64));
  assert.deepEqual(party.sign(message), b64(call.signature_b64)); // Ed25519 is deterministic

  const metadata = callMetadata(party, call.method, b64(call.request_b64), call.timestamp_ms);
  assert.equal(metadata.get('coalition-public-key')[0], fixtures.key.public_key_b64);
  assert.equal(metadata.get('coalition-timestamp')[0], String(call.timestamp_ms));
  assert.equal(b64(metadata.get('coalition-nonce')[0]).length, 16);
});

// The same NegotiationRequest as python_fixtures(), with explicit defaults added: protobufjs
// would encode those, the canonical encoding must not.
const negotiationRequest = {
  terms: {
    purposes: ['PURPOSE_TRAIN_GENAI', 'PURPOSE_SEARCH'],
    scope: { tags: ['poetry'], media_types: [], min_item_count: '2', max_item_count: '0' },
    payment_model: 'PAYMENT_MODEL_PURCHASE',
    price_per_item: { currency_code: 'USD', micros: '1250000' },
    licence_duration: { seconds: String(365 * 86400), nanos: 0 },
    lease_duration: { seconds: 86400 },
    attribution: false,
    subscription_period: null,
  },
  created_time: { seconds: '1763849000', nanos: 123_000_000 },
  nonce: Buffer.from([...Array(16).keys()]),
};

test('statements are encoded canonically and signed as the SDK signs them', () => {
  const { statement } = fixtures;
  const envelope = signStatement('NegotiationRequest', negotiationRequest, party);
  assert.equal(envelope.payload_type, statement.payload_type);
  assert.equal(envelope.payload.toString('hex'), statement.payload_hex);
  assert.deepEqual(envelope.signatures[0].sig, b64(statement.signature_b64));
  assert.equal(envelope.signatures[0].keyid, party.keyId);
  assert.equal(statementId(envelope), statement.statement_id);
  assert.deepEqual(verifyEnvelope(envelope, party.publicKeyRaw), envelope.payload);
  const type = statement.payload_type;
  assert.ok(pae(type, envelope.payload).toString('latin1').startsWith(`DSSEv1 ${type.length} ${type} ${envelope.payload.length} `));
});

test('encoding refuses misspelt fields and unknown enum names', () => {
  assert.throws(() => encode('NegotiationMove', { negotiationId: 'x' }), /no field negotiationId/);
  assert.throws(() => encode('NegotiationMove', { kind: 'MOVE_KIND_SULK' }), /not a value/);
});

test('payloads that are not canonical are refused', () => {
  const canonical = Buffer.from(fixtures.statement.payload_hex, 'hex');
  assert.equal(parsePayload('NegotiationRequest', canonical).terms.price_per_item.micros, '1250000');
  const unknownField = Buffer.concat([canonical, Buffer.from([0x78, 0x01])]); // field 15, varint 1
  assert.throws(() => parsePayload('NegotiationRequest', unknownField), /not canonically encoded/);
  const terms = encode('LicenceTerms', negotiationRequest.terms);
  const explicitDefault = Buffer.concat([terms, Buffer.from([0x38, 0x00])]); // attribution = false, spelt out
  assert.throws(() => parsePayload('LicenceTerms', explicitDefault), /not canonically encoded/);
});

test('a Python-signed checkpoint verifies', () => {
  const { note } = fixtures;
  const verifier = parseVerifierKey(note.verifier_key);
  const checkpoint = verifyCheckpoint(note.checkpoint, verifier, note.origin);
  assert.equal(checkpoint.size, BigInt(note.tree_size));
  assert.deepEqual(checkpoint.rootHash, b64(note.root_hash_b64));
  assert.throws(() => verifyCheckpoint(note.checkpoint, verifier, 'another/log'), NoteError);
});

test('tampered or foreign checkpoints are rejected', () => {
  const { note } = fixtures;
  const verifier = parseVerifierKey(note.verifier_key);
  const [origin, size, root] = note.checkpoint.split('\n');
  const tampered = [
    note.checkpoint.replace(`\n${size}\n`, `\n${Number(size) + 1}\n`),
    note.checkpoint.replace(root, Buffer.alloc(32).toString('base64')),
    note.checkpoint.replace(origin, 'evil.test/log'),
    note.checkpoint.replace(/ [A-Za-z0-9+/]{4}/u, ' AAAA'), // signature bytes changed
    note.checkpoint.split('\n\n')[0] + '\n\n', // no signature
    note.checkpoint.replace('\n\n', '\n'), // no blank line
  ];
  for (const bad of tampered) {
    assert.notEqual(bad, note.checkpoint);
    assert.throws(() => verifyCheckpoint(bad, verifier), NoteError, JSON.stringify(bad));
  }
  // Signed, but not by the key we trust: unknown signatures are ignored, none is left.
  assert.throws(() => verifyNote(note.checkpoint, [parseVerifierKey(note.other_verifier_key)]), /no signature from a known key/);
  // A verifier key whose hash does not match its name and key is refused.
  assert.throws(() => parseVerifierKey(note.verifier_key.replace(/\+[0-9a-f]{8}\+/u, '+00000000+')), NoteError);
});

test('inclusion proofs verify as RFC 9162 defines them', () => {
  const { inclusion, note } = fixtures;
  const proof = inclusion.proof_b64.map(b64);
  const root = b64(note.root_hash_b64);
  const leaf = leafHash(b64(inclusion.leaf_b64));
  verifyInclusion(leaf, BigInt(inclusion.index), BigInt(inclusion.tree_size), proof, root);
  assert.throws(() => verifyInclusion(leaf, 2n, 7n, proof, root));
  assert.throws(() => verifyInclusion(leafHash(Buffer.from('leaf 4')), 3n, 7n, proof, root));
  assert.throws(() => verifyInclusion(leaf, 3n, 7n, proof.slice(1), root), /needs 3 hashes/);
  assert.throws(() => verifyInclusion(leaf, 3n, 4n, proof, root), /needs 2 hashes/);
  assert.throws(() => verifyInclusion(leaf, 7n, 7n, proof, root), /not in a tree/);
});

test('agreement drafts are checked before signing', () => {
  const { item_ids: ids, root_b64: root } = fixtures.covered_items;
  assert.deepEqual(rootOfLeafHashes([...ids].sort().map((id) => leafHash(Buffer.from(id)))), b64(root));

  const terms = negotiationRequest.terms;
  const agreement = (overrides = {}) => encode('Agreement', {
    negotiation_id: 'n1', lab_key_id: party.keyId, terms, covered_items_root: b64(root),
    covered_item_count: String(ids.length), covered_item_ids: [...ids].sort(), ...overrides,
  });
  const negotiation = (draft) => ({ negotiation_id: 'n1', current_terms: terms, agreement_draft: draft });
  assert.equal(checkDraft(negotiation(agreement()), party.keyId).negotiation_id, 'n1');
  assert.throws(() => checkDraft(negotiation(agreement({ lab_key_id: 'f'.repeat(64) })), party.keyId), /another lab/);
  assert.throws(() => checkDraft(negotiation(agreement({ negotiation_id: 'n2' })), party.keyId), /another negotiation/);
  assert.throws(() => checkDraft(negotiation(agreement({ covered_item_count: '4' })), party.keyId), /count/);
  assert.throws(() => checkDraft(negotiation(agreement({ covered_items_root: Buffer.alloc(32) })), party.keyId), /Merkle root/);
  const cheaper = { ...terms, price_per_item: { currency_code: 'USD', micros: '1' } };
  assert.throws(() => checkDraft(negotiation(agreement({ terms: cheaper })), party.keyId), /not the terms agreed/);
});
