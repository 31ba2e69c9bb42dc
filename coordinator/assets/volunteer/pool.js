// The volunteer page's runners: at most `cores` module Web Workers (runner.js), one unit
// each, and the control block they share with the page (pause flag and CPU share).
//
//   const pool = new RunnerPool({ cores: 2, share: 50 });
//   const result = await pool.run(job);   // BrowserWorker's `run`
//   pool.pause(); pool.resume(); pool.setShare(30); pool.setCores(1); pool.stop();
//
// A paused pool holds its running guests where they are (runner.js) and starts no queued
// job; resuming continues them. Without cross-origin isolation there is no
// SharedArrayBuffer: running guests then go on to the end of their unit and only queued
// jobs wait (`pool.isolated` says which).

import { CONTROL_SLOTS, PAUSED, SHARE } from './runner.js';

/** A module worker running runner.js, next to this file. */
export function runnerWorker() {
  return new Worker(new URL('runner.js', import.meta.url), { type: 'module' });
}

/** A control block the runners can wait on, or null where SharedArrayBuffer is refused. */
export function controlBlock() {
  try {
    if (globalThis.crossOriginIsolated === false) return null;
    return new Int32Array(new SharedArrayBuffer(CONTROL_SLOTS * 4));
  } catch {
    return null;
  }
}

export class RunnerPool {
  /**
   * `cores`: most units at once. `share`: CPU share in percent (1–100).
   * `createWorker`: makes a runner (tests pass a fake with postMessage/terminate and
   * onmessage/onerror). `control`: the shared block (default `controlBlock()`).
   * `onProgress({key, fuelUsed})`: a running unit's fuel so far.
   */
  constructor({
    cores = 1,
    share = 100,
    createWorker = runnerWorker,
    control = controlBlock(),
    onProgress = () => {},
  } = {}) {
    this.cores = clampCores(cores);
    this.createWorker = createWorker;
    this.control = control;
    this.onProgress = onProgress;
    this.isolated = control !== null;
    this.paused = false;
    this.idle = [];
    this.busy = new Map(); // runner → task
    this.queue = [];
    this.nextId = 1;
    this.stopped = false;
    this.setShare(share);
  }

  /** Runs `job` in a runner when one is free: resolves with runUnit's result. */
  run(job) {
    if (this.stopped) return Promise.reject(new Error('the runner pool is stopped'));
    return new Promise((resolve, reject) => {
      this.queue.push({ id: this.nextId++, job, resolve, reject });
      this.dispatch();
    });
  }

  /** Units running now: `[{key, fuelUsed}]`. */
  running() {
    return [...this.busy.values()].map((t) => ({ key: t.job.key, fuelUsed: t.fuelUsed ?? 0n }));
  }

  pause() {
    this.paused = true;
    if (this.control) {
      Atomics.store(this.control, PAUSED, 1);
      Atomics.notify(this.control, PAUSED);
    }
  }

  resume() {
    this.paused = false;
    if (this.control) {
      Atomics.store(this.control, PAUSED, 0);
      Atomics.notify(this.control, PAUSED);
    }
    this.dispatch();
  }

  /** CPU share in percent, clamped to 1–100; resting runners pick it up at once. */
  setShare(percent) {
    const n = Math.round(Number(percent));
    this.share = Math.min(100, Math.max(1, Number.isFinite(n) ? n : 100));
    if (this.control) {
      Atomics.store(this.control, SHARE, this.share);
      Atomics.notify(this.control, PAUSED);
    }
  }

  /** At most `n` units at once: idle runners beyond it go now, busy ones when done. */
  setCores(n) {
    this.cores = clampCores(n);
    while (this.idle.length > 0 && this.idle.length + this.busy.size > this.cores) {
      this.idle.pop().terminate();
    }
    this.dispatch();
  }

  /** Ends every runner; running and queued jobs reject. */
  stop() {
    this.stopped = true;
    const error = new Error('the runner pool was stopped');
    for (const [runner, task] of this.busy) {
      runner.terminate();
      task.reject(error);
    }
    for (const runner of this.idle) runner.terminate();
    for (const task of this.queue) task.reject(error);
    this.busy.clear();
    this.idle = [];
    this.queue = [];
  }

  dispatch() {
    while (!this.paused && !this.stopped && this.queue.length > 0 && this.busy.size < this.cores) {
      const task = this.queue.shift();
      const runner = this.idle.pop() ?? this.spawn();
      this.busy.set(runner, task);
      runner.postMessage({ type: 'run', id: task.id, job: task.job, control: this.control });
    }
  }

  spawn() {
    const runner = this.createWorker();
    runner.onmessage = ({ data }) => this.answer(runner, data);
    // A runner that died (a script error, the engine out of memory) takes its unit
    // with it: the job rejects, and the BrowserWorker hands the unit back.
    runner.onerror = (e) => {
      if (e && e.preventDefault) e.preventDefault();
      this.lose(runner, new Error(`the guest runner failed: ${(e && e.message) || 'unknown error'}`));
    };
    runner.onmessageerror = () => this.lose(runner, new Error('the guest runner sent an unreadable message'));
    return runner;
  }

  answer(runner, data) {
    const task = this.busy.get(runner);
    if (!task || !data || data.id !== task.id) return;
    if (data.type === 'progress') {
      task.fuelUsed = data.fuelUsed;
      this.onProgress({ key: task.job.key, fuelUsed: data.fuelUsed });
      return;
    }
    this.busy.delete(runner);
    if (this.idle.length + this.busy.size < this.cores) this.idle.push(runner);
    else runner.terminate();
    if (data.type === 'result') task.resolve(data.result);
    else task.reject(new Error(data.message ?? 'the guest runner failed'));
    this.dispatch();
  }

  lose(runner, error) {
    runner.terminate();
    const task = this.busy.get(runner);
    this.busy.delete(runner);
    this.idle = this.idle.filter((r) => r !== runner);
    if (task) task.reject(error);
    this.dispatch();
  }
}

function clampCores(n) {
  const c = Math.floor(Number(n));
  return Number.isFinite(c) && c >= 1 ? c : 1;
}
