// The volunteer page's runners (runner.js) and their pool (pool.js): the CPU share rests
// in proportion, a paused guest holds in memory and finishes with the fuel and bytes of
// an uninterrupted run, and the pool never runs more units than its cores. Runners run
// in node worker threads (a browser's module Web Workers run the same file; see
// browser.test.mjs for guest.js in Chromium itself), or as fakes for the pool's logic.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker as NodeWorker } from 'node:worker_threads';

import { handle, pacer, restMs, CONTROL_SLOTS, PAUSED, SHARE } from '../runner.js';
import { RunnerPool } from '../pool.js';
import { unitSeed } from '../guest.js';
import { burner } from './burner.mjs';

const input = new Uint8Array(0);
const job = (n, k, key = 'P/1') => ({
  key, module: burner(n, k), input, seed: unitSeed(key, input), limits: { fuel: 1e12, wall_seconds: 120 },
});
const text = (b) => new TextDecoder().decode(b);

/** Runs `j` through runner.js's handler on this thread; returns its answers. */
function runHere(j, control) {
  const answers = [];
  handle({ type: 'run', id: 1, job: j, control }, (m) => answers.push(m));
  return answers;
}

function control(share, paused = 0) {
  const c = new Int32Array(new SharedArrayBuffer(CONTROL_SLOTS * 4));
  c[SHARE] = share;
  c[PAUSED] = paused;
  return c;
}

/** runner.js in a node worker thread, shaped as a browser Worker. */
function threadRunner() {
  const w = new NodeWorker(new URL('./runner-thread.mjs', import.meta.url));
  const r = {
    postMessage: (m) => w.postMessage(m),
    terminate: () => w.terminate(),
    onmessage: null,
    onerror: null,
  };
  w.on('message', (data) => r.onmessage && r.onmessage({ data }));
  w.on('error', (e) => r.onerror && r.onerror({ message: e.message }));
  return r;
}

test('the rest after a slice gives the guest its CPU share', () => {
  for (const [busy, share, rest] of [
    [10, 100, 0], [10, 50, 10], [10, 25, 30], [10, 10, 90], [10, 0, 990], [10, 250, 0], [0, 10, 0],
  ]) {
    assert.equal(Math.round(restMs(busy, share)), rest, `${busy} ms at ${share} %`);
  }
});

test('the pacer rests in proportion to the time the guest ran', () => {
  const c = control(20);
  const slice = pacer(c);
  const spin = (ms) => {
    const t = performance.now();
    while (performance.now() - t < ms);
  };
  let ran = 0;
  const t0 = performance.now();
  for (let i = 0; i < 5; i++) {
    const t = performance.now();
    spin(10);
    ran += performance.now() - t;
    slice({ fuelUsed: BigInt(i) });
  }
  const total = performance.now() - t0;
  // At 20 % it rests 4 × what it ran (a loaded machine only makes the rest longer).
  assert.ok(total >= 4.8 * ran, `ran ${ran.toFixed(1)} ms of ${total.toFixed(1)} ms`);
  c[SHARE] = 100;
  const t1 = performance.now();
  spin(10);
  slice({ fuelUsed: 5n });
  assert.ok(performance.now() - t1 < 40, 'at 100 % it does not rest');
});

test('a runner gives the bytes and fuel of the guest, and rests for its share', () => {
  const j = job(30_000_000, 3); // 9·10^7 fuel, about 20 slices
  const t0 = performance.now();
  const [full] = runHere(j, control(100)).filter((m) => m.type === 'result');
  const fullMs = performance.now() - t0;
  assert.equal(full.result.failure, null);
  assert.equal(text(full.result.stdout), 'ok\n');
  assert.equal(full.result.fuel, 90_000_000n);
  const t1 = performance.now();
  const answers = runHere(j, control(20));
  const fifthMs = performance.now() - t1;
  const [fifth] = answers.filter((m) => m.type === 'result');
  assert.equal(fifth.result.fuel, full.result.fuel, 'the share changes time, never fuel');
  assert.equal(text(fifth.result.stdout), 'ok\n');
  assert.ok(fifthMs > fullMs, `20 %: ${fifthMs.toFixed(0)} ms, 100 %: ${fullMs.toFixed(0)} ms`);
  assert.ok(answers.some((m) => m.type === 'progress'), 'progress is reported');
});

test('a paused guest holds in memory and resumes to the same bytes and fuel', { timeout: 60_000 }, async () => {
  let progress = null;
  const pool = new RunnerPool({
    cores: 1, share: 100, createWorker: threadRunner,
    onProgress: ({ fuelUsed }) => (progress = fuelUsed),
  });
  try {
    let done = false;
    const result = pool.run(job(300_000_000, 1)).finally(() => (done = true)); // 3·10^8 fuel
    while (progress === null || progress === 0n) {
      assert.equal(done, false, 'the guest ran out before the test could pause it');
      await new Promise((r) => setTimeout(r, 5));
    }
    pool.pause();
    await new Promise((r) => setTimeout(r, 300)); // a progress message may be in flight
    const held = progress;
    await new Promise((r) => setTimeout(r, 700));
    assert.equal(done, false, 'a paused guest does not finish');
    assert.equal(progress, held, 'a paused guest does not advance');
    assert.equal(pool.running().length, 1);
    pool.resume();
    const r = await result;
    assert.equal(r.failure, null);
    assert.equal(text(r.stdout), 'ok\n');
    assert.equal(r.fuel, 300_000_000n, 'nothing lost or run twice across the pause');
  } finally {
    pool.stop();
  }
});

/** A runner that answers when the test says so. */
class FakeRunner {
  static made = [];
  constructor() {
    this.jobs = [];
    this.terminated = false;
    FakeRunner.made.push(this);
  }
  postMessage(m) {
    this.jobs.push(m);
  }
  terminate() {
    this.terminated = true;
  }
  finish(fuel = 1n) {
    const m = this.jobs.at(-1);
    this.onmessage({ data: { type: 'result', id: m.id, result: { fuel, key: m.job.key } } });
  }
}

const settle = () => new Promise((r) => setImmediate(r));

test('the pool runs at most its cores, follows pause, cores and stop', async () => {
  FakeRunner.made = [];
  const pool = new RunnerPool({ cores: 2, createWorker: () => new FakeRunner(), control: null });
  assert.equal(pool.isolated, false);
  const results = ['A', 'B', 'C', 'D'].map((key) => pool.run({ key }));
  assert.equal(FakeRunner.made.length, 2, 'two cores, two runners');
  assert.deepEqual(pool.running().map((r) => r.key), ['A', 'B']);
  FakeRunner.made[0].finish(7n);
  assert.deepEqual(await results[0], { fuel: 7n, key: 'A' });
  assert.deepEqual(pool.running().map((r) => r.key).sort(), ['B', 'C'], 'a free runner takes the next job');
  assert.equal(FakeRunner.made.length, 2, 'runners are reused');
  // Paused: a finished unit's runner waits, the queue holds.
  pool.pause();
  FakeRunner.made[1].finish();
  await results[1];
  assert.deepEqual(pool.running().map((r) => r.key), ['C']);
  pool.setCores(1);
  assert.equal(FakeRunner.made[1].terminated, true, 'an idle runner over the cores goes');
  pool.resume();
  assert.deepEqual(pool.running().map((r) => r.key), ['C'], 'one core: D waits for C');
  // A runner that dies takes its job with it, and the next job gets a new runner.
  FakeRunner.made[0].onerror({ message: 'boom' });
  await assert.rejects(results[2], /guest runner failed: boom/);
  assert.equal(FakeRunner.made[0].terminated, true);
  assert.deepEqual(pool.running().map((r) => r.key), ['D']);
  const late = pool.run({ key: 'E' });
  pool.stop();
  await assert.rejects(results[3], /stopped/);
  await assert.rejects(late, /stopped/);
  assert.ok(FakeRunner.made.every((r) => r.terminated), 'stop ends every runner');
  await assert.rejects(pool.run({ key: 'F' }), /stopped/);
  await settle();
});
