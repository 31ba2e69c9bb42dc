// A minimal protobuf (proto3) wire encoder and decoder for the browser worker, with the
// schemas of the messages it sends and receives (proto/proto/fallow.proto).
//
// The coordinator checks a call's signature over BLAKE3 of the request as prost encodes it
// (it decodes the body and encodes it again: protocol::call), so `encode` writes exactly
// prost's bytes for the same values: fields in field-number order, proto3 defaults (0,
// false, "", empty bytes, empty lists) left out, repeated numbers packed, each element of
// a repeated message or bytes field as its own record. `decode` accepts what any proto3
// writer sends (packed or unpacked numbers) and skips unknown fields.
//
// Types: 'uint64' (a BigInt; a Number is accepted when encoding), 'uint32' (a Number),
// 'int32' and 'enum' (a Number; negative ones sign-extended to ten bytes, as prost does),
// 'bool', 'string', 'bytes' (a Uint8Array), or a schema object for a nested message.

const VARINT = 0;
const FIXED64 = 1;
const LEN = 2;
const FIXED32 = 5;

const MAX_U64 = (1n << 64n) - 1n;

/** Scalar types written as varints (packed when repeated). */
const NUMERIC = new Set(['uint64', 'uint32', 'int32', 'enum', 'bool']);

/** A field: number, name, type, and whether it repeats. */
function field(no, name, type, repeated = false) {
  return { no, name, type, repeated };
}

/** A message schema: its name (for errors) and its fields in field-number order. */
function message(name, fields) {
  const sorted = [...fields].sort((a, b) => a.no - b.no);
  return { name, fields: sorted, byNo: new Map(sorted.map((f) => [f.no, f])) };
}

export const PeerInfo = message('PeerInfo', [
  field(1, 'publicKey', 'bytes'),
  field(2, 'addr', 'string'),
]);

export const RegisterWorkerRequest = message('RegisterWorkerRequest', [
  field(1, 'publicKey', 'bytes'),
  field(2, 'name', 'string'),
  field(3, 'peerAddr', 'string'),
  field(4, 'cores', 'uint32'),
  field(5, 'version', 'string'),
  field(6, 'signature', 'bytes'),
  field(7, 'account', 'string'),
  field(8, 'team', 'string'),
  field(9, 'platform', 'string'),
  field(10, 'fuelRules', 'uint32'),
]);

export const RegisterWorkerResponse = message('RegisterWorkerResponse', [
  field(1, 'heartbeatMs', 'uint64'),
  field(2, 'leaseMs', 'uint64'),
  field(3, 'peers', PeerInfo, true),
  field(4, 'nowMs', 'uint64'),
  field(5, 'coordinatorKey', 'bytes'),
  field(6, 'membershipCredential', 'bytes'),
  field(7, 'peerWarning', 'string'),
]);

export const HeartbeatRequest = message('HeartbeatRequest', [
  field(1, 'publicKey', 'bytes'),
  field(2, 'heldUnits', 'uint64', true),
  field(3, 'peersVersion', 'uint64'),
  field(4, 'runState', 'string'),
  field(5, 'stateReason', 'string'),
]);

export const HeartbeatResponse = message('HeartbeatResponse', [
  field(1, 'settledUnits', 'uint64', true),
  field(2, 'peersVersion', 'uint64'),
  field(3, 'peers', PeerInfo, true),
  field(4, 'unknownWorker', 'bool'),
  field(5, 'nowMs', 'uint64'),
  field(6, 'membershipCredential', 'bytes'),
]);

export const Limits = message('Limits', [
  field(1, 'fuel', 'uint64'),
  field(2, 'memoryMb', 'uint32'),
  field(3, 'wallSeconds', 'uint32'),
  field(4, 'maxOutputBytes', 'uint64'),
  field(5, 'nanCanonicalization', 'bool'),
  field(6, 'maxCheckpointBytes', 'uint64'),
]);

export const DataFile = message('DataFile', [
  field(1, 'name', 'string'),
  field(2, 'size', 'uint64'),
  field(3, 'digest', 'bytes'),
]);

export const LeaseTicket = message('LeaseTicket', [
  field(1, 'expiresMs', 'uint64'),
  field(2, 'signature', 'bytes'),
]);

export const WorkRequest = message('WorkRequest', [
  field(1, 'publicKey', 'bytes'),
  field(2, 'maxUnits', 'uint32'),
  field(3, 'acceptSubmitters', 'bytes', true),
  field(4, 'allowUnsigned', 'bool'),
]);

export const Assignment = message('Assignment', [
  field(1, 'projectId', 'uint64'),
  field(2, 'unitId', 'uint64'),
  field(3, 'unitName', 'string'),
  field(4, 'input', 'bytes'),
  field(5, 'moduleDigest', 'bytes'),
  field(6, 'limits', Limits),
  field(7, 'quorum', 'uint32'),
  field(8, 'leaseMs', 'uint64'),
  field(9, 'submitterKey', 'bytes'),
  field(10, 'terms', 'bytes'),
  field(11, 'signature', 'bytes'),
  field(12, 'ticket', LeaseTicket),
  field(20, 'data', DataFile, true),
]);

export const WorkResponse = message('WorkResponse', [
  field(1, 'assignments', Assignment, true),
  field(2, 'retryAfterMs', 'uint64'),
  field(3, 'reason', 'string'),
]);

export const GetModuleRequest = message('GetModuleRequest', [
  field(1, 'digest', 'bytes'),
  field(2, 'fuelRules', 'uint32'),
  field(3, 'canonicalNans', 'bool'),
]);

export const GetModuleResponse = message('GetModuleResponse', [field(1, 'module', 'bytes')]);

/** `FailureKind` (the proto enum) by `protocol::FailureKind::as_str`. */
export const FailureKindNumber = Object.freeze({
  fuel_exhausted: 1,
  timeout: 2,
  memory_exhausted: 3,
  stack_overflow: 4,
  output_too_large: 5,
  trap: 6,
  exit_code: 7,
  bad_module: 8,
  checkpoint_too_large: 9,
  bad_signature: 10,
});

export const FailureReport = message('FailureReport', [
  field(1, 'publicKey', 'bytes'),
  field(2, 'unitId', 'uint64'),
  field(3, 'kind', 'enum'),
  field(4, 'detail', 'string'),
  field(5, 'exitCode', 'int32'),
]);

export const Ack = message('Ack', []);

export const Claim = message('Claim', [
  field(1, 'projectId', 'uint64'),
  field(2, 'unitId', 'uint64'),
  field(3, 'digest', 'bytes'),
  field(4, 'fuel', 'uint64'),
  field(5, 'workerKey', 'bytes'),
  field(6, 'signature', 'bytes'),
  field(7, 'salt', 'bytes'),
]);

export const Commitment = message('Commitment', [
  field(1, 'projectId', 'uint64'),
  field(2, 'unitId', 'uint64'),
  field(3, 'workerKey', 'bytes'),
  field(4, 'seal', 'bytes'),
  field(5, 'signature', 'bytes'),
  field(6, 'ticket', LeaseTicket),
]);

export const CertificateSubmission = message('CertificateSubmission', [
  field(1, 'unitId', 'uint64'),
  field(2, 'claims', Claim, true),
  field(3, 'output', 'bytes'),
  field(4, 'submitterKey', 'bytes'),
]);

export const CertificateAck = message('CertificateAck', [
  field(1, 'accepted', 'bool'),
  field(2, 'recorded', 'bool'),
]);

export const Dispute = message('Dispute', [
  field(1, 'publicKey', 'bytes'),
  field(2, 'unitId', 'uint64'),
  field(3, 'claims', Claim, true),
]);

/** Proof that a worker changed its answer (ReportMisbehaviour): `claim` or `other` set. */
export const Evidence = message('Evidence', [
  field(1, 'reporterKey', 'bytes'),
  field(2, 'commitment', Commitment),
  field(3, 'claim', Claim),
  field(4, 'other', Commitment),
]);

export const ReturnUnitsRequest = message('ReturnUnitsRequest', [
  field(1, 'publicKey', 'bytes'),
  field(2, 'unitIds', 'uint64', true),
]);

export const BoardExchange = message('BoardExchange', [
  field(1, 'commitments', Commitment, true),
  field(2, 'reveals', Claim, true),
  field(3, 'wantUnits', 'uint64', true),
]);

export const UnitView = message('UnitView', [
  field(1, 'unitId', 'uint64'),
  field(2, 'commitments', 'uint32'),
  field(3, 'reveals', Claim, true),
  field(4, 'committed', Commitment, true),
]);

export const BoardRejection = message('BoardRejection', [
  field(1, 'unitId', 'uint64'),
  field(2, 'reason', 'string'),
]);

export const BoardViews = message('BoardViews', [
  field(1, 'views', UnitView, true),
  field(2, 'rejected', BoardRejection, true),
]);

export const RelayExchangeRequest = message('RelayExchangeRequest', [
  field(1, 'publicKey', 'bytes'),
  field(2, 'boardKey', 'bytes'),
  field(3, 'exchange', BoardExchange),
]);

// ---------------------------------------------------------------------------------------
// Encoding

class Writer {
  constructor() {
    this.parts = [];
    this.length = 0;
  }

  byte(b) {
    this.push(Uint8Array.of(b));
  }

  push(bytes) {
    this.parts.push(bytes);
    this.length += bytes.length;
  }

  varint(value) {
    let v = BigInt(value);
    if (v < 0n || v > MAX_U64) throw new RangeError(`varint out of range: ${value}`);
    const out = [];
    while (v >= 0x80n) {
      out.push(Number(v & 0x7fn) | 0x80);
      v >>= 7n;
    }
    out.push(Number(v));
    this.push(Uint8Array.from(out));
  }

  key(no, wireType) {
    this.varint((no << 3) | wireType);
  }

  finish() {
    const out = new Uint8Array(this.length);
    let at = 0;
    for (const p of this.parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }
}

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder('utf-8', { fatal: true });

function isDefault(type, v) {
  if (v === undefined || v === null) return true;
  switch (type) {
    case 'uint64':
    case 'uint32':
    case 'int32':
    case 'enum':
      return BigInt(v) === 0n;
    case 'bool':
      return v === false;
    case 'string':
    case 'bytes':
      return v.length === 0;
    default:
      return false; // a nested message that is present is written, even when empty
  }
}

function scalarBytes(type, v) {
  if (type === 'string') return utf8.encode(v);
  if (type === 'bytes') {
    if (!(v instanceof Uint8Array)) throw new TypeError('bytes fields take a Uint8Array');
    return v;
  }
  return null;
}

function writeOne(w, f, v) {
  const { no, type } = f;
  if (typeof type === 'object') {
    const inner = encode(type, v);
    w.key(no, LEN);
    w.varint(inner.length);
    w.push(inner);
  } else if (type === 'string' || type === 'bytes') {
    const b = scalarBytes(type, v);
    w.key(no, LEN);
    w.varint(b.length);
    w.push(b);
  } else if (type === 'bool') {
    w.key(no, VARINT);
    w.byte(v ? 1 : 0);
  } else {
    if (type === 'uint32' && (BigInt(v) < 0n || BigInt(v) > 0xffffffffn)) {
      throw new RangeError(`${f.name}: uint32 out of range: ${v}`);
    }
    if ((type === 'int32' || type === 'enum') && (BigInt(v) < -0x80000000n || BigInt(v) > 0x7fffffffn)) {
      throw new RangeError(`${f.name}: int32 out of range: ${v}`);
    }
    w.key(no, VARINT);
    // prost writes a negative int32 (or enum) sign-extended to 64 bits: ten bytes.
    w.varint(type === 'int32' || type === 'enum' ? BigInt.asUintN(64, BigInt(v)) : v);
  }
}

/** Encodes `value` (an object with the schema's field names) as prost would. */
export function encode(schema, value = {}) {
  const w = new Writer();
  for (const f of schema.fields) {
    const v = value[f.name];
    if (f.repeated) {
      const list = v ?? [];
      if (list.length === 0) continue;
      if (NUMERIC.has(f.type)) {
        // proto3 packs repeated numbers: one record holding every value.
        const packed = new Writer();
        for (const x of list) {
          if (f.type === 'bool') packed.byte(x ? 1 : 0);
          else if (f.type === 'int32' || f.type === 'enum') packed.varint(BigInt.asUintN(64, BigInt(x)));
          else packed.varint(x);
        }
        w.key(f.no, LEN);
        w.varint(packed.length);
        w.push(packed.finish());
      } else {
        for (const x of list) writeOne(w, f, x);
      }
    } else if (!isDefault(f.type, v)) {
      writeOne(w, f, v);
    }
  }
  return w.finish();
}

// ---------------------------------------------------------------------------------------
// Decoding

class Reader {
  constructor(bytes, what) {
    this.bytes = bytes;
    this.at = 0;
    this.what = what;
  }

  fail(problem) {
    return new Error(`${this.what}: ${problem} at byte ${this.at}`);
  }

  done() {
    return this.at >= this.bytes.length;
  }

  varint() {
    let v = 0n;
    for (let shift = 0n; shift < 70n; shift += 7n) {
      if (this.at >= this.bytes.length) throw this.fail('truncated varint');
      const b = this.bytes[this.at++];
      v |= BigInt(b & 0x7f) << shift;
      if ((b & 0x80) === 0) {
        if (v > MAX_U64) throw this.fail('varint over 64 bits');
        return v;
      }
    }
    throw this.fail('varint longer than 10 bytes');
  }

  take(n) {
    if (n > this.bytes.length - this.at) throw this.fail(`truncated field (${n} bytes)`);
    const out = this.bytes.subarray(this.at, this.at + n);
    this.at += n;
    return out;
  }

  lengthDelimited() {
    const n = this.varint();
    if (n > BigInt(this.bytes.length - this.at)) throw this.fail('length past the end');
    return this.take(Number(n));
  }

  skip(wireType) {
    switch (wireType) {
      case VARINT:
        this.varint();
        break;
      case FIXED64:
        this.take(8);
        break;
      case LEN:
        this.lengthDelimited();
        break;
      case FIXED32:
        this.take(4);
        break;
      default:
        throw this.fail(`unsupported wire type ${wireType}`);
    }
  }
}

function scalarFrom(type, raw, r) {
  switch (type) {
    case 'uint64':
      return raw;
    case 'uint32':
      // prost truncates a wider varint to 32 bits; so do we.
      return Number(raw & 0xffffffffn);
    case 'int32':
    case 'enum':
      // prost reads the low 32 bits as signed.
      return Number(BigInt.asIntN(32, raw));
    case 'bool':
      return raw !== 0n;
    default:
      throw r.fail(`wire type does not fit a ${type}`);
  }
}

function defaultOf(f) {
  if (f.repeated) return [];
  switch (f.type) {
    case 'uint64':
      return 0n;
    case 'uint32':
    case 'int32':
    case 'enum':
      return 0;
    case 'bool':
      return false;
    case 'string':
      return '';
    case 'bytes':
      return new Uint8Array(0);
    default:
      return null; // an absent nested message
  }
}

/** Decodes `bytes` as a `schema` message: every field present, defaults filled in. */
export function decode(schema, bytes) {
  const out = {};
  for (const f of schema.fields) out[f.name] = defaultOf(f);
  const r = new Reader(bytes, schema.name);
  while (!r.done()) {
    const key = r.varint();
    const no = Number(key >> 3n);
    const wireType = Number(key & 7n);
    if (no === 0) throw r.fail('field number 0');
    const f = schema.byNo.get(no);
    if (!f) {
      r.skip(wireType);
      continue;
    }
    const numeric = NUMERIC.has(f.type);
    let value;
    if (typeof f.type === 'object') {
      if (wireType !== LEN) throw r.fail(`${f.name} is a message`);
      value = decode(f.type, r.lengthDelimited());
    } else if (f.type === 'string' || f.type === 'bytes') {
      if (wireType !== LEN) throw r.fail(`${f.name} is length-delimited`);
      const b = r.lengthDelimited();
      if (f.type === 'string') {
        try {
          value = fromUtf8.decode(b);
        } catch {
          throw r.fail(`${f.name} is not UTF-8`);
        }
      } else {
        value = b.slice();
      }
    } else if (numeric && wireType === LEN && f.repeated) {
      // A packed run of varints.
      const inner = new Reader(r.lengthDelimited(), `${schema.name}.${f.name}`);
      while (!inner.done()) out[f.name].push(scalarFrom(f.type, inner.varint(), inner));
      continue;
    } else if (numeric && wireType === VARINT) {
      value = scalarFrom(f.type, r.varint(), r);
    } else {
      throw r.fail(`wire type ${wireType} does not fit ${f.name}`);
    }
    if (f.repeated) out[f.name].push(value);
    else out[f.name] = value; // the last occurrence wins, as in proto3
  }
  return out;
}

/** Lowercase hex of bytes. */
export function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}
