#!/usr/bin/env node
// Command line: one JSON object per line on stdout, so scripts and tests can follow along.
//
//   node src/cli.js run [--server HOST:PORT] [--key lab.key] [--budget 2.50] ...
//   node src/cli.js verify-checkpoint --log-key VKEY [--origin ORIGIN] [FILE|-]
//
// Exit status 0 on success; 1 with an {"event":"error"} line when anything fails to verify
// or the server refuses; 2 for bad usage.

import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

import grpc from '@grpc/grpc-js';

import { runLab } from './lab.js';
import { parseVerifierKey, verifyCheckpoint } from './note.js';

const USAGE = `usage:
  coalition-lab run [options]            register, read the catalogue, negotiate, sign, lease, verify
    --server HOST:PORT   server (env COALITION_SERVER, default 127.0.0.1:50051)
    --key FILE           lab key, PKCS#8 PEM, created if missing (env COALITION_KEY, default lab.key)
    --name NAME          display name when registering (default "Node lab")
    --purpose P          train-ai, train-genai (default), ai-input, ai-index, search, evaluation
    --model M            purchase (default) or per-use
    --price AMOUNT       opening price per item (default: half the catalogue's p10 floor)
    --budget AMOUNT      most you pay per item (default: the catalogue's p90 floor)
    --tag TAG            only items with this tag (repeatable)
    --rounds N           your deadline in rounds (default 20)
    --ratification-wait S  seconds to wait while members ratify, if the policy asks them (default 60)
    --log-key VKEY       pin the log's verifier key (env COALITION_LOG_KEY; default: the server's)
    --tls                TLS with the system roots; --tls-ca FILE (env COALITION_TLS_CA) for a private root
  coalition-lab verify-checkpoint --log-key VKEY [--origin ORIGIN] [FILE|-]
                                         verify a signed checkpoint note (stdin by default)`;

const print = (event) => process.stdout.write(`${JSON.stringify(event)}\n`);

function fail(error) {
  print({ event: 'error', message: error.message, reason: error.reason || undefined });
  process.exitCode = 1;
}

async function run(args) {
  const { values } = parseArgs({
    args,
    options: {
      server: { type: 'string', default: process.env.COALITION_SERVER || '127.0.0.1:50051' },
      key: { type: 'string', default: process.env.COALITION_KEY || 'lab.key' },
      name: { type: 'string', default: 'Node lab' },
      purpose: { type: 'string', default: 'train-genai' },
      model: { type: 'string', default: 'purchase' },
      price: { type: 'string' },
      budget: { type: 'string' },
      tag: { type: 'string', multiple: true, default: [] },
      rounds: { type: 'string', default: '20' },
      'ratification-wait': { type: 'string', default: '60' },
      'log-key': { type: 'string', default: process.env.COALITION_LOG_KEY },
      tls: { type: 'boolean', default: false },
      'tls-ca': { type: 'string', default: process.env.COALITION_TLS_CA || undefined },
    },
  });
  const rounds = Number(values.rounds);
  if (!Number.isInteger(rounds) || rounds < 2) throw new UsageError('--rounds is a whole number, at least 2');
  const ratificationWaitSeconds = Number(values['ratification-wait']);
  if (!(ratificationWaitSeconds >= 0)) throw new UsageError('--ratification-wait is a number of seconds');
  const ca = values['tls-ca'];
  const credentials = values.tls || ca
    ? grpc.credentials.createSsl(ca ? readFileSync(ca) : null)
    : grpc.credentials.createInsecure();
  await runLab({
    target: values.server,
    keyPath: values.key,
    name: values.name,
    purpose: values.purpose,
    model: values.model,
    price: values.price,
    budget: values.budget,
    tags: values.tag,
    rounds,
    ratificationWaitSeconds,
    logKey: values['log-key'],
    credentials,
  }, print);
}

function verifyCheckpointCommand(args) {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      'log-key': { type: 'string', default: process.env.COALITION_LOG_KEY },
      origin: { type: 'string' },
    },
  });
  if (!values['log-key']) throw new UsageError('verify-checkpoint needs --log-key');
  const source = positionals[0] ?? '-';
  const note = readFileSync(source === '-' ? 0 : source, 'utf8');
  const checkpoint = verifyCheckpoint(note, parseVerifierKey(values['log-key']), values.origin);
  print({
    event: 'checkpoint_verified',
    origin: checkpoint.origin,
    tree_size: String(checkpoint.size),
    root_hash: checkpoint.rootHash.toString('base64'),
  });
}

class UsageError extends Error {}

const [command = 'run', ...rest] = process.argv.slice(2);
try {
  if (command === 'run') await run(rest);
  else if (command === 'verify-checkpoint') verifyCheckpointCommand(rest);
  else if (command === '-h' || command === '--help' || command === 'help') console.log(USAGE);
  else throw new UsageError(`unknown command ${command}`);
} catch (error) {
  if (error instanceof UsageError || error.code?.startsWith?.('ERR_PARSE_ARGS_')) {
    console.error(`${error.message}\n\n${USAGE}`);
    process.exitCode = 2;
  } else {
    fail(error);
  }
}
