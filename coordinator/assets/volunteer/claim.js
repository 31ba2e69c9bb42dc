// Signed claims with commit–reveal, rendezvous boards, submit ranks and the submitter's
// unit signatures, laid out byte for byte as `protocol` lays them out:
//
// - the seal and the signed commitment bytes: protocol/src/claim.rs;
// - a unit's boards: protocol/src/rendezvous.rs (`boards`);
// - who uploads a complete certificate first: worker/src/gossip.rs (`submit_rank`);
// - what a submitter's unit signature covers: protocol/src/provenance.rs
//   (`UnitTerms::message`).
//
// `test/fixtures/protocol-vectors.json` holds values computed by `protocol` itself
// (`protocol/tests/volunteer_vectors.rs`); `test/claim.test.mjs` checks this file against
// them. Signatures are WebCrypto ed25519, which is deterministic: a signature equal to
// protocol's over the same seed proves the bytes signed are the same.
//
// In this file a claim is `{ project, unit, digest, fuel, worker, salt, signature }` and a
// commitment `{ project, unit, worker, seal, signature, ticket }`: project, unit and fuel
// BigInts, the rest Uint8Arrays (ticket: `{ expiresMs, signature }` or null).

import { deriveKey, hash as blake3 } from './blake3.js';
import { concat, u64le } from './identity.js';
import { hex } from './proto.js';

const COMMITMENT_CONTEXT = new TextEncoder().encode('fallow/commitment/v1\0');
const SEAL_CONTEXT = 'fallow 2026 claim seal v1';
const RENDEZVOUS_CONTEXT = 'fallow 2026 rendezvous v1';
const UNIT_CONTEXT = new TextEncoder().encode('fallow/project-unit/v1\0');

/** `protocol::rendezvous::BOARDS_PER_UNIT`. */
export const BOARDS_PER_UNIT = 2;

/** `protocol::certificate::MAX_CLAIMS`: most claims one unit's tally keeps. */
export const MAX_CLAIMS = 64;

function u32le(n) {
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, Number(n), true);
  return out;
}

/** Byte-wise comparison, as Rust orders `[u8; N]`: negative, 0 or positive. */
export function compareBytes(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

export function equalBytes(a, b) {
  return a.length === b.length && compareBytes(a, b) === 0;
}

/** The seal (protocol::claim::seal): derive_key(digest ‖ fuel ‖ worker ‖ project ‖ unit ‖ salt). */
export function seal({ project, unit, worker, digest, fuel, salt }) {
  return deriveKey(SEAL_CONTEXT, concat([digest, u64le(fuel), worker, u64le(project), u64le(unit), salt]));
}

/** What a commitment's signature covers (protocol::claim::commitment_bytes). */
export function commitmentBytes(project, unit, worker, sealBytes) {
  return concat([COMMITMENT_CONTEXT, u64le(project), u64le(unit), worker, sealBytes]);
}

/**
 * Seals and signs a claim (protocol::Claim::sign): `identity` from identity.js, `digest`
 * the BLAKE3 of the output, `salt` fresh random bytes unless given (tests).
 */
export async function signClaim(identity, { project, unit, digest, fuel, salt = null }) {
  const s = salt ?? crypto.getRandomValues(new Uint8Array(32));
  const claim = {
    project: BigInt(project),
    unit: BigInt(unit),
    digest,
    fuel: BigInt(fuel),
    worker: identity.publicKey,
    salt: s,
    signature: null,
  };
  claim.signature = await identity.sign(commitmentBytes(claim.project, claim.unit, claim.worker, seal(claim)));
  return claim;
}

/** The commitment to publish before revealing `claim` (protocol::Claim::commitment). */
export function commitmentOf(claim, ticket = null) {
  return {
    project: claim.project,
    unit: claim.unit,
    worker: claim.worker,
    seal: seal(claim),
    signature: claim.signature,
    ticket,
  };
}

/** Whether `claim` opens `commitment` (same unit, worker and seal; signature not checked). */
export function opens(claim, commitment) {
  return (
    claim.project === commitment.project &&
    claim.unit === commitment.unit &&
    equalBytes(claim.worker, commitment.worker) &&
    equalBytes(seal(claim), commitment.seal)
  );
}

const keys = new Map();

async function verifyKey(raw) {
  const id = hex(raw);
  let key = keys.get(id);
  if (!key) {
    key = crypto.subtle.importKey('raw', raw, { name: 'Ed25519' }, false, ['verify']);
    if (keys.size > 4096) keys.clear();
    keys.set(id, key);
  }
  return key;
}

/**
 * Whether `signature` by the ed25519 key `publicKey` (raw 32 bytes) covers `message`.
 * WebCrypto's verify; `protocol` uses `verify_strict`, which also refuses small-order keys
 * and non-canonical signatures (which no honest signer makes).
 */
export async function verifySignature(publicKey, message, signature) {
  if (!(publicKey instanceof Uint8Array) || publicKey.length !== 32) return false;
  if (!(signature instanceof Uint8Array) || signature.length !== 64) return false;
  try {
    return await crypto.subtle.verify({ name: 'Ed25519' }, await verifyKey(publicKey), signature, message);
  } catch {
    return false; // not a key WebCrypto takes
  }
}

/** Checks a commitment's signature. */
export function verifyCommitment(c) {
  if (!(c.seal instanceof Uint8Array) || c.seal.length !== 32) return Promise.resolve(false);
  return verifySignature(c.worker, commitmentBytes(c.project, c.unit, c.worker, c.seal), c.signature);
}

/** Checks a claim: its signature over the recomputed seal. */
export function verifyClaim(c) {
  if (!(c.digest instanceof Uint8Array) || c.digest.length !== 32) return Promise.resolve(false);
  if (!(c.salt instanceof Uint8Array) || c.salt.length !== 32) return Promise.resolve(false);
  return verifySignature(c.worker, commitmentBytes(c.project, c.unit, c.worker, seal(c)), c.signature);
}

// ---------------------------------------------------------------------------------------
// Wire forms (proto.js's Claim and Commitment)

export function claimToWire(c) {
  return {
    projectId: c.project,
    unitId: c.unit,
    digest: c.digest,
    fuel: c.fuel,
    workerKey: c.worker,
    signature: c.signature,
    salt: c.salt,
  };
}

export function claimFromWire(w) {
  return {
    project: w.projectId,
    unit: w.unitId,
    digest: w.digest,
    fuel: w.fuel,
    worker: w.workerKey,
    salt: w.salt,
    signature: w.signature,
  };
}

export function commitmentToWire(c) {
  return {
    projectId: c.project,
    unitId: c.unit,
    workerKey: c.worker,
    seal: c.seal,
    signature: c.signature,
    ticket: c.ticket ?? null,
  };
}

export function commitmentFromWire(w) {
  return {
    project: w.projectId,
    unit: w.unitId,
    worker: w.workerKey,
    seal: w.seal,
    signature: w.signature,
    ticket: w.ticket,
  };
}

// ---------------------------------------------------------------------------------------
// Rendezvous

function score(project, unit, member) {
  return deriveKey(RENDEZVOUS_CONTEXT, concat([u64le(project), u64le(unit), member]), 8);
}

/**
 * The `k` boards of a unit among `members` (raw 32-byte keys), as
 * protocol::rendezvous::boards picks them: highest score first, ties by the higher key,
 * each member once.
 */
export function boards(project, unit, members, k) {
  const scored = members.map((m) => ({ s: score(BigInt(project), BigInt(unit), m), m }));
  scored.sort((a, b) => compareBytes(b.s, a.s) || compareBytes(b.m, a.m));
  const out = [];
  for (const { m } of scored) {
    if (out.length > 0 && equalBytes(out[out.length - 1], m)) continue; // dedup_by: adjacent
    out.push(m);
  }
  return out.slice(0, k);
}

/**
 * Who uploads a complete certificate first (worker::gossip::submit_rank): our position
 * among the claimants as rendezvous ranks them for the unit; the number of claimants when
 * we are not one of them.
 */
export function submitRank(project, unit, me, claims) {
  const workers = claims.map((c) => c.worker);
  const at = boards(project, unit, workers, workers.length).findIndex((w) => equalBytes(w, me));
  return at < 0 ? workers.length : at;
}

// ---------------------------------------------------------------------------------------
// The submitter's unit signature

/**
 * What a submitter's unit signature covers (protocol::provenance::UnitTerms::message).
 * `limits` in protocol's snake_case form (the numbers BigInt or Number); `data` the
 * data-list digest or null (a browser worker runs no unit with data files).
 */
export function unitTermsMessage({ terms, module, limits, quorum, name, input, data = null }) {
  const nameBytes = new TextEncoder().encode(name);
  const parts = [
    UNIT_CONTEXT,
    terms,
    module,
    u64le(limits.fuel),
    u32le(limits.memory_mb),
    u32le(limits.wall_seconds),
    u64le(limits.max_output_bytes),
    Uint8Array.of(limits.nan_canonicalization ? 1 : 0),
    u64le(limits.max_checkpoint_bytes),
    u32le(quorum),
    u64le(nameBytes.length),
    nameBytes,
    blake3(input),
  ];
  if (data) parts.push(data);
  return concat(parts);
}

/** `protocol::Limits::default().max_checkpoint_bytes`, what a wire 0 stands for. */
const DEFAULT_MAX_CHECKPOINT_BYTES = 16n << 20n;

/**
 * An assignment's wire limits (proto.js `Limits`) in protocol's form, as
 * `proto::wire::limits_from_wire` reads them (0 checkpoint bytes: the default); null when
 * absent.
 */
export function limitsFromWire(l) {
  if (!l) return null;
  return {
    fuel: l.fuel,
    memory_mb: l.memoryMb,
    wall_seconds: l.wallSeconds,
    max_output_bytes: l.maxOutputBytes,
    nan_canonicalization: l.nanCanonicalization,
    max_checkpoint_bytes: l.maxCheckpointBytes === 0n ? DEFAULT_MAX_CHECKPOINT_BYTES : l.maxCheckpointBytes,
  };
}

/**
 * Checks a (wire) assignment's submitter signature before it runs, as
 * worker::provenance::Policy::check does for a worker that accepts any signed project:
 * `{ ok: true }`, or `{ ok: false, handBack, reason }` (handBack: not ours to run, e.g.
 * unsigned; otherwise a bad signature, reported as the failure `bad_signature`).
 */
export async function checkUnitSignature(a) {
  if (a.submitterKey.length === 0) {
    return {
      ok: false,
      handBack: true,
      reason: `project ${a.projectId} is not signed (submitted before projects were signed); the browser worker runs only signed projects`,
    };
  }
  const limits = limitsFromWire(a.limits);
  const malformed = (what) => ({ ok: false, handBack: false, reason: `unit ${JSON.stringify(a.unitName)}: ${what}` });
  if (!limits) return malformed('the assignment has no limits');
  if (a.terms.length !== 32) return malformed(`terms is ${a.terms.length} bytes, expected 32`);
  if (a.moduleDigest.length !== 32) return malformed(`module digest is ${a.moduleDigest.length} bytes, expected 32`);
  if (a.submitterKey.length !== 32) return malformed(`submitter key is ${a.submitterKey.length} bytes, expected 32`);
  if ((a.data ?? []).length > 0) {
    return { ok: false, handBack: true, reason: 'the project has data files (/data), which the browser worker does not support' };
  }
  const message = unitTermsMessage({
    terms: a.terms,
    module: a.moduleDigest,
    limits,
    quorum: a.quorum,
    name: a.unitName,
    input: a.input,
  });
  if (await verifySignature(a.submitterKey, message, a.signature)) return { ok: true };
  return {
    ok: false,
    handBack: false,
    reason:
      `the signature on unit ${JSON.stringify(a.unitName)} does not verify under submitter key ${hex(a.submitterKey)}: ` +
      'its module, limits, input, data files or project terms are not what that key signed',
  };
}
