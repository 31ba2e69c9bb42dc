// holder.js: the timing and decisions of protocol::quorum::QuorumBook and
// worker::gossip::Holder, driven through in-memory boards. Each row runs a unit of
// project 1 held by worker seed 1 (quorum as given) while other workers commit and reveal
// on the same boards at the given times; the effects and when they came are compared.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { Identity } from '../identity.js';
import { hash } from '../blake3.js';
import { signClaim, claimToWire, commitmentOf, commitmentToWire, submitRank, verifyCommitment } from '../claim.js';
import { Holder, exchangeToWire } from '../holder.js';
import * as pb from '../proto.js';

const seed = (n) => new Uint8Array(32).fill(n);
const ids = new Map();
async function id(n) {
  if (!ids.has(n)) ids.set(n, await Identity.fromSeed(seed(n)));
  return ids.get(n);
}
const out = (s) => hash(new TextEncoder().encode(s));
const UNIT = 7n;
const PROJECT = 1n;

/** A board as protocol::board keeps one, reduced to what a holder sees. */
class FakeBoard {
  constructor() {
    this.commits = new Map(); // worker hex → wire commitment
    this.reveals = new Map(); // worker hex → wire claim
    this.refuse = null; // a reason to refuse commitments with
  }
  exchange(ex) {
    const rejected = [];
    for (const c of ex.commitments) {
      if (this.refuse) rejected.push({ unitId: c.unitId, reason: this.refuse });
      else this.commits.set(pb.hex(c.workerKey), c);
    }
    let revealed = false;
    for (const r of ex.reveals) {
      this.reveals.set(pb.hex(r.workerKey), r);
      revealed = true;
    }
    // The reveals and commitments only to an asker that presents its reveal.
    const views = ex.wantUnits.map((unitId) => ({
      unitId,
      commitments: this.commits.size,
      reveals: revealed ? [...this.reveals.values()] : [],
      committed: revealed ? [...this.commits.values()] : [],
    }));
    return { views, rejected };
  }
}

/**
 * Runs one row: `others` are `{ seed, commitAt, revealAt, output, bad, second }`; `members`
 * the number of boards; ends at `until` ms. `second` is what the other's commitment on the
 * second board is: 'other' (a validly signed commitment to another output: equivocation),
 * 'forged' (the seal changed, the signature kept) or 'unsigned' (no valid signature).
 * Returns `[time, type, detail]` per effect, and the number of exchanges.
 */
async function run({ quorum = 2, members = 2, ownAt = 0, output = 'ok', others = [], until = 8000, refuse = null, settleAfter = null }) {
  const me = await id(1);
  const holder = new Holder({ me: me.publicKey });
  const boardIds = await Promise.all(Array.from({ length: members }, (_, i) => id(20 + i)));
  const boards = new Map(boardIds.map((b) => [pb.hex(b.publicKey), new FakeBoard()]));
  for (const b of boards.values()) b.refuse = refuse;
  holder.setMembers(boardIds.map((b) => b.publicKey));
  holder.hold({ project: PROJECT, unit: UNIT, quorum, ticket: { expiresMs: 99n, signature: new Uint8Array(64) } });
  const theirs = await Promise.all(
    others.map(async (o) => {
      const claim = await signClaim(await id(o.seed), { project: PROJECT, unit: UNIT, digest: out(o.output ?? 'ok'), fuel: 10n });
      if (o.bad) claim.salt = claim.salt.map((b) => b ^ 1); // a reveal that does not verify
      const commitment = commitmentOf(claim, null);
      let second = commitment;
      if (o.second === 'other') {
        const alt = await signClaim(await id(o.seed), { project: PROJECT, unit: UNIT, digest: out('changed'), fuel: 10n });
        second = commitmentOf(alt, null);
      } else if (o.second === 'forged') {
        second = { ...commitment, seal: commitment.seal.map((b) => b ^ 1) };
      } else if (o.second === 'unsigned') {
        second = { ...commitment, seal: commitment.seal.map((b) => b ^ 1), signature: new Uint8Array(64) };
      }
      return { ...o, claim, commitments: [commitment, second] };
    }),
  );
  const seedOf = (worker) => theirs.find((o) => pb.hex(o.claim.worker) === pb.hex(worker))?.seed;
  const seals = (o) => new Set(o.commitments.map((c) => pb.hex(c.seal)));
  const effects = [];
  let exchanges = 0;
  const note = async (t, list) => {
    for (const e of list) {
      let detail = {};
      if (e.type === 'upload') detail = { complete: e.complete, claims: e.claims.length, rank: e.rank, checkSettled: e.checkSettled };
      else if (e.type === 'dispute') detail = { claims: e.claims.length };
      else if (e.type === 'misbehaviour') {
        // Whom it accuses, and whether it carries both of that worker's signed commitments.
        const offender = seedOf(e.commitment.worker);
        const shown = new Set([pb.hex(e.commitment.seal), pb.hex(e.other.seal)]);
        const both =
          offender !== undefined &&
          seedOf(e.other.worker) === offender &&
          e.unit === UNIT &&
          shown.size === 2 &&
          [...seals(theirs.find((o) => o.seed === offender))].every((x) => shown.has(x)) &&
          (await verifyCommitment(e.commitment)) &&
          (await verifyCommitment(e.other));
        detail = { offender, both };
      }
      effects.push([t, e.type, detail]);
    }
  };
  for (let t = 0; t <= until; t += 100) {
    if (settleAfter !== null && t === settleAfter) holder.release(UNIT);
    for (const o of theirs) {
      for (const [i, b] of [...boards.values()].entries()) {
        if (o.commitAt === t) b.commits.set(pb.hex(o.claim.worker), commitmentToWire(o.commitments[Math.min(i, 1)]));
        if (o.revealAt === t) b.reveals.set(pb.hex(o.claim.worker), claimToWire(o.claim));
      }
    }
    if (t === ownAt) {
      const own = await signClaim(me, { project: PROJECT, unit: UNIT, digest: out(output), fuel: 10n });
      await note(t, holder.addOwn(own, t));
    }
    // As the shell does: again at once while something is due now (a reveal to present).
    for (let round = 0; round < 4; round++) {
      await note(t, holder.tick(t));
      for (const request of holder.plan(t)) {
        exchanges += 1;
        const wire = pb.decode(pb.BoardExchange, pb.encode(pb.BoardExchange, exchangeToWire(request)));
        for (const c of request.commitments) assert.ok(await verifyCommitment(c), 'our commitment verifies');
        const reply = boards.get(pb.hex(request.board)).exchange(wire);
        await note(t, await holder.onReply(request, reply, t));
      }
      if (!(holder.wakeAt() <= t)) break;
    }
  }
  return { effects, exchanges, holder };
}

// Who uploads first among seeds 1 and 2, and 1 and 3 (rendezvous ranks the claimants).
const me = await id(1);
const rankWith = async (n) =>
  submitRank(PROJECT, UNIT, me.publicKey, [{ worker: me.publicKey }, { worker: (await id(n)).publicKey }]);
const r2 = await rankWith(2);
const r3 = await rankWith(3);

const rows = [
  {
    name: 'quorum of commitments at once: reveal at the first poll, complete certificate as soon as both reveal',
    given: { others: [{ seed: 2, commitAt: 0, revealAt: 0 }] },
    want: [
      [0, 'reveal', {}],
      [r2 * 2000, 'upload', { complete: true, claims: 2, rank: r2, checkSettled: r2 > 0 }],
    ],
  },
  {
    name: 'the other replica ranks first: ours waits its grace period and asks if settled',
    given: { others: [{ seed: 3, commitAt: 0, revealAt: 0 }] },
    want: [
      [0, 'reveal', {}],
      [r3 * 2000, 'upload', { complete: true, claims: 2, rank: r3, checkSettled: r3 > 0 }],
    ],
  },
  {
    name: 'alone on the boards: reveal after 2 s and a partial certificate at once (fewer commitments than quorum)',
    given: { others: [] },
    want: [
      [2000, 'reveal', {}],
      [2000, 'upload', { complete: false, claims: 1, rank: 0, checkSettled: false }],
    ],
  },
  {
    name: 'no boards at all: straight to a partial certificate',
    given: { members: 0 },
    want: [
      [0, 'reveal', {}],
      [0, 'upload', { complete: false, claims: 1, rank: 0, checkSettled: false }],
    ],
  },
  {
    name: 'the other commits late and reveals: partial alone at 2 s, complete once it reveals',
    given: { others: [{ seed: 2, commitAt: 3000, revealAt: 3000 }] },
    want: [
      [2000, 'reveal', {}],
      [2000, 'upload', { complete: false, claims: 1, rank: 0, checkSettled: false }],
      [3000 + r2 * 2000, 'upload', { complete: true, claims: 2, rank: r2, checkSettled: r2 > 0 }],
    ],
  },
  {
    name: 'committed but silent: partial certificate at the 6 s deadline',
    given: { others: [{ seed: 2, commitAt: 0 }] },
    want: [
      [0, 'reveal', {}],
      [6000, 'upload', { complete: false, claims: 1, rank: 0, checkSettled: false }],
    ],
  },
  {
    name: 'a disagreeing reveal: dispute, then a partial certificate at 6 s',
    given: { others: [{ seed: 2, commitAt: 0, revealAt: 0, output: 'other' }] },
    want: [
      [0, 'reveal', {}],
      [0, 'dispute', { claims: 2 }],
      [6000, 'upload', { complete: false, claims: 1, rank: 0, checkSettled: false }],
    ],
  },
  {
    name: "a board shows a reveal that does not verify: bad_board, and the view is ignored",
    given: { members: 1, others: [{ seed: 2, commitAt: 0, revealAt: 0, bad: true }], until: 600 },
    want: [
      [0, 'reveal', {}],
      [0, 'bad_board', {}],
      [500, 'bad_board', {}],
    ],
  },
  {
    name: 'quorum 3 with two agreeing and the third silent: partial with both at 6 s',
    given: { quorum: 3, others: [{ seed: 2, commitAt: 0, revealAt: 0 }, { seed: 3, commitAt: 0 }] },
    want: [
      [0, 'reveal', {}],
      [6000, 'upload', { complete: false, claims: 2, rank: 0, checkSettled: false }],
    ],
  },
  {
    name: 'a worker that filed different commitments on the two boards is reported once, with both signed commitments',
    given: { others: [{ seed: 2, commitAt: 0, second: 'other' }] },
    want: [
      [0, 'reveal', {}],
      [0, 'misbehaviour', { offender: 2, both: true }],
      [6000, 'upload', { complete: false, claims: 1, rank: 0, checkSettled: false }],
    ],
  },
  {
    name: 'the same commitment on both boards accuses nobody',
    given: { others: [{ seed: 2, commitAt: 0, second: 'same' }] },
    want: [
      [0, 'reveal', {}],
      [6000, 'upload', { complete: false, claims: 1, rank: 0, checkSettled: false }],
    ],
  },
  {
    name: 'a forged or unsigned second commitment (a lying board) accuses nobody',
    given: { others: [{ seed: 2, commitAt: 0, second: 'forged' }, { seed: 3, commitAt: 0, second: 'unsigned' }] },
    want: [
      [0, 'reveal', {}],
      [6000, 'upload', { complete: false, claims: 1, rank: 0, checkSettled: false }],
    ],
  },
];

for (const row of rows) {
  test(row.name, async () => {
    const { effects } = await run(row.given);
    const want = [...row.want].sort((a, b) => a[0] - b[0]);
    assert.deepEqual(effects, want);
  });
}

test('polls every 500 ms while the quorum forms, every 3 s after the partial deadline, never after the complete certificate', async () => {
  // One board, nobody else: polls at 0, 500, ... 5500, then 6000, 9000, 12000.
  const alone = await run({ members: 1, until: 12000 });
  assert.equal(alone.exchanges, 12 + 3);
  // Quorum met at once: polls at 0 (commit, see 2 commitments, reveal), again at 0 with the
  // reveal, then nothing.
  const met = await run({ members: 1, others: [{ seed: 2, commitAt: 0, revealAt: 0 }], until: 12000 });
  assert.equal(met.exchanges, 2);
  assert.equal(met.holder.busy(), r2 > 0); // only the ranked upload waits
});

test('a refused commitment is sent again; a replayed one is not', async () => {
  const count = async (refuse) => {
    const me = await id(1);
    const h = new Holder({ me: me.publicKey });
    h.setMembers([(await id(20)).publicKey]);
    h.hold({ project: PROJECT, unit: UNIT, quorum: 2 });
    h.addOwn(await signClaim(me, { project: PROJECT, unit: UNIT, digest: out('ok'), fuel: 1n }), 0);
    const first = h.plan(0)[0];
    await h.onReply(first, { views: [], rejected: [{ unitId: UNIT, reason: refuse }] }, 0);
    return h.plan(500)[0].commitments.length;
  };
  assert.equal(await count('no_ticket'), 1);
  assert.equal(await count('bad_ticket'), 1);
  assert.equal(await count('replayed'), 0);
});

test('a failed exchange is planned again with the commitment; release forgets the unit', async () => {
  const me = await id(1);
  const h = new Holder({ me: me.publicKey });
  h.setMembers([(await id(20)).publicKey, (await id(21)).publicKey]);
  h.hold({ project: PROJECT, unit: UNIT, quorum: 2 });
  h.addOwn(await signClaim(me, { project: PROJECT, unit: UNIT, digest: out('ok'), fuel: 1n }), 0);
  const [a, b] = h.plan(0);
  await h.onReply(a, { views: [], rejected: [] }, 0);
  h.onFailure(b);
  const again = h.plan(500);
  assert.deepEqual(again.map((r) => r.commitments.length), again.map((r) => (pb.hex(r.board) === pb.hex(b.board) ? 1 : 0)));
  assert.equal(h.wakeAt(), 1000);
  h.release(UNIT);
  assert.deepEqual(h.plan(10_000), []);
  assert.equal(h.wakeAt(), null);
});
