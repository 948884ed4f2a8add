// Negotiating for a lab within a budget: a simplified coalition/strategy.py AutoNegotiator and
// the loop of Client.negotiate_auto (coalition/client.py).
//
// The lab opens low and concedes linearly towards its budget as the negotiation's rounds and
// time run out. At each coalition offer it accepts when the price is no higher than the bid it
// would make now (so it never counters above a price on the table), terminates once the
// deadline has come with the price still over budget, and otherwise counters with its bid.
// Once terms are agreed, the drafted agreement is checked against the terms on the table
// before the lab signs it.

import { payloadType, verifyEnvelope } from './dsse.js';
import { leafHash, rootOfLeafHashes } from './merkle.js';
import { encode, parsePayload } from './proto.js';

/** A buyer's linear concession from `openingMicros` to `budgetMicros` over rounds and time. */
export class LinearBuyer {
  constructor(openingMicros, budgetMicros, maxRounds, deadlineSeconds) {
    if (!(openingMicros >= 0 && openingMicros <= budgetMicros)) {
      throw new Error('the opening price must be between 0 and the budget');
    }
    Object.assign(this, { openingMicros, budgetMicros, maxRounds, deadlineSeconds });
  }

  /** How far along the deadline is, in [0, 1]: the further of rounds and time. */
  progress(round, elapsedSeconds) {
    return Math.min(1, Math.max(0, round / this.maxRounds, elapsedSeconds / this.deadlineSeconds));
  }

  /** The lab's bid in round `round`: rounded down (in the buyer's favour), never above the budget. */
  bid(round, elapsedSeconds) {
    const distance = this.budgetMicros - this.openingMicros;
    return Math.min(this.budgetMicros, this.openingMicros + Math.floor(distance * this.progress(round, elapsedSeconds)));
  }

  deadlineReached(round, elapsedSeconds) {
    return round >= this.maxRounds || elapsedSeconds >= this.deadlineSeconds;
  }

  /** The lab's answer to the coalition's price: { kind: 'accept' | 'counter' | 'terminate', price }. */
  decide(priceMicros, round, elapsedSeconds) {
    const own = this.bid(round, elapsedSeconds);
    if (priceMicros <= own) return { kind: 'accept', price: priceMicros };
    if (this.deadlineReached(round, elapsedSeconds)) return { kind: 'terminate', price: null, reason: 'OVER_BUDGET' };
    return { kind: 'counter', price: own };
  }
}

function withPrice(terms, micros) {
  return { ...terms, price_per_item: { currency_code: terms.price_per_item?.currency_code || 'USD', micros: String(micros) } };
}

function micros(terms) {
  return Number(terms?.price_per_item?.micros ?? 0);
}

/**
 * The coalition's answer in an OpenNegotiation or Move response, checked: signed by the
 * coalition's key and about this negotiation. Returns the move, or null when it did not answer.
 */
function coalitionAnswer(envelope, negotiation, coalitionKeyRaw) {
  if (!envelope?.payload?.length) return null;
  if (envelope.payload_type !== payloadType('NegotiationMove')) throw new Error('the coalition answered with something other than a move');
  verifyEnvelope(envelope, coalitionKeyRaw);
  const move = parsePayload('NegotiationMove', envelope.payload);
  if (move.negotiation_id !== negotiation.negotiation_id) throw new Error('the coalition answered about another negotiation');
  return move;
}

/**
 * The agreement draft of an AGREED negotiation, checked before signing (check_draft in
 * coalition/client.py): it concludes this negotiation, names this lab, fixes exactly the terms
 * on the table, and its covered item ids match their count and Merkle root.
 */
export function checkDraft(negotiation, labKeyId) {
  const draft = parsePayload('Agreement', negotiation.agreement_draft);
  if (draft.negotiation_id !== negotiation.negotiation_id) throw new Error('the draft concludes another negotiation');
  if (draft.lab_key_id !== labKeyId) throw new Error('the draft names another lab');
  if (!encode('LicenceTerms', draft.terms).equals(encode('LicenceTerms', negotiation.current_terms))) {
    throw new Error("the draft's terms are not the terms agreed");
  }
  const ids = draft.covered_item_ids;
  if (Number(draft.covered_item_count) !== ids.length || new Set(ids).size !== ids.length) {
    throw new Error("the draft's covered item count does not match its items");
  }
  const root = rootOfLeafHashes([...ids].sort().map((id) => leafHash(Buffer.from(id, 'ascii'))));
  if (!root.equals(draft.covered_items_root)) throw new Error("the draft's covered items do not match its Merkle root");
  return draft;
}

/**
 * Negotiate `terms` (LicenceTerms without a price) from `openingMicros` up to `budgetMicros`.
 * `emit` receives one event per move. Resolves to the negotiation as it ends: FINALIZED,
 * RATIFYING (members vote first) or TERMINATED.
 */
export async function negotiate(client, { terms, openingMicros, budgetMicros, maxRounds = 20, coalitionKeyRaw, emit }) {
  const openedAt = Date.now();
  const elapsed = () => (Date.now() - openedAt) / 1000;
  const answered = (envelope, negotiation) => {
    const move = coalitionAnswer(envelope, negotiation, coalitionKeyRaw);
    if (move) {
      const price = move.kind === 'MOVE_KIND_OFFER' ? micros(move.terms) : null;
      emit({ event: 'move', by: 'coalition', kind: move.kind, round: move.round, price_micros: price, reason: move.reason || undefined });
    }
  };

  const opened = await client.openNegotiation(withPrice(terms, openingMicros));
  let { negotiation } = opened;
  emit({ event: 'negotiation_opened', negotiation_id: negotiation.negotiation_id, price_micros: openingMicros });
  answered(opened.coalition_move, negotiation);

  // Never plan past the negotiation's own deadline, in rounds or in time.
  const deadlineSeconds = negotiation.deadline
    ? Math.max(1, Number(negotiation.deadline.seconds) - openedAt / 1000)
    : 86_400;
  const buyer = new LinearBuyer(openingMicros, budgetMicros, Math.min(maxRounds, negotiation.max_rounds || maxRounds), deadlineSeconds);

  while (negotiation.state === 'NEGOTIATION_STATE_OFFERED') {
    const round = negotiation.round + 1;
    const decision = buyer.decide(micros(negotiation.current_terms), round, elapsed());
    const id = negotiation.negotiation_id;
    let response;
    if (decision.kind === 'accept') {
      response = await client.move(id, round, 'MOVE_KIND_ACCEPT');
    } else if (decision.kind === 'counter') {
      response = await client.move(id, round, 'MOVE_KIND_OFFER', { terms: withPrice(terms, decision.price) });
    } else {
      response = await client.move(id, round, 'MOVE_KIND_TERMINATE', { reason: decision.reason });
    }
    emit({ event: 'move', by: 'lab', kind: decision.kind, round, price_micros: decision.price, index: response.receipt?.index });
    negotiation = response.negotiation;
    answered(response.coalition_move, negotiation);
  }

  if (negotiation.state !== 'NEGOTIATION_STATE_AGREED') return { negotiation, draft: null };
  const draft = checkDraft(negotiation, client.key.keyId);
  emit({
    event: 'agreed',
    negotiation_id: negotiation.negotiation_id,
    price_micros: micros(negotiation.current_terms),
    covered_item_count: Number(draft.covered_item_count),
  });
  const signed = await client.signAgreement(negotiation.agreement_draft);
  return { negotiation: signed.negotiation, draft, draftBytes: negotiation.agreement_draft, receipt: signed.receipt };
}
