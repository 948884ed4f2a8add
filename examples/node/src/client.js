// A thin Coalition client over @grpc/grpc-js: the calls a lab makes, as coalition/client.py
// makes them.
//
// Each request is serialised once; those exact bytes are what we sign (auth.js) and what goes
// on the wire, so grpc-js is handed a pass-through serialiser. Mutations carry a request_id
// and are retried with the very same bytes while the server is UNAVAILABLE: the server
// answers a repeated request_id with its first answer, so a retry never appends twice.

import crypto from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';

import grpc from '@grpc/grpc-js';

import { callMetadata } from './auth.js';
import { signPayload, signStatement } from './dsse.js';
import { errorInfo, method } from './proto.js';

const RETRIES = 3;
const RETRY_DELAY_MS = 200;

/** A refusal by the server: gRPC status name, message and the ErrorInfo reason (docs/protocol.md "Errors"). */
export class ServerError extends Error {
  constructor(error) {
    const details = error.metadata?.get('grpc-status-details-bin')?.[0];
    const info = details ? errorInfo(details) : null;
    const code = grpc.status[error.code] ?? String(error.code);
    super(`${code}${info ? ` ${info.reason}` : ''}: ${error.details}`);
    this.code = error.code;
    this.codeName = code;
    this.reason = info?.reason ?? '';
  }
}

/** A google.protobuf.Timestamp for `date` (now by default). */
export function timestamp(date = new Date()) {
  const ms = date.getTime();
  return { seconds: String(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1_000_000 };
}

/** A fresh idempotency key: 1-64 of [A-Za-z0-9._:-]. */
export function requestId() {
  return `node-${crypto.randomUUID()}`;
}

function nonce() {
  return crypto.randomBytes(16);
}

export class CoalitionClient {
  /**
   * `target` is host:port. `key` (a SigningKey) is needed for signed calls. `credentials`
   * defaults to plaintext, as `make serve` listens; pass grpc.credentials.createSsl(...) for TLS.
   */
  constructor(target, key = null, { credentials = grpc.credentials.createInsecure(), timeoutMs = 30_000 } = {}) {
    this.key = key;
    this.timeoutMs = timeoutMs;
    this.grpc = new grpc.Client(target, credentials);
  }

  close() {
    this.grpc.close();
  }

  /** One unary call of coalition.v1.<service>/<name>; resolves to the response as a plain object. */
  async call(service, name, request, { sign = false, retry = false } = {}) {
    const m = method(service, name);
    const bytes = m.requestSerialize(request);
    for (let attempt = 0; ; attempt += 1) {
      try {
        return await this.#unary(m, bytes, sign);
      } catch (error) {
        if (retry && error.code === grpc.status.UNAVAILABLE && attempt < RETRIES) {
          await sleep(RETRY_DELAY_MS * 2 ** attempt);
          continue;
        }
        throw typeof error.code === 'number' ? new ServerError(error) : error; // a gRPC status, or our own bug
      }
    }
  }

  #unary(m, bytes, sign) {
    let metadata = new grpc.Metadata();
    if (sign) {
      if (!this.key) throw new Error(`${m.path} needs a key`);
      metadata = callMetadata(this.key, m.path, bytes); // fresh nonce and time for each attempt
    }
    const deadline = new Date(Date.now() + this.timeoutMs);
    return new Promise((resolve, reject) => {
      this.grpc.makeUnaryRequest(m.path, (b) => b, m.responseDeserialize, bytes, metadata, { deadline },
        (error, response) => (error ? reject(error) : resolve(response)));
    });
  }

  // --- ledger (public) ------------------------------------------------------------------

  /** Origin, verifier key (note form) and the coalition's statement key. */
  logInfo() {
    return this.call('LedgerService', 'GetLogInfo', {});
  }

  /** The latest signed checkpoint. */
  checkpoint() {
    return this.call('LedgerService', 'GetCheckpoint', {});
  }

  /** Inclusion proof of entry `index` in the tree of `treeSize` (0: the latest checkpoint's). */
  inclusionProof(index, treeSize = 0) {
    return this.call('LedgerService', 'GetInclusionProof', { index: String(index), tree_size: String(treeSize) });
  }

  // --- parties --------------------------------------------------------------------------

  /** Register this key with `role` (e.g. 'ROLE_LAB'): a self-signed PartyRegistration. */
  register(role, name) {
    const registration = signStatement('PartyRegistration', {
      role,
      name,
      signing_key: this.key.publicKeyRaw,
      encryption_key: this.key.encryptionPublicKeyRaw(),
      created_time: timestamp(),
      nonce: nonce(),
    }, this.key);
    return this.call('PartyService', 'RegisterParty', { registration, request_id: requestId() }, { sign: true, retry: true });
  }

  /** This key's registration. */
  async whoAmI() {
    return (await this.call('PartyService', 'WhoAmI', {}, { sign: true })).party;
  }

  // --- negotiation (labs) ---------------------------------------------------------------

  /** Public: the pool in aggregate, per purpose and payment model. */
  catalogue() {
    return this.call('NegotiationService', 'GetCatalogue', {});
  }

  /** Open a negotiation proposing `terms` (LicenceTerms); the coalition answers in the same call. */
  openNegotiation(terms) {
    const request = signStatement('NegotiationRequest', { terms, created_time: timestamp(), nonce: nonce() }, this.key);
    return this.call('NegotiationService', 'OpenNegotiation', { request, request_id: requestId() }, { sign: true, retry: true });
  }

  /** A move in round `round`: kind 'MOVE_KIND_OFFER' (with terms), '..._ACCEPT' or '..._TERMINATE'. */
  move(negotiationId, round, kind, { terms = null, reason = '' } = {}) {
    const move = signStatement('NegotiationMove', {
      negotiation_id: negotiationId, round, kind, terms, created_time: timestamp(), nonce: nonce(), reason,
    }, this.key);
    return this.call('NegotiationService', 'Move', { move, request_id: requestId() }, { sign: true, retry: true });
  }

  /** Sign the agreement draft byte for byte as drafted (never re-encoded) and send it. */
  signAgreement(draft) {
    const agreement = signPayload('Agreement', draft, this.key);
    return this.call('NegotiationService', 'SignAgreement', { agreement, request_id: requestId() }, { sign: true, retry: true });
  }

  /** One of this lab's negotiations. */
  async negotiation(negotiationId) {
    return (await this.call('NegotiationService', 'GetNegotiation', { negotiation_id: negotiationId }, { sign: true })).negotiation;
  }

  // --- access (labs) --------------------------------------------------------------------

  /** This lab's agreements (every page). */
  async agreements() {
    const all = [];
    let page_token = '';
    do {
      const page = await this.call('AccessService', 'ListAgreements', { page_token }, { sign: true });
      all.push(...page.agreements);
      page_token = page.next_page_token;
    } while (page_token);
    return all;
  }

  /** Take (or renew) a lease on one of this lab's agreements. */
  takeLease(agreementId) {
    const leaseRequest = signStatement('LeaseRequest', { agreement_id: agreementId, created_time: timestamp(), nonce: nonce() }, this.key);
    return this.call('AccessService', 'TakeLease', { lease_request: leaseRequest, request_id: requestId() }, { sign: true, retry: true });
  }
}
