// Runs every case of test/cases.mjs through the native sandbox (`fallow run`) and writes
// what it gave to test/fixtures/expected.json, which the tests compare guest.js against.
//
//   cargo build -p fallow            # builds the task modules (artifacts) too
//   node coordinator/assets/volunteer/tools/make-expected.mjs [path/to/fallow]
//
// A maintainer reruns it when the guests or the sandbox change (the e2e test `volunteer::`
// fails until the fixture matches this build's sandbox again).
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';

import { CASES, ROOT, artifactsDir } from '../test/cases.mjs';
import { hash, toHex } from '../blake3.js';

const fallow = process.argv[2] ?? join(ROOT, 'target/debug/fallow');
const dir = artifactsDir();
if (!dir) throw new Error('no built task modules: run `cargo build -p artifacts` first');
const tmp = mkdtempSync(join(tmpdir(), 'fallow-expected-'));

/** Output bytes as hex when short, else as their BLAKE3 and length. */
function describe(bytes) {
  return bytes.length <= 2048
    ? { stdoutHex: toHex(bytes) }
    : { stdoutBlake3: toHex(hash(bytes)), stdoutLength: bytes.length };
}

const out = [];
for (const c of CASES) {
  const wasm = join(dir, `${c.module}.wasm`);
  const input = join(tmp, 'input');
  writeFileSync(input, c.input);
  const args = ['run', wasm, '--input', input, '--name', c.name ?? 'u1'];
  if (c.limits) {
    const manifest = join(tmp, 'fallow.toml');
    const limits = Object.entries(c.limits).map(([k, v]) => `${k} = ${v}`).join('\n');
    writeFileSync(
      manifest,
      `name = "t"\nwasm = "${wasm}"\n[limits]\n${limits}\n[inputs]\nsweep = { from = 0, to = 1, step = 1 }\n`,
    );
    args.push('--manifest', manifest);
  }
  const r = spawnSync(fallow, args, { maxBuffer: 1 << 28 });
  const stderr = r.stderr.toString('utf8');
  const entry = { id: c.id };
  if (r.status === 0) {
    Object.assign(entry, describe(new Uint8Array(r.stdout)));
    const fuel = /fuel (\d+) of/.exec(stderr);
    entry.nativeFuel = fuel ? fuel[1] : null;
  } else {
    const failed = /failed after [\d.]+ s: (\w+): ([\s\S]*) \(a worker would report this failure/.exec(stderr);
    if (failed) {
      entry.failure = { kind: failed[1], detail: failed[2] };
    } else if (/a coordinator would refuse this module/.test(stderr)) {
      entry.failure = { kind: 'bad_module', detail: stderr.trim().split('\n').pop() };
    } else {
      throw new Error(`${c.id}: unexpected fallow run output: ${stderr}`);
    }
  }
  if (entry.failure) {
    // No local paths; no wasm backtrace (its code offsets change with every build of the
    // guests, and the tests compare only the stderr part of such details).
    entry.failure.detail = entry.failure.detail
      .replaceAll(dir, '<artifacts>')
      .replace(/error while executing at wasm backtrace:\n(?:.*\n)*?.*!_start: /, '');
  }
  out.push(entry);
  process.stderr.write(`${c.id}: ${entry.failure ? entry.failure.kind : 'ok'}\n`);
}
rmSync(tmp, { recursive: true, force: true });
// $FALLOW_EXPECTED_OUT: somewhere else (the e2e test `volunteer::` compares with this
// build's sandbox, not with the committed fixture).
writeFileSync(
  process.env.FALLOW_EXPECTED_OUT ?? new URL('../test/fixtures/expected.json', import.meta.url),
  JSON.stringify(out, null, 1) + '\n',
);
