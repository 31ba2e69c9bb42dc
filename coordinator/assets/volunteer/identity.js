// The browser worker's identity: an ed25519 key pair made and used through WebCrypto
// (node 20+, Chromium 137+), and the bytes it signs (protocol/src/identity.rs,
// protocol/src/call.rs).
//
// In a browser the CryptoKeyPair is kept in IndexedDB (database `fallow-volunteer`, store
// `keys`, key `worker`) as a structured clone, with the private key non-extractable: the
// page's own script can sign with it but no script can read it out. The same tab (and
// every tab of the same origin) keeps the same worker id, so its credit and reputation
// stay with it. Under node (the tests) the key lives in memory only.

import { hash as blake3 } from './blake3.js';
import { hex } from './proto.js';

const REGISTER_CONTEXT = new TextEncoder().encode('fallow/register/v2\0');
const CALL_CONTEXT = new TextEncoder().encode('fallow/call/v1\0');

/** PKCS#8 (RFC 8410) wrapping of a raw ed25519 secret: this prefix, then the 32 bytes. */
const PKCS8_ED25519_PREFIX = Uint8Array.of(
  0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
);

const DB = 'fallow-volunteer';
const STORE = 'keys';
const KEY = 'worker';

const utf8 = new TextEncoder();

/** The byte arrays `parts`, one after another. */
export function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** `n` as 8 little-endian bytes (Rust's `u64::to_le_bytes`). */
export function u64le(n) {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, BigInt(n), true);
  return out;
}

/**
 * What a registration signature covers (protocol::identity::Registration::message):
 * "fallow/register/v2\0", then name, account, team and peer_addr, each as its byte length
 * (u64 LE) and its UTF-8 bytes.
 */
export function registrationMessage({ name, account, team = '', peerAddr = '' }) {
  const parts = [REGISTER_CONTEXT];
  for (const f of [name, account, team, peerAddr]) {
    const b = utf8.encode(f);
    parts.push(u64le(b.length), b);
  }
  return concat(parts);
}

/**
 * What a call signature covers (protocol::call::message): "fallow/call/v1\0",
 * len(method) (u64 LE), the method (e.g. "Heartbeat"), the timestamp in µs (u64 LE) and
 * BLAKE3 of the request body as prost encodes it.
 */
export function callMessage(method, timestampUs, body) {
  const m = utf8.encode(method);
  return concat([CALL_CONTEXT, u64le(m.length), m, u64le(timestampUs), blake3(body)]);
}

/** A worker key: sign with it, name it by its raw 32-byte public key. */
export class Identity {
  constructor(keyPair, publicKey, stored = false) {
    this.keyPair = keyPair;
    /** Whether the key is kept in the browser's storage (false: this page only). */
    this.stored = stored;
    /** The raw public key (32 bytes): the worker's id on the wire. */
    this.publicKey = publicKey;
    /** The id as the coordinator shows it (hex). */
    this.id = hex(publicKey);
  }

  static async fromKeyPair(keyPair, stored = false) {
    const raw = new Uint8Array(await crypto.subtle.exportKey('raw', keyPair.publicKey));
    return new Identity(keyPair, raw, stored);
  }

  /**
   * The key whose 32-byte ed25519 secret is `seed` (`protocol::Identity::from_seed`), for
   * tests and vectors: WebCrypto imports the seed as a PKCS#8 key and reads the public
   * half from its JWK. Not for real workers (their key never leaves WebCrypto).
   */
  static async fromSeed(seed) {
    if (!(seed instanceof Uint8Array) || seed.length !== 32) throw new TypeError('fromSeed: 32 bytes');
    const pkcs8 = concat([PKCS8_ED25519_PREFIX, seed]);
    const privateKey = await crypto.subtle.importKey('pkcs8', pkcs8, { name: 'Ed25519' }, true, ['sign']);
    const jwk = await crypto.subtle.exportKey('jwk', privateKey);
    const raw = Uint8Array.from(atob(jwk.x.replace(/-/g, '+').replace(/_/g, '/')), (c) => c.charCodeAt(0));
    const publicKey = await crypto.subtle.importKey('raw', raw, { name: 'Ed25519' }, true, ['verify']);
    return new Identity({ privateKey, publicKey }, raw);
  }

  /** A fresh key pair whose private half cannot be exported. */
  static async generate() {
    const pair = await crypto.subtle.generateKey({ name: 'Ed25519' }, false, ['sign', 'verify']);
    return Identity.fromKeyPair(pair);
  }

  /** ed25519 signature (64 bytes) over `bytes`, as they are. */
  async sign(bytes) {
    return new Uint8Array(await crypto.subtle.sign({ name: 'Ed25519' }, this.keyPair.privateKey, bytes));
  }

  /** RegisterWorkerRequest.signature for this registration. */
  signRegistration(registration) {
    return this.sign(registrationMessage(registration));
  }

  /** The `fallow-call` header value: `TIMESTAMP.SIGNATURE_HEX` (protocol::call::CallStamp). */
  async stamp(method, timestampUs, body) {
    const signature = await this.sign(callMessage(method, timestampUs, body));
    return `${BigInt(timestampUs)}.${hex(signature)}`;
  }
}

function request(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

async function openDb(indexedDB) {
  const open = indexedDB.open(DB, 1);
  open.onupgradeneeded = () => open.result.createObjectStore(STORE);
  return request(open);
}

/**
 * The worker's identity: in a browser the one kept in IndexedDB, made and stored on first
 * use; where there is no IndexedDB (node), a fresh one kept in memory. Two tabs racing on
 * first use end up with the key the first one stored (`add` refuses the second).
 */
export async function loadIdentity({ indexedDB = globalThis.indexedDB } = {}) {
  if (!indexedDB) return Identity.generate();
  let db;
  try {
    db = await openDb(indexedDB);
  } catch {
    // Storage refused (e.g. a private window that allows none): a key for this page
    // only. `stored` tells the page, which can say that credit will not carry over.
    const fresh = await Identity.generate();
    fresh.stored = false;
    return fresh;
  }
  try {
    const read = async () => request(db.transaction(STORE).objectStore(STORE).get(KEY));
    const kept = await read();
    if (kept) return Identity.fromKeyPair(kept, true);
    const fresh = await Identity.generate();
    try {
      await request(db.transaction(STORE, 'readwrite').objectStore(STORE).add(fresh.keyPair, KEY));
      fresh.stored = true;
      return fresh;
    } catch {
      const other = await read();
      if (other) return Identity.fromKeyPair(other, true);
      throw new Error('the worker key could not be stored in IndexedDB');
    }
  } finally {
    db.close();
  }
}
