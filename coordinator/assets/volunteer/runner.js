// The volunteer page's guest runner: a module Web Worker that runs one unit at a time with
// guest.js, so a guest never runs on the page's own thread. The pool (pool.js) makes it
// with `new Worker(new URL('runner.js', import.meta.url), { type: 'module' })`.
//
//   page → runner  { type: 'run', id, job, control }
//                  job: { module (metered bytes), input, seed, limits, nanCanonicalized,
//                         resume?, unitName? }; control: pool.js's Int32Array over a
//                         SharedArrayBuffer, or null where the page is not isolated
//   runner → page  { type: 'progress', id, fuelUsed }     at most every PROGRESS_MS
//                  { type: 'result', id, result }         runUnit's result (buffers moved)
//                  { type: 'error', id, message }         runUnit threw (a bug, not a vote)
//
// The pause point is guest.js's `onSlice`, called between fuel slices of a metered guest:
// - paused: the runner blocks in `Atomics.wait` until the page clears the flag. The guest's
//   instance, memory and stack stay as they are, so resuming loses nothing.
// - CPU share: after each slice it rests `busy × (1 − share) / share`, busy being the time
//   the guest ran since the last rest. The page can change the share or pause mid-rest.
// Without a SharedArrayBuffer (a page that is not cross-origin isolated) neither can act
// inside a unit; the page then pauses between units only, and says so.

import { runUnit, prepareModule } from './guest.js';

/** Index in the control block: 1 while the page holds its guests, else 0. */
export const PAUSED = 0;
/** Index in the control block: the CPU share in percent (1–100). */
export const SHARE = 1;
/** Length of the control block (Int32 slots). */
export const CONTROL_SLOTS = 2;

/** Progress messages are at most this often (a slice can be far shorter). */
const PROGRESS_MS = 250;

/** How long to rest after `busyMs` of running, at `share` percent of one core. */
export function restMs(busyMs, share) {
  const n = Number(share);
  const s = Math.min(100, Math.max(1, Number.isFinite(n) ? n : 100)) / 100;
  const rest = (busyMs * (1 - s)) / s;
  return Number.isFinite(rest) && rest > 0 ? rest : 0;
}

/**
 * The `onSlice` hook of one run: reports progress, holds while paused and rests for the
 * CPU share. `control` is the shared Int32Array or null; `now` a clock in ms (tests).
 */
export function pacer(control, { onProgress = () => {}, now = () => performance.now() } = {}) {
  let since = now();
  let reported = -Infinity;
  return ({ fuelUsed }) => {
    const t = now();
    if (t - reported >= PROGRESS_MS) {
      reported = t;
      onProgress(fuelUsed);
    }
    if (!control) return;
    const busy = t - since;
    const start = t;
    for (;;) {
      while (Atomics.load(control, PAUSED) !== 0) Atomics.wait(control, PAUSED, 1);
      // Read the share each time round: the page wakes a resting runner when it changes.
      const left = start + restMs(busy, Atomics.load(control, SHARE)) - now();
      if (left <= 0) break;
      Atomics.wait(control, PAUSED, 0, left);
    }
    since = now();
  };
}

/** The last module compiled, reused while units of one project follow each other. */
let compiled = null;

function prepared(bytes, memoryMb) {
  if (
    compiled &&
    compiled.memoryMb === memoryMb &&
    compiled.bytes.length === bytes.length &&
    compiled.bytes.every((b, i) => b === bytes[i])
  ) {
    return compiled.prepared;
  }
  try {
    compiled = { bytes, memoryMb, prepared: prepareModule(bytes, memoryMb) };
    return compiled.prepared;
  } catch {
    // runUnit refuses the bytes again, worded as the native sandbox words it.
    compiled = null;
    return bytes;
  }
}

/** Runs one `run` message; `post(message, transfer)` answers. */
export function handle(data, post) {
  if (!data || data.type !== 'run') return;
  const { id, job, control } = data;
  try {
    const limits = job.limits ?? {};
    const memoryMb = Number(limits.memory_mb ?? 0) || undefined;
    const module = memoryMb ? prepared(job.module, memoryMb) : job.module;
    const result = runUnit({
      module,
      input: job.input,
      seed: job.seed,
      limits,
      resume: job.resume ?? null,
      nanCanonicalized: job.nanCanonicalized,
      onSlice: pacer(control ?? null, {
        onProgress: (fuelUsed) => post({ type: 'progress', id, fuelUsed }),
      }),
    });
    const transfer = [];
    if (result.stdout instanceof Uint8Array) transfer.push(result.stdout.buffer);
    post({ type: 'result', id, result }, transfer);
  } catch (e) {
    post({ type: 'error', id, message: String((e && e.message) || e) });
  }
}

// In a Web Worker (not when a test imports this file): answer the page.
if (typeof WorkerGlobalScope !== 'undefined' && globalThis instanceof WorkerGlobalScope) {
  globalThis.onmessage = ({ data }) => handle(data, (m, t) => globalThis.postMessage(m, t ?? []));
}
