// The browser worker's first calls, the same under node (worker-calls.mjs) and in a
// Chromium tab (chromium-calls.mjs): a registration, two heartbeats and one heartbeat with
// a tampered signature, and equivocation evidence (ReportMisbehaviour) about a unit the
// coordinator does not have, against the coordinator at `url`. The worker's clock starts an
// hour behind the coordinator's, so the registration is first refused as skewed and
// retried on the coordinator's clock (`fallow-now`). Returns what each call got.

import * as pb from '../proto.js';
import { loadIdentity } from '../identity.js';
import { VolunteerWorker, Stamper, grpcWeb, GrpcError } from '../rpc.js';
import { commitmentOf, commitmentToWire, signClaim } from '../claim.js';

export async function firstCalls(url, { account = 'webvol', team = 'lab', name = 'tab' } = {}) {
  const out = {};
  const identity = await loadIdentity();
  out.id = identity.id;
  // An hour slow: the first stamp is refused as skewed and corrected from `fallow-now`.
  const slow = new Stamper(() => BigInt(Date.now() - 3_600_000) * 1000n);
  const worker = new VolunteerWorker(identity, { stamper: slow });
  const registered = await worker.register({ url, name, account, team, cores: 2 });
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

  // Two different commitments of ours for one unit: valid proof, so the coordinator takes
  // the signed call, decodes the evidence, checks it, and refuses it only because it does
  // not know the unit.
  const sign = (byte) =>
    signClaim(identity, { project: 1n, unit: 424242n, digest: new Uint8Array(32).fill(byte), fuel: 1n });
  try {
    await worker.reportMisbehaviour(commitmentToWire(commitmentOf(await sign(1))), commitmentToWire(commitmentOf(await sign(2))));
    out.misbehaviour = { status: 0, message: 'accepted' };
  } catch (e) {
    if (!(e instanceof GrpcError)) throw e;
    out.misbehaviour = { status: e.status, message: e.message };
  }
  return out;
}
