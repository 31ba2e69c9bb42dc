// The browser worker's first calls (calls.mjs) from a headless Chromium tab, against a
// real coordinator (the e2e test
// `volunteer::a_browser_worker_registers_and_heartbeats_over_grpc_web` runs it):
//
//   CHROMIUM=/usr/bin/chromium node tools/chromium-calls.mjs http://127.0.0.1:PORT
//
// Serves a page with this folder's modules on a port of its own and prints, as one JSON
// object, what the tab's calls got. The page's origin is not the coordinator's, so
// Chromium runs with web security off (no CORS): the volunteer page itself will be served
// by the coordinator, on its own origin.

import { createServer } from 'node:http';
import { readFileSync } from 'node:fs';
import { launch } from '../test/chromium.mjs';

const url = process.argv[2];
if (!url) {
  console.error('usage: CHROMIUM=PATH node tools/chromium-calls.mjs COORDINATOR_URL');
  process.exit(2);
}
const chromium = process.env.CHROMIUM ?? 'chromium';
const here = new URL('../', import.meta.url);
const MODULES = ['/identity.js', '/rpc.js', '/proto.js', '/blake3.js', '/guest.js', '/claim.js', '/tools/calls.mjs'];

const PAGE = `<!doctype html><script type="module">
import { firstCalls } from '/tools/calls.mjs';
const report = (r) => fetch('/result', { method: 'POST', body: JSON.stringify(r) });
firstCalls(${JSON.stringify(url)}, { name: 'chromium tab' })
  .then(report, (e) => report({ error: String((e && e.stack) || e) }));
</script>`;

let deliver;
const result = new Promise((resolve) => (deliver = resolve));
const server = createServer((req, res) => {
  const send = (type, body) => {
    res.writeHead(200, { 'content-type': type });
    res.end(body);
  };
  if (req.url === '/') return send('text/html', PAGE);
  if (MODULES.includes(req.url)) return send('text/javascript', readFileSync(new URL('.' + req.url, here)));
  if (req.url === '/result') {
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', () => {
      send('text/plain', 'ok');
      deliver(body);
    });
    return undefined;
  }
  res.writeHead(404);
  res.end();
  return undefined;
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const browser = launch(chromium, `http://127.0.0.1:${server.address().port}/`, ['--disable-web-security']);
const timer = setTimeout(() => deliver(JSON.stringify({ error: 'no answer from the tab in 60 s' })), 60_000);
const got = await result;
clearTimeout(timer);
await browser.stop();
server.close();
console.log(got);
process.exit(JSON.parse(got).error ? 1 : 0);
