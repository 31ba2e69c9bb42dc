// The real task and hostile modules run through guest.js give what the native sandbox
// (`fallow run`, recorded in fixtures/expected.json by tools/make-expected.mjs) gives: the
// same stdout bytes, or the same failure kind with the same detail where the detail is
// engine-independent.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { CASES, artifactsDir, meteredDir, expectedFile } from './cases.mjs';
import { runUnit, unitSeed, encodeCheckpoint, decodeCheckpoint } from '../guest.js';
import { hash, toHex } from '../blake3.js';

const expected = new Map(
  JSON.parse(readFileSync(expectedFile(), 'utf8')).map(
    (e) => [e.id, e],
  ),
);
const dir = artifactsDir();
const skip = dir ? false : 'no built task modules (cargo build -p artifacts, or set FALLOW_ARTIFACTS)';
const metered = dir ? meteredDir() : null;
const skipMetered = metered
  ? false
  : 'no metered modules (cargo build -p sandbox --example meter, or set FALLOW_METERED)';
const modules = new Map();
function moduleBytes(name, from = dir) {
  const path = join(from, `${name}.wasm`);
  if (!modules.has(path)) modules.set(path, readFileSync(path));
  return modules.get(path);
}

function run(c, extra = {}, from = dir) {
  return runUnit({
    module: moduleBytes(c.module, from),
    input: c.input,
    seed: unitSeed(c.name ?? 'u1', c.input),
    limits: c.limits ?? {},
    ...extra,
  });
}

/** The stderr part of a failure detail (after "; stderr: "), or ''. */
const stderrPart = (detail) => {
  const at = detail.indexOf('; stderr: ');
  return at < 0 ? '' : detail.slice(at);
};

function check(c, r) {
  const want = expected.get(c.id);
  assert.ok(want, `${c.id}: no expected outcome; rerun tools/make-expected.mjs`);
  if (!want.failure) {
    assert.equal(r.failure, null, `${c.id} failed: ${r.failure && r.failure.message}`);
    if (want.stdoutHex !== undefined) {
      assert.equal(toHex(r.stdout), want.stdoutHex, `${c.id}: stdout`);
    } else {
      assert.equal(r.stdout.length, want.stdoutLength, `${c.id}: stdout length`);
      assert.equal(toHex(hash(r.stdout)), want.stdoutBlake3, `${c.id}: stdout digest`);
    }
    return;
  }
  assert.ok(r.failure, `${c.id}: expected ${want.failure.kind}, got success`);
  assert.equal(r.failure.kind, want.failure.kind, `${c.id}: ${r.failure.message}`);
  const native = want.failure.detail;
  if (native.startsWith('a host call refused')) {
    // wasmtime's own wording of the refusal (and a wasm backtrace) differs; what the guest
    // wrote to stderr does not.
    assert.equal(stderrPart(r.failure.message), stderrPart(native), `${c.id}: stderr`);
  } else if (want.failure.kind !== 'bad_module' && want.failure.kind !== 'stack_overflow') {
    assert.equal(r.failure.message, native, `${c.id}: detail`);
  }
}

for (const c of CASES) {
  // As the module was built: not metered, fuel 0.
  if (!c.meteredOnly) test(c.id, { skip }, () => check(c, run(c)));
  // As the native sandbox meters it: the same bytes and the same fuel.
  test(`${c.id} (metered)`, { skip: skip || skipMetered }, () => {
    const r = run(c, {}, metered);
    check(c, r);
    const want = expected.get(c.id);
    if (!want.failure) {
      assert.equal(r.metered, true);
      assert.equal(r.fuel, BigInt(want.nativeFuel), `${c.id}: fuel`);
    }
  });
}

test('a unit stopped at a checkpoint and resumed from its encoded form gives the same bytes', { skip }, () => {
  for (const id of ['collatz-checkpoints', 'abicall-checkpoint']) {
    const c = CASES.find((x) => x.id === id);
    const stopAt = id === 'collatz-checkpoints' ? 3 : 1;
    const first = run(c, { onCheckpoint: (cp) => (cp.segment === stopAt ? 'stop' : 'continue') });
    assert.equal(first.failure, null);
    assert.ok(first.checkpoint, `${id}: stopped at a checkpoint`);
    assert.equal(first.checkpoint.segment, stopAt);
    const bytes = encodeCheckpoint(first.checkpoint);
    const resume = decodeCheckpoint(bytes);
    assert.deepEqual(resume, { ...first.checkpoint, fuel: BigInt(first.checkpoint.fuel) });
    const rest = run(c, { resume });
    assert.equal(rest.resumedFrom, stopAt);
    check(c, rest);
    const straight = run(c);
    assert.equal(rest.checkpoints, straight.checkpoints);
    assert.equal(rest.fuel, straight.fuel);
    // One counted by other fuel rules is refused, naming why (its hash resealed).
    const other = bytes.slice();
    other[8] ^= 0xff;
    other.set(hash(other.subarray(0, other.length - 32)), other.length - 32);
    assert.throws(() => decodeCheckpoint(other), /other fuel rules/);
    // A corrupted checkpoint is refused.
    bytes[20] ^= 1;
    assert.throws(() => decodeCheckpoint(bytes), /not a valid Fallow checkpoint/);
  }
});

test('a project with data files is refused, not run without them', { skip }, () => {
  const c = CASES[0];
  const r = run(c, { data: ['table.bin'] });
  assert.equal(r.failure.kind, 'bad_module');
  assert.match(r.failure.message, /data files/);
});

test('a compiled WebAssembly.Module runs too (memory then checked at host calls)', { skip }, () => {
  const c = CASES.find((x) => x.id === 'primes-0-100000');
  const r = runUnit({
    module: new WebAssembly.Module(moduleBytes('primes')),
    input: c.input,
    seed: unitSeed('u1', c.input),
    limits: {},
  });
  check(c, r);
});

test('a module prepared once runs many units', { skip }, async () => {
  const { prepareModule } = await import('../guest.js');
  const prepared = prepareModule(moduleBytes('primes'), 64);
  assert.equal(prepared.capped, true);
  for (const id of ['primes-0-100000', 'primes-10^9', 'primes-bad-input']) {
    const c = CASES.find((x) => x.id === id);
    check(c, runUnit({ module: prepared, input: c.input, seed: unitSeed('u1', c.input), limits: {} }));
  }
});
