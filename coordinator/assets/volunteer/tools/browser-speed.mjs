// Guest speed in Chromium: runs units through guest.js in a module Web Worker of a headless
// Chromium tab (where the volunteer page runs guests) on request, one at a time, and says
// how long each took. The bench's `browser` group drives it (`cargo run --release -p bench
// -- --only browser`, bench/src/browser.rs), interleaving these runs with its native and
// wasmtime runs of the same kernels; it is no benchmark on its own.
//
//   FALLOW_CHROMIUM=/usr/bin/chromium node tools/browser-speed.mjs DIR
//
// DIR holds the modules (`NAME.wasm`). One request a line on stdin, `RUN NAME INPUT_HEX`;
// the answers on stdout, one a line: first `READY USER_AGENT` once the tab's worker asks
// for work, then per request `DONE MS FUEL BLAKE3_HEX` (the time of `runUnit` alone, in the
// worker; fuel 0 for a module that is not metered; BLAKE3 of stdout) or `FAILED KIND
// MESSAGE`. `ERROR MESSAGE` means the page or its worker broke; the driver exits 1. A module
// is fetched and compiled (prepareModule) at its first request, outside the time. Limits
// and seed are the bench's: fuel 10^12, 256 MB, 600 s, 64 MiB of output, seed 32 zero
// bytes. Ends, and stops Chromium, once stdin has ended and every request is answered, or
// on SIGTERM/SIGINT.
import { createServer } from 'node:http';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

import { launch } from '../test/chromium.mjs';

const dir = process.argv[2];
if (!dir) {
  console.error('usage: FALLOW_CHROMIUM=PATH node tools/browser-speed.mjs DIR');
  process.exit(2);
}
const chromium = process.env.FALLOW_CHROMIUM ?? process.env.CHROMIUM ?? '/usr/bin/chromium';
const here = new URL('../', import.meta.url);
const MODULES = ['/guest.js', '/blake3.js'];

const WORKER = `
import { prepareModule, runUnit } from './guest.js';
import { hash, toHex } from './blake3.js';
const LIMITS = { fuel: 1000000000000, memory_mb: 256, wall_seconds: 600, max_output_bytes: ${64 << 20} };
const prepared = new Map();
onmessage = async ({ data }) => {
  try {
    let module = prepared.get(data.module);
    if (!module) {
      const res = await fetch('/wasm/' + data.module);
      if (!res.ok) throw new Error('no module ' + data.module);
      module = prepareModule(new Uint8Array(await res.arrayBuffer()), LIMITS.memory_mb);
      prepared.set(data.module, module);
    }
    const input = Uint8Array.from(data.input);
    const start = performance.now();
    const r = runUnit({ module, input, seed: new Uint8Array(32), limits: LIMITS });
    const ms = performance.now() - start;
    postMessage(r.failure
      ? { failure: r.failure }
      : { ms, fuel: String(r.fuel), blake3: toHex(hash(r.stdout)) });
  } catch (e) {
    postMessage({ error: String((e && e.stack) || e) });
  }
};`;

const PAGE = `<!doctype html><script type="module">
const post = (path, body) => fetch(path, { method: 'POST', body: JSON.stringify(body) });
const w = new Worker('/worker.js', { type: 'module' });
w.onerror = (e) => post('/error', { error: 'worker: ' + (e.message || 'failed to load') });
async function next() {
  const job = await (await fetch('/next')).json();
  if (!job.quit) w.postMessage(job);
}
w.onmessage = async ({ data }) => {
  await post('/result', data);
  next();
};
next().catch((e) => post('/error', { error: String(e) }));
</script>`;

const say = (line) => process.stdout.write(line.replace(/[\r\n]+/g, ' ') + '\n');
const jobs = [];
let waiting = null; // the page's pending GET /next
let ready = false;
let browser = null;
let ended = false;
let pending = 0; // requests not answered yet
let closing = false; // stdin ended: stop once the pending requests are answered

async function end(code) {
  if (ended) return;
  ended = true;
  if (waiting) {
    waiting.end(JSON.stringify({ quit: true }));
    waiting = null;
  }
  if (browser) await browser.stop();
  server.close();
  process.exit(code);
}

function hand(job) {
  if (waiting) {
    const res = waiting;
    waiting = null;
    res.end(JSON.stringify(job));
  } else {
    jobs.push(job);
  }
}

const server = createServer((req, res) => {
  // Cross-origin isolated (COOP + COEP), so that performance.now() in the worker ticks in
  // microseconds rather than Chromium's 100 µs for other pages.
  const HEADERS = {
    'cache-control': 'no-store',
    'cross-origin-opener-policy': 'same-origin',
    'cross-origin-embedder-policy': 'require-corp',
  };
  const send = (type, body) => {
    res.writeHead(200, { 'content-type': type, ...HEADERS });
    res.end(body);
  };
  const body = (then) => {
    let text = '';
    req.on('data', (d) => (text += d));
    req.on('end', () => {
      send('text/plain', 'ok');
      let parsed;
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = { error: `unreadable answer from the page: ${text.slice(0, 200)}` };
      }
      then(parsed);
    });
  };
  if (req.url === '/') return send('text/html', PAGE);
  if (req.url === '/worker.js') return send('text/javascript', WORKER);
  if (MODULES.includes(req.url)) return send('text/javascript', readFileSync(new URL('.' + req.url, here)));
  const wasm = /^\/wasm\/([A-Za-z0-9_.-]+)$/.exec(req.url);
  if (wasm && !wasm[1].startsWith('.')) {
    try {
      return send('application/wasm', readFileSync(join(dir, `${wasm[1]}.wasm`)));
    } catch {
      // Falls through to 404: the worker reports the missing module.
    }
  }
  if (req.url === '/next') {
    if (!ready) {
      ready = true;
      say(`READY ${req.headers['user-agent'] ?? 'unknown'}`);
    }
    if (jobs.length > 0) return send('application/json', JSON.stringify(jobs.shift()));
    res.writeHead(200, { 'content-type': 'application/json', ...HEADERS });
    waiting = res;
    return undefined;
  }
  if (req.url === '/result') {
    return body((r) => {
      if (r.error) {
        say(`ERROR ${r.error}`);
        end(1);
        return;
      }
      if (r.failure) say(`FAILED ${r.failure.kind} ${r.failure.message ?? ''}`);
      else say(`DONE ${r.ms} ${r.fuel} ${r.blake3}`);
      pending -= 1;
      if (closing && pending === 0) end(0);
    });
  }
  if (req.url === '/error') {
    return body((r) => {
      say(`ERROR ${r.error}`);
      end(1);
    });
  }
  res.writeHead(404);
  res.end();
  return undefined;
});

// A request the page has not answered for this long is lost (a page that broke without
// saying so); the bench has its own timeout too.
server.requestTimeout = 0;
server.headersTimeout = 60_000;
await new Promise((r) => server.listen(0, '127.0.0.1', r));
process.on('SIGTERM', () => end(143));
process.on('SIGINT', () => end(130));
browser = launch(chromium, `http://127.0.0.1:${server.address().port}/`);

const lines = createInterface({ input: process.stdin });
lines.on('line', (line) => {
  const [verb, module, hex = ''] = line.trim().split(/\s+/);
  if (verb !== 'RUN' || !module || !/^([0-9a-f]{2})*$/.test(hex)) {
    say(`ERROR bad request: ${line.slice(0, 200)}`);
    end(1);
    return;
  }
  pending += 1;
  hand({ module, input: Array.from(Buffer.from(hex, 'hex')) });
});
lines.on('close', () => {
  closing = true;
  if (pending === 0) end(0);
});
