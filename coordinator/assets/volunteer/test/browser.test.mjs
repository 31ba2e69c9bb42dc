// guest.js in a real browser: headless Chromium loads a page that runs units in a module
// Web Worker (where the volunteer page runs guests) and posts the results back here; they
// must be the bytes the native sandbox gave, and with metered modules (cases.mjs
// `meteredDir`) the same fuel. Skipped without Chromium ($CHROMIUM, or
// chromium on the PATH) or without built task modules.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { CASES, artifactsDir, meteredDir, expectedFile } from './cases.mjs';
import { hash, toHex } from '../blake3.js';
import { launch } from './chromium.mjs';

const chromium =
  process.env.CHROMIUM ??
  ['chromium', 'chromium-browser', 'google-chrome'].find(
    (c) => spawnSync('sh', ['-c', `command -v ${c}`]).status === 0,
  );
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
  let deliver;
  const result = new Promise((resolve) => (deliver = resolve));
  const server = createServer((req, res) => {
    const send = (type, body) => {
      res.writeHead(200, { 'content-type': type });
      res.end(body);
    };
    if (req.url === '/') return send('text/html', PAGE(cases));
    if (req.url === '/worker.js') return send('text/javascript', WORKER);
    if (req.url === '/guest.js' || req.url === '/blake3.js') {
      return send('text/javascript', readFileSync(new URL('.' + req.url, here)));
    }
    if (req.url.startsWith('/wasm/')) {
      return send('application/wasm', readFileSync(join(dir, `${req.url.slice(6)}.wasm`)));
    }
    if (req.url === '/result') {
      let body = '';
      req.on('data', (d) => (body += d));
      req.on('end', () => {
        send('text/plain', 'ok');
        deliver(JSON.parse(body));
      });
      return undefined;
    }
    res.writeHead(404);
    res.end();
    return undefined;
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const browser = launch(chromium, `http://127.0.0.1:${server.address().port}/`);
  try {
    const got = await result;
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
  } finally {
    await browser.stop();
    server.close();
  }
});
