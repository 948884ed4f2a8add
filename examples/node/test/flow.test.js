// The whole lab flow against a live server: COALITION_SERVER=host:port npm test.
// The server needs a pool to bargain over (members with uploaded items and consent for
// train-genai purchases, floors at most COALITION_BUDGET, default 1.00): see README.md.
// Skipped when COALITION_SERVER is not set.

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';

import { runLab } from '../src/lab.js';

const target = process.env.COALITION_SERVER;

test('a lab registers, negotiates, signs, leases and verifies', { skip: !target && 'set COALITION_SERVER=host:port to run against a server' }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'coalition-lab-'));
  const events = [];
  try {
    const summary = await runLab({
      target,
      keyPath: path.join(dir, 'lab.key'),
      name: 'Node test lab',
      purpose: 'train-genai',
      model: 'purchase',
      budget: process.env.COALITION_BUDGET ?? '1.00',
      rounds: 20,
    }, (event) => events.push(event));

    const byName = (name) => events.filter((e) => e.event === name);
    assert.equal(byName('registered').length, 1);
    assert.equal(byName('catalogue').length, 1);
    assert.ok(byName('move').some((m) => m.by === 'lab' && m.kind === 'accept'));
    const [agreement] = byName('agreement');
    assert.equal(agreement.state, 'NEGOTIATION_STATE_FINALIZED');
    assert.ok(agreement.covered_item_count > 0);
    assert.equal(byName('lease')[0].agreement_id, agreement.agreement_id);
    assert.equal(byName('checkpoint_verified').length, 1);
    assert.equal(byName('inclusion_verified')[0].index, agreement.index);
    assert.equal(summary.agreement_id, agreement.agreement_id);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
