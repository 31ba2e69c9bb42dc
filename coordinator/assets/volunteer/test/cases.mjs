// The units both the native sandbox (`fallow run`, through tools/make-expected.mjs) and
// guest.js run, and where the built guest modules are. Shared by the generator and the
// tests; this file only defines data.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root (this file is coordinator/assets/volunteer/test/cases.mjs). */
export const ROOT = fileURLToPath(new URL('../../../../', import.meta.url));

/**
 * The directory of the built guest modules: $FALLOW_ARTIFACTS, or the newest
 * target/debug/build/artifacts-*\/out (made by `cargo build -p artifacts`); null if none.
 */
export function artifactsDir() {
  if (process.env.FALLOW_ARTIFACTS) return process.env.FALLOW_ARTIFACTS;
  const build = join(ROOT, 'target/debug/build');
  if (!existsSync(build)) return null;
  const outs = readdirSync(build)
    .filter((d) => d.startsWith('artifacts-'))
    .map((d) => join(build, d, 'out'))
    .filter((d) => existsSync(join(d, 'primes.wasm')))
    .sort((a, b) => statSync(join(b, 'primes.wasm')).mtimeMs - statSync(join(a, 'primes.wasm')).mtimeMs);
  return outs[0] ?? null;
}

/**
 * The directory of the task modules as the native sandbox meters them: $FALLOW_METERED, or
 * target/volunteer-metered written here from artifactsDir() by the sandbox's `meter`
 * example (`cargo build -p sandbox --example meter`); null without that example.
 */
export function meteredDir() {
  if (process.env.FALLOW_METERED) return process.env.FALLOW_METERED;
  const from = artifactsDir();
  const tool = join(ROOT, 'target/debug/examples/meter');
  if (!from || !existsSync(tool)) return null;
  const out = join(ROOT, 'target/volunteer-metered');
  const r = spawnSync(tool, [from, out], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`meter example failed: ${r.stderr}`);
  return out;
}

/**
 * Where the native sandbox's outcomes are: $FALLOW_EXPECTED (the e2e test
 * `volunteer::` writes them afresh from this build's `fallow run`), else the committed
 * fixtures/expected.json.
 */
export function expectedFile() {
  return process.env.FALLOW_EXPECTED ?? fileURLToPath(new URL('./fixtures/expected.json', import.meta.url));
}

const text = (s) => new TextEncoder().encode(s);

/** The reducer ABI's records (tasks/README.md): name length, name, output length, output. */
function records(pairs) {
  const parts = [];
  for (const [name, output] of pairs) {
    const n = text(name);
    const o = text(output);
    const head = new Uint8Array(4 + n.length + 8);
    const dv = new DataView(head.buffer);
    dv.setUint32(0, n.length, true);
    head.set(n, 4);
    dv.setBigUint64(4 + n.length, BigInt(o.length), true);
    parts.push(head, o);
  }
  const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  let p = 0;
  for (const part of parts) {
    out.set(part, p);
    p += part.length;
  }
  return out;
}

/** An abicall input: calls of an opcode and three u32 arguments. */
export function abicalls(calls) {
  const out = new Uint8Array(13 * calls.length);
  const dv = new DataView(out.buffer);
  calls.forEach(([op, a, b, c], i) => {
    out[13 * i] = op;
    dv.setUint32(13 * i + 1, a >>> 0, true);
    dv.setUint32(13 * i + 5, b >>> 0, true);
    dv.setUint32(13 * i + 9, c >>> 0, true);
  });
  return out;
}

/** splitmix64, for the abicall corpus (the same inputs on every machine). */
function* splitmix(seed) {
  let s = BigInt(seed);
  const M = (1n << 64n) - 1n;
  for (;;) {
    s = (s + 0x9e3779b97f4a7c15n) & M;
    let z = s;
    z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & M;
    z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & M;
    yield z ^ (z >> 31n);
  }
}

/** `n` abicall inputs of 1 to 12 calls with random opcodes and arguments. */
function corpus(n) {
  const rng = splitmix(22);
  const next = () => Number(rng.next().value & 0xffffffffn);
  const cases = [];
  for (let i = 0; i < n; i++) {
    const calls = [];
    const count = 1 + (next() % 12);
    for (let k = 0; k < count; k++) {
      // Mostly small arguments (aligned pointers inside memory are the interesting ones).
      const arg = () => {
        const r = next();
        switch (r % 4) {
          case 0: return next();
          case 1: return next() & 0xff;
          case 2: return (next() & 0xfffff) & ~7;
          default: return next() & 0xfffff;
        }
      };
      const op = next() & 0xff;
      // A checkpoint_save of more than its 4-byte resume index is loaded back by nothing
      // (abicall loads 4 bytes), so the guest restarts from its first call for ever: only
      // the fuel of a metered run ends that, so the corpus saves 4 bytes only.
      const b = (op & 0x7f) % 20 === 17 ? 0 : arg();
      calls.push([op, arg(), b, arg()]);
    }
    cases.push({
      id: `abicall-fuzz-${i}`,
      module: 'abicall',
      input: abicalls(calls),
    });
  }
  return cases;
}

/**
 * `n` abicall inputs whose arguments pass as they are (opcode top bit set) and mostly make
 * sense: small descriptors and lengths, pointers 8-aligned in 0x1000..0x5000 (the unused
 * bottom of a Rust guest's stack), so that calls get past their checks and the errnos,
 * written bytes and random draws show in the output.
 */
function friendly(n) {
  const rng = splitmix(2026);
  const next = () => Number(rng.next().value & 0xffffffffn);
  const cases = [];
  for (let i = 0; i < n; i++) {
    const calls = [];
    const count = 2 + (next() % 10);
    for (let k = 0; k < count; k++) {
      let op = next() % 20;
      if (op === 17 || op === 19) op = 15; // no save (it restarts the list), no exit
      const arg = () => {
        const r = next() % 5;
        return r === 0 ? next() % 8 : r === 1 ? next() % 64 : 0x1000 + 8 * (next() % 0x800);
      };
      calls.push([0x80 | op, arg(), arg(), arg()]);
    }
    cases.push({ id: `abicall-friendly-${i}`, module: 'abicall', input: abicalls(calls) });
  }
  return cases;
}

const small = { memory_mb: 16, max_output_bytes: 1000, max_checkpoint_bytes: 1024 };

/**
 * Every case: `module` (a file of artifactsDir() without .wasm), `input` (bytes), `name`
 * (the unit's name, which seeds random; default 'u1') and `limits` (a manifest's [limits];
 * default the defaults).
 */
export const CASES = [
  { id: 'primes-0-100000', module: 'primes', input: text('0 100000\n') },
  { id: 'primes-10^9', module: 'primes', input: text('1000000000 1000200000\n') },
  { id: 'primes-bad-input', module: 'primes', input: text('ten twenty\n') },
  { id: 'pi-0-200000', module: 'pi', input: text('0 200000\n') },
  { id: 'nbody-1000', module: 'nbody', input: text('1000\n') },
  { id: 'nbody-50000', module: 'nbody', input: text('50000\n') },
  { id: 'mandelbrot-tile', module: 'mandelbrot', input: text('40 30 80 60 160 120 500\n') },
  { id: 'collatz-no-checkpoint', module: 'collatz', input: text('1 5000 100000\n') },
  { id: 'collatz-checkpoints', module: 'collatz', input: text('1 300000 20000\n') },
  { id: 'sum', module: 'sum', input: records([['a', '5\n'], ['b', ' 37 '], ['c', '100']]) },
  { id: 'sum-malformed', module: 'sum', input: records([['a', '5\n'], ['b', 'x']]) },
  { id: 'pi-reduce', module: 'pi-reduce', input: records([['0', '785 1000'], ['1', '786 1000']]) },
  { id: 'echo-binary', module: 'echo', input: Uint8Array.from({ length: 3000 }, (_, i) => (i * 7) & 0xff) },
  { id: 'exit3', module: 'exit3', input: text('') },
  { id: 'openfile', module: 'openfile', input: text('') },
  { id: 'flood-output-limit', module: 'flood', input: text(''), limits: small },
  { id: 'flood-default-limit', module: 'flood', input: text('') },
  { id: 'hoard-ok', module: 'hoard', input: text('') },
  { id: 'hoard-too-large', module: 'hoard', input: text(''), limits: small },
  { id: 'membomb', module: 'membomb', input: text(''), limits: small },
  { id: 'recurse', module: 'recurse', input: text('') },
  { id: 'badimport', module: 'badimport', input: text('') },
  // spin loops for ever: only the meter stops it (fuel_exhausted), so it runs metered only.
  { id: 'spin', module: 'spin', input: text(''), limits: { fuel: 1_000_000 }, meteredOnly: true },
  {
    // Random bytes made visible: args_get puts a pointer to "main" at 0x1000, and
    // args_sizes_get the length 5 after it (an iovec {0x2000, 5}); random_get skips 1024
    // draws, then fills 0x2000; fd_write(2, 0x1000, 1) copies those 5 bytes to stderr and
    // traps on its misaligned result pointer, so they show in the failure's stderr tail.
    id: 'abicall-random-visible',
    module: 'abicall',
    name: 'random unit',
    input: abicalls([
      [0x86, 0x1000, 0x2000, 0],
      [0x85, 0x3000, 0x1004, 0],
      [0x82, 0x2000, 0x400, 0],
      [0x82, 0x2000, 5, 0],
      [0x80, 0x1002, 0x1000, 1],
    ]),
  },
  {
    id: 'abicall-clocks-and-args',
    module: 'abicall',
    input: abicalls([
      [0x83, 0, 0, 0x1000], // clock_time_get(realtime)
      [0x83, 1, 0, 0x1008], // clock_time_get(monotonic)
      [0x83, 2, 0, 0x1010], // process cputime: EBADF
      [0x84, 0, 0x1018, 0], // clock_res_get
      [0x85, 0x1020, 0x1024, 0], // args_sizes_get
      [0x87, 0x1028, 0x102c, 0], // environ_sizes_get
      [0x88, 0x1030, 0x1034, 0], // environ_get
      [0x89, 0x1000, 0x2000, 1], // poll_oneoff: ENOTSUP
      [0x8b, 1, 0x1040, 0], // fd_fdstat_get(stdout)
      [0x8b, 5, 0x1040, 0], // fd_fdstat_get(5): EBADF
      [0x8c, 3, 0x1040, 0], // fd_prestat_get(3): EBADF (no preopens)
      [0x8d, 1, 0, 0], // fd_seek(stdout): ESPIPE
      [0x8e, 3, 0x1000, 5], // path_open
      [0x8f, 0, 0, 0], // sched_yield
      [0x8a, 0, 0, 0], // fd_close(stdin)
      [0x8a, 0, 0, 0], // fd_close(stdin) again: EBADF
      [0x90, 0x1000, 4, 0], // checkpoint_load: -1
    ]),
  },
  // What a call wrote, made visible as above: args_get leaves a pointer to 0x2003 at 0x1000
  // and args_sizes_get the length 5 after it; the call under test writes at 0x2000; the
  // trapping fd_write(2) shows bytes 3..8 of what it wrote (or "main\0" where it wrote
  // nothing: fd_fdstat_get leaves its padding alone).
  ...[
    ['realtime', [0x83, 0, 0, 0x2000]],
    ['monotonic', [0x83, 1, 0, 0x2000]],
    ['resolution', [0x84, 0, 0x2000, 0]],
    ['fdstat', [0x8b, 1, 0x2000, 0]],
    ['args', [0x86, 0x2000, 0x2000, 0]],
  ].map(([what, call]) => ({
    id: `abicall-visible-${what}`,
    module: 'abicall',
    input: abicalls([
      [0x86, 0x1000, 0x2003, 0],
      [0x85, 0x3000, 0x1004, 0],
      call,
      [0x80, 0x1002, 0x1000, 1],
    ]),
  })),
  { id: 'abicall-invalid-clock', module: 'abicall', input: abicalls([[0x83, 5, 0, 0x1000]]) },
  { id: 'abicall-exit-7', module: 'abicall', input: abicalls([[0x93, 7, 0, 0]]) },
  { id: 'abicall-exit-200', module: 'abicall', input: abicalls([[0x93, 200, 0, 0]]) },
  {
    id: 'abicall-checkpoint',
    module: 'abicall',
    input: abicalls([
      [0x82, 0x2000, 16, 0],
      [0x91, 0, 0, 0], // checkpoint_save(RESUME, 4)
      [0x82, 0x2000, 16, 0],
      [0x90, 0x1000, 200, 0], // checkpoint_load after the restart: 4
    ]),
  },
  ...corpus(150),
  ...friendly(100),
];
