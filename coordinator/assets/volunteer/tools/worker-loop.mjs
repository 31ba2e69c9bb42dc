// A browser worker (loop.js) under node against a real coordinator, running its units with
// guest.js in-process (the page runs them in Web Workers instead). The e2e test
// `volunteer::a_browser_worker_under_node_and_a_native_worker_verify_units_together` runs
// it beside a native worker:
//
//   node tools/worker-loop.mjs http://127.0.0.1:PORT UNITS|idle [corrupt-output]
//
// It stops once UNITS of its units were settled after its claim (`idle`: once it ran at
// least one unit and then held none for three seconds), or after four minutes, hands back
// what it holds, and prints one JSON object: its snapshot, the events by type, and the
// errors.

import { BrowserWorker } from '../loop.js';
import { Identity } from '../identity.js';
import { runUnit } from '../guest.js';

const [url, units, fault = null] = process.argv.slice(2);
if (!url || !units) {
  console.error('usage: node tools/worker-loop.mjs COORDINATOR_URL UNITS|idle [corrupt-output]');
  process.exit(2);
}
const want = units === 'idle' ? Infinity : Number(units);
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
const timer = setTimeout(() => done(false), Number(process.env.FALLOW_LOOP_SECONDS ?? 240) * 1000);
await worker.start();
if (units === 'idle') {
  let quietSince = null;
  const idle = setInterval(() => {
    const held = worker.units.size;
    if (worker.snapshot().counts.leased === 0 || held > 0) quietSince = null;
    else if (quietSince === null) quietSince = Date.now();
    else if (Date.now() - quietSince >= 3000) {
      clearInterval(idle);
      done(true);
    }
  }, 100);
}
const ok = await finished;
clearTimeout(timer);
await worker.stop();
const replacer = (_, v) => (typeof v === 'bigint' ? `${v}` : v);
console.log(JSON.stringify({ ok, snapshot: worker.snapshot(), events, errors: errors.slice(0, 50) }, replacer));
process.exit(ok ? 0 : 1);
