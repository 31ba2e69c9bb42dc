// runner.js and pool.js in a real browser: headless Chromium loads a cross-origin isolated
// page (COOP + COEP, as the coordinator serves /volunteer) that runs a metered guest in the
// pool's module Web Worker, pauses it mid-run, resumes it, and posts the result back here.
// The paused guest must not advance, and the result must be the bytes and fuel of an
// uninterrupted run. Skipped without Chromium ($CHROMIUM, or chromium on the PATH).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

import { burner } from './burner.mjs';
import { findChromium, runInTab } from './chromium.mjs';

const chromium = findChromium();

const PAGE = `<!doctype html><script type="module">
import { RunnerPool } from '/pool.js';
const report = (r) => fetch('/result', { method: 'POST', body: JSON.stringify(r) });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
try {
  let progress = null;
  const pool = new RunnerPool({ cores: 1, share: 100, onProgress: ({ fuelUsed }) => (progress = fuelUsed) });
  const module = new Uint8Array(await (await fetch('/burner.wasm')).arrayBuffer());
  let done = false;
  const run = pool
    .run({ key: '1/1', module, input: new Uint8Array(0), seed: new Uint8Array(32), limits: { fuel: 1e12, wall_seconds: 120 } })
    .finally(() => (done = true));
  while (!progress && !done) await sleep(5);
  const doneBeforePause = done;
  pool.pause();
  await sleep(300);
  const held = progress;
  await sleep(1000);
  const heldStill = !done && progress === held;
  pool.resume();
  const r = await run;
  pool.stop();
  report({
    isolated: crossOriginIsolated, poolIsolated: pool.isolated, doneBeforePause, heldStill,
    fuel: String(r.fuel), stdout: new TextDecoder().decode(r.stdout), failure: r.failure,
  });
} catch (e) {
  report({ error: String((e && e.stack) || e) });
}
</script>`;

test('a paused guest in a Chromium Web Worker holds, then finishes with the same fuel', { skip: !chromium && 'no Chromium', timeout: 120_000 }, async () => {
  const here = new URL('../', import.meta.url);
  const wasm = burner(300_000_000, 1); // 3·10^8 fuel
  const [got] = await runInTab(
    chromium,
    (url) => {
      if (url === '/') return ['text/html', PAGE];
      if (['/pool.js', '/runner.js', '/guest.js', '/blake3.js'].includes(url)) {
        return ['text/javascript', readFileSync(new URL('.' + url, here))];
      }
      if (url === '/burner.wasm') return ['application/wasm', wasm];
      return null;
    },
    // As the coordinator serves /volunteer: cross-origin isolated.
    {
      headers: { 'cross-origin-opener-policy': 'same-origin', 'cross-origin-embedder-policy': 'require-corp' },
      timeoutMs: 110_000,
    },
  );
  assert.equal(got.error, undefined, got.error);
  assert.equal(got.isolated, true, 'COOP + COEP make the page cross-origin isolated');
  assert.equal(got.poolIsolated, true, 'the pool shares its control block with the runners');
  assert.equal(got.doneBeforePause, false, 'the guest ran out before the test could pause it');
  assert.equal(got.heldStill, true, 'a paused guest neither advances nor finishes');
  assert.equal(got.failure, null);
  assert.equal(got.stdout, 'ok\n');
  assert.equal(got.fuel, '300000000', 'nothing lost or run twice across the pause');
});
