// The whole lab flow, one step per section, each reported as an event (a plain object):
// key, registration, catalogue, negotiation, agreement, lease, checkpoint, inclusion proof.
// The same steps as the Python CLI's `coalition join --role lab`, `lab catalogue`,
// `lab negotiate --auto --budget`, `lab lease` and `audit checkpoint`.

import { setTimeout as sleep } from 'node:timers/promises';

import { CoalitionClient, ServerError } from './client.js';
import { verifyEnvelope } from './dsse.js';
import { SigningKey } from './keys.js';
import { logVerifier, verifyLatest, verifyReceipt } from './ledger.js';
import { negotiate } from './negotiate.js';
import { decode, parsePayload } from './proto.js';

/** Purposes and payment models by the names the Python CLI uses. */
export const PURPOSES = {
  'train-ai': 'PURPOSE_TRAIN_AI',
  'train-genai': 'PURPOSE_TRAIN_GENAI',
  'ai-input': 'PURPOSE_AI_INPUT',
  'ai-index': 'PURPOSE_AI_INDEX',
  search: 'PURPOSE_SEARCH',
  evaluation: 'PURPOSE_EVALUATION',
};
export const PAYMENT_MODELS = {
  purchase: 'PAYMENT_MODEL_PURCHASE',
  'per-use': 'PAYMENT_MODEL_PER_USE',
};

const DAY = 86_400;
const ENDED = new Set(['NEGOTIATION_STATE_FINALIZED', 'NEGOTIATION_STATE_TERMINATED']);

/** Integer micros of a decimal amount such as "1.25", never through floating point. */
export function parseMicros(amount) {
  const match = /^\$?(\d+)(?:\.(\d{1,6}))?$/u.exec(String(amount).trim());
  if (!match) throw new Error(`not an amount with at most 6 decimals: ${amount}`);
  return Number(match[1]) * 1_000_000 + Number((match[2] ?? '').padEnd(6, '0'));
}

async function register(client, name, verifier, origin, emit) {
  try {
    const response = await client.register('ROLE_LAB', name);
    verifyReceipt(response.receipt, verifier, origin);
    emit({ event: 'registered', key_id: response.party.key_id, index: response.receipt.index, receipt_verified: true });
  } catch (error) {
    if (!(error instanceof ServerError && error.reason === 'PARTY_ALREADY_REGISTERED')) throw error;
    const party = await client.whoAmI();
    if (party.role !== 'ROLE_LAB') throw new Error(`key ${party.key_id} is registered as ${party.role}, not as a lab`);
    emit({ event: 'registered', key_id: party.key_id, index: party.registration_index, already: true });
  }
}

function catalogueEvent(response) {
  return {
    event: 'catalogue',
    currency: response.currency_code,
    minimum_group_size: response.minimum_group_size,
    rows: response.rows.map((row) => ({
      purpose: row.purpose,
      payment_model: row.payment_model,
      member_count: Number(row.member_count),
      item_count: Number(row.item_count),
      floor_quantiles_micros: row.floor_quantiles_micros.map(Number), // p10, p25, p50, p75, p90
    })),
  };
}

/**
 * The opening bid and the budget: as given, else read off the catalogue row for these
 * terms (open at half the p10 floor, pay at most the p90 floor: the price that meets 90% of
 * the group's floors).
 */
function prices(options, catalogue, purpose, model) {
  const row = catalogue.rows.find((r) => r.purpose === purpose && r.payment_model === model);
  const quantiles = row?.floor_quantiles_micros ?? [];
  const budget = options.budget !== undefined ? parseMicros(options.budget) : quantiles.at(-1);
  if (budget === undefined) {
    throw new Error('the catalogue shows no group for these terms: give a budget (--budget)');
  }
  const opening = options.price !== undefined ? parseMicros(options.price) : Math.floor((quantiles[0] ?? budget) / 2);
  return { opening: Math.min(opening, budget), budget };
}

/** Wait while members ratify (policy ratification.required); resolves to the ended negotiation. */
async function ratified(client, negotiation, waitSeconds, emit) {
  if (negotiation.state !== 'NEGOTIATION_STATE_RATIFYING') return negotiation;
  emit({ event: 'ratifying', negotiation_id: negotiation.negotiation_id, closes_at: negotiation.ratification_deadline?.seconds });
  const until = Date.now() + waitSeconds * 1000;
  while (!ENDED.has(negotiation.state) && Date.now() < until) {
    await sleep(250);
    negotiation = await client.negotiation(negotiation.negotiation_id);
  }
  return negotiation;
}

/**
 * Run the flow against `options.target`; `emit` receives each event. Resolves to a summary;
 * rejects on the first thing that fails to verify or a refusal by the server.
 */
export async function runLab(options, emit) {
  const { key, created } = SigningKey.loadOrCreate(options.keyPath);
  emit({ event: 'key', key_id: key.keyId, path: options.keyPath, created });

  const client = new CoalitionClient(options.target, key, { credentials: options.credentials });
  try {
    const { verifier, origin, coalitionKeyRaw } = await logVerifier(client, options.logKey);
    await register(client, options.name, verifier, origin, emit);

    const catalogue = catalogueEvent(await client.catalogue());
    emit(catalogue);

    const purpose = PURPOSES[options.purpose];
    const model = PAYMENT_MODELS[options.model];
    if (!purpose) throw new Error(`unknown purpose ${options.purpose}: use one of ${Object.keys(PURPOSES).join(', ')}`);
    if (!model) throw new Error(`unknown payment model ${options.model}: use one of ${Object.keys(PAYMENT_MODELS).join(', ')}`);
    const { opening, budget } = prices(options, catalogue, purpose, model);
    emit({ event: 'strategy', opening_micros: opening, budget_micros: budget, max_rounds: options.rounds });

    // The same terms as `coalition lab negotiate` with its defaults.
    const terms = {
      purposes: [purpose],
      scope: { tags: options.tags ?? [], min_item_count: String(options.minItems ?? 0) },
      payment_model: model,
      price_per_item: { currency_code: catalogue.currency || 'USD', micros: String(opening) },
      licence_duration: { seconds: String(365 * DAY) },
      deletion_deadline: { seconds: String(7 * DAY) },
      lease_duration: { seconds: String(DAY) },
    };
    const outcome = await negotiate(client, {
      terms, openingMicros: opening, budgetMicros: budget, maxRounds: options.rounds, coalitionKeyRaw, emit,
    });
    if (!outcome.draft) {
      throw new Error(`no agreement: the negotiation ended ${outcome.negotiation.state}`);
    }
    verifyReceipt(outcome.receipt, verifier, origin);
    const negotiation = await ratified(client, outcome.negotiation, options.ratificationWaitSeconds ?? 60, emit);
    if (negotiation.state !== 'NEGOTIATION_STATE_FINALIZED') {
      throw new Error(`the agreement was not finalized: ${negotiation.state}`);
    }

    // The final agreement as logged: the very bytes we signed, countersigned by the coalition.
    const agreementId = negotiation.agreement_id;
    const record = (await client.agreements()).find((a) => a.agreement_id === agreementId);
    if (!record) throw new Error(`agreement ${agreementId} is not among this lab's agreements`);
    if (!record.agreement.payload.equals(outcome.draftBytes)) throw new Error('the logged agreement is not the draft we signed');
    verifyEnvelope(record.agreement, key.publicKeyRaw);
    verifyEnvelope(record.agreement, coalitionKeyRaw);
    emit({
      event: 'agreement',
      agreement_id: agreementId,
      negotiation_id: negotiation.negotiation_id,
      state: negotiation.state,
      index: record.index,
      price_micros: Number(outcome.draft.terms.price_per_item.micros),
      covered_item_count: Number(outcome.draft.covered_item_count),
    });

    const leased = await client.takeLease(agreementId);
    verifyReceipt(leased.receipt, verifier, origin);
    emit({
      event: 'lease',
      lease_id: leased.lease.lease_id,
      agreement_id: agreementId,
      expiry_time: leased.lease.expiry_time?.seconds,
      // What the lease opens: the agreement's covered items still consented (a fetch releases them).
      covered_item_count: Number(outcome.draft.covered_item_count),
      receipt_verified: true,
    });

    // An auditor's check, from scratch: the latest signed tree head, and the agreement's
    // entry proven to be in that very tree.
    const { checkpoint, leaves } = await verifyLatest(client, verifier, origin, [record.index]);
    emit({
      event: 'checkpoint_verified',
      origin: checkpoint.origin,
      tree_size: String(checkpoint.size),
      root_hash: checkpoint.rootHash.toString('base64'),
    });
    const leaf = decode('LedgerLeaf', leaves.get(String(record.index)));
    parsePayload('Agreement', leaf.envelope.payload);
    if (!leaf.envelope.payload.equals(outcome.draftBytes)) throw new Error('the proven entry is not our agreement');
    emit({ event: 'inclusion_verified', agreement_id: agreementId, index: record.index, tree_size: String(checkpoint.size) });

    const summary = {
      event: 'done',
      key_id: key.keyId,
      agreement_id: agreementId,
      lease_id: leased.lease.lease_id,
      covered_item_count: Number(outcome.draft.covered_item_count),
      price_micros: Number(outcome.draft.terms.price_per_item.micros),
      checkpoint_verified: true,
      inclusion_verified: true,
    };
    emit(summary);
    return summary;
  } finally {
    client.close();
  }
}
