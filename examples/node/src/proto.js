// The Coalition API, loaded at run time straight from the repository's proto/ tree.
//
// Two views of the same .proto files:
//  - @grpc/proto-loader gives the services: each method's path and its request serialiser and
//    response deserialiser, which is all @grpc/grpc-js needs to make calls;
//  - protobufjs gives the message types, to build and read signed statements (DSSE payloads),
//    which are not request messages of any RPC and must be encoded canonically.
//
// The protos import only google/protobuf well-known types (timestamp, duration), which
// protobufjs ships built in, so the one include directory is proto/ itself.

import { readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import protoLoader from '@grpc/proto-loader';
import protobuf from 'protobufjs';

/** Where the .proto files are: COALITION_PROTO_DIR, else the repository's proto/ (../../proto). */
export const PROTO_DIR = process.env.COALITION_PROTO_DIR
  ?? fileURLToPath(new URL('../../../proto', import.meta.url));

const FILES = readdirSync(path.join(PROTO_DIR, 'coalition', 'v1'))
  .filter((name) => name.endsWith('.proto'))
  .sort()
  .map((name) => `coalition/v1/${name}`);

/**
 * How messages become plain objects, for proto-loader's responses and our own decoding alike:
 * field names as in the .proto (snake_case, like the docs), 64-bit integers as decimal strings
 * (JavaScript numbers lose precision past 2^53), enums by name, every field present.
 */
export const OBJECT_OPTIONS = Object.freeze({
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});

const definition = protoLoader.loadSync(FILES, { ...OBJECT_OPTIONS, includeDirs: [PROTO_DIR] });

/** A method of a service, e.g. method('LedgerService', 'GetCheckpoint'): path and (de)serialisers. */
export function method(service, name) {
  const svc = definition[`coalition.v1.${service}`];
  const m = svc?.[name];
  if (!m) throw new Error(`no method coalition.v1.${service}/${name} in ${PROTO_DIR}`);
  return m;
}

// protobufjs resolves imports relative to the importing file by default; the protos import
// "coalition/v1/x.proto" relative to proto/, so resolve them there (well-known types are
// built into protobufjs and never read from disk).
const root = new protobuf.Root();
root.resolvePath = (_origin, target) => (path.isAbsolute(target) ? target : path.join(PROTO_DIR, target));
root.loadSync(FILES, { keepCase: true });
root.resolveAll();

/** The protobufjs type coalition.v1.<name>. */
export function type(name) {
  return root.lookupType(`coalition.v1.${name}`);
}

/**
 * `value` with every field that proto3 would not serialise removed: implicit-presence scalars
 * and enums at their default (0, "", false, empty bytes) and empty repeated fields. Message
 * fields and oneof members have presence and are kept even when empty.
 *
 * Needed because protobufjs writes any field the object *has*, default or not, so
 * `{ reason: '' }` would encode a field the canonical encoding (what Python's
 * SerializeToString produces and the server demands of signed payloads) leaves out.
 */
export function prune(messageType, value) {
  for (const key of Object.keys(value)) {
    // A misspelt field would otherwise be dropped without a word, and the statement signed without it.
    if (!messageType.fields[key] && !messageType.oneofs?.[key]) {
      throw new Error(`${messageType.fullName} has no field ${key}`);
    }
  }
  const out = {};
  for (const field of messageType.fieldsArray) {
    const v = value[field.name];
    if (v === undefined || v === null) continue;
    const sub = field.resolvedType instanceof protobuf.Type ? field.resolvedType : null;
    if (field.map) throw new Error(`map field ${field.fullName} is not supported`);
    if (field.resolvedType instanceof protobuf.Enum) {
      // protobufjs drops an unknown enum name silently; refuse it instead.
      for (const e of field.repeated ? v : [v]) {
        if (typeof e === 'string' && !(e in field.resolvedType.values)) {
          throw new Error(`${e} is not a value of ${field.resolvedType.fullName}`);
        }
      }
    }
    if (field.repeated) {
      if (v.length === 0) continue;
      out[field.name] = sub ? v.map((e) => prune(sub, e)) : v;
      continue;
    }
    if (sub) {
      out[field.name] = prune(sub, v);
      continue;
    }
    if (!field.partOf && isDefault(field, v)) continue;
    out[field.name] = v;
  }
  return out;
}

function isDefault(field, v) {
  if (field.resolvedType instanceof protobuf.Enum) {
    return (typeof v === 'string' ? field.resolvedType.values[v] : v) === 0;
  }
  switch (field.type) {
    case 'bool':
      return v === false;
    case 'string':
      return v === '';
    case 'bytes':
      return v.length === 0;
    default: // every numeric type, given as number, bigint, decimal string or Long
      return String(v) === '0';
  }
}

/** The canonical protobuf encoding of `value` as coalition.v1.<name> (fields in number order, no defaults). */
export function encode(name, value) {
  const t = type(name);
  const message = t.fromObject(prune(t, value));
  const problem = t.verify(message);
  if (problem) throw new Error(`invalid ${name}: ${problem}`);
  return Buffer.from(t.encode(message).finish());
}

/** `bytes` decoded as coalition.v1.<name>, as a plain object (OBJECT_OPTIONS). */
export function decode(name, bytes) {
  const t = type(name);
  return t.toObject(t.decode(bytes), OBJECT_OPTIONS);
}

/**
 * A signed statement's payload decoded as coalition.v1.<name>, refused unless it is the
 * canonical encoding of what it decodes to, as the server and the Python SDK
 * (statements.parse_payload) refuse it: unknown or re-ordered fields would be signed yet
 * invisible to whoever reads the decoded message.
 */
export function parsePayload(name, bytes) {
  const value = decode(name, bytes);
  if (!encode(name, value).equals(Buffer.from(bytes))) {
    throw new Error(`${name} payload is not canonically encoded`);
  }
  return value;
}

// google.rpc.Status and ErrorInfo, for the reason the server gives in the
// grpc-status-details-bin trailer. Not in proto/ (the API never names them), so declared
// here, wire-compatible with googleapis' google/rpc/{status,error_details}.proto; Any is
// declared inline to keep this free of imports.
const rpcRoot = protobuf.parse(`
  syntax = "proto3";
  package google.rpc;
  message Any { string type_url = 1; bytes value = 2; }
  message Status { int32 code = 1; string message = 2; repeated Any details = 3; }
  message ErrorInfo { string reason = 1; string domain = 2; map<string, string> metadata = 3; }
`, { keepCase: true }).root;

/** The ErrorInfo (reason, domain) in a serialised google.rpc.Status, or null. */
export function errorInfo(statusBytes) {
  try {
    const status = rpcRoot.lookupType('google.rpc.Status').decode(statusBytes);
    for (const detail of status.details) {
      if (detail.type_url.endsWith('/google.rpc.ErrorInfo')) {
        const info = rpcRoot.lookupType('google.rpc.ErrorInfo').decode(detail.value);
        return { reason: info.reason, domain: info.domain };
      }
    }
  } catch {
    // A malformed trailer is no reason to hide the status code and message.
  }
  return null;
}
