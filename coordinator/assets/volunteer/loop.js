// The browser worker as a full protocol participant, headless: it registers, heartbeats,
// leases units, runs them through the page's runner, commits and reveals on the units'
// rendezvous boards through the coordinator (RelayExchange: a browser takes no inbound
// connections and opens no peer TLS), submits certificates, reports failures, disputes and
// workers that equivocate across boards, and hands units back. The page (and its Web
// Workers that run the guests) codes against `BrowserWorker`:
//
//   const worker = new BrowserWorker({ url: location.origin, identity, name, account,
//     team, cores, run: async (job) => runUnitResult, onEvent: (e) => {} });
//   await worker.start();  worker.pause('the tab is hidden');  worker.resume();
//   worker.setCores(2);  worker.snapshot();  await worker.stop();
//
// `job` is `{ key, project, unit, unitName, module, input, seed, limits, nanCanonicalized }`
// and `run` resolves to what guest.js `runUnit` returns (stdout, fuel, failure, ...).
// Events are `{ type, project, unit, unitName, detail }` with type one of registered,
// leased, running, finished, committed, revealed, certified, verified, failed,
// handed_back, error.

import { hash as blake3 } from './blake3.js';
import { FUEL_RULES, unitSeed } from './guest.js';
import { Holder, exchangeToWire } from './holder.js';
import { checkUnitSignature, claimToWire, commitmentToWire, limitsFromWire, signClaim } from './claim.js';
import { hex } from './proto.js';
import { Code, GrpcError, VolunteerWorker } from './rpc.js';

/** Waits after a failed call: 0.5 s, doubling, at most 30 s. */
export function backoffMs(attempt) {
  return Math.min(30_000, 500 * 2 ** Math.min(attempt, 6));
}

/** Waits between empty RequestWork answers when the coordinator suggests none. */
const IDLE_ASK_MS = 5_000;
/** Heartbeat period when the coordinator gave none. */
const DEFAULT_HEARTBEAT_MS = 5_000;
/** Tries of one certificate upload before it is given up (the lease then lapses). */
const UPLOAD_TRIES = 8;

const monotonic = () => (typeof performance !== 'undefined' ? performance.now() : Date.now());

/** gRPC codes worth another try: deadline exceeded, rate-limited, unavailable, unknown. */
const RETRIED = new Set([Code.UNKNOWN, 4, 8, Code.UNAVAILABLE]);

function transient(e) {
  return !(e instanceof GrpcError) || RETRIED.has(e.status);
}

/** Flips one bit of `stdout` (the 'corrupt-output' fault). */
function corrupt(stdout) {
  if (stdout.length === 0) return Uint8Array.of(1);
  const out = stdout.slice();
  out[out.length - 1] ^= 1;
  return out;
}

/**
 * The board polls' tick, as the native worker's (`attachment::exchange::GOSSIP_TICK`):
 * polls fall on it, so every unit due within one tick goes to its board in one exchange.
 * Woken at each unit's own time instead, a tab holding many units sent a board more than
 * the 10 exchanges a second it admits per worker key, and half were refused.
 */
export const GOSSIP_TICK_MS = 250;

export class BrowserWorker {
  constructor({
    url,
    identity,
    name,
    account,
    team = '',
    cores = 1,
    run,
    onEvent = () => {},
    fetch = globalThis.fetch,
    fault = null,
    enrollToken = '',
    // Tests: a VolunteerWorker stand-in, the holder's timing, the clock and the backoff.
    rpc = null,
    timing = {},
    gossipTickMs = GOSSIP_TICK_MS,
    now = monotonic,
    backoff = backoffMs,
  }) {
    if (typeof run !== 'function') throw new TypeError('BrowserWorker: run(job) is required');
    if (fault !== null && fault !== 'corrupt-output') throw new TypeError(`BrowserWorker: unknown fault ${fault}`);
    this.url = url;
    this.identity = identity;
    this.registration = { url, name, account, team, cores };
    this.cores = Math.max(0, cores | 0);
    this.runner = run;
    this.onEvent = onEvent;
    this.fault = fault;
    this.rpc = rpc ?? new VolunteerWorker(identity, { enrollToken, fetch });
    this.holder = new Holder({ me: identity.publicKey, timing });
    this.gossipTickMs = Math.max(1, gossipTickMs);
    /** The tick the holder last ran in (ms on `now`'s clock). */
    this.lastBoardsTick = -Infinity;
    this.now = now;
    this.backoff = backoff;
    this.registered = false;
    this.running = false;
    this.pausedFor = null;
    /** unit (BigInt) → { a, key, project, unit, unitName, state, output, fuel, claimed, certified } */
    this.units = new Map();
    this.modules = new Map();
    this.counts = { leased: 0, finished: 0, committed: 0, certified: 0, verified: 0, failed: 0, handedBack: 0 };
    this.lastError = null;
    this.noWork = null;
    this.timers = new Set();
    this.sleepers = new Set();
    this.boardTimer = null;
    this.boardAt = null;
    this.boardBusy = false;
    this.asking = false;
    this.askAfter = 0;
    this.askFailures = 0;
  }

  // -------------------------------------------------------------------------------------
  // The contract

  /** Registers (retrying with backoff), then heartbeats and keeps `cores` units running. */
  async start() {
    if (this.running) return;
    this.running = true;
    for (let attempt = 0; this.running; attempt++) {
      try {
        await this.rpc.register({ ...this.registration, cores: this.cores });
        break;
      } catch (e) {
        this.#error('RegisterWorker', e);
        await this.#sleep(this.backoff(attempt));
      }
    }
    if (!this.running) return;
    this.registered = true;
    this.#learnPeers();
    this.#emit('registered', null, { workerKey: this.identity.id ?? hex(this.identity.publicKey) });
    this.#heartbeatLoop();
    this.#pump();
  }

  /** Stops leasing; heartbeats report `suspended` with `reason`; held units are kept. */
  pause(reason = 'paused') {
    this.pausedFor = String(reason || 'paused');
  }

  resume() {
    this.pausedFor = null;
    this.#pump();
  }

  setCores(n) {
    this.cores = Math.max(0, n | 0);
    this.#pump();
  }

  /** Hands back the units without a result (ReturnUnits) and stops every timer. */
  async stop() {
    if (!this.running) return;
    this.running = false;
    for (const wake of [...this.sleepers]) wake();
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    if (this.boardTimer) clearTimeout(this.boardTimer);
    this.boardTimer = null;
    const back = [...this.units.values()].filter((u) => !u.claimed);
    if (back.length > 0) await this.#handBack(back, 'the worker stopped');
  }

  snapshot() {
    return {
      registered: this.registered,
      workerKey: hex(this.identity.publicKey),
      peers: (this.rpc.peers ?? []).map((p) => ({ publicKey: hex(p.publicKey), addr: p.addr })),
      running: [...this.units.values()]
        .filter((u) => u.state === 'running')
        .map((u) => ({ project: u.project, unit: u.unit, unitName: u.unitName, ...(u.fuel !== null ? { fuel: u.fuel } : {}) })),
      counts: { ...this.counts },
      lastError: this.lastError,
      // Why the last RequestWork brought nothing, in words (null once a unit came).
      noWork: this.noWork,
    };
  }

  // -------------------------------------------------------------------------------------
  // Internals

  #emit(type, u, detail = {}) {
    try {
      this.onEvent({ type, project: u?.project ?? null, unit: u?.unit ?? null, unitName: u?.unitName ?? null, detail });
    } catch {
      // A page's handler that throws must not stop the worker.
    }
  }

  #error(call, e, u = null) {
    const message = `${call}: ${e?.message ?? e}`;
    this.lastError = message;
    this.#emit('error', u, { call, message });
  }

  /** Waits `ms`, or less if the worker stops meanwhile. */
  #sleep(ms) {
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(t);
        this.timers.delete(t);
        this.sleepers.delete(wake);
        resolve();
      };
      const t = setTimeout(wake, ms);
      this.timers.add(t);
      this.sleepers.add(wake);
    });
  }

  #later(ms, fn) {
    const t = setTimeout(() => {
      this.timers.delete(t);
      if (this.running) fn();
    }, ms);
    this.timers.add(t);
  }

  #learnPeers() {
    const keys = (this.rpc.peers ?? []).map((p) => p.publicKey).filter((k) => k instanceof Uint8Array && k.length === 32);
    this.holder.setMembers(keys);
  }

  #busyCores() {
    let n = 0;
    for (const u of this.units.values()) if (!u.claimed) n += 1;
    return n;
  }

  #runState() {
    if (this.pausedFor !== null) return { runState: 'suspended', stateReason: this.pausedFor };
    for (const u of this.units.values()) if (u.state === 'running') return { runState: 'running', stateReason: '' };
    return { runState: 'idle', stateReason: '' };
  }

  /** One heartbeat; handles settled units. Returns the settled set (unit strings), or null on failure. */
  async #heartbeat() {
    try {
      const r = await this.rpc.heartbeat({ heldUnits: [...this.units.keys()], ...this.#runState() });
      this.#learnPeers();
      const settled = new Set((r.settledUnits ?? []).map(String));
      for (const unit of r.settledUnits ?? []) this.#settled(BigInt(unit));
      return settled;
    } catch (e) {
      this.#error('Heartbeat', e);
      return null;
    }
  }

  #heartbeatLoop() {
    const period = Number(this.rpc.heartbeatMs) || DEFAULT_HEARTBEAT_MS;
    this.#later(period, async () => {
      await this.#heartbeat();
      this.#heartbeatLoop();
      this.#pump();
    });
  }

  #settled(unit) {
    const u = this.units.get(unit);
    if (!u) return;
    if (u.state === 'running') {
      // Others settled it while the page still runs it: it keeps its core until the run
      // ends (then it is dropped), so no more than `cores` guests run at once.
      u.settledEarly = true;
      this.holder.release(u.unit);
      return;
    }
    this.#release(u);
    if (u.claimed) {
      this.counts.verified += 1;
      this.#emit('verified', u, {});
    }
  }

  #release(u) {
    this.units.delete(u.unit);
    this.holder.release(u.unit);
  }

  /** Asks for work when cores are free (never while paused, stopped, or in a backoff). */
  async #pump() {
    if (!this.running || !this.registered || this.pausedFor !== null || this.asking) return;
    const free = this.cores - this.#busyCores();
    if (free <= 0) return;
    const wait = this.askAfter - this.now();
    if (wait > 0) {
      this.#later(wait, () => this.#pump());
      return;
    }
    this.asking = true;
    let r;
    try {
      r = await this.rpc.requestWork({ maxUnits: free, acceptSubmitters: [], allowUnsigned: false });
      this.askFailures = 0;
    } catch (e) {
      this.#error('RequestWork', e);
      this.askAfter = this.now() + this.backoff(this.askFailures++);
      this.asking = false;
      this.#pump();
      return;
    }
    this.asking = false;
    if (!this.running) {
      // Stopped while asking: these were never run.
      await this.#handBack(r.assignments.map((a) => this.#unitOf(a)), 'the worker stopped');
      return;
    }
    if (r.assignments.length === 0) {
      this.noWork = r.reason || 'the coordinator has no unit this tab may take now';
      this.askAfter = this.now() + (Number(r.retryAfterMs) || IDLE_ASK_MS);
      this.#pump();
      return;
    }
    this.noWork = null;
    for (const a of r.assignments) this.#take(a);
    this.#pump();
  }

  #unitOf(a) {
    return {
      a,
      key: `${a.projectId}/${a.unitId}`,
      project: a.projectId,
      unit: a.unitId,
      unitName: a.unitName,
      state: 'leased',
      output: null,
      fuel: null,
      claimed: false,
      certified: false,
      settledEarly: false,
      upload: Promise.resolve(),
    };
  }

  /** A leased unit: check it, fetch its module, run it, commit its result. */
  async #take(a) {
    if (this.units.has(a.unitId)) return; // leased again while we hold it
    const u = this.#unitOf(a);
    this.units.set(u.unit, u);
    this.counts.leased += 1;
    this.#emit('leased', u, { quorum: a.quorum, leaseMs: a.leaseMs });
    const check = await checkUnitSignature(a);
    if (!check.ok) {
      if (check.handBack) await this.#handBack([u], check.reason);
      else await this.#fail(u, 'bad_signature', check.reason);
      // The coordinator may lease the same unit again at once: wait before asking.
      this.askAfter = Math.max(this.askAfter, this.now() + this.backoff(0));
      this.#pump();
      return;
    }
    this.holder.hold({ project: u.project, unit: u.unit, quorum: a.quorum, ticket: a.ticket });
    const limits = limitsFromWire(a.limits);
    let module;
    try {
      module = await this.#module(a.moduleDigest, limits.nan_canonicalization);
    } catch (e) {
      this.#error('GetModule', e, u);
      await this.#handBack([u], `its module could not be fetched: ${e?.message ?? e}`);
      this.askAfter = this.now() + this.backoff(this.askFailures++);
      return;
    }
    if (!this.running || !this.units.has(u.unit)) return;
    u.state = 'running';
    this.#emit('running', u, {});
    const job = {
      key: u.key,
      project: u.project,
      unit: u.unit,
      unitName: u.unitName,
      module,
      input: a.input,
      seed: unitSeed(a.unitName, a.input),
      limits,
      nanCanonicalized: limits.nan_canonicalization,
    };
    let result;
    try {
      result = await this.runner(job);
    } catch (e) {
      // The page's runner broke (e.g. its Worker died): this worker's trouble, not the
      // unit's. Hand it back so another worker runs it.
      this.#error('run', e, u);
      if (this.units.has(u.unit)) await this.#handBack([u], `the runner failed: ${e?.message ?? e}`);
      this.#pump();
      return;
    }
    if (!this.running || !this.units.has(u.unit)) return; // stopped (handed back) meanwhile
    if (u.settledEarly) {
      this.#release(u);
      this.#pump();
      return;
    }
    u.fuel = BigInt(result.fuel ?? 0n);
    this.counts.finished += 1;
    this.#emit('finished', u, { fuel: u.fuel, failure: result.failure ?? null });
    if (result.failure) {
      await this.#fail(u, result.failure.kind, result.failure.message);
      this.#pump();
      return;
    }
    const output = this.fault === 'corrupt-output' ? corrupt(result.stdout) : result.stdout;
    u.output = output;
    const digest = blake3(output);
    const claim = await signClaim(this.identity, { project: u.project, unit: u.unit, digest, fuel: u.fuel });
    u.claimed = true;
    u.state = 'claimed';
    this.counts.committed += 1;
    this.#emit('committed', u, { digest: hex(digest), fuel: u.fuel, boards: this.holder.boardsOf(u.unit).map(hex) });
    this.#effects(this.holder.addOwn(claim, this.now()));
    this.#pump();
    this.#scheduleBoards();
  }

  #module(digest, canonicalNans) {
    const key = `${hex(digest)}/${FUEL_RULES}/${canonicalNans ? 1 : 0}`;
    let p = this.modules.get(key);
    if (!p) {
      p = this.rpc.getModule(digest, { fuelRules: FUEL_RULES, canonicalNans });
      this.modules.set(key, p);
      p.catch(() => this.modules.delete(key)); // fetched again next time
      if (this.modules.size > 16) this.modules.delete(this.modules.keys().next().value);
    }
    return p;
  }

  async #fail(u, kind, detail) {
    this.#release(u);
    this.counts.failed += 1;
    for (let attempt = 0; ; attempt++) {
      try {
        await this.rpc.reportFailure(u.unit, kind, detail);
        break;
      } catch (e) {
        this.#error('ReportFailure', e, u);
        if (!transient(e) || attempt >= 3 || !this.running) break;
        await this.#sleep(this.backoff(attempt));
      }
    }
    this.#emit('failed', u, { kind, detail });
  }

  async #handBack(list, reason) {
    for (const u of list) this.#release(u);
    if (list.length === 0) return;
    try {
      await this.rpc.returnUnits(list.map((u) => u.unit));
    } catch (e) {
      // Their leases lapse instead.
      this.#error('ReturnUnits', e);
    }
    for (const u of list) {
      this.counts.handedBack += 1;
      this.#emit('handed_back', u, { reason });
    }
  }

  /** Runs the holder when it is next due (at once if due now). */
  #scheduleBoards() {
    if (!this.running || this.boardBusy) return;
    const due = this.holder.wakeAt();
    if (due === null) return;
    // On the tick, and never twice in one: a late run does not make the next one early.
    const tick = this.gossipTickMs;
    const at = Math.max(Math.ceil(due / tick) * tick, this.lastBoardsTick + tick);
    if (this.boardTimer !== null && this.boardAt !== null && this.boardAt <= at) return;
    if (this.boardTimer !== null) clearTimeout(this.boardTimer);
    this.boardAt = at;
    this.boardTimer = setTimeout(() => {
      this.boardTimer = null;
      this.boardAt = null;
      this.#boards();
    }, Math.max(0, at - this.now()));
  }

  async #boards() {
    if (!this.running) return;
    this.boardBusy = true;
    this.lastBoardsTick = Math.floor(this.now() / this.gossipTickMs) * this.gossipTickMs;
    try {
      const now = this.now();
      this.#effects(this.holder.tick(now));
      const requests = this.holder.plan(now);
      await Promise.all(
        requests.map(async (request) => {
          let views;
          try {
            views = await this.rpc.relayExchange(request.board, exchangeToWire(request));
          } catch (e) {
            // Planned again at the unit's next poll (≥ 500 ms): no spinning.
            this.holder.onFailure(request);
            this.#error('RelayExchange', e);
            return;
          }
          this.#effects(await this.holder.onReply(request, views, this.now()));
        }),
      );
    } finally {
      this.boardBusy = false;
    }
    this.#scheduleBoards();
  }

  #effects(effects) {
    for (const e of effects) {
      const u = this.units.get(e.unit);
      switch (e.type) {
        case 'reveal':
          if (u) this.#emit('revealed', u, {});
          break;
        case 'upload':
          if (u) u.upload = u.upload.then(() => this.#upload(u, e));
          break;
        case 'dispute':
          // The coordinator issues more replicas; the unit stays held until settled.
          this.rpc.reportDispute(e.unit, e.claims.map(claimToWire)).catch((err) => this.#error('ReportDispute', err, u));
          break;
        case 'misbehaviour':
          // One try, as the native worker makes (attachment::board): the holder yields each
          // (unit, worker) once, and a lost report only spares the cheat a trust reset.
          this.rpc
            .reportMisbehaviour(commitmentToWire(e.commitment), commitmentToWire(e.other))
            .catch((err) => this.#error('ReportMisbehaviour', err, u));
          break;
        case 'bad_board':
          this.#error('RelayExchange', new Error(`board ${hex(e.board)}: ${e.problem}`), u);
          break;
      }
    }
  }

  async #upload(u, e) {
    if (!this.running || !this.units.has(u.unit)) return;
    if (e.checkSettled) {
      // Not first in rank: upload only if nobody settled the unit meanwhile.
      const settled = await this.#heartbeat();
      if (!this.units.has(u.unit) || settled?.has(String(u.unit))) return;
    }
    for (let attempt = 0; attempt < UPLOAD_TRIES && this.running; attempt++) {
      let ack;
      try {
        ack = await this.rpc.submitCertificate(u.unit, e.claims.map(claimToWire), u.output);
      } catch (err) {
        this.#error('SubmitCertificate', err, u);
        if (!transient(err)) {
          this.#release(u); // refused: nothing more to do with it
          return;
        }
        await this.#sleep(this.backoff(attempt));
        continue;
      }
      if (!u.certified) this.counts.certified += 1;
      u.certified = true;
      this.#emit('certified', u, { complete: e.complete, accepted: ack.accepted, recorded: ack.recorded, claims: e.claims.length });
      if (ack.accepted) this.#settled(u.unit);
      else if (!ack.recorded) this.#release(u); // neither verified nor kept: done here
      return;
    }
  }
}
