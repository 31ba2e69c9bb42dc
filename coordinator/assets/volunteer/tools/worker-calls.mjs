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
// Decoding what we encoded gives the values back (the wire answers are decoded below).
const round = pb.decode(pb.HeartbeatResponse, encodings.heartbeat_response);
if (round.peers.length !== 2 || round.peers[0].addr !== '10.0.0.1:7000' || round.settledUnits[1] !== 1n << 40n) {
  throw new Error(`HeartbeatResponse does not round-trip: ${JSON.stringify(round, (_, v) => (typeof v === 'bigint' ? `${v}` : v))}`);
}

const out = { encodings: Object.fromEntries(Object.entries(encodings).map(([k, v]) => [k, pb.hex(v)])) };

Object.assign(out, await firstCalls(url, { name: 'node tab' }));

console.log(JSON.stringify(out));
