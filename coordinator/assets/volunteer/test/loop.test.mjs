// loop.js's BrowserWorker against an in-memory coordinator: functions standing in for the
// calls (rpc.js's VolunteerWorker), boards that keep commitments and reveals, and a runner
// that answers at once. Short timings (tens of ms) stand in for the protocol's seconds.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { BrowserWorker } from '../loop.js';
import { Identity } from '../identity.js';
import { hash } from '../blake3.js';
import {
  signClaim,
  claimToWire,
  commitmentOf,
  commitmentFromWire,
  commitmentToWire,
  unitTermsMessage,
  verifyClaim,
  verifyCommitment,
  claimFromWire,
  limitsFromWire,
} from '../claim.js';
import { unitSeed, FUEL_RULES } from '../guest.js';
import * as pb from '../proto.js';

const seed = (n) => new Uint8Array(32).fill(n);
const te = new TextEncoder();
const TIMING = { revealAfterMs: 150, submitAfterMs: 400, everyMs: 30, slowEveryMs: 100, submitGraceMs: 40 };
const MODULE = te.encode('\0asm fake module');
const LIMITS = { fuel: 1_000_000n, memoryMb: 64, wallSeconds: 60, maxOutputBytes: 1024n, nanCanonicalization: false, maxCheckpointBytes: 1024n };

async function waitFor(what, cond, ms = 4000) {
  const until = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** A signed assignment of project 1 (submitter seed 9). */
async function assignment(unit, { name = `u${unit}`, input = te.encode(`input ${unit}`), quorum = 2, data = [], tamper = false, limits = LIMITS } = {}) {
  const submitter = await Identity.fromSeed(seed(9));
  const a = {
    projectId: 1n,
    unitId: BigInt(unit),
    unitName: name,
    input,
    moduleDigest: hash(MODULE),
    limits,
    quorum,
    leaseMs: 60_000n,
    submitterKey: submitter.publicKey,
    terms: hash(te.encode('terms')),
    signature: null,
    ticket: { expiresMs: 1n << 50n, signature: new Uint8Array(64).fill(7) },
    data,
  };
  a.signature = await submitter.sign(
    unitTermsMessage({ terms: a.terms, module: a.moduleDigest, limits: limitsFromWire(limits), quorum, name, input }),
  );
  if (tamper) a.input = te.encode('swapped input');
  // Through the codec, as a real answer would come.
  return pb.decode(pb.Assignment, pb.encode(pb.Assignment, a));
}

/** The coordinator and the boards, in memory. */
class FakeCoordinator {
  constructor({ assignments = [], boards = 2, failRequestWork = 0 } = {}) {
    this.queue = [...assignments];
    this.quorum = new Map(assignments.map((a) => [a.unitId, a.quorum]));
    this.calls = [];
    this.failRequestWork = failRequestWork;
    this.boards = new Map();
    this.peers = [];
    this.heartbeatMs = 60;
    this.leaseMs = 60_000;
    this.settled = new Set();
    this.certificates = [];
    this.failures = [];
    this.returned = [];
    this.disputes = [];
    this.evidence = [];
    this.boardKeys = boards;
  }
  async init() {
    for (let i = 0; i < this.boardKeys; i++) {
      const key = (await Identity.fromSeed(seed(40 + i))).publicKey;
      this.peers.push({ publicKey: key, addr: `10.0.0.${i}:7000` });
      this.boards.set(pb.hex(key), { commits: new Map(), reveals: new Map() });
    }
    return this;
  }
  /** Another replica committed and revealed `claim` on every board. */
  other(claim) {
    for (const b of this.boards.values()) {
      b.commits.set(pb.hex(claim.worker), commitmentToWire(commitmentOf(claim)));
      b.reveals.set(pb.hex(claim.worker), claimToWire(claim));
    }
  }
  /** A replica that filed `first` on the first board and `second` on the others (no reveal). */
  equivocator(first, second) {
    [...this.boards.values()].forEach((b, i) => b.commits.set(pb.hex(first.worker), commitmentToWire(commitmentOf(i === 0 ? first : second))));
  }
  log(name, args) {
    this.calls.push(name);
    return args;
  }
  async register() {
    this.log('RegisterWorker');
  }
  async heartbeat({ heldUnits, runState, stateReason }) {
    this.log('Heartbeat');
    this.lastHeartbeat = { heldUnits, runState, stateReason };
    return { settledUnits: heldUnits.filter((u) => this.settled.has(u)) };
  }
  async requestWork({ maxUnits, acceptSubmitters, allowUnsigned }) {
    this.log('RequestWork');
    assert.deepEqual(acceptSubmitters, []);
    assert.equal(allowUnsigned, false);
    if (this.failRequestWork > 0) {
      this.failRequestWork -= 1;
      throw new Error('the coordinator is busy');
    }
    const assignments = this.queue.splice(0, maxUnits);
    return { assignments, retryAfterMs: assignments.length ? 0n : 40n, reason: assignments.length ? '' : (this.workReason ?? '') };
  }
  async getModule(digest, { fuelRules, canonicalNans }) {
    this.log('GetModule');
    assert.equal(fuelRules, FUEL_RULES);
    this.lastModuleAsk = { digest, fuelRules, canonicalNans };
    return MODULE;
  }
  async reportFailure(unit, kind, detail) {
    this.log('ReportFailure');
    this.failures.push({ unit, kind, detail });
  }
  async submitCertificate(unit, claims, output) {
    this.log('SubmitCertificate');
    const domain = claims.map(claimFromWire);
    for (const c of domain) assert.ok(await verifyClaim(c), 'every claim verifies');
    assert.ok(domain.every((c) => pb.hex(c.digest) === pb.hex(hash(output))), 'the claims sign the output');
    this.certificates.push({ unit, claims: domain, output });
    const complete = claims.length >= this.quorum.get(unit);
    if (complete) this.settled.add(unit);
    return { accepted: complete, recorded: true };
  }
  async reportDispute(unit, claims) {
    this.log('ReportDispute');
    this.disputes.push({ unit, claims });
  }
  async reportMisbehaviour(commitment, other) {
    this.log('ReportMisbehaviour');
    // As the coordinator takes it: an Evidence through the codec.
    const wire = pb.decode(pb.Evidence, pb.encode(pb.Evidence, { reporterKey: new Uint8Array(32), commitment, other }));
    this.evidence.push({ commitment: commitmentFromWire(wire.commitment), other: commitmentFromWire(wire.other), claim: wire.claim });
  }
  async returnUnits(ids) {
    this.log('ReturnUnits');
    this.returned.push(...ids);
  }
  async relayExchange(boardKey, exchange) {
    (this.exchangesAt ??= []).push({ at: Date.now(), units: exchange.wantUnits.length });
    this.log('RelayExchange');
    const wire = pb.decode(pb.BoardExchange, pb.encode(pb.BoardExchange, exchange));
    const b = this.boards.get(pb.hex(boardKey));
    if (!b) throw new Error('no such board');
    for (const c of wire.commitments) {
      assert.ok(c.ticket, 'the lease ticket travels with the commitment');
      b.commits.set(pb.hex(c.workerKey), c);
    }
    for (const r of wire.reveals) b.reveals.set(pb.hex(r.workerKey), r);
    const views = wire.wantUnits.map((unitId) => ({
      unitId,
      commitments: b.commits.size,
      reveals: wire.reveals.length ? [...b.reveals.values()] : [],
      committed: wire.reveals.length ? [...b.commits.values()] : [],
    }));
    return { views, rejected: [] };
  }
}

async function worker(coordinator, { run, fault = null, cores = 1, seedNo = 1, gossipTickMs = 5 } = {}) {
  const identity = await Identity.fromSeed(seed(seedNo));
  const events = [];
  const jobs = [];
  const w = new BrowserWorker({
    url: 'http://fake',
    identity,
    name: 'tab',
    account: 'acct',
    cores,
    rpc: coordinator,
    timing: TIMING,
    gossipTickMs,
    backoff: () => 30,
    fault,
    run:
      run ??
      (async (job) => {
        jobs.push(job);
        return { stdout: te.encode(`out of ${job.unitName}`), fuel: 10n, failure: null, exitCode: 0 };
      }),
    onEvent: (e) => events.push(e),
  });
  return { w, events, jobs, identity };
}

const types = (events, unit) => events.filter((e) => unit === undefined || e.unit === unit).map((e) => e.type);

test('the full path: lease, run, commit and reveal on the boards, complete certificate, verified', async () => {
  const c = await new FakeCoordinator({ assignments: [await assignment(1)] }).init();
  const other = await Identity.fromSeed(seed(2));
  c.other(await signClaim(other, { project: 1n, unit: 1n, digest: hash(te.encode('out of u1')), fuel: 10n }));
  const { w, events, jobs } = await worker(c);
  await w.start();
  await waitFor('verified', () => types(events).includes('verified'));
  assert.deepEqual(types(events, 1n), ['leased', 'running', 'finished', 'committed', 'revealed', 'certified', 'verified']);
  assert.equal(events[0].type, 'registered');
  // The job the runner got.
  assert.equal(jobs.length, 1);
  assert.equal(jobs[0].key, '1/1');
  assert.equal(jobs[0].unitName, 'u1');
  assert.deepEqual(jobs[0].module, MODULE);
  assert.deepEqual(jobs[0].seed, unitSeed('u1', te.encode('input 1')));
  assert.equal(jobs[0].limits.fuel, 1_000_000n);
  assert.equal(jobs[0].nanCanonicalized, false);
  assert.equal(c.lastModuleAsk.canonicalNans, false);
  // One complete certificate with both claims and our output.
  assert.equal(c.certificates.length, 1);
  assert.equal(c.certificates[0].claims.length, 2);
  assert.equal(new TextDecoder().decode(c.certificates[0].output), 'out of u1');
  const snap = w.snapshot();
  assert.equal(snap.registered, true);
  assert.equal(snap.peers.length, 2);
  assert.deepEqual(snap.counts, { leased: 1, finished: 1, committed: 1, certified: 1, verified: 1, failed: 0, handedBack: 0 });
  assert.equal(snap.lastError, null);
  await w.stop();
  assert.deepEqual(c.returned, []);
});

test('no peers: straight to a partial certificate', async () => {
  const c = await new FakeCoordinator({ assignments: [await assignment(3)], boards: 0 }).init();
  const { w, events } = await worker(c);
  await w.start();
  await waitFor('certified', () => types(events).includes('certified'));
  assert.ok(!c.calls.includes('RelayExchange'));
  assert.equal(c.certificates[0].claims.length, 1);
  assert.equal(events.find((e) => e.type === 'certified').detail.complete, false);
  await w.stop();
});

test('a guest failure is reported with its kind and detail', async () => {
  const c = await new FakeCoordinator({ assignments: [await assignment(4)] }).init();
  const { w, events } = await worker(c, {
    run: async () => ({ stdout: null, fuel: 1_000_000n, failure: { kind: 'fuel_exhausted', message: 'used all 1000000 fuel' } }),
  });
  await w.start();
  await waitFor('failed', () => types(events).includes('failed'));
  assert.deepEqual(c.failures, [{ unit: 4n, kind: 'fuel_exhausted', detail: 'used all 1000000 fuel' }]);
  assert.equal(w.snapshot().counts.failed, 1);
  assert.ok(!c.calls.includes('SubmitCertificate'));
  await w.stop();
});

test('a unit whose submitter signature does not verify is reported bad_signature and never run', async () => {
  const c = await new FakeCoordinator({ assignments: [await assignment(5, { tamper: true })] }).init();
  const { w, events, jobs } = await worker(c);
  await w.start();
  await waitFor('failed', () => types(events).includes('failed'));
  assert.equal(jobs.length, 0);
  assert.equal(c.failures[0].kind, 'bad_signature');
  assert.match(c.failures[0].detail, /does not verify/);
  await w.stop();
});

test('units not run yet are handed back on stop; units with data files at once', async () => {
  const data = [{ name: 'a.bin', size: 3n, digest: hash(te.encode('abc')) }];
  const c = await new FakeCoordinator({ assignments: [await assignment(6, { data }), await assignment(7), await assignment(8)] }).init();
  const started = [];
  const { w, events } = await worker(c, {
    cores: 2,
    run: (job) => {
      started.push(job.unit);
      return new Promise(() => {}); // the page is still running it
    },
  });
  await w.start();
  await waitFor('two running', () => started.length === 2);
  assert.deepEqual(started, [7n, 8n]);
  assert.deepEqual(c.returned, [6n]);
  assert.equal(w.snapshot().running.length, 2);
  await w.stop();
  assert.deepEqual(c.returned, [6n, 7n, 8n]);
  assert.deepEqual(types(events).filter((t) => t === 'handed_back').length, 3);
  assert.equal(w.snapshot().counts.handedBack, 3);
  // Stopped: no more calls.
  const n = c.calls.length;
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(c.calls.length, n);
});

test("the corrupt-output fault flips a bit of the output before it is hashed", async () => {
  const digests = {};
  for (const fault of [null, 'corrupt-output']) {
    const c = await new FakeCoordinator({ assignments: [await assignment(9)], boards: 0 }).init();
    const { w, events } = await worker(c, { fault });
    await w.start();
    await waitFor('certified', () => types(events).includes('certified'));
    digests[fault] = events.find((e) => e.type === 'committed').detail.digest;
    const out = c.certificates[0].output;
    assert.equal(pb.hex(c.certificates[0].claims[0].digest), pb.hex(hash(out)));
    if (fault) assert.notEqual(new TextDecoder().decode(out), 'out of u9');
    await w.stop();
  }
  assert.equal(digests[null], pb.hex(hash(te.encode('out of u9'))));
  assert.notEqual(digests['corrupt-output'], digests[null]);
});

test('a disagreeing replica is reported as a dispute', async () => {
  const c = await new FakeCoordinator({ assignments: [await assignment(10)] }).init();
  const other = await Identity.fromSeed(seed(2));
  c.other(await signClaim(other, { project: 1n, unit: 10n, digest: hash(te.encode('something else')), fuel: 10n }));
  const { w } = await worker(c);
  await w.start();
  await waitFor('dispute', () => c.disputes.length > 0);
  assert.equal(c.disputes[0].claims.length, 2);
  await w.stop();
});

test('a replica that filed different commitments on the two boards is reported once (ReportMisbehaviour)', async () => {
  const c = await new FakeCoordinator({ assignments: [await assignment(14)] }).init();
  const cheat = await Identity.fromSeed(seed(3));
  const a = await signClaim(cheat, { project: 1n, unit: 14n, digest: hash(te.encode('out of u14')), fuel: 10n });
  const b = await signClaim(cheat, { project: 1n, unit: 14n, digest: hash(te.encode('something else')), fuel: 10n });
  c.equivocator(a, b);
  const { w, events } = await worker(c);
  await w.start();
  await waitFor('certified', () => types(events).includes('certified'));
  // Boards polled many times meanwhile: still one report.
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(c.calls.filter((x) => x === 'ReportMisbehaviour').length, 1);
  const [e] = c.evidence;
  assert.equal(e.claim, null);
  assert.deepEqual(new Set([pb.hex(e.commitment.seal), pb.hex(e.other.seal)]), new Set([pb.hex(commitmentOf(a).seal), pb.hex(commitmentOf(b).seal)]));
  for (const x of [e.commitment, e.other]) {
    assert.equal(pb.hex(x.worker), pb.hex(cheat.publicKey));
    assert.equal(x.unit, 14n);
    assert.ok(await verifyCommitment(x), 'the evidence is signed by the offender');
  }
  assert.equal(w.snapshot().lastError, null);
  await w.stop();
});

test('a refused misbehaviour report is an error naming the call, not retried', async () => {
  const c = await new FakeCoordinator({ assignments: [await assignment(15)] }).init();
  c.reportMisbehaviour = async () => {
    c.log('ReportMisbehaviour');
    throw new Error('the coordinator is busy');
  };
  const cheat = await Identity.fromSeed(seed(3));
  const sign = (s) => signClaim(cheat, { project: 1n, unit: 15n, digest: hash(te.encode(s)), fuel: 10n });
  c.equivocator(await sign('one'), await sign('two'));
  const { w, events } = await worker(c);
  await w.start();
  await waitFor('certified', () => types(events).includes('certified'));
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(c.calls.filter((x) => x === 'ReportMisbehaviour').length, 1);
  const errors = events.filter((e) => e.type === 'error');
  assert.deepEqual(errors.map((e) => [e.unit, e.detail.call, e.detail.message]), [[15n, 'ReportMisbehaviour', 'ReportMisbehaviour: the coordinator is busy']]);
  await w.stop();
});

test('failed calls surface as errors naming the call and are retried with backoff; pause suspends leasing', async () => {
  const c = await new FakeCoordinator({ assignments: [await assignment(11, { quorum: 1 })], boards: 0, failRequestWork: 2 }).init();
  const { w, events } = await worker(c);
  w.pause('the tab is hidden');
  await w.start();
  await new Promise((r) => setTimeout(r, 150));
  assert.ok(!c.calls.includes('RequestWork'), 'no leasing while paused');
  await waitFor('a suspended heartbeat', () => c.lastHeartbeat);
  assert.deepEqual(c.lastHeartbeat, { heldUnits: [], runState: 'suspended', stateReason: 'the tab is hidden' });
  w.resume();
  await waitFor('verified', () => types(events).includes('verified'));
  const errors = events.filter((e) => e.type === 'error');
  assert.equal(errors.length, 2);
  for (const e of errors) assert.match(e.detail.message, /^RequestWork: the coordinator is busy/);
  assert.equal(w.snapshot().lastError, 'RequestWork: the coordinator is busy');
  // Backoff, not spinning: a handful of asks, not hundreds.
  assert.ok(c.calls.filter((x) => x === 'RequestWork').length < 20);
  await w.stop();
});

test('a unit settled by others while the page runs it keeps its core until the run ends, then is dropped', async () => {
  const c = await new FakeCoordinator({ assignments: [await assignment(12, { quorum: 1 }), await assignment(13, { quorum: 1 })], boards: 0 }).init();
  let running = 0;
  let most = 0;
  const { w, events } = await worker(c, {
    run: async (job) => {
      running += 1;
      most = Math.max(most, running);
      if (job.unit === 12n) {
        c.settled.add(12n);
        const beats = c.calls.filter((x) => x === 'Heartbeat').length;
        await waitFor('a heartbeat after settling', () => c.calls.filter((x) => x === 'Heartbeat').length > beats);
        await new Promise((r) => setTimeout(r, 50));
      }
      running -= 1;
      return { stdout: te.encode(`out of ${job.unitName}`), fuel: 10n, failure: null };
    },
  });
  await w.start();
  await waitFor('unit 13 verified', () => events.some((e) => e.type === 'verified' && e.unit === 13n));
  assert.equal(most, 1, 'never more guests than cores');
  assert.deepEqual(types(events, 12n), ['leased', 'running']);
  assert.deepEqual(c.certificates.map((x) => x.unit), [13n]);
  await w.stop();
  assert.deepEqual(c.returned, []);
});

test('stop during a registration retry ends start; start resolves without registering', async () => {
  const c = await new FakeCoordinator().init();
  c.register = async () => {
    c.log('RegisterWorker');
    throw new Error('the coordinator is down');
  };
  const { w, events } = await worker(c);
  const started = w.start();
  await waitFor('a failed registration', () => events.some((e) => e.type === 'error'));
  assert.match(events.find((e) => e.type === 'error').detail.message, /^RegisterWorker: the coordinator is down/);
  await w.stop();
  await started;
  assert.equal(w.snapshot().registered, false);
});

test('board polls fall on the gossip tick: units due within one tick share an exchange', async () => {
  // Twelve units finishing at staggered times, each polled every 30 ms: woken at each
  // unit's own time the loop sent a board far more exchanges than the units' cadence.
  const units = Array.from({ length: 12 }, (_, i) => i + 1);
  const c = await new FakeCoordinator({ assignments: await Promise.all(units.map((u) => assignment(u))), boards: 1 }).init();
  let n = 0;
  const run = async (job) => {
    await new Promise((r) => setTimeout(r, 7 * ++n));
    return { stdout: te.encode(`out of ${job.unitName}`), fuel: 10n, failure: null, exitCode: 0 };
  };
  const tick = 100;
  const { w } = await worker(c, { run, cores: 12, gossipTickMs: tick });
  const started = Date.now();
  await w.start();
  await waitFor('all units committed', () => w.snapshot().counts.committed === 12);
  await new Promise((r) => setTimeout(r, 600));
  await w.stop();
  const elapsed = Date.now() - started;
  const sent = c.exchangesAt ?? [];
  assert.ok(sent.length > 0, 'the boards were polled');
  // One board: at most one exchange per tick (plus the first, and slack for a late timer).
  assert.ok(sent.length <= Math.ceil(elapsed / tick) + 2, `${sent.length} exchanges in ${elapsed} ms`);
  assert.ok(sent.some((e) => e.units > 1), 'units due within one tick went together');
});

test('an empty RequestWork answer says why in the snapshot, and a lease clears it', async () => {
  const c = await new FakeCoordinator({ assignments: [] }).init();
  c.workReason = 'this worker is at its limit of 4 unfinished units';
  // The one core stays busy with the leased unit, so no empty answer follows it.
  let release;
  const busy = new Promise((r) => (release = r));
  const run = async (job) => {
    await busy;
    return { stdout: te.encode(`out of ${job.unitName}`), fuel: 10n, failure: null, exitCode: 0 };
  };
  const { w } = await worker(c, { run });
  await w.start();
  await waitFor('an empty answer', () => w.snapshot().noWork !== null);
  assert.equal(w.snapshot().noWork, 'this worker is at its limit of 4 unfinished units');
  c.workReason = '';
  await waitFor('the default words', () => w.snapshot().noWork === 'the coordinator has no unit this tab may take now');
  const a = await assignment(5);
  c.quorum.set(a.unitId, a.quorum);
  c.queue.push(a);
  await waitFor('a lease', () => w.snapshot().counts.leased === 1);
  assert.equal(w.snapshot().noWork, null);
  release();
  await w.stop();
});
