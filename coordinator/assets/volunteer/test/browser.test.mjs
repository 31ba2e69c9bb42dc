// guest.js in a real browser: headless Chromium loads a page that runs units in a module
// Web Worker (where the volunteer page runs guests) and posts the results back here; they
// must be the bytes the native sandbox gave, and with metered modules (cases.mjs
// `meteredDir`) the same fuel. Skipped without Chromium ($CHROMIUM, or
// chromium on the PATH) or without built task modules.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { CASES, artifactsDir, meteredDir, expectedFile } from './cases.mjs';
import { hash, toHex } from '../blake3.js';
import { findChromium, runInTab } from './chromium.mjs';

const chromium = findChromium();
// The metered modules when there are (fuel compared too), else the modules as built.
const metered = artifactsDir() ? meteredDir() : null;
const dir = metered ?? artifactsDir();
const skip = !chromium ? 'no Chromium' : !dir ? 'no built task modules' : false;

const IDS = ['primes-0-100000', 'nbody-50000', 'mandelbrot-tile', 'collatz-checkpoints', 'exit3', 'hoard-ok'];

const WORKER = `
import { runUnit, unitSeed } from './guest.js';
onmessage = async ({ data }) => {
  const out = [];
  for (const c of data) {
    const bytes = new Uint8Array(await (await fetch('/wasm/' + c.module)).arrayBuffer());
    const input = new Uint8Array(c.input);
    const r = runUnit({ module: bytes, input, seed: unitSeed('u1', input), limits: {} });
    out.push({ id: c.id, stdout: r.stdout && Array.from(r.stdout), fuel: String(r.fuel), failure: r.failure });
  }
  postMessage(out);
};`;

const PAGE = (cases) => `<!doctype html><script type="module">
const w = new Worker('/worker.js', { type: 'module' });
w.onmessage = ({ data }) => fetch('/result', { method: 'POST', body: JSON.stringify(data) });
w.onerror = (e) => fetch('/result', { method: 'POST', body: JSON.stringify({ error: e.message }) });
w.postMessage(${JSON.stringify(cases)});
</script>`;

test('units run in a Chromium Web Worker give the native bytes', { skip, timeout: 120_000 }, async () => {
  const cases = IDS.map((id) => {
    const c = CASES.find((x) => x.id === id);
    return { id, module: c.module, input: Array.from(c.input) };
  });
  const expected = new Map(
    JSON.parse(readFileSync(expectedFile(), 'utf8')).map((e) => [e.id, e]),
  );
  const here = new URL('../', import.meta.url);
  const [got] = await runInTab(
    chromium,
    (url) => {
      if (url === '/') return ['text/html', PAGE(cases)];
      if (url === '/worker.js') return ['text/javascript', WORKER];
      if (url === '/guest.js' || url === '/blake3.js') return ['text/javascript', readFileSync(new URL('.' + url, here))];
      if (url.startsWith('/wasm/')) return ['application/wasm', readFileSync(join(dir, `${url.slice(6)}.wasm`))];
      return null;
    },
    { timeoutMs: 110_000 },
  );
  assert.ok(Array.isArray(got), `worker failed: ${JSON.stringify(got)}`);
  assert.equal(got.length, IDS.length);
  for (const r of got) {
    const want = expected.get(r.id);
    if (want.failure) {
      assert.equal(r.failure && r.failure.kind, want.failure.kind, r.id);
      assert.equal(r.failure.message, want.failure.detail, r.id);
      continue;
    }
    assert.equal(r.failure, null, `${r.id}: ${JSON.stringify(r.failure)}`);
    const bytes = Uint8Array.from(r.stdout);
    if (want.stdoutHex !== undefined) assert.equal(toHex(bytes), want.stdoutHex, r.id);
    else assert.equal(toHex(hash(bytes)), want.stdoutBlake3, r.id);
    if (metered) assert.equal(r.fuel, want.nativeFuel, `${r.id}: fuel`);
  }
});
