// The browser worker's first calls, under node, against a real coordinator (the e2e test
// `volunteer::a_browser_worker_registers_and_heartbeats_over_grpc_web` runs it):
//
//   node tools/worker-calls.mjs http://127.0.0.1:PORT
//
// It prints one JSON object: proto.js's encodings of fixed values (the test compares them
// with prost's), then what a registration as account "webvol", team "lab", two heartbeats
// and one heartbeat with a tampered signature got (calls.mjs).

import * as pb from '../proto.js';
import { firstCalls } from './calls.mjs';

const url = process.argv[2];
if (!url) {
  console.error('usage: node tools/worker-calls.mjs COORDINATOR_URL');
  process.exit(2);
}

// Values that reach every encoding rule: multi-byte varints, u64 past 2^53, UTF-8,
// repeated (packed) numbers, defaults left out, nested repeated messages.
const key = Uint8Array.from({ length: 32 }, (_, i) => i * 7);
const encodings = {
  register_full: pb.encode(pb.RegisterWorkerRequest, {
    publicKey: key,
    name: 'tab ünïcode ✓',
    peerAddr: '',
    cores: 300,
    version: 'web-1',
    signature: new Uint8Array(64).fill(0xab),
    account: 'webvol',
    team: 'lab',
    platform: 'browser-node',
    fuelRules: 1,
  }),
  register_defaults: pb.encode(pb.RegisterWorkerRequest, { publicKey: key, cores: 0, name: 'x' }),
  heartbeat_full: pb.encode(pb.HeartbeatRequest, {
    publicKey: key,
    heldUnits: [0n, 1n, 300n, (1n << 63n) + 5n, (1n << 64n) - 1n],
    peersVersion: 1234567890123n,
    runState: 'suspended',
    stateReason: 'the tab is hidden',
  }),
  heartbeat_empty: pb.encode(pb.HeartbeatRequest, {}),
  heartbeat_response: pb.encode(pb.HeartbeatResponse, {
    settledUnits: [7n, 1n << 40n],
    peersVersion: 3n,
    peers: [{ publicKey: key, addr: '10.0.0.1:7000' }, {}],
    unknownWorker: true,
    nowMs: 1_800_000_000_000n,
    membershipCredential: Uint8Array.of(1, 2, 3),
  }),
};

// The messages of leases, boards and certificates (loop.js, holder.js), including a
// nested message present but empty, a negative int32 and repeated bytes.
const claim = {
  projectId: 3n,
  unitId: (1n << 63n) + 9n,
  digest: new Uint8Array(32).fill(0xd1),
  fuel: 123456789012345n,
  workerKey: key,
  signature: new Uint8Array(64).fill(0x5a),
  salt: new Uint8Array(32).fill(0x17),
};
const commitment = {
  projectId: 3n,
  unitId: 9n,
  workerKey: key,
  seal: new Uint8Array(32).fill(0x33),
  signature: new Uint8Array(64).fill(0x44),
  ticket: { expiresMs: 1_800_000_000_000n, signature: new Uint8Array(64).fill(0x55) },
};
Object.assign(encodings, {
  work_request: pb.encode(pb.WorkRequest, {
    publicKey: key,
    maxUnits: 2,
    acceptSubmitters: [new Uint8Array(32).fill(1), new Uint8Array(32).fill(2)],
    allowUnsigned: true,
  }),
  work_response: pb.encode(pb.WorkResponse, {
    assignments: [
      {
        projectId: 3n,
        unitId: 9n,
        unitName: 'primes-0001',
        input: Uint8Array.of(1, 2, 3),
        moduleDigest: new Uint8Array(32).fill(0xee),
        limits: {
          fuel: 10_000_000_000n,
          memoryMb: 64,
          wallSeconds: 60,
          maxOutputBytes: 1n << 20n,
          nanCanonicalization: true,
          maxCheckpointBytes: 16n << 20n,
        },
        quorum: 2,
        leaseMs: 600_000n,
        submitterKey: new Uint8Array(32).fill(9),
        terms: new Uint8Array(32).fill(8),
        signature: new Uint8Array(64).fill(7),
        ticket: { expiresMs: 1_800_000_000_000n, signature: new Uint8Array(64).fill(6) },
        data: [{ name: 'a.bin', size: 1n << 30n, digest: new Uint8Array(32).fill(5) }],
      },
      { projectId: 1n, unitId: 0n, limits: {} },
    ],
    retryAfterMs: 2500n,
    reason: 'at its limit',
  }),
  get_module_request: pb.encode(pb.GetModuleRequest, { digest: new Uint8Array(32).fill(0xee), fuelRules: 1, canonicalNans: true }),
  failure_report: pb.encode(pb.FailureReport, {
    publicKey: key,
    unitId: 9n,
    kind: pb.FailureKindNumber.bad_signature,
    detail: 'the signature on unit "x" does not verify',
    exitCode: -3,
  }),
  certificate_submission: pb.encode(pb.CertificateSubmission, {
    unitId: 9n,
    claims: [claim, { ...claim, fuel: 0n }],
    output: new TextEncoder().encode('42\n'),
    submitterKey: key,
  }),
  dispute: pb.encode(pb.Dispute, { publicKey: key, unitId: 9n, claims: [claim] }),
  return_units: pb.encode(pb.ReturnUnitsRequest, { publicKey: key, unitIds: [9n, 1n << 40n] }),
  relay_exchange: pb.encode(pb.RelayExchangeRequest, {
    publicKey: key,
    boardKey: new Uint8Array(32).fill(0xbb),
    exchange: { commitments: [commitment], reveals: [claim], wantUnits: [9n, 10n] },
  }),
  evidence: pb.encode(pb.Evidence, {
    reporterKey: key,
    commitment,
    other: { ...commitment, seal: new Uint8Array(32).fill(0x34), ticket: null },
  }),
  board_views: pb.encode(pb.BoardViews, {
    views: [{ unitId: 9n, commitments: 2, reveals: [claim], committed: [{ ...commitment, ticket: null }] }],
    rejected: [{ unitId: 10n, reason: 'no_ticket' }],
  }),
});
const views = pb.decode(pb.BoardViews, encodings.board_views);
if (views.views[0].reveals[0].fuel !== claim.fuel || views.rejected[0].reason !== 'no_ticket') {
  throw new Error('BoardViews does not round-trip');
}
// Decoding what we encoded gives the values back (the wire answers are decoded below).
const round = pb.decode(pb.HeartbeatResponse, encodings.heartbeat_response);
if (round.peers.length !== 2 || round.peers[0].addr !== '10.0.0.1:7000' || round.settledUnits[1] !== 1n << 40n) {
  throw new Error(`HeartbeatResponse does not round-trip: ${JSON.stringify(round, (_, v) => (typeof v === 'bigint' ? `${v}` : v))}`);
}

const out = { encodings: Object.fromEntries(Object.entries(encodings).map(([k, v]) => [k, pb.hex(v)])) };

Object.assign(out, await firstCalls(url, { name: 'node tab' }));

console.log(JSON.stringify(out));
