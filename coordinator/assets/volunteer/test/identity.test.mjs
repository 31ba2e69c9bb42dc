// The browser worker's identity and signed bytes (identity.js), its stamps (rpc.js) and
// its protobuf codec (proto.js). Under node; then in headless Chromium, where the key must
// be kept in IndexedDB, non-extractable, and be the same after a reload. Skipped in
// Chromium's part without Chromium ($CHROMIUM, or chromium on the PATH). The calls
// against a real coordinator, and the bytes compared with prost's, are the e2e test
// `volunteer::a_browser_worker_registers_and_heartbeats_over_grpc_web`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import * as pb from '../proto.js';
import { Identity, loadIdentity, registrationMessage, callMessage } from '../identity.js';
import { Stamper, detectPlatform } from '../rpc.js';
import { hash, toHex } from '../blake3.js';
import { findChromium, runInTab } from './chromium.mjs';

const chromium = findChromium();

test('the signed bytes are laid out as protocol::identity and protocol::call lay them out', () => {
  const te = new TextEncoder();
  assert.equal(
    toHex(registrationMessage({ name: 'ab', account: 'c', team: '', peerAddr: '' })),
    toHex(te.encode('fallow/register/v2\0')) +
      '0200000000000000' + toHex(te.encode('ab')) +
      '0100000000000000' + toHex(te.encode('c')) +
      '0000000000000000' + '0000000000000000',
  );
  const body = Uint8Array.of(1, 2, 3);
  assert.equal(
    toHex(callMessage('Heartbeat', 0x0102030405060708n, body)),
    toHex(te.encode('fallow/call/v1\0')) + '0900000000000000' + toHex(te.encode('Heartbeat')) +
      '0807060504030201' + toHex(hash(body)),
  );
});

test('a node identity signs what verifies with its raw public key', async () => {
  const id = await loadIdentity();
  assert.equal(id.publicKey.length, 32);
  assert.equal(id.keyPair.privateKey.extractable, false);
  const stamp = await id.stamp('Heartbeat', 42n, Uint8Array.of(9));
  const [ts, sig] = stamp.split('.');
  assert.equal(ts, '42');
  assert.match(sig, /^[0-9a-f]{128}$/);
  const key = await crypto.subtle.importKey('raw', id.publicKey, { name: 'Ed25519' }, false, ['verify']);
  const bytes = Uint8Array.from(sig.match(/../g), (h) => parseInt(h, 16));
  assert.ok(await crypto.subtle.verify({ name: 'Ed25519' }, key, bytes, callMessage('Heartbeat', 42n, Uint8Array.of(9))));
  assert.ok(!(await crypto.subtle.verify({ name: 'Ed25519' }, key, bytes, callMessage('Heartbeat', 43n, Uint8Array.of(9)))));
  // Under node there is no IndexedDB: each load is a fresh key in memory.
  assert.notEqual((await loadIdentity()).id, id.id);
  assert.equal(id.stored, false);
  assert.equal(detectPlatform(), 'browser-node');
});

test('stamps follow the coordinator clock and strictly increase', () => {
  let local = 1_000_000n;
  const s = new Stamper(() => local);
  s.learn(5_000); // the coordinator says 5 s; locally it is 1 s
  assert.equal(s.next(), 5_000_000n);
  assert.equal(s.next(), 5_000_001n);
  local -= 500_000n; // the local clock steps back
  assert.equal(s.next(), 5_000_002n);
});

test('proto.js writes proto3 as prost does and reads what it skips', () => {
  assert.equal(pb.hex(pb.encode(pb.HeartbeatRequest, {})), '');
  assert.equal(
    pb.hex(pb.encode(pb.HeartbeatRequest, { publicKey: Uint8Array.of(1), heldUnits: [1n, 300n], peersVersion: 0n, runState: 'idle' })),
    '0a0101' + '120301ac02' + '220469646c65',
  );
  // Unknown fields of each wire type are skipped; unpacked repeated numbers are read.
  const withUnknown = Uint8Array.from([
    0x08, 0x07, // settled_units = 7, unpacked
    0x78, 0x01, // field 15 varint
    0x81, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, // field 16 fixed64
    0x8a, 0x01, 0x02, 0xaa, 0xbb, // field 17 bytes
    0x95, 0x01, 1, 2, 3, 4, // field 18 fixed32
    0x28, 0xe8, 0x07, // now_ms = 1000
  ]);
  const r = pb.decode(pb.HeartbeatResponse, withUnknown);
  assert.deepEqual(r.settledUnits, [7n]);
  assert.equal(r.nowMs, 1000n);
  assert.equal(r.unknownWorker, false);
  assert.throws(() => pb.decode(pb.HeartbeatResponse, Uint8Array.of(0x28, 0x80)), /truncated varint/);
  assert.throws(() => pb.decode(pb.HeartbeatResponse, Uint8Array.of(0x1a, 0x05, 0)), /length past the end/);
  assert.throws(() => pb.encode(pb.RegisterWorkerRequest, { cores: 2 ** 32 }), /out of range/);
});

const PAGE = `<!doctype html><script type="module">
import { loadIdentity } from '/identity.js';
import { detectPlatform } from '/rpc.js';
const report = (r) => fetch('/result', { method: 'POST', body: JSON.stringify(r) });
try {
  const a = await loadIdentity();
  const b = await loadIdentity();
  await report({
    id: a.id, again: b.id, platform: detectPlatform(),
    extractable: a.keyPair.privateKey.extractable, stored: a.stored && b.stored,
    signature: (await a.stamp('Heartbeat', 1n, new Uint8Array(0))).length,
  });
  if (!sessionStorage.getItem('reloaded')) {
    sessionStorage.setItem('reloaded', '1');
    location.reload();
  }
} catch (e) {
  report({ error: String(e && e.stack || e) });
}
</script>`;

test('in Chromium the key is kept in IndexedDB, non-extractable, across reloads', { skip: !chromium && 'no Chromium', timeout: 60_000 }, async () => {
  const here = new URL('../', import.meta.url);
  const results = await runInTab(
    chromium,
    (url) => {
      if (url === '/') return ['text/html', PAGE];
      if (['/identity.js', '/rpc.js', '/proto.js', '/blake3.js', '/guest.js'].includes(url)) {
        return ['text/javascript', readFileSync(new URL('.' + url, here))];
      }
      return null;
    },
    // The page reports once, reloads itself and reports again.
    { posts: 2 },
  );
  const [first, second] = results;
  assert.equal(first.error, undefined, first.error);
  assert.equal(second?.error, undefined, second?.error);
  assert.match(first.id, /^[0-9a-f]{64}$/);
  assert.equal(first.again, first.id, 'a second load in the page gives the stored key');
  assert.equal(second.id, first.id, 'the key survives a reload');
  assert.equal(first.extractable, false);
  assert.equal(first.stored, true);
  assert.equal(first.platform, 'browser-chromium');
  assert.equal(first.signature, '1.'.length + 128);
});
