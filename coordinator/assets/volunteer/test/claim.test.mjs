// claim.js against values `protocol` computed itself (fixtures/protocol-vectors.json, kept
// current by `cargo test -p protocol --test volunteer_vectors`): seals, commitment
// signatures, rendezvous boards, submit ranks and the submitter's unit signatures. ed25519
// is deterministic, so a JavaScript signature equal to protocol's, from the same seed, is
// one protocol verifies.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

import * as pb from '../proto.js';
import { Identity } from '../identity.js';
import { hash } from '../blake3.js';
import {
  seal,
  signClaim,
  commitmentOf,
  opens,
  verifyClaim,
  verifyCommitment,
  boards,
  submitRank,
  unitTermsMessage,
  checkUnitSignature,
  claimToWire,
  claimFromWire,
  commitmentToWire,
  commitmentFromWire,
} from '../claim.js';
import { findChromium, runInTab } from './chromium.mjs';

const chromium = findChromium();

const vectors = JSON.parse(readFileSync(new URL('./fixtures/protocol-vectors.json', import.meta.url), 'utf8'));
const unhex = (h) => Uint8Array.from(h.match(/../g) ?? [], (b) => parseInt(b, 16));
const seedOf = (n) => new Uint8Array(32).fill(n);

test('WebCrypto keys from seeds are protocol::Identity::from_seed keys', async () => {
  for (const { seed, public: pub } of vectors.keys) {
    assert.equal((await Identity.fromSeed(seedOf(seed))).id, pub);
  }
});

test('seals and commitment signatures equal protocol::claim, and verify', async () => {
  for (const v of vectors.claims) {
    const identity = await Identity.fromSeed(seedOf(v.seed));
    const output = unhex(v.output);
    assert.equal(pb.hex(hash(output)), v.digest);
    const claim = await signClaim(identity, {
      project: BigInt(v.project),
      unit: BigInt(v.unit),
      digest: hash(output),
      fuel: BigInt(v.fuel),
      salt: unhex(v.salt),
    });
    assert.equal(pb.hex(claim.worker), v.worker);
    assert.equal(pb.hex(seal(claim)), v.seal, `seal of ${JSON.stringify(v)}`);
    assert.equal(pb.hex(claim.signature), v.signature, `signature of ${JSON.stringify(v)}`);
    assert.ok(await verifyClaim(claim));
    const commitment = commitmentOf(claim);
    assert.ok(await verifyCommitment(commitment));
    assert.ok(opens(claim, commitment));
    // The wire forms round-trip through proto.js.
    const back = claimFromWire(pb.decode(pb.Claim, pb.encode(pb.Claim, claimToWire(claim))));
    assert.deepEqual(back, claim);
    const ticket = { expiresMs: 5n, signature: new Uint8Array(64).fill(3) };
    const c2 = commitmentFromWire(
      pb.decode(pb.Commitment, pb.encode(pb.Commitment, commitmentToWire(commitmentOf(claim, ticket)))),
    );
    assert.deepEqual(c2, commitmentOf(claim, ticket));
  }
});

test('any tampered field breaks a claim, and a fresh salt changes the seal', async () => {
  const identity = await Identity.fromSeed(seedOf(1));
  const claim = await signClaim(identity, { project: 3n, unit: 9n, digest: hash(new TextEncoder().encode('42\n')), fuel: 1000n });
  assert.ok(await verifyClaim(claim));
  const tampers = [
    (c) => (c.project = 4n),
    (c) => (c.unit = 10n),
    (c) => (c.digest = hash(Uint8Array.of(1))),
    (c) => (c.fuel = 999n),
    (c) => (c.worker = unhex(vectors.keys[2].public)),
    (c) => (c.salt = Uint8Array.from(c.salt, (b, i) => (i === 0 ? b ^ 1 : b))),
    (c) => (c.signature = Uint8Array.from(c.signature, (b, i) => (i === 0 ? b ^ 1 : b))),
  ];
  for (const tamper of tampers) {
    const c = { ...claim };
    tamper(c);
    assert.equal(await verifyClaim(c), false, `tampered: ${tamper}`);
  }
  const again = await signClaim(identity, { project: 3n, unit: 9n, digest: claim.digest, fuel: 1000n });
  assert.notDeepEqual(again.salt, claim.salt);
  assert.ok(!opens(again, commitmentOf(claim)));
});

test('rendezvous boards and submit ranks equal protocol::rendezvous and worker::gossip', () => {
  for (const v of vectors.boards) {
    const members = v.members.map(unhex);
    const chosen = boards(BigInt(v.project), BigInt(v.unit), members, v.k).map(pb.hex);
    assert.deepEqual(chosen, v.boards, `boards of ${v.project}/${v.unit}`);
    // Order of the members does not matter.
    assert.deepEqual(boards(BigInt(v.project), BigInt(v.unit), [...members].reverse(), v.k).map(pb.hex), v.boards);
  }
  for (const v of vectors.ranks) {
    const claims = v.claimants.map((w) => ({ worker: unhex(w) }));
    const ranks = [...v.claimants, v.stranger].map((me) => submitRank(BigInt(v.project), BigInt(v.unit), unhex(me), claims));
    assert.deepEqual(ranks, v.ranks);
  }
});

function wireAssignment(v, over = {}) {
  return {
    projectId: 1n,
    unitId: 1n,
    unitName: v.name,
    input: unhex(v.input),
    moduleDigest: unhex(v.module),
    limits: {
      fuel: BigInt(v.limits.fuel),
      memoryMb: v.limits.memory_mb,
      wallSeconds: v.limits.wall_seconds,
      maxOutputBytes: BigInt(v.limits.max_output_bytes),
      nanCanonicalization: v.limits.nan_canonicalization,
      maxCheckpointBytes: BigInt(v.limits.max_checkpoint_bytes),
    },
    quorum: v.quorum,
    submitterKey: unhex(v.submitter),
    terms: unhex(v.terms),
    signature: unhex(v.signature),
    data: [],
    ...over,
  };
}

test("the submitter's unit signatures equal protocol::provenance, and are checked", async () => {
  const submitter = await Identity.fromSeed(seedOf(9));
  for (const v of vectors.units) {
    const limits = { ...v.limits, fuel: BigInt(v.limits.fuel), max_output_bytes: BigInt(v.limits.max_output_bytes), max_checkpoint_bytes: BigInt(v.limits.max_checkpoint_bytes) };
    const message = unitTermsMessage({
      terms: unhex(v.terms),
      module: unhex(v.module),
      limits,
      quorum: v.quorum,
      name: v.name,
      input: unhex(v.input),
    });
    assert.equal(pb.hex(await submitter.sign(message)), v.signature, `unit ${v.name}`);
    assert.deepEqual(await checkUnitSignature(wireAssignment(v)), { ok: true });
    // Any field the coordinator could swap breaks it.
    for (const over of [
      { input: Uint8Array.of(9) },
      { quorum: v.quorum + 1 },
      { unitName: v.name + 'x' },
      { moduleDigest: hash(Uint8Array.of(1)) },
      { terms: hash(Uint8Array.of(2)) },
      { limits: { ...wireAssignment(v).limits, fuel: 1n } },
      { limits: { ...wireAssignment(v).limits, nanCanonicalization: !v.limits.nan_canonicalization } },
    ]) {
      const r = await checkUnitSignature(wireAssignment(v, over));
      assert.equal(r.ok, false, JSON.stringify(Object.keys(over)));
      assert.equal(r.handBack, false);
      assert.match(r.reason, /does not verify/);
    }
  }
  const v = vectors.units[0];
  const unsigned = await checkUnitSignature(wireAssignment(v, { submitterKey: new Uint8Array(0) }));
  assert.equal(unsigned.handBack, true);
  const data = await checkUnitSignature(wireAssignment(v, { data: [{ name: 'a', size: 1n, digest: new Uint8Array(32) }] }));
  assert.equal(data.handBack, true);
  assert.match(data.reason, /data files/);
});

// In a Chromium tab: the same signatures, seals and boards from the browser's own
// WebCrypto and V8, and loop.js and holder.js load as browser modules.
const PAGE = `<!doctype html><script type="module">
import { Identity } from '/identity.js';
import { hash } from '/blake3.js';
import { signClaim, seal, boards, unitTermsMessage } from '/claim.js';
import { hex } from '/proto.js';
import { BrowserWorker } from '/loop.js';
const report = (r) => fetch('/result', { method: 'POST', body: JSON.stringify(r) });
const unhex = (h) => Uint8Array.from(h.match(/../g) ?? [], (b) => parseInt(b, 16));
try {
  const v = await (await fetch('/vectors.json')).json();
  const out = { loop: typeof BrowserWorker, claims: [], units: [], boards: [] };
  for (const c of v.claims) {
    const id = await Identity.fromSeed(new Uint8Array(32).fill(c.seed));
    const claim = await signClaim(id, { project: BigInt(c.project), unit: BigInt(c.unit), digest: hash(unhex(c.output)), fuel: BigInt(c.fuel), salt: unhex(c.salt) });
    out.claims.push({ seal: hex(seal(claim)), signature: hex(claim.signature) });
  }
  const submitter = await Identity.fromSeed(new Uint8Array(32).fill(9));
  for (const u of v.units) {
    const limits = { ...u.limits, fuel: BigInt(u.limits.fuel), max_output_bytes: BigInt(u.limits.max_output_bytes), max_checkpoint_bytes: BigInt(u.limits.max_checkpoint_bytes) };
    const m = unitTermsMessage({ terms: unhex(u.terms), module: unhex(u.module), limits, quorum: u.quorum, name: u.name, input: unhex(u.input) });
    out.units.push(hex(await submitter.sign(m)));
  }
  for (const b of v.boards) out.boards.push(boards(BigInt(b.project), BigInt(b.unit), b.members.map(unhex), b.k).map(hex));
  await report(out);
} catch (e) {
  report({ error: String(e && e.stack || e) });
}
</script>`;

test('in Chromium, claim.js signs and hashes as protocol does', { skip: !chromium && 'no Chromium', timeout: 60_000 }, async () => {
  const here = new URL('../', import.meta.url);
  const [got] = await runInTab(chromium, (url) => {
    if (url === '/') return ['text/html', PAGE];
    if (url === '/vectors.json') return ['application/json', readFileSync(new URL('./fixtures/protocol-vectors.json', import.meta.url))];
    if (/^\/[a-z0-9]+\.js$/.test(url)) return ['text/javascript', readFileSync(new URL('.' + url, here))];
    return null;
  });
  assert.equal(got.error, undefined, got.error);
  assert.equal(got.loop, 'function');
  assert.deepEqual(got.claims, vectors.claims.map((c) => ({ seal: c.seal, signature: c.signature })));
  assert.deepEqual(got.units, vectors.units.map((u) => u.signature));
  assert.deepEqual(got.boards, vectors.boards.map((b) => b.boards));
});
