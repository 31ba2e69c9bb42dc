// The commit–reveal side of the units one browser worker holds: a sans-IO state machine
// that mirrors protocol::quorum::QuorumBook (when to reveal, when a certificate is
// complete, partial or disputed), worker::gossip::Holder (which boards to ask, what to
// send them, how often) and the native worker's upload order (worker::lifecycle,
// attachment::exchange: the first-ranked claimant uploads a complete certificate at once,
// rank k after k grace periods and only if the unit is not settled by then).
//
// The shell (loop.js) owns the clock and the transport: it calls `tick(now)` and
// `plan(now)`, sends each request (RelayExchange: the coordinator forwards it to the
// board), feeds the answer to `onReply` and carries out the returned effects:
//
//   { type: 'reveal', unit, claim }                      our claim goes out with the next plan
//   { type: 'upload', unit, claims, complete, rank, checkSettled }
//                                                        SubmitCertificate now (checkSettled:
//                                                        ask a heartbeat first; skip if settled)
//   { type: 'dispute', unit, claims }                    ReportDispute
//   { type: 'bad_board', board, problem }                a board's view did not verify
//   { type: 'misbehaviour', unit, commitment, other }    ReportMisbehaviour: two different
//                                                        signed commitments by one worker
//
// Equivocation across boards (worker::gossip::Holder::check_committed): once we revealed,
// a board shows us the commitments it holds (UnitView.committed). We remember the first
// verified commitment of each worker per unit (at most MAX_SEEN_PER_UNIT workers); a
// worker that a later board shows with another seal, validly signed, filed different
// commitments on different boards, and the two signed commitments prove it
// (protocol::evidence::Evidence::Equivocation). Reported once per (unit, worker).
// Units are BigInts, keys and digests Uint8Arrays; claims and commitments as claim.js
// makes them. Times are ms on any monotonic clock.

import {
  BOARDS_PER_UNIT,
  MAX_CLAIMS,
  boards,
  claimFromWire,
  claimToWire,
  commitmentFromWire,
  commitmentOf,
  commitmentToWire,
  compareBytes,
  equalBytes,
  submitRank,
  verifyClaim,
  verifyCommitment,
} from './claim.js';
import { hex } from './proto.js';

/** protocol::quorum::Timing, gossip::PollConfig and the upload grace, in ms. */
export const DEFAULT_TIMING = Object.freeze({
  /** Reveal this long after committing even without `quorum` commitments on a board. */
  revealAfterMs: 2_000,
  /** Submit a partial certificate this long after committing. */
  submitAfterMs: 6_000,
  /** Poll a unit's boards this often while its quorum forms... */
  everyMs: 500,
  /** ...and this often once the partial-certificate deadline has passed. */
  slowEveryMs: 3_000,
  /** A complete certificate's claimant of rank k uploads k × this after rank 0. */
  submitGraceMs: 2_000,
});

/** gossip::MAX_EXCHANGE_UNITS: most units one exchange asks about. */
export const MAX_EXCHANGE_UNITS = 256;

/** gossip::MAX_SEEN_PER_UNIT: workers whose commitments we remember per unit, bounded like a board's. */
export const MAX_SEEN_PER_UNIT = MAX_CLAIMS * 2;

/** Board refusals that mean "already on file": as good as delivered. */
const DELIVERED_REASONS = new Set(['replayed']);

const byUnit = (a, b) => (a < b ? -1 : a > b ? 1 : 0);

/** A unit's holders, one per worker. */
export class Holder {
  /** `me`: this worker's raw public key. */
  constructor({ me, timing = {} }) {
    this.me = me;
    this.timing = { ...DEFAULT_TIMING, ...timing };
    /** unit (BigInt) → the unit's state. */
    this.units = new Map();
    /** The members boards are chosen from (raw keys): the coordinator's peer list. */
    this.members = [];
  }

  /** The coordinator's peer list changed (register / heartbeat). */
  setMembers(keys) {
    this.members = [...keys];
  }

  /** A unit was leased to us (`ticket`: the assignment's lease ticket, wire form, or null). */
  hold({ project, unit, quorum, ticket = null }) {
    if (this.units.has(unit)) return;
    this.units.set(unit, {
      project,
      quorum: Math.max(1, quorum),
      ticket,
      own: null,
      commitment: null,
      committedAt: 0,
      commitments: 0,
      revealed: false,
      /** worker hex → claim: the revealed claims we know (ours once revealed). */
      claims: new Map(),
      certified: false,
      partialSent: 0,
      disputedAt: 0,
      /** Board hexes that have our commitment on file. */
      delivered: new Set(),
      /** Our complete certificate is out: nothing more to learn from the boards. */
      done: false,
      nextPoll: 0,
      /** A certificate waiting for its upload time: { claims, complete, rank, at }. */
      upload: null,
      /** worker hex → the first verified commitment a board showed us (equivocation). */
      seen: new Map(),
      /** Worker hexes already reported for equivocating on this unit. */
      reported: new Set(),
    });
  }

  /** Settled, failed or handed back: forget the unit. */
  release(unit) {
    this.units.delete(unit);
  }

  /** Units held. */
  held() {
    return [...this.units.keys()].sort(byUnit);
  }

  /** Whether `unit` is held. */
  holds(unit) {
    return this.units.has(unit);
  }

  /** Our claim for `unit`, once executed. */
  own(unit) {
    return this.units.get(unit)?.own ?? null;
  }

  /** Whether any unit still needs its boards or has an upload waiting. */
  busy() {
    for (const t of this.units.values()) if ((t.own && !t.done) || t.upload) return true;
    return false;
  }

  /** The unit's boards among the current members. */
  boardsOf(unit) {
    const t = this.units.get(unit);
    return t ? boards(t.project, unit, this.members, BOARDS_PER_UNIT) : [];
  }

  /** Our execution finished with `claim` (claim.js signClaim): commit. */
  addOwn(claim, now) {
    const t = this.units.get(claim.unit);
    if (!t) return [];
    t.own = claim;
    t.commitment = commitmentOf(claim, t.ticket);
    t.committedAt = now;
    t.delivered.clear();
    t.nextPoll = now;
    return this.#evaluate(claim.unit, t, now);
  }

  /** Deadlines (reveal alone, partial certificate, ranked uploads): call every poll. */
  tick(now) {
    const effects = [];
    for (const unit of this.held()) {
      const t = this.units.get(unit);
      effects.push(...this.#evaluate(unit, t, now));
    }
    return effects;
  }

  /**
   * The exchanges due now, one per board (split past MAX_EXCHANGE_UNITS units):
   * `{ board, commitments, reveals, want }`, ordered by board key.
   */
  plan(now) {
    const perBoard = new Map();
    for (const unit of this.held()) {
      const t = this.units.get(unit);
      if (!t.commitment || t.done || t.nextPoll > now) continue;
      const slow = now - t.committedAt >= this.timing.submitAfterMs;
      t.nextPoll = now + (slow ? this.timing.slowEveryMs : this.timing.everyMs);
      for (const board of boards(t.project, unit, this.members, BOARDS_PER_UNIT)) {
        const id = hex(board);
        let batches = perBoard.get(id);
        if (!batches) perBoard.set(id, (batches = []));
        let request = batches[batches.length - 1];
        if (!request || request.want.length >= MAX_EXCHANGE_UNITS) {
          request = { board, commitments: [], reveals: [], want: [] };
          batches.push(request);
        }
        if (!t.delivered.has(id)) request.commitments.push(t.commitment);
        // Re-sent on every poll: presenting our reveal is what lets us see the others'.
        if (t.revealed) request.reveals.push(t.own);
        request.want.push(unit);
      }
    }
    return [...perBoard.values()].flat().sort((a, b) => compareBytes(a.board, b.board));
  }

  /**
   * A board answered `request` with `views` (proto.js BoardViews, wire form). Reveals are
   * verified (a board may lie); a view with a bad one changes nothing and yields a
   * `bad_board` effect.
   */
  async onReply(request, views, now) {
    const effects = [];
    const board = hex(request.board);
    const refused = new Set();
    for (const r of views.rejected ?? []) {
      if (!DELIVERED_REASONS.has(r.reason)) refused.add(r.unitId);
    }
    for (const c of request.commitments) {
      const t = this.units.get(c.unit);
      if (t && !refused.has(c.unit)) t.delivered.add(board);
    }
    const wanted = new Set(request.want);
    for (const view of views.views ?? []) {
      const unit = view.unitId;
      const t = this.units.get(unit);
      if (!wanted.has(unit) || !t) continue; // unasked-for, or settled meanwhile
      // As the native holder does, before (and whatever) the view's reveals show.
      effects.push(...(await this.#checkCommitted(unit, t, view.committed ?? [])));
      const problem = await this.#checkView(unit, t, view);
      if (problem) {
        effects.push({ type: 'bad_board', board: request.board, problem: `view of unit ${unit}: ${problem}` });
        continue;
      }
      if (view.commitments > t.commitments) t.commitments = view.commitments;
      if (t.revealed) {
        for (const w of view.reveals.slice(0, MAX_CLAIMS)) {
          if (t.claims.size >= MAX_CLAIMS) break;
          const id = hex(w.workerKey);
          if (!t.claims.has(id)) t.claims.set(id, claimFromWire(w));
        }
      }
      effects.push(...this.#evaluate(unit, t, now));
    }
    return effects;
  }

  /** The exchange failed (unreachable, refused): nothing in it was delivered. */
  onFailure(request) {
    const board = hex(request.board);
    for (const c of request.commitments) this.units.get(c.unit)?.delivered.delete(board);
  }

  /** The earliest time (ms) something is due: a poll, a deadline or an upload; null if none. */
  wakeAt() {
    let at = null;
    const soonest = (x) => {
      if (at === null || x < at) at = x;
    };
    for (const t of this.units.values()) {
      if (t.upload) soonest(t.upload.at);
      if (!t.own || t.done) continue;
      soonest(t.nextPoll);
      if (!t.revealed) soonest(t.committedAt + this.timing.revealAfterMs);
      else if (!t.certified) soonest(t.committedAt + this.timing.submitAfterMs);
    }
    return at;
  }

  /**
   * Commitments a board showed us: a worker whose commitment differs from the one another
   * board showed is equivocating, and both signed commitments prove it. Each commitment
   * is verified before it is remembered or used, so a lying board cannot frame anyone.
   */
  async #checkCommitted(unit, t, committed) {
    const effects = [];
    for (const w of committed) {
      if (w.unitId !== unit) continue;
      const c = commitmentFromWire(w);
      const id = hex(c.worker);
      const first = t.seen.get(id);
      if (first) {
        if (equalBytes(first.seal, c.seal) || t.reported.has(id)) continue;
        // Evidence::offender: same worker (the key), same unit and project, both signed.
        if (c.project !== first.project || !(await verifyCommitment(c))) continue;
        t.reported.add(id);
        effects.push({ type: 'misbehaviour', unit, commitment: first, other: c });
      } else if (t.seen.size < MAX_SEEN_PER_UNIT && (await verifyCommitment(c))) {
        t.seen.set(id, c);
      }
    }
    return effects;
  }

  async #checkView(unit, t, view) {
    const project = t.own?.project;
    for (const w of view.reveals.slice(0, MAX_CLAIMS)) {
      if (w.unitId !== unit || (project !== undefined && w.projectId !== project)) {
        return `a claim for unit ${w.unitId} in the view of unit ${unit}`;
      }
      const known = t.claims.get(hex(w.workerKey));
      // Boards repeat the reveals on every poll: verify each one once.
      if (known && sameClaim(known, claimFromWire(w))) continue;
      if (!(await verifyClaim(claimFromWire(w)))) return `the reveal of ${hex(w.workerKey)} does not verify`;
    }
    return null;
  }

  /** QuorumBook::evaluate, plus the upload schedule. */
  #evaluate(unit, t, now) {
    const effects = [];
    const own = t.own;
    if (own) {
      const waited = now - t.committedAt;
      // No boards to meet anyone at: go straight to a partial certificate.
      const alone = this.boardsOf(unit).length === 0;
      if (!t.revealed && (t.commitments >= t.quorum || waited >= this.timing.revealAfterMs || alone)) {
        t.revealed = true;
        t.claims.set(hex(own.worker), own);
        t.nextPoll = now; // present it at once
        effects.push({ type: 'reveal', unit, claim: own });
      }
      if (t.revealed && !t.certified) {
        // Claims in worker-key order, as QuorumBook's BTreeMap keeps them.
        const all = [...t.claims.values()].sort((a, b) => compareBytes(a.worker, b.worker));
        const results = new Set(all.map((c) => `${hex(c.digest)}/${c.fuel}`));
        const agreeing = all.filter((c) => compareBytes(c.digest, own.digest) === 0 && c.fuel === own.fuel);
        if (agreeing.length >= t.quorum) {
          t.certified = true;
          t.done = true;
          const claims = agreeing.slice(0, t.quorum);
          const rank = submitRank(t.project, unit, this.me, claims);
          this.#queue(t, { claims, complete: true, rank, at: now + rank * this.timing.submitGraceMs });
        } else if ((t.commitments < t.quorum || waited >= this.timing.submitAfterMs) && agreeing.length > t.partialSent) {
          // Alone when we revealed, or the others are slow: the coordinator combines.
          t.partialSent = agreeing.length;
          this.#queue(t, { claims: agreeing, complete: false, rank: 0, at: now });
        }
        if (results.size > 1 && all.length > t.disputedAt) {
          t.disputedAt = all.length;
          effects.push({ type: 'dispute', unit, claims: all });
        }
      }
    }
    if (t.upload && t.upload.at <= now) {
      const { claims, complete, rank } = t.upload;
      t.upload = null;
      effects.push({ type: 'upload', unit, claims, complete, rank, checkSettled: rank > 0 });
    }
    return effects;
  }

  /** A newer certificate replaces a waiting one, but a partial never replaces a complete one. */
  #queue(t, upload) {
    if (t.upload?.complete && !upload.complete) return;
    t.upload = upload;
  }
}

function sameClaim(a, b) {
  return (
    a.project === b.project &&
    a.unit === b.unit &&
    a.fuel === b.fuel &&
    compareBytes(a.digest, b.digest) === 0 &&
    compareBytes(a.worker, b.worker) === 0 &&
    compareBytes(a.salt, b.salt) === 0 &&
    compareBytes(a.signature, b.signature) === 0
  );
}

/** A planned request as RelayExchangeRequest's `exchange` (proto.js BoardExchange). */
export function exchangeToWire(request) {
  return {
    commitments: request.commitments.map(commitmentToWire),
    reveals: request.reveals.map(claimToWire),
    wantUnits: request.want,
  };
}
