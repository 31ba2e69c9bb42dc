// The volunteer page (/volunteer): settings, the Donate and Pause buttons, automatic pauses
// (tab hidden, computer on battery) and what the tab is doing. The protocol is
// loop.js's BrowserWorker; guests run in pool.js's Web Workers (runner.js), never here.
//
// Query: `?start=1&cores=N&account=NAME&team=T&share=P` starts without a click (kiosks,
// tests); `fault=corrupt-output` makes this tab lie (tests only: it only costs the tab's
// own credit, since the lie is caught). The page's state is in `<pre id="state">` as JSON
// and in `document.body.dataset` (phase, finished, verified, failed, ...), for tests that
// read the DOM.
//
// Names from other people (projects, accounts) reach the DOM only as text (textContent).

import { loadIdentity } from './identity.js';
import { BrowserWorker } from './loop.js';
import { RunnerPool } from './pool.js';

/** How often the page reads the worker's snapshot, and the dashboard's JSON API. */
const REDRAW_MS = 500;
const API_MS = 5000;

/**
 * The settings: the query first, then what this browser remembered, then the defaults
 * (half the cores, 50 % CPU share).
 */
export function settings(search, stored = {}, hardwareConcurrency = 2) {
  const q = new URLSearchParams(search);
  const max = Math.max(1, Math.floor(Number(hardwareConcurrency)) || 1);
  const int = (v, lo, hi, fallback) => {
    const n = Math.round(Number(v));
    return v !== null && v !== undefined && v !== '' && Number.isFinite(n)
      ? Math.min(hi, Math.max(lo, n))
      : fallback;
  };
  return {
    start: q.get('start') === '1',
    cores: int(q.get('cores') ?? stored.cores, 1, max, Math.max(1, Math.floor(max / 2))),
    maxCores: max,
    share: int(q.get('share') ?? stored.share, 10, 100, 50),
    account: (q.get('account') ?? stored.account ?? '').trim().slice(0, 64),
    team: (q.get('team') ?? stored.team ?? '').trim().slice(0, 64),
    fault: q.get('fault') === 'corrupt-output' ? 'corrupt-output' : null,
  };
}

/** Why the tab is paused: the volunteer, a hidden tab, a computer on battery. */
export class PauseReasons {
  constructor() {
    this.reasons = new Set();
  }

  /** Sets or clears `reason`; true when the paused state changed. */
  set(reason, on) {
    const was = this.paused;
    if (on) this.reasons.add(reason);
    else this.reasons.delete(reason);
    return was !== this.paused;
  }

  get paused() {
    return this.reasons.size > 0;
  }

  /** In words, e.g. "paused: the tab is hidden, on battery". */
  describe() {
    const words = { user: 'you paused it', hidden: 'the tab is hidden', battery: 'the computer runs on battery' };
    return [...this.reasons].map((r) => words[r] ?? r).join(', ');
  }
}

/** `1234567` as `1,234,567`; BigInts too. */
export function int(n) {
  return String(n ?? 0).replace(/\B(?=(\d{3})+(?!\d))/g, ',');
}

/** JSON with BigInts as strings (the snapshot's fuel). */
export function json(value) {
  return JSON.stringify(value, (_, v) => (typeof v === 'bigint' ? v.toString() : v), 1);
}

if (typeof document !== 'undefined') page();

function page() {
  const $ = (id) => document.getElementById(id);
  const state = {
    phase: 'idle',
    isolated: globalThis.crossOriginIsolated === true,
    paused: false,
    pauseReason: '',
    error: null,
    violations: [],
    workerKey: null,
    keyStored: null,
    credit: null,
    snapshot: null,
  };
  document.addEventListener('securitypolicyviolation', (e) => {
    state.violations.push(`${e.violatedDirective} ${e.blockedURI}`);
  });
  const fail = (e) => {
    state.error = String((e && (e.message || e.reason)) || e);
    state.phase = 'error';
    $('error').textContent = state.error;
    $('error').hidden = false;
    draw();
  };
  addEventListener('error', (e) => fail(e.error ?? e.message));
  addEventListener('unhandledrejection', (e) => fail(e.reason));

  let stored = {};
  try {
    stored = JSON.parse(localStorage.getItem('fallow-volunteer') ?? '{}') ?? {};
  } catch {
    // No storage (a private window) or a bad value: defaults.
  }
  const s = settings(location.search, stored, navigator.hardwareConcurrency);
  const remember = () => {
    try {
      localStorage.setItem(
        'fallow-volunteer',
        JSON.stringify({ account: $('account').value.trim(), team: $('team').value.trim(), cores: s.cores, share: s.share }),
      );
    } catch {
      // Not remembered; the page works on.
    }
  };

  $('account').value = s.account;
  $('team').value = s.team;
  $('cores').max = String(s.maxCores);
  $('cores').value = String(s.cores);
  $('share').value = String(s.share);
  const showSliders = () => {
    $('cores-out').textContent = `${s.cores} of ${s.maxCores}`;
    $('share-out').textContent = `${s.share} %`;
  };
  showSliders();

  const reasons = new PauseReasons();
  let worker = null;
  let pool = null;

  $('cores').addEventListener('input', () => {
    s.cores = Number($('cores').value);
    showSliders();
    remember();
    if (pool) pool.setCores(s.cores);
    if (worker) worker.setCores(s.cores);
  });
  $('share').addEventListener('input', () => {
    s.share = Number($('share').value);
    showSliders();
    remember();
    if (pool) pool.setShare(s.share);
  });
  $('account').addEventListener('change', remember);
  $('team').addEventListener('change', remember);

  const applyPause = () => {
    state.paused = reasons.paused;
    state.pauseReason = reasons.describe();
    if (!worker) return draw();
    if (reasons.paused) {
      pool.pause();
      worker.pause(state.pauseReason);
    } else {
      worker.resume();
      pool.resume();
    }
    return draw();
  };
  const pauseFor = (reason, on) => {
    if (reasons.set(reason, on)) applyPause();
  };
  document.addEventListener('visibilitychange', () => pauseFor('hidden', document.hidden));
  pauseFor('hidden', document.hidden);
  if (typeof navigator.getBattery === 'function') {
    navigator.getBattery().then(
      (battery) => {
        const check = () => pauseFor('battery', !battery.charging);
        battery.addEventListener('chargingchange', check);
        check();
      },
      () => {},
    );
  }
  $('pause').addEventListener('click', () => pauseFor('user', !reasons.reasons.has('user')));

  const donate = async () => {
    $('donate').disabled = true;
    $('account').disabled = true;
    $('team').disabled = true;
    remember();
    state.phase = 'starting';
    draw();
    const identity = await loadIdentity();
    state.workerKey = identity.id;
    state.keyStored = identity.stored;
    const account = $('account').value.trim() || `anon-${identity.id.slice(0, 8)}`;
    const team = $('team').value.trim();
    state.account = account;
    pool = new RunnerPool({ cores: s.cores, share: s.share });
    worker = new BrowserWorker({
      url: location.origin,
      identity,
      name: `browser tab ${identity.id.slice(0, 8)}`,
      account,
      team,
      cores: s.cores,
      run: (job) => pool.run(job),
      onEvent: (e) => {
        if (e.type === 'error') state.lastEvent = e;
      },
      fault: s.fault,
    });
    worker.start();
    state.phase = 'running';
    $('pause').disabled = false;
    applyPause();
  };
  $('donate').addEventListener('click', () => donate().catch(fail));
  $('donate').disabled = false;

  function draw() {
    if (worker) {
      try {
        state.snapshot = worker.snapshot();
      } catch (e) {
        state.snapshot = { error: String(e) };
      }
    }
    const snap = state.snapshot ?? {};
    const counts = snap.counts ?? {};
    if (state.phase === 'running' || state.phase === 'paused') state.phase = state.paused ? 'paused' : 'running';
    const b = document.body.dataset;
    b.phase = state.phase;
    b.isolated = String(state.isolated);
    b.registered = String(Boolean(snap.registered));
    for (const k of ['finished', 'committed', 'certified', 'verified', 'failed', 'handedBack']) {
      b[k] = String(counts[k] ?? 0);
    }
    $('finished').textContent = int(counts.finished);
    $('verified').textContent = int(counts.verified);
    $('failed').textContent = int(counts.failed);
    $('credit').textContent = state.credit === null ? '—' : int(state.credit);
    $('worker-key').textContent = state.workerKey ?? snap.workerKey ?? 'not made yet';
    $('pause').textContent = reasons.reasons.has('user') ? 'Resume' : 'Pause';
    $('status').textContent = status(snap);
    drawRunning(snap);
    $('state').textContent = json({ ...state, cores: s.cores, share: s.share, running: pool ? pool.running() : [] });
  }

  function status(snap) {
    if (state.phase === 'error') return `Stopped: ${state.error}`;
    if (state.phase === 'idle') return state.paused ? `Ready (would pause: ${state.pauseReason}).` : 'Ready.';
    if (state.phase === 'starting') return 'Starting…';
    const isolation = state.isolated
      ? ''
      : ' This browser did not isolate the page, so a pause or the CPU share takes effect between units only.';
    if (state.paused) return `Paused: ${state.pauseReason}. Running units wait where they are.${isolation}`;
    const err = snap.lastError ? ` (last problem: ${snap.lastError})` : '';
    return `${snap.registered ? 'Computing' : 'Registering'}${err}.${isolation}`;
  }

  /** Project names by id, from the dashboard's API (the running table shows names). */
  const projectNames = new Map();

  function drawRunning(snap) {
    const fuel = new Map((pool ? pool.running() : []).map((r) => [r.key, r.fuelUsed]));
    const rows = (snap.running ?? []).map((r) => {
      const tr = document.createElement('tr');
      const used = fuel.get(`${r.project}/${r.unit}`) ?? r.fuel;
      for (const [text, cls] of [
        [projectNames.get(String(r.project)) ?? String(r.project), ''],
        [String(r.unitName ?? r.unit), ''],
        [used === undefined ? 'waiting' : int(used), 'num'],
      ]) {
        const td = document.createElement('td');
        td.textContent = text;
        if (cls) td.className = cls;
        tr.append(td);
      }
      return tr;
    });
    if (rows.length === 0) {
      const tr = document.createElement('tr');
      const td = document.createElement('td');
      td.colSpan = 3;
      td.className = 'note';
      td.textContent = !worker ? 'Nothing yet.' : snap.noWork ? `Waiting for work: ${snap.noWork}.` : 'Waiting for work.';
      tr.append(td);
      rows.push(tr);
    }
    $('running').replaceChildren(...rows);
  }

  async function getJson(path) {
    const r = await fetch(path, { headers: { accept: 'application/json' } });
    if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
    return r.json();
  }

  async function apiPoll() {
    try {
      const [projects, board] = await Promise.all([getJson('/api/projects'), getJson('/api/leaderboard')]);
      drawProjects(projects);
      const mine = (board.accounts ?? []).find((a) => a.name === state.account);
      state.credit = mine ? mine.credit : state.account ? 0 : null;
      const ids = new Set((state.snapshot?.running ?? []).map((r) => String(r.project)));
      const shown = projects.find((p) => ids.has(String(p.id)) && !p.finished) ?? projects.find((p) => !p.finished);
      if (shown) await drawMosaic(shown);
    } catch {
      // The dashboard is a view: when it does not answer, the numbers wait.
    }
    setTimeout(apiPoll, API_MS);
  }

  function drawProjects(projects) {
    for (const p of projects) projectNames.set(String(p.id), p.name);
    const cards = projects.map((p) => {
      const div = document.createElement('div');
      div.className = 'project';
      const title = document.createElement('a');
      title.href = `/projects/${encodeURIComponent(p.id)}`;
      title.textContent = p.name;
      const bar = document.createElement('progress');
      bar.max = Math.max(1, p.total);
      bar.value = p.verified;
      const small = document.createElement('small');
      small.textContent = `${int(p.verified)} of ${int(p.total)} units verified · ${int(p.in_progress)} in progress · ${int(p.failed)} failed${p.finished ? ' · finished' : ''}`;
      div.append(title, bar, small);
      return div;
    });
    if (cards.length === 0) {
      const p = document.createElement('p');
      p.className = 'note';
      p.textContent = 'No projects on this coordinator yet.';
      cards.push(p);
    }
    $('projects').replaceChildren(...cards);
  }

  async function drawMosaic(project) {
    const detail = await getJson(`/api/projects/${encodeURIComponent(project.id)}`);
    const m = detail.mosaic;
    if (!m || !m.url || !m.url.startsWith('/')) {
      $('mosaic').hidden = true;
      return;
    }
    $('mosaic-caption').textContent = `${project.name}: ${int(m.tiles)} tiles painted`;
    if ($('mosaic-img').getAttribute('src') !== m.url) $('mosaic-img').src = m.url;
    $('mosaic').hidden = false;
  }

  setInterval(draw, REDRAW_MS);
  draw();
  apiPoll();
  if (s.start) donate().catch(fail);
}
