// The browser worker's first calls, under node, against a real coordinator (the e2e test
// `volunteer::a_browser_worker_registers_and_heartbeats_over_grpc_web` runs it):
//
//   node tools/worker-calls.mjs http://127.0.0.1:PORT
//
// It prints one JSON object: proto.js's encodings of fixed values (the test compares them
// with prost's), then what a registration as account "webvol", team "lab", two heartbeats
// and one heartbeat with a tampered signature got. The worker's clock starts an hour
// behind the coordinator's, so the registration is first refused as skewed and retried on
// the coordinator's clock (`fallow-now`).

import * as pb from '../proto.js';
import { loadIdentity } from '../identity.js';
import { VolunteerWorker, Stamper, grpcWeb, GrpcError } from '../rpc.js';

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

const identity = await loadIdentity();
out.id = identity.id;
// An hour slow: the first stamp is refused as skewed and corrected from `fallow-now`.
const slow = new Stamper(() => BigInt(Date.now() - 3_600_000) * 1000n);
const worker = new VolunteerWorker(identity, { stamper: slow });
const registered = await worker.register({ url, name: 'node tab', account: 'webvol', team: 'lab', cores: 2 });
out.register = {
  heartbeat_ms: Number(registered.heartbeatMs),
  lease_ms: Number(registered.leaseMs),
  now_ms: Number(registered.nowMs),
  coordinator_key: pb.hex(registered.coordinatorKey),
  peer_warning: registered.peerWarning,
  platform: worker.registration.platform,
  clock_corrections: worker.clockCorrections,
};
out.heartbeats = [];
for (let i = 0; i < 2; i++) {
  const h = await worker.heartbeat();
  out.heartbeats.push({ now_ms: Number(h.nowMs), unknown_worker: h.unknownWorker, peers_version: Number(h.peersVersion) });
}

// A heartbeat whose signature does not verify: one bit of it flipped.
const body = pb.encode(pb.HeartbeatRequest, { publicKey: identity.publicKey, runState: 'idle' });
const stamp = await identity.stamp('Heartbeat', worker.stamper.next(), body);
const tampered = stamp.slice(0, -1) + (stamp.endsWith('0') ? '1' : '0');
try {
  await grpcWeb(url, 'Heartbeat', body, { headers: { 'fallow-call': tampered } });
  out.bad_signature = { status: 0, message: 'accepted' };
} catch (e) {
  if (!(e instanceof GrpcError)) throw e;
  out.bad_signature = { status: e.status, message: e.message };
}

console.log(JSON.stringify(out));
