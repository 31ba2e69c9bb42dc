// BLAKE3 (https://github.com/BLAKE3-team/BLAKE3-specs), written for Fallow's browser worker:
// the hash, keyed hash and key derivation, with the extendable output read from any
// position. The guest runtime (guest.js) needs it for what the native sandbox computes with
// the `blake3` crate: the unit's random seed (`protocol::unit_seed`), the two WASI random
// streams (`sandbox/src/host.rs`, a derive_key XOF read at a position) and output digests.
//
// Plain and portable rather than fast: one block at a time, no SIMD. test/blake3.test.mjs
// checks it against the official test vectors.

const IV = new Uint32Array([
  0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
]);

const CHUNK_START = 1;
const CHUNK_END = 2;
const PARENT = 4;
const ROOT = 8;
const KEYED_HASH = 16;
const DERIVE_KEY_CONTEXT = 32;
const DERIVE_KEY_MATERIAL = 64;

const BLOCK_LEN = 64;
const CHUNK_LEN = 1024;

// The message word order of each of the seven rounds (the permutation applied repeatedly).
const SCHEDULE = (() => {
  const perm = [2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8];
  const rounds = [];
  let order = [...Array(16).keys()];
  for (let r = 0; r < 7; r++) {
    rounds.push(order);
    order = perm.map((p) => order[p]);
  }
  return Uint8Array.from(rounds.flat());
})();

const state = new Uint32Array(16);

function g(a, b, c, d, x, y) {
  const s = state;
  s[a] = (s[a] + s[b] + x) | 0;
  let t = s[d] ^ s[a];
  s[d] = (t >>> 16) | (t << 16);
  s[c] = (s[c] + s[d]) | 0;
  t = s[b] ^ s[c];
  s[b] = (t >>> 12) | (t << 20);
  s[a] = (s[a] + s[b] + y) | 0;
  t = s[d] ^ s[a];
  s[d] = (t >>> 8) | (t << 24);
  s[c] = (s[c] + s[d]) | 0;
  t = s[b] ^ s[c];
  s[b] = (t >>> 7) | (t << 25);
}

/**
 * The compression function: fills `state` (16 words) from a chaining value, one block of
 * 16 message words, a 64-bit counter (as a Number below 2^53), the block length and flags.
 */
function compress(cv, m, counter, blockLen, flags) {
  const s = state;
  for (let i = 0; i < 8; i++) s[i] = cv[i];
  s[8] = IV[0];
  s[9] = IV[1];
  s[10] = IV[2];
  s[11] = IV[3];
  s[12] = counter >>> 0;
  s[13] = Math.floor(counter / 0x100000000) >>> 0;
  s[14] = blockLen;
  s[15] = flags;
  const S = SCHEDULE;
  for (let o = 0; o < 112; o += 16) {
    g(0, 4, 8, 12, m[S[o]], m[S[o + 1]]);
    g(1, 5, 9, 13, m[S[o + 2]], m[S[o + 3]]);
    g(2, 6, 10, 14, m[S[o + 4]], m[S[o + 5]]);
    g(3, 7, 11, 15, m[S[o + 6]], m[S[o + 7]]);
    g(0, 5, 10, 15, m[S[o + 8]], m[S[o + 9]]);
    g(1, 6, 11, 12, m[S[o + 10]], m[S[o + 11]]);
    g(2, 7, 8, 13, m[S[o + 12]], m[S[o + 13]]);
    g(3, 4, 9, 14, m[S[o + 14]], m[S[o + 15]]);
  }
  for (let i = 0; i < 8; i++) {
    s[i] ^= s[i + 8];
    s[i + 8] ^= cv[i];
  }
}

/** Little-endian words of up to 64 bytes of `bytes` from `offset`, zero-padded. */
function blockWords(bytes, offset, len, out) {
  const full = len >> 2;
  for (let w = 0; w < full; w++) {
    const p = offset + 4 * w;
    out[w] = bytes[p] | (bytes[p + 1] << 8) | (bytes[p + 2] << 16) | (bytes[p + 3] << 24);
  }
  for (let w = full; w < 16; w++) out[w] = 0;
  for (let i = 4 * full; i < len; i++) out[i >> 2] |= bytes[offset + i] << (8 * (i & 3));
  return out;
}

/** What a finished node can still produce: its chaining value, or root output bytes. */
class Output {
  constructor(cv, block, counter, blockLen, flags) {
    this.cv = Uint32Array.from(cv);
    this.block = Uint32Array.from(block);
    this.counter = counter;
    this.blockLen = blockLen;
    this.flags = flags;
  }

  chainingValue() {
    compress(this.cv, this.block, this.counter, this.blockLen, this.flags);
    return Uint32Array.from(state.subarray(0, 8));
  }

  /** `len` bytes of the root output stream starting at byte `position` (a Number). */
  rootBytes(position, len) {
    const out = new Uint8Array(len);
    let done = 0;
    let blockIndex = Math.floor(position / BLOCK_LEN);
    let offset = position % BLOCK_LEN;
    while (done < len) {
      compress(this.cv, this.block, blockIndex, this.blockLen, this.flags | ROOT);
      for (let i = offset; i < BLOCK_LEN && done < len; i++) {
        out[done++] = (state[i >> 2] >>> (8 * (i & 3))) & 0xff;
      }
      offset = 0;
      blockIndex++;
    }
    return out;
  }
}

class ChunkState {
  constructor(key, counter, flags) {
    this.cv = Uint32Array.from(key);
    this.counter = counter;
    this.flags = flags;
    this.block = new Uint8Array(BLOCK_LEN);
    this.blockLen = 0;
    this.blocksCompressed = 0;
    this.words = new Uint32Array(16);
  }

  len() {
    return this.blocksCompressed * BLOCK_LEN + this.blockLen;
  }

  startFlag() {
    return this.blocksCompressed === 0 ? CHUNK_START : 0;
  }

  update(input, offset, end) {
    while (offset < end) {
      if (this.blockLen === BLOCK_LEN) {
        blockWords(this.block, 0, BLOCK_LEN, this.words);
        compress(this.cv, this.words, this.counter, BLOCK_LEN, this.flags | this.startFlag());
        this.cv.set(state.subarray(0, 8));
        this.blocksCompressed++;
        this.blockLen = 0;
      }
      const take = Math.min(BLOCK_LEN - this.blockLen, end - offset);
      this.block.set(input.subarray(offset, offset + take), this.blockLen);
      this.blockLen += take;
      offset += take;
    }
  }

  output() {
    blockWords(this.block, 0, this.blockLen, this.words);
    return new Output(
      this.cv,
      this.words,
      this.counter,
      this.blockLen,
      this.flags | this.startFlag() | CHUNK_END,
    );
  }
}

function parentOutput(left, right, key, flags) {
  const block = new Uint32Array(16);
  block.set(left, 0);
  block.set(right, 8);
  return new Output(key, block, 0, BLOCK_LEN, flags | PARENT);
}

/** An incremental BLAKE3 hasher (the reference implementation's structure). */
export class Hasher {
  constructor(key = IV, flags = 0) {
    this.key = Uint32Array.from(key);
    this.flags = flags;
    this.chunk = new ChunkState(this.key, 0, flags);
    this.stack = [];
  }

  /** A hasher in keyed mode; `key` is 32 bytes. */
  static keyed(key) {
    if (key.length !== 32) throw new Error('BLAKE3 key must be 32 bytes');
    return new Hasher(blockWords(key, 0, 32, new Uint32Array(16)).subarray(0, 8), KEYED_HASH);
  }

  /** A hasher in key-derivation mode for `context` (a string, UTF-8 encoded). */
  static deriveKey(context) {
    const ctx = new Hasher(IV, DERIVE_KEY_CONTEXT);
    ctx.update(new TextEncoder().encode(context));
    const contextKey = ctx.finalize(32);
    return new Hasher(
      blockWords(contextKey, 0, 32, new Uint32Array(16)).subarray(0, 8),
      DERIVE_KEY_MATERIAL,
    );
  }

  addChunkCV(cv, totalChunks) {
    // Merge completed subtrees: one merge per trailing zero bit of the chunk count.
    while ((totalChunks & 1) === 0) {
      cv = parentOutput(this.stack.pop(), cv, this.key, this.flags).chainingValue();
      totalChunks = Math.floor(totalChunks / 2);
    }
    this.stack.push(cv);
  }

  /** Adds bytes (a Uint8Array); returns this. */
  update(input) {
    let offset = 0;
    while (offset < input.length) {
      if (this.chunk.len() === CHUNK_LEN) {
        const cv = this.chunk.output().chainingValue();
        const total = this.chunk.counter + 1;
        this.addChunkCV(cv, total);
        this.chunk = new ChunkState(this.key, total, this.flags);
      }
      const take = Math.min(CHUNK_LEN - this.chunk.len(), input.length - offset);
      this.chunk.update(input, offset, offset + take);
      offset += take;
    }
    return this;
  }

  /** The root output, from which any part of the extendable output can be read. */
  finalizeXof() {
    let output = this.chunk.output();
    for (let i = this.stack.length - 1; i >= 0; i--) {
      output = parentOutput(this.stack[i], output.chainingValue(), this.key, this.flags);
    }
    return new Xof(output);
  }

  /** The first `len` bytes of the output (32 by default). */
  finalize(len = 32) {
    return this.finalizeXof().read(0, len);
  }
}

/** BLAKE3's extendable output: any `len` bytes from any `position`. */
export class Xof {
  constructor(output) {
    this.output = output;
  }

  /** `len` bytes starting at byte `position` (a Number below 2^53). */
  read(position, len) {
    return this.output.rootBytes(position, len);
  }
}

/** BLAKE3 of `bytes`, `len` bytes long (32 by default). */
export function hash(bytes, len = 32) {
  return new Hasher().update(bytes).finalize(len);
}

/** BLAKE3 keyed hash of `bytes` under a 32-byte key. */
export function keyedHash(key, bytes, len = 32) {
  return Hasher.keyed(key).update(bytes).finalize(len);
}

/** BLAKE3 derive_key(context, material), `len` bytes long (32 by default). */
export function deriveKey(context, material, len = 32) {
  return Hasher.deriveKey(context).update(material).finalize(len);
}

/** Lowercase hex of bytes. */
export function toHex(bytes) {
  let s = '';
  for (const b of bytes) s += b.toString(16).padStart(2, '0');
  return s;
}
