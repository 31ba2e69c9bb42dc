// The browser worker's calls to the coordinator: gRPC-web over fetch() on the
// coordinator's one port (it serves its gRPC API as gRPC-web too, tonic-web), each worker
// call signed as protocol/src/call.rs specifies and stamped on the coordinator's clock.
//
//   const worker = new VolunteerWorker(await loadIdentity());
//   await worker.register({ url, name, account, team, cores });
//   await worker.heartbeat();
//
// A refused call throws a GrpcError: `status` (the gRPC code) and `message` (the
// coordinator's grpc-message, which names the problem and the fix).

import * as pb from './proto.js';
import { FUEL_RULES } from './guest.js';

const SERVICE = '/fallow.v1.Coordinator/';
const CALL_HEADER = 'fallow-call';
const NOW_HEADER = 'fallow-now';

/** gRPC status codes the worker acts on. */
export const Code = { OK: 0, UNKNOWN: 2, UNAVAILABLE: 14, UNAUTHENTICATED: 16 };

/** What this worker reports as its version (RegisterWorkerRequest.version; informational). */
export const VERSION = 'web-1';

/** A gRPC error answer: its status code and its message. */
export class GrpcError extends Error {
  constructor(status, message, headers = new Map()) {
    super(message);
    this.name = 'GrpcError';
    this.status = status;
    /** Response metadata (lowercase names): the HTTP head and the trailers. */
    this.headers = headers;
  }
}

function frame(message) {
  const out = new Uint8Array(5 + message.length);
  new DataView(out.buffer).setUint32(1, message.length, false);
  out.set(message, 5);
  return out;
}

function percentDecode(text) {
  try {
    return decodeURIComponent(text);
  } catch {
    return text; // not percent-encoded after all: show it as it came
  }
}

function parseTrailers(bytes, into) {
  for (const line of new TextDecoder().decode(bytes).split('\r\n')) {
    const at = line.indexOf(':');
    if (at > 0) into.set(line.slice(0, at).trim().toLowerCase(), line.slice(at + 1).trim());
  }
}

/**
 * One unary gRPC-web call: POSTs `body` (an encoded request) to `url` + the method's path
 * and returns the answer's encoded message. Reads the status from the trailers frame (flag
 * 0x80) or, for a trailers-only answer, from the response head; throws a GrpcError for any
 * status but OK.
 */
export async function grpcWeb(url, method, body, { headers = {}, fetch = globalThis.fetch, timeoutMs = 30_000 } = {}) {
  let response;
  try {
    response = await fetch(url.replace(/\/+$/, '') + SERVICE + method, {
      method: 'POST',
      headers: {
        'content-type': 'application/grpc-web+proto',
        'x-grpc-web': '1',
        accept: 'application/grpc-web+proto',
        ...headers,
      },
      body: frame(body),
      signal: AbortSignal.timeout(timeoutMs),
    });
  } catch (e) {
    throw new GrpcError(Code.UNAVAILABLE, `${method}: the coordinator at ${url} did not answer: ${e.message ?? e}`);
  }
  const meta = new Map();
  for (const [k, v] of response.headers) meta.set(k.toLowerCase(), v);
  if (!response.ok) {
    throw new GrpcError(
      response.status === 503 ? Code.UNAVAILABLE : Code.UNKNOWN,
      `${method}: HTTP ${response.status} from ${url}`,
      meta,
    );
  }
  const bytes = new Uint8Array(await response.arrayBuffer());
  const messages = [];
  for (let at = 0; at < bytes.length; ) {
    if (bytes.length - at < 5) throw new GrpcError(Code.UNKNOWN, `${method}: a truncated gRPC-web frame`, meta);
    const flags = bytes[at];
    const len = new DataView(bytes.buffer, bytes.byteOffset + at + 1, 4).getUint32(0, false);
    if (len > bytes.length - at - 5) throw new GrpcError(Code.UNKNOWN, `${method}: a truncated gRPC-web frame`, meta);
    const data = bytes.subarray(at + 5, at + 5 + len);
    if (flags & 0x80) parseTrailers(data, meta);
    else messages.push(data);
    at += 5 + len;
  }
  const status = meta.has('grpc-status') ? Number(meta.get('grpc-status')) : Code.UNKNOWN;
  if (status !== Code.OK) {
    const text = meta.has('grpc-status')
      ? percentDecode(meta.get('grpc-message') ?? '')
      : `${method}: the answer carried no grpc-status`;
    throw new GrpcError(status, text, meta);
  }
  if (messages.length !== 1) {
    throw new GrpcError(Code.UNKNOWN, `${method}: expected one message, got ${messages.length}`, meta);
  }
  return messages[0];
}

/** The local clock in Unix µs (sub-millisecond where the browser gives it). */
function localUs() {
  const ms = typeof performance !== 'undefined' ? performance.timeOrigin + performance.now() : Date.now();
  return BigInt(Math.round(ms * 1000));
}

/**
 * Stamps on the coordinator's clock (protocol::call::Stamper): the local clock plus the
 * offset last learnt from the coordinator, strictly increasing.
 */
export class Stamper {
  constructor(now = localUs) {
    this.now = now;
    this.offsetUs = 0n;
    this.lastUs = 0n;
  }

  /** Learns the coordinator's clock from a `now_ms` read just now. */
  learn(coordinatorMs) {
    this.offsetUs = BigInt(coordinatorMs) * 1000n - this.now();
  }

  next() {
    const now = this.now() + this.offsetUs;
    this.lastUs = now > this.lastUs ? now : this.lastUs + 1n;
    return this.lastUs;
  }
}

/**
 * The browser's platform string: `browser-<family>` (chromium, firefox, webkit), or
 * `browser-node` under node. The coordinator shows workers whose platform starts with
 * `browser-` as browser workers.
 */
export function detectPlatform(nav = globalThis.navigator) {
  if (typeof process !== 'undefined' && process.versions?.node) return 'browser-node';
  const brands = nav?.userAgentData?.brands?.map((b) => b.brand) ?? [];
  if (brands.some((b) => /Chrom|Edge|Opera/.test(b))) return 'browser-chromium';
  const ua = nav?.userAgent ?? '';
  if (/Firefox\//.test(ua)) return 'browser-firefox';
  if (/Chrom(e|ium)\/|Edg\//.test(ua)) return 'browser-chromium';
  if (/Safari\//.test(ua)) return 'browser-webkit';
  return 'browser-other';
}

/** A browser worker's session with one coordinator. */
export class VolunteerWorker {
  /**
   * `identity` from identity.js; `enrollToken` when the coordinator runs with
   * `--require-enrollment` (sent as `authorization: Bearer TOKEN` on every worker call).
   */
  constructor(identity, { enrollToken = '', fetch = globalThis.fetch, stamper = new Stamper() } = {}) {
    this.identity = identity;
    this.enrollToken = enrollToken;
    this.fetch = fetch;
    this.stamper = stamper;
    this.url = null;
    this.registration = null;
    this.peersVersion = 0n;
    this.peers = [];
    this.heartbeatMs = 0;
    this.leaseMs = 0;
    this.coordinatorKey = null;
    /** How often a refusal's `fallow-now` corrected this worker's clock. */
    this.clockCorrections = 0;
  }

  /**
   * One signed worker call: encodes `value`, stamps and signs it, and decodes the answer.
   * A refusal for a stamp off the coordinator's clock (it sends its clock in `fallow-now`)
   * corrects the stamper and is retried once.
   */
  async call(method, requestSchema, responseSchema, value) {
    if (!this.url) throw new Error(`${method}: register first`);
    const body = pb.encode(requestSchema, value);
    for (let corrected = false; ; corrected = true) {
      const headers = { [CALL_HEADER]: await this.identity.stamp(method, this.stamper.next(), body) };
      if (this.enrollToken) headers.authorization = `Bearer ${this.enrollToken}`;
      try {
        const answer = await grpcWeb(this.url, method, body, { headers, fetch: this.fetch });
        return pb.decode(responseSchema, answer);
      } catch (e) {
        const now = e instanceof GrpcError && e.status === Code.UNAUTHENTICATED ? Number(e.headers.get(NOW_HEADER)) : NaN;
        if (corrected || !Number.isSafeInteger(now) || now <= 0) throw e;
        this.stamper.learn(now);
        this.clockCorrections += 1;
      }
    }
  }

  /**
   * Registers with the coordinator at `url`: a signed RegisterWorkerRequest with no peer
   * address (a browser takes no inbound connections, like `fallow worker --no-inbound`).
   */
  async register({ url, name, account, team = '', cores = 1, platform = detectPlatform() }) {
    this.url = url;
    this.registration = { url, name, account, team, cores, platform };
    const signature = await this.identity.signRegistration({ name, account, team, peerAddr: '' });
    const r = await this.call('RegisterWorker', pb.RegisterWorkerRequest, pb.RegisterWorkerResponse, {
      publicKey: this.identity.publicKey,
      name,
      peerAddr: '',
      cores,
      version: VERSION,
      signature,
      account,
      team,
      platform,
      fuelRules: FUEL_RULES,
    });
    this.stamper.learn(r.nowMs);
    this.heartbeatMs = Number(r.heartbeatMs);
    this.leaseMs = Number(r.leaseMs);
    this.peers = r.peers;
    this.coordinatorKey = r.coordinatorKey;
    return r;
  }

  /**
   * A heartbeat: keeps the leases of `heldUnits` alive and reports what the worker does
   * (`idle`, `running` or `suspended` with a reason). Registers again when the coordinator
   * has forgotten this worker (`unknown_worker`).
   */
  async heartbeat({ heldUnits = [], runState = 'idle', stateReason = '' } = {}) {
    const r = await this.call('Heartbeat', pb.HeartbeatRequest, pb.HeartbeatResponse, {
      publicKey: this.identity.publicKey,
      heldUnits,
      peersVersion: this.peersVersion,
      runState,
      stateReason,
    });
    this.stamper.learn(r.nowMs);
    if (r.unknownWorker) {
      await this.register(this.registration);
      return r;
    }
    if (r.peersVersion !== this.peersVersion) {
      this.peersVersion = r.peersVersion;
      this.peers = r.peers;
    }
    return r;
  }

  /**
   * Leases up to `maxUnits` units (RequestWork). `acceptSubmitters` empty: any signed
   * project; `allowUnsigned` false: the browser worker runs only signed projects.
   */
  requestWork({ maxUnits, acceptSubmitters = [], allowUnsigned = false }) {
    return this.call('RequestWork', pb.WorkRequest, pb.WorkResponse, {
      publicKey: this.identity.publicKey,
      maxUnits,
      acceptSubmitters,
      allowUnsigned,
    });
  }

  /**
   * The module of `digest` (GetModule, not a signed call), metered by `fuelRules` (the
   * runtime's FUEL_RULES; 0: as submitted) and with NaNs canonicalised when
   * `canonicalNans`. Returns its bytes.
   */
  async getModule(digest, { fuelRules = FUEL_RULES, canonicalNans = false } = {}) {
    if (!this.url) throw new Error('GetModule: register first');
    const headers = this.enrollToken ? { authorization: `Bearer ${this.enrollToken}` } : {};
    const body = pb.encode(pb.GetModuleRequest, { digest, fuelRules, canonicalNans });
    const answer = await grpcWeb(this.url, 'GetModule', body, { headers, fetch: this.fetch, timeoutMs: 120_000 });
    return pb.decode(pb.GetModuleResponse, answer).module;
  }

  /** A unit ended without output here: `kind` is FailureKind::as_str (proto.js FailureKindNumber). */
  reportFailure(unitId, kind, detail) {
    const number = pb.FailureKindNumber[kind];
    if (!number) throw new Error(`ReportFailure: unknown failure kind ${kind}`);
    return this.call('ReportFailure', pb.FailureReport, pb.Ack, {
      publicKey: this.identity.publicKey,
      unitId,
      kind: number,
      detail,
      exitCode: 0, // as the native worker sends it: the detail says the code
    });
  }

  /** A (possibly partial) certificate: wire claims and our output. Returns the CertificateAck. */
  submitCertificate(unitId, claims, output) {
    return this.call('SubmitCertificate', pb.CertificateSubmission, pb.CertificateAck, {
      unitId,
      claims,
      output,
      submitterKey: this.identity.publicKey,
    });
  }

  /** Disagreeing revealed claims (wire form). */
  reportDispute(unitId, claims) {
    return this.call('ReportDispute', pb.Dispute, pb.Ack, { publicKey: this.identity.publicKey, unitId, claims });
  }

  /**
   * Proof that a worker filed two different commitments for one unit (wire Commitments,
   * as the boards showed them): ReportMisbehaviour with us as the reporter.
   */
  reportMisbehaviour(commitment, other) {
    return this.call('ReportMisbehaviour', pb.Evidence, pb.Ack, {
      reporterKey: this.identity.publicKey,
      commitment,
      other,
    });
  }

  /** Hands leased units back. */
  returnUnits(unitIds) {
    return this.call('ReturnUnits', pb.ReturnUnitsRequest, pb.Ack, { publicKey: this.identity.publicKey, unitIds });
  }

  /**
   * One board exchange through the coordinator (RelayExchange): `boardKey` the board's
   * worker key, `exchange` a wire BoardExchange of our own commitments and reveals.
   * Returns the board's BoardViews.
   */
  relayExchange(boardKey, exchange) {
    return this.call('RelayExchange', pb.RelayExchangeRequest, pb.BoardViews, {
      publicKey: this.identity.publicKey,
      boardKey,
      exchange,
    });
  }
}
