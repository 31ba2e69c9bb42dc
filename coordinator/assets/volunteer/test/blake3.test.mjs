// blake3.js against the official BLAKE3 test vectors (fixtures/blake3-test-vectors.json,
// from the BLAKE3 repository's test_vectors/, CC0) and against the Rust `blake3` crate as
// Fallow uses it (expected values printed by the crate, see the comments).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

import { Hasher, hash, keyedHash, deriveKey, toHex } from '../blake3.js';

const vectors = JSON.parse(
  readFileSync(new URL('./fixtures/blake3-test-vectors.json', import.meta.url), 'utf8'),
);

function input(len) {
  const b = new Uint8Array(len);
  for (let i = 0; i < len; i++) b[i] = i % 251;
  return b;
}

test('official vectors: hash, keyed_hash, derive_key, extended output', () => {
  const key = new TextEncoder().encode(vectors.key);
  for (const c of vectors.cases) {
    const bytes = input(c.input_len);
    const n = c.hash.length / 2;
    assert.equal(toHex(hash(bytes, n)), c.hash, `hash ${c.input_len}`);
    assert.equal(toHex(hash(bytes)), c.hash.slice(0, 64), `hash32 ${c.input_len}`);
    assert.equal(toHex(keyedHash(key, bytes, n)), c.keyed_hash, `keyed ${c.input_len}`);
    assert.equal(
      toHex(deriveKey(vectors.context_string, bytes, n)),
      c.derive_key,
      `derive ${c.input_len}`,
    );
  }
});

test('incremental updates of any split give the one-shot hash', () => {
  const bytes = input(5000);
  const whole = toHex(hash(bytes, 100));
  for (const step of [1, 7, 63, 64, 65, 1023, 1024, 1025, 4999]) {
    const h = new Hasher();
    for (let i = 0; i < bytes.length; i += step) h.update(bytes.subarray(i, i + step));
    assert.equal(toHex(h.finalize(100)), whole, `step ${step}`);
  }
});

test('the XOF read at any position is the same stream', () => {
  const xof = Hasher.deriveKey('ctx').update(new Uint8Array(32).fill(3)).finalizeXof();
  const whole = xof.read(0, 1000);
  for (const [pos, len] of [[0, 1], [3, 61], [64, 64], [600, 400], [999, 1], [127, 130]]) {
    assert.deepEqual(xof.read(pos, len), whole.subarray(pos, pos + len), `at ${pos}`);
  }
  // sandbox/src/host.rs `seeded_random_is_one_stream_however_it_is_read` uses this very stream
  // (derive_key "ctx", seed [3; 32]).
  assert.equal(toHex(xof.read(0, 64)), RUST.ctx3_0_64);
  assert.equal(toHex(xof.read(1000, 100)), RUST.ctx3_1000_100);
});

test('Fallow\'s uses match the Rust crate: unit seed and both WASI random streams', async () => {
  const { unitSeed, randomStream } = await import('../guest.js');
  const seed = unitSeed('u1', new TextEncoder().encode('0 100\n'));
  assert.equal(toHex(seed), RUST.seed_u1);
  assert.equal(toHex(randomStream(seed, 'fallow secure random v1').read(0, 80)), RUST.secure);
  assert.equal(toHex(randomStream(seed, 'fallow insecure random v1').read(0, 80)), RUST.insecure);
  const big = input(200_000);
  assert.equal(toHex(hash(big)), RUST.big);
});

// Printed by the Rust `blake3` crate 1.8.7 (the workspace's) with a throwaway program:
// derive_key("ctx") over [3; 32] read at 0 and at 1000; `protocol::unit_seed("u1", b"0 100\n")`;
// the first 80 bytes of `sandbox::host::SeededRandom`'s two streams for that seed; and
// blake3::hash of 200,000 bytes of the vectors' input pattern.
const RUST = {
  ctx3_0_64:
    '8493fec02c829b01d01134cad77b3e54e112404bc0e7b85995248afe5f4525b2d2795dd4f9b63c9869b03bd8666ce2fab8e9da602cf055ee9e4f2279cf1909e2',
  ctx3_1000_100:
    '330aff97ff135a059528a02915a4bf560b2db5698390ca0a9387717846f4352d5684f97d07dd229f61ebeafcb8296fbeca74cea764596818facaf91e3ddc722823c281dd3104c3ee1957ef0c259ea832ab6e5017335526852216caa592009e65abb0dbc9',
  seed_u1: 'f512ebc4b3dd95bcd21065977a59120113d099f956d0c05a45f3d6906f1c70b6',
  secure:
    '600e0babe8839c3e0d7342537e2ae5860117380baeb9f6a7fa547c69578a71eb7e2f7cc6b451dd534af7dce528975388275e59f4ec2643883ff20e79f0476ad3677f91565dbbedaf132075e10023d953',
  insecure:
    'afb98f639b12a17b01afb2105826851f333e92624251607d517539c7ddfa343c27fb1c2daf0742e7f3c107659da12cf3253e1d8f7d6d7f047c200ed8089f67a29b134387a5127a21d0cc468e4357fe9d',
  big: '55409142cced2ec79897459f170b6d22565daf883710b4ad7aeeddaef54244b4',
};
