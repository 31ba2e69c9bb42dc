// The host side of the engine-independent meter, with metered modules assembled here byte
// by byte (node has no WAT parser): a loop that charges K fuel per iteration the way a
// Fallow-rewritten module charges (decrement the `fallow_meter_fuel` global; when it went
// negative, `fallow_meter::slice(counter)` gives the next slice), then writes "ok\n".
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { runUnit, unitSeed, SLICE } from '../guest.js';
import { section, sleb, str, uleb, vec } from './burner.mjs';

// --- a tiny WebAssembly encoder (test/burner.mjs has its pieces) ---
const I32 = 0x7f;
const I64 = 0x7e;

const op = {
  block: [0x02, 0x40], loop: [0x03, 0x40], if: [0x04, 0x40], else: [0x05], end: [0x0b],
  br_if: (l) => [0x0d, ...uleb(l)], call: (f) => [0x10, ...uleb(f)], drop: [0x1a],
  local_get: (i) => [0x20, ...uleb(i)], local_tee: (i) => [0x22, ...uleb(i)],
  global_get: (i) => [0x23, ...uleb(i)], global_set: (i) => [0x24, ...uleb(i)],
  i32_store: [0x36, 2, 0], i32_const: (v) => [0x41, ...sleb(v)], i64_const: (v) => [0x42, ...sleb(v)],
  i32_eq: [0x46], i32_lt_u: [0x49], i32_add: [0x6a], i64_lt_s: [0x53], i64_sub: [0x7d],
};

// Function indices: imports first.
const SLICE_FN = 0;
const FD_WRITE = 1;
const SAVE = 2;
const LOAD = 3;
const EXIT = 4;

/** Charge `k` fuel, as the rewrite does at a check point. */
const charge = (k) => [
  ...op.global_get(0), ...op.i64_const(k), ...op.i64_sub, ...op.global_set(0),
  ...op.global_get(0), ...op.i64_const(0), ...op.i64_lt_s, ...op.if,
  ...op.global_get(0), ...op.call(SLICE_FN), ...op.global_set(0),
  ...op.end,
];

/** `n` iterations charging `k` each (local 0 is the counter). */
const burn = (n, k) => [
  ...op.i32_const(0), 0x21, 0, // local.set 0
  ...op.loop,
  ...charge(k),
  ...op.local_get(0), ...op.i32_const(1), ...op.i32_add, ...op.local_tee(0),
  ...op.i32_const(n), ...op.i32_lt_u, ...op.br_if(0),
  ...op.end,
];

/** fd_write(1, iovec at 0 = {16, 3}, 1, nwritten at 8): "ok\n". */
const writeOk = [
  ...op.i32_const(1), ...op.i32_const(0), ...op.i32_const(1), ...op.i32_const(8),
  ...op.call(FD_WRITE), ...op.drop,
];

/**
 * A metered module. `body` is _start's code; with `meter` false it has no meter import or
 * global (an unmetered module; `charge` must then not be used).
 */
function module(body, { meter = true } = {}) {
  const types = [
    [0x60, ...vec([[I64]]), ...vec([[I64]])], // 0: slice
    [0x60, ...vec([]), ...vec([])], // 1: _start
    [0x60, ...vec([[I32], [I32], [I32], [I32]]), ...vec([[I32]])], // 2: fd_write
    [0x60, ...vec([[I32], [I32]]), ...vec([])], // 3: checkpoint_save
    [0x60, ...vec([[I32], [I32]]), ...vec([[I32]])], // 4: checkpoint_load
    [0x60, ...vec([[I32]]), ...vec([])], // 5: proc_exit
  ];
  const imports = [
    [...str('fallow_meter'), ...str('slice'), 0x00, 0],
    [...str('wasi_snapshot_preview1'), ...str('fd_write'), 0x00, 2],
    [...str('fallow'), ...str('checkpoint_save'), 0x00, 3],
    [...str('fallow'), ...str('checkpoint_load'), 0x00, 4],
    [...str('wasi_snapshot_preview1'), ...str('proc_exit'), 0x00, 5],
  ];
  // Without the meter the import is replaced by a second fd_write import (indices stay).
  if (!meter) imports[0] = [...str('wasi_snapshot_preview1'), ...str('fd_write'), 0x00, 2];
  const code = [...vec([[1, I32]]), ...body, ...op.end];
  const exports = [
    [...str('_start'), 0x00, 5],
    [...str('memory'), 0x02, 0],
  ];
  if (meter) exports.push([...str('fallow_meter_fuel'), 0x03, 0]);
  const data = [0x00, ...op.i32_const(0), ...op.end, ...vec([16, 0, 0, 0, 3, 0, 0, 0].map((b) => [b]))];
  const data2 = [0x00, ...op.i32_const(16), ...op.end, ...str('ok\n')];
  const bytes = [
    0x00, 0x61, 0x73, 0x6d, 1, 0, 0, 0,
    ...section(1, vec(types)),
    ...section(2, vec(imports)),
    ...section(3, vec([[1]])),
    ...section(5, vec([[0x00, 1]])),
    ...section(6, vec([[I64, 0x01, ...op.i64_const(0), ...op.end]])),
    ...section(7, vec(exports)),
    ...section(10, vec([[...uleb(code.length), ...code]])),
    ...section(11, vec([data, data2])),
  ];
  return new Uint8Array(bytes);
}

const input = new Uint8Array(0);
const seed = unitSeed('meter', input);
const text = (b) => new TextDecoder().decode(b);

const loop = module([...burn(10_000, 1000), ...writeOk]); // 10^7 fuel

test('a metered run uses exactly the fuel the guest charged, whatever the slice size', () => {
  const slices = [];
  for (const slice of [SLICE, 1000n, 999_983n, 1n << 40n]) {
    const r = runUnit({
      module: loop, input, seed, limits: { fuel: 1e9 }, slice,
      onSlice: ({ fuelUsed }) => slices.push(fuelUsed),
    });
    assert.equal(r.failure, null, r.failure && r.failure.message);
    assert.equal(r.metered, true);
    assert.equal(text(r.stdout), 'ok\n');
    assert.equal(r.fuel, 10_000_000n, `slice ${slice}`);
    assert.equal(r.fuelHere, 10_000_000n);
  }
  // The hook saw the fuel grow, from 0 before the guest started.
  assert.equal(slices[0], 0n);
  assert.ok(slices.every((f) => f >= 0n && f <= 10_000_000n));
});

test('running out of fuel stops the guest with the limit as its fuel, at exactly the limit', () => {
  const out = runUnit({ module: loop, input, seed, limits: { fuel: 5_000_000 } });
  assert.equal(out.failure.kind, 'fuel_exhausted');
  assert.equal(out.failure.message, 'used all 5000000 fuel');
  assert.equal(out.fuel, 5_000_000n);
  assert.equal(out.stdout, null);
  const exact = runUnit({ module: loop, input, seed, limits: { fuel: 10_000_000 }, slice: 4096n });
  assert.equal(exact.failure, null);
  assert.equal(exact.fuel, 10_000_000n);
  const short = runUnit({ module: loop, input, seed, limits: { fuel: 9_999_999 }, slice: 4096n });
  assert.equal(short.failure.kind, 'fuel_exhausted');
  assert.equal(short.fuel, 9_999_999n);
});

test('segments after the last check that pass the limit run out of fuel too, as natively', () => {
  // 10 iterations of 1000 (checked), then a charge of 500 with no check after it.
  const tailCharge = [...op.global_get(0), ...op.i64_const(500), ...op.i64_sub, ...op.global_set(0)];
  const tail = module([...burn(10, 1000), ...tailCharge, ...writeOk]);
  const exact = runUnit({ module: tail, input, seed, limits: { fuel: 10_500 } });
  assert.equal(exact.failure, null, exact.failure && exact.failure.message);
  assert.equal(exact.fuel, 10_500n);
  const short = runUnit({ module: tail, input, seed, limits: { fuel: 10_499 } });
  assert.equal(short.failure && short.failure.kind, 'fuel_exhausted');
  assert.equal(short.failure.message, 'used all 10499 fuel');
  assert.equal(short.stdout, null);
});

test('nan_canonicalization limits run only a module rewritten for them (nanCanonicalized)', () => {
  const limits = { fuel: 1e9, nan_canonicalization: true };
  const refused = runUnit({ module: loop, input, seed, limits });
  assert.equal(refused.failure.kind, 'bad_module');
  assert.match(refused.failure.message, /NaN canonicalization/);
  const ran = runUnit({ module: loop, input, seed, limits, nanCanonicalized: true });
  assert.equal(ran.failure, null);
  assert.equal(text(ran.stdout), 'ok\n');
  assert.equal(ran.fuel, 10_000_000n);
});

test('a module without the meter import is not metered: fuel 0', () => {
  const plain = module([...writeOk], { meter: false });
  const r = runUnit({ module: plain, input, seed, limits: {} });
  assert.equal(r.failure, null);
  assert.equal(r.metered, false);
  assert.equal(r.fuel, 0n);
  assert.equal(text(r.stdout), 'ok\n');
});

// Segment 1 (no checkpoint to load): 3000 x 1000 fuel, then save 4 bytes. Segment 2: 2000 x
// 1000 fuel, then "ok\n". The unit's fuel is the sum of its segments, however it is run.
const checkpointing = module([
  ...op.i32_const(32), ...op.i32_const(4), ...op.call(LOAD), ...op.i32_const(-1), ...op.i32_eq,
  ...op.if,
  ...burn(3000, 1000),
  ...op.i32_const(32), ...op.i32_const(1), ...op.i32_store,
  ...op.i32_const(32), ...op.i32_const(4), ...op.call(SAVE),
  ...op.else,
  ...burn(2000, 1000),
  ...writeOk,
  ...op.end,
]);

test('fuel adds up over checkpointed segments, resumed or not', () => {
  const straight = runUnit({ module: checkpointing, input, seed, limits: { fuel: 1e9 } });
  assert.equal(straight.failure, null, straight.failure && straight.failure.message);
  assert.equal(straight.checkpoints, 1);
  assert.equal(straight.fuel, 5_000_000n);
  assert.equal(text(straight.stdout), 'ok\n');

  const stopped = runUnit({
    module: checkpointing, input, seed, limits: { fuel: 1e9 }, onCheckpoint: () => 'stop',
  });
  assert.equal(stopped.checkpoint.fuel, 3_000_000n);
  assert.deepEqual(stopped.checkpoint.state, Uint8Array.from([1, 0, 0, 0]));
  const resumed = runUnit({
    module: checkpointing, input, seed, limits: { fuel: 1e9 }, resume: stopped.checkpoint,
  });
  assert.equal(resumed.fuel, 5_000_000n);
  assert.equal(resumed.fuelHere, 2_000_000n);
  assert.equal(resumed.resumedFrom, 1);
  assert.equal(text(resumed.stdout), 'ok\n');

  // The budget of a resumed run is what the checkpoint left: out of fuel in segment 2.
  const tight = runUnit({
    module: checkpointing, input, seed, limits: { fuel: 4_000_000 }, resume: stopped.checkpoint,
  });
  assert.equal(tight.failure.kind, 'fuel_exhausted');
  assert.equal(tight.fuel, 4_000_000n);
  // A checkpoint that already used more than the limit does not fit the unit.
  const over = runUnit({
    module: checkpointing, input, seed, limits: { fuel: 2_000_000 }, resume: stopped.checkpoint,
  });
  assert.equal(over.failure.kind, 'bad_module');
});

test('wall_seconds counts the guest\'s running time at slices, not time held by the hook', () => {
  let clock = 0;
  const now = () => clock;
  // The hook holds the guest 10 s at every slice, far past wall_seconds in all: not counted.
  const held = runUnit({
    module: loop, input, seed, limits: { fuel: 1e9, wall_seconds: 60 }, slice: 100_000n, now,
    onSlice: () => {
      clock += 10_000;
    },
  });
  assert.equal(held.failure, null); // 100 slices, not a second of running time
  clock = 0;
  let calls = 0;
  const slow = runUnit({
    module: loop, input, seed, limits: { fuel: 1e9, wall_seconds: 1 }, slice: 100_000n,
    now: () => {
      calls++;
      return (clock += 100);
    },
  });
  assert.equal(slow.failure.kind, 'timeout');
  assert.equal(slow.failure.message, 'still running after wall_seconds = 1');
  assert.ok(calls > 0);
});

test('a guest that catches the host\'s exit (wasm exception handling) still exits', () => {
  // try { proc_exit(3) } catch_all {} ; write "ok\n": legacy exception handling, which
  // wasmtime refuses at submit and V8 runs; the exit sticks.
  const TRY = [0x06, 0x40];
  const CATCH_ALL = [0x19];
  const catching = module(
    [...TRY, ...op.i32_const(3), ...op.call(EXIT), ...CATCH_ALL, ...op.end, ...writeOk],
    { meter: false },
  );
  let r;
  try {
    r = runUnit({ module: catching, input, seed, limits: {} });
  } catch (e) {
    return; // an engine without exception handling refuses the module: nothing to catch
  }
  if (r.failure && r.failure.kind === 'bad_module') return; // likewise
  assert.equal(r.failure && r.failure.kind, 'exit_code', JSON.stringify(r.failure));
  assert.equal(r.failure.message, 'exit code 3');
  assert.equal(r.stdout, null);
});
