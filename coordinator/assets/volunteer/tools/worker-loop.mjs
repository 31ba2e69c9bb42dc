// A browser worker (loop.js) under node against a real coordinator, running its units with
// guest.js in-process (the page runs them in Web Workers instead). The e2e test
// `volunteer::a_browser_worker_under_node_and_a_native_worker_verify_units_together` runs
// it beside a native worker:
//
//   node tools/worker-loop.mjs http://127.0.0.1:PORT UNITS [corrupt-output]
//
// It stops once UNITS of its units were verified (or after four minutes), hands back what
// it holds, and prints one JSON object: its snapshot, the events by type, and the errors.

import { BrowserWorker } from '../loop.js';
import { Identity } from '../identity.js';
import { runUnit } from '../guest.js';

const [url, units, fault = null] = process.argv.slice(2);
if (!url || !units) {
  console.error('usage: node tools/worker-loop.mjs COORDINATOR_URL UNITS [corrupt-output]');
  process.exit(2);
}
const want = Number(units);
const events = {};
const errors = [];
let done;
const finished = new Promise((resolve) => (done = resolve));
const worker = new BrowserWorker({
  url,
  identity: await Identity.generate(),
  name: 'node loop',
  account: 'webvol',
  team: 'lab',
  cores: 1,
  fault,
  run: async (job) =>
    runUnit({ module: job.module, input: job.input, seed: job.seed, limits: job.limits, nanCanonicalized: job.nanCanonicalized }),
  onEvent: (e) => {
    events[e.type] = (events[e.type] ?? 0) + 1;
    if (e.type === 'error') errors.push(e.detail.message);
    if (worker.snapshot().counts.verified >= want) done(true);
  },
});
const timer = setTimeout(() => done(false), 240_000);
await worker.start();
const ok = await finished;
clearTimeout(timer);
await worker.stop();
const replacer = (_, v) => (typeof v === 'bigint' ? `${v}` : v);
console.log(JSON.stringify({ ok, snapshot: worker.snapshot(), events, errors: errors.slice(0, 50) }, replacer));
process.exit(ok ? 0 : 1);
