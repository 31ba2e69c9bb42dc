// The guest runtime of Fallow's browser worker: runs a unit's WebAssembly module (a WASI
// preview 1 command) inside a Web Worker, or under node for tests, and gives the bytes and
// the fuel the native sandbox gives (`sandbox/src/lib.rs`, wasmtime).
//
// # What a guest sees (the same as natively; `sandbox` module doc, "Determinism")
// stdin = the unit's input; argv = ["main"]; no environment; no files (no preopens: a
// project with data files is refused here, see `runUnit`'s `data`); clocks frozen at
// 2000-01-01T00:00:00Z (monotonic 0); random_get = BLAKE3 derive_key("fallow secure random
// v1", seed) read as wasmtime-wasi reads it (one u32 of the stream per byte); poll_oneoff
// answers ENOTSUP; every other WASI preview 1 call answers what wasmtime-wasi 48 answers
// for a sandbox with stdin, stdout and stderr only, including when it traps instead (a
// pointer outside memory, a misaligned pointer, an invalid enum or flag value).
// `fallow::checkpoint_save`/`checkpoint_load` restart the guest exactly as
// `sandbox/src/checkpoint.rs` does.
//
// # Fuel (the engine-independent meter)
// A metered module (rewritten by Fallow) imports `fallow_meter::slice (i64) -> i64` and
// exports the mutable i64 global `fallow_meter_fuel`. The guest decrements the global and
// calls `slice(counter)` when it went negative; `slice` hands out the next slice of the
// budget (at most `slice` fuel, default SLICE) or stops the run as out of fuel. The counter
// starts at the module's 0, so the first check asks for a slice. The fuel used is what was
// handed out minus what is left in the global (`sandbox/src/meter.rs`, whose rewrite makes
// these modules: the host side here is its `Meter`). A module without the
// import is not metered: its fuel is 0 and only `wall_seconds` (checked at host calls and
// slices) stops it.
//
// # Memory limit
// When given the module's bytes, the runtime rewrites its memory's declared maximum to
// `memory_mb` (never above what the module declared), so `memory.grow` past the limit
// answers -1 inside the engine exactly as wasmtime's limiter makes it answer. Whether a
// trap that follows came from that refusal cannot be seen from outside the engine: a trap
// is reported as `memory_exhausted` when the guest's stderr says an allocation failed
// (Rust's "memory allocation of N bytes failed") or its memory stands at the limit. Given a
// compiled `WebAssembly.Module` instead, nothing can be rewritten: memory is checked at
// every host call and slice, and a guest found over the limit fails `memory_exhausted`.

import { Hasher, hash, toHex } from './blake3.js';

/** Fuel handed out per slice of a metered run. */
export const SLICE = 1n << 22n;
/**
 * The version of the fuel-metering rules whose host side this runtime implements
 * (`sandbox::meter::VERSION`): what the browser worker registers with (`fuel_rules`), and
 * the only one a coordinator metering alike accepts.
 */
export const FUEL_RULES = 2;

/** `protocol::Limits::default()`. */
export const DEFAULT_LIMITS = Object.freeze({
  fuel: 10_000_000_000,
  memory_mb: 64,
  wall_seconds: 60,
  max_output_bytes: 1 << 20,
  nan_canonicalization: false,
  max_checkpoint_bytes: 16 << 20,
});

/** `protocol::FailureKind::as_str` of each kind. */
export const FailureKind = Object.freeze({
  FuelExhausted: 'fuel_exhausted',
  Timeout: 'timeout',
  MemoryExhausted: 'memory_exhausted',
  StackOverflow: 'stack_overflow',
  OutputTooLarge: 'output_too_large',
  Trap: 'trap',
  ExitCode: 'exit_code',
  BadModule: 'bad_module',
  CheckpointTooLarge: 'checkpoint_too_large',
});

/** `protocol::failure::MAX_DETAIL`. */
const MAX_DETAIL = 2048;
/** `sandbox::host::STDERR_CAPACITY`. */
const STDERR_CAPACITY = 4096;
/** wasmtime's default host-call fuel (`DEFAULT_HOSTCALL_FUEL`): bytes one call may copy. */
const HOSTCALL_FUEL = 128 * 1024 * 1024;
/** wasmtime-wasi's `DEFAULT_MAX_SIZE` of one `random_get`. */
const RANDOM_MAX = 64 * 1024 * 1024;
/** 2000-01-01T00:00:00Z in nanoseconds. */
const FROZEN_NS = 946_684_800n * 1_000_000_000n;
const PAGE = 65536;

// WASI errnos.
const ESUCCESS = 0;
const EBADF = 8;
const EFAULT = 21;
const EILSEQ = 25;
const EINTR = 27;
const EINVAL = 28;
const EIO = 29;
const ENOMEM = 48;
const ENOTDIR = 54;
const ENOTSOCK = 57;
const ENOTSUP = 58;
const ESPIPE = 70;

const WASI = 'wasi_snapshot_preview1';
const CHECKPOINT = 'fallow';
const METER = 'fallow_meter';

/** `protocol::unit_seed`: the 32-byte random seed of a unit, from its name and input. */
export function unitSeed(name, input) {
  const nameBytes = new TextEncoder().encode(name);
  const len = new Uint8Array(8);
  new DataView(len.buffer).setBigUint64(0, BigInt(nameBytes.length), true);
  return Hasher.deriveKey('fallow unit random seed v1')
    .update(len)
    .update(nameBytes)
    .update(input)
    .finalize(32);
}

/** The BLAKE3 stream behind WASI random (`sandbox::host::SeededRandom`). */
export function randomStream(seed, context) {
  return Hasher.deriveKey(context).update(seed).finalizeXof();
}

// ---------------------------------------------------------------------------------------
// Signals thrown from host functions through the guest's frames (wasm cannot catch them).

class Exit {
  constructor(code) {
    this.code = code;
  }
}
class Saved {
  constructor(state) {
    this.state = state;
  }
}
/** A host call refused the guest's arguments: a trap, as natively. */
class HostTrap {
  constructor(message) {
    this.message = message;
  }
}
class FuelOut {}
class WallOut {}
class MemoryOut {}
class CheckpointTooLarge {
  constructor(len, max) {
    this.message =
      `checkpoint_save of ${len} bytes is over [limits].max_checkpoint_bytes = ${max}; ` +
      'save less state or raise the limit in the manifest';
  }
}

const trap = (message) => {
  throw new HostTrap(message);
};

// ---------------------------------------------------------------------------------------
// Modules

/** Why a module cannot run here (`sandbox::Error`), reported as `bad_module`. */
export class BadModule extends Error {}

/** Every function of WASI preview 1 (the linker's whole `wasi_snapshot_preview1`). */
const WASI_FUNCTIONS = [
  'args_get', 'args_sizes_get', 'environ_get', 'environ_sizes_get', 'clock_res_get',
  'clock_time_get', 'fd_advise', 'fd_allocate', 'fd_close', 'fd_datasync', 'fd_fdstat_get',
  'fd_fdstat_set_flags', 'fd_fdstat_set_rights', 'fd_filestat_get', 'fd_filestat_set_size',
  'fd_filestat_set_times', 'fd_pread', 'fd_prestat_get', 'fd_prestat_dir_name', 'fd_pwrite',
  'fd_read', 'fd_readdir', 'fd_renumber', 'fd_seek', 'fd_sync', 'fd_tell', 'fd_write',
  'path_create_directory', 'path_filestat_get', 'path_filestat_set_times', 'path_link',
  'path_open', 'path_readlink', 'path_remove_directory', 'path_rename', 'path_symlink',
  'path_unlink_file', 'poll_oneoff', 'proc_exit', 'proc_raise', 'sched_yield', 'random_get',
  'sock_accept', 'sock_recv', 'sock_send', 'sock_shutdown',
];

function allowed(module, name, kind) {
  if (kind !== 'function') return false;
  if (module === WASI) return WASI_FUNCTIONS.includes(name);
  if (module === CHECKPOINT) return name === 'checkpoint_save' || name === 'checkpoint_load';
  if (module === METER) return name === 'slice';
  return false;
}

function readLeb(bytes, pos) {
  let result = 0;
  let shift = 0;
  for (;;) {
    if (pos >= bytes.length) throw new BadModule('invalid module: truncated LEB128');
    const b = bytes[pos++];
    result += (b & 0x7f) * 2 ** shift;
    shift += 7;
    if ((b & 0x80) === 0) return [result, pos];
    if (shift > 35) throw new BadModule('invalid module: LEB128 too long');
  }
}

function leb(n) {
  const out = [];
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 0x80;
    out.push(b);
  } while (n > 0);
  return out;
}

/**
 * The module's bytes with its one memory's maximum lowered to `limitPages`, or `null` if it
 * defines no memory; throws `MemoryOut` if its initial size is already over the limit (as
 * wasmtime's limiter refuses at instantiation).
 */
function capMemory(bytes, limitPages) {
  let pos = 8;
  while (pos < bytes.length) {
    const id = bytes[pos];
    const [size, body] = readLeb(bytes, pos + 1);
    const end = body + size;
    if (id === 5) {
      let [count, p] = readLeb(bytes, body);
      if (count !== 1) return null; // several memories: not a Fallow guest; wasm validates
      const flags = bytes[p];
      if (flags > 1) return null; // shared or 64-bit: refused by validation below
      let min;
      [min, p] = readLeb(bytes, p + 1);
      let max = 65536;
      if (flags === 1) [max, p] = readLeb(bytes, p);
      if (min > limitPages) throw new MemoryOut();
      const entry = [1, ...leb(min), ...leb(Math.min(max, limitPages))];
      const content = [...leb(1), ...entry];
      const section = [5, ...leb(content.length), ...content];
      const out = new Uint8Array(pos + section.length + (bytes.length - end));
      out.set(bytes.subarray(0, pos), 0);
      out.set(section, pos);
      out.set(bytes.subarray(end), pos + section.length);
      return out;
    }
    pos = end;
  }
  return null;
}

/**
 * Checks a module as `Sandbox::inspect` does (a core module, a WASI command, nothing
 * imported outside the guest ABI) and compiles it; with bytes, caps its memory at
 * `memory_mb`. Throws `BadModule`, or `MemoryOut` for a module whose initial memory is
 * already over the limit.
 */
export function prepareModule(source, memoryMb = DEFAULT_LIMITS.memory_mb) {
  let module;
  let capped = false;
  if (source instanceof WebAssembly.Module) {
    module = source;
  } else {
    const bytes = source instanceof Uint8Array ? source : new Uint8Array(source);
    if (bytes.length < 8 || bytes[0] !== 0 || bytes[1] !== 0x61 || bytes[2] !== 0x73 || bytes[3] !== 0x6d) {
      throw new BadModule(
        `not a WebAssembly module: ${bytes.length} bytes; expected the \\0asm magic of a .wasm file`,
      );
    }
    if (bytes[4] !== 1 || bytes[5] !== 0 || bytes[6] !== 0 || bytes[7] !== 0) {
      throw new BadModule(
        'this is a WebAssembly component; Fallow runs core modules built for wasm32-wasip1 (WASI preview 1 commands)',
      );
    }
    const rewritten = capMemory(bytes, memoryMb * 16);
    capped = rewritten !== null;
    try {
      module = new WebAssembly.Module(rewritten ?? bytes);
    } catch (e) {
      throw new BadModule(`invalid module: ${e.message}`);
    }
  }
  let metered = false;
  let checkpoints = false;
  for (const i of WebAssembly.Module.imports(module)) {
    if (!allowed(i.module, i.name, i.kind)) {
      throw new BadModule(
        `module imports \`${i.module}::${i.name}\`, which is outside Fallow's guest ABI (only WASI preview 1 functions from \`wasi_snapshot_preview1\` and \`fallow::checkpoint_save\`/\`checkpoint_load\` are available)`,
      );
    }
    if (i.module === METER) metered = true;
    if (i.module === CHECKPOINT) checkpoints = true;
  }
  const exports = WebAssembly.Module.exports(module);
  const has = (name, kind) => exports.some((e) => e.name === name && e.kind === kind);
  if (!has('_start', 'function')) {
    throw new BadModule(
      'not a WASI command: no exported function `_start` (build a binary, not a library, for wasm32-wasip1)',
    );
  }
  if (!has('memory', 'memory')) throw new BadModule('not a WASI command: no exported `memory`');
  if (metered && !has('fallow_meter_fuel', 'global')) {
    throw new BadModule('metered module without the `fallow_meter_fuel` global export');
  }
  return { module, capped, metered, checkpoints, memoryMb };
}

// ---------------------------------------------------------------------------------------
// Failures, worded as sandbox/src/lib.rs words them.

/** Rust's `char::is_whitespace` (Unicode White_Space), for `str::trim`. */
function isRustSpace(c) {
  return (
    (c >= 0x09 && c <= 0x0d) || c === 0x20 || c === 0x85 || c === 0xa0 || c === 0x1680 ||
    (c >= 0x2000 && c <= 0x200a) || c === 0x2028 || c === 0x2029 || c === 0x202f ||
    c === 0x205f || c === 0x3000
  );
}

/** `Pipes::stderr_tail`: lossy UTF-8, trimmed, its last 1000 characters. */
export function stderrTail(bytes) {
  // ignoreBOM: a leading U+FEFF stays, as in Rust's from_utf8_lossy (and trim keeps it).
  const chars = Array.from(new TextDecoder('utf-8', { ignoreBOM: true }).decode(bytes));
  let a = 0;
  let b = chars.length;
  while (a < b && isRustSpace(chars[a].codePointAt(0))) a++;
  while (b > a && isRustSpace(chars[b - 1].codePointAt(0))) b--;
  return chars.slice(Math.max(a, b - 1000), b).join('');
}

const HINTS = [
  [
    ['Capabilities insufficient', 'No such file or directory', 'os error 76', 'pre-opened file descriptor'],
    'the only files are the project\'s data files, read-only under /data (the manifest\'s [data]); read the unit\'s input from stdin and write the result to stdout (README: the guest ABI)',
  ],
  [
    ['RUST_BACKTRACE'],
    'a guest cannot set environment variables, so there is no backtrace: the panic message above is the reason; reproduce it with `fallow run MODULE.wasm --input FILE`, or run the program natively',
  ],
];

function stderrSuffix(tail) {
  if (tail === '') return '';
  const hints = HINTS.filter(([needles]) => needles.some((n) => tail.includes(n)))
    .map(([, hint]) => ` (hint: ${hint})`)
    .join('');
  return `; stderr: ${tail}${hints}`;
}

/** `protocol::Failure::new`: the detail cut to MAX_DETAIL bytes on a character boundary. */
function failure(kind, detail) {
  const bytes = new TextEncoder().encode(detail);
  if (bytes.length > MAX_DETAIL) {
    let cut = MAX_DETAIL;
    while (cut > 0 && (bytes[cut] & 0xc0) === 0x80) cut--;
    detail = new TextDecoder().decode(bytes.subarray(0, cut)) + '…';
  }
  return { kind, message: detail };
}

/** wasmtime's `Trap` Display for the engine's trap messages (V8, SpiderMonkey, JSC). */
function trapText(message) {
  const m = message.toLowerCase();
  const desc =
    m.includes('unreachable') ? 'wasm `unreachable` instruction executed'
    : m.includes('out of bounds memory') || m.includes('memory access out of bounds') ? 'out of bounds memory access'
    : m.includes('by zero') ? 'integer divide by zero'
    : m.includes('integer overflow') || m.includes('unrepresentable') && m.includes('divide') ? 'integer overflow'
    : m.includes('conversion') || m.includes('float unrepresentable') ? 'invalid conversion to integer'
    : m.includes('table index') || m.includes('out of bounds table') ? 'undefined element: out of bounds table access'
    : m.includes('signature mismatch') || m.includes('indirect call') ? 'indirect call type mismatch'
    : m.includes('null') ? 'uninitialized element'
    : m.includes('unaligned') ? 'unaligned atomic'
    : message;
  return `wasm trap: ${desc}`;
}

function isStackOverflow(e) {
  return (
    (e instanceof RangeError && /call stack/i.test(e.message)) ||
    (e instanceof Error && /too much recursion/i.test(e.message))
  );
}

// ---------------------------------------------------------------------------------------
// Checkpoints (`sandbox::Checkpoint`, same fields and the same on-disk form).

const MAGIC = new TextEncoder().encode('FLWCKPT2');
/** The magic of checkpoints from before they named their fuel rules (all of version 1). */
const MAGIC_RULES_1 = new TextEncoder().encode('FLWCKPT1');

/**
 * `Checkpoint::encode`: magic, the fuel rules (`FUEL_RULES`), little-endian fields,
 * lengths before bytes, BLAKE3 last.
 */
export function encodeCheckpoint(c) {
  const body = new Uint8Array(8 + 4 + 4 + 8 * 3 + 8 + c.stdout.length + 8 + c.state.length);
  const dv = new DataView(body.buffer);
  body.set(MAGIC, 0);
  let p = 8;
  dv.setUint32(p, FUEL_RULES, true);
  p += 4;
  dv.setUint32(p, c.segment, true);
  p += 4;
  dv.setBigUint64(p, BigInt(c.fuel), true);
  dv.setBigUint64(p + 8, BigInt(c.random[0]), true);
  dv.setBigUint64(p + 16, BigInt(c.random[1]), true);
  p += 24;
  dv.setBigUint64(p, BigInt(c.stdout.length), true);
  body.set(c.stdout, p + 8);
  p += 8 + c.stdout.length;
  dv.setBigUint64(p, BigInt(c.state.length), true);
  body.set(c.state, p + 8);
  const out = new Uint8Array(body.length + 32);
  out.set(body, 0);
  out.set(hash(body), body.length);
  return out;
}

/**
 * `Checkpoint::decode`; throws on anything else, and on a checkpoint whose fuel was
 * counted by other fuel rules than `FUEL_RULES`.
 */
export function decodeCheckpoint(bytes) {
  if (bytes.length < 32) throw new Error('not a valid Fallow checkpoint: too short');
  const body = bytes.subarray(0, bytes.length - 32);
  if (toHex(hash(body)) !== toHex(bytes.subarray(bytes.length - 32))) {
    throw new Error('not a valid Fallow checkpoint: hash mismatch (corrupted or truncated)');
  }
  const dv = new DataView(body.buffer, body.byteOffset, body.length);
  const need = (p, n) => {
    if (p + n > body.length) throw new Error('not a valid Fallow checkpoint: truncated');
  };
  need(0, 48);
  const is = (magic) => magic.every((b, i) => body[i] === b);
  const otherRules = "not a valid Fallow checkpoint: its fuel was counted by other fuel rules than this build's";
  if (is(MAGIC_RULES_1)) throw new Error(otherRules);
  if (!is(MAGIC)) throw new Error('not a valid Fallow checkpoint: wrong magic');
  if (dv.getUint32(8, true) !== FUEL_RULES) throw new Error(otherRules);
  const segment = dv.getUint32(12, true);
  const fuel = dv.getBigUint64(16, true);
  const random = [Number(dv.getBigUint64(24, true)), Number(dv.getBigUint64(32, true))];
  let p = 40;
  const take = () => {
    need(p, 8);
    const n = Number(dv.getBigUint64(p, true));
    need(p + 8, n);
    const b = body.slice(p + 8, p + 8 + n);
    p += 8 + n;
    return b;
  };
  const stdout = take();
  const state = take();
  if (p !== body.length) throw new Error('not a valid Fallow checkpoint: trailing bytes');
  return { segment, fuel, stdout, random, state };
}

// ---------------------------------------------------------------------------------------
// One segment's host: the WASI preview 1 functions and Fallow's own imports.

/** Bytes written to a capped pipe (wasmtime-wasi's `MemoryOutputPipe`). */
class Pipe {
  constructor(capacity) {
    this.capacity = Math.max(0, capacity);
    this.chunks = [];
    this.length = 0;
  }

  /**
   * `blocking_write_and_flush` of one fd_write, in 4096-byte chunks: what fits is kept and
   * the rest refused with EIO, as wasmtime-wasi does.
   */
  write(bytes) {
    for (let off = 0; off < bytes.length; off += 4096) {
      const chunk = bytes.subarray(off, Math.min(off + 4096, bytes.length));
      const room = this.capacity - this.length;
      if (room <= 0) return EIO;
      const n = Math.min(room, chunk.length);
      this.chunks.push(chunk.slice(0, n));
      this.length += n;
      if (n < chunk.length) return EIO;
    }
    return ESUCCESS;
  }

  contents() {
    const out = new Uint8Array(this.length);
    let p = 0;
    for (const c of this.chunks) {
      out.set(c, p);
      p += c.length;
    }
    return out;
  }
}

class Segment {
  constructor(run, resume) {
    this.run = run;
    const written = resume ? resume.stdout.length : 0;
    // One byte over the cap tells "exactly at the limit" from "over it" (host.rs).
    this.stdout = new Pipe(run.limits.max_output_bytes + 1 - written);
    this.stderr = new Pipe(STDERR_CAPACITY);
    this.stdinPos = 0;
    this.fds = new Map([
      [0, 'stdin'],
      [1, 'stdout'],
      [2, 'stderr'],
    ]);
    this.random = resume ? [resume.random[0], resume.random[1]] : [0, 0];
    this.load = resume ? resume.state : null;
    this.saved = null;
    this.memory = null;
    this.fuelGlobal = null;
  }

  // --- guest memory, checked as wiggle checks it (bounds, then alignment: traps) ---

  bytes() {
    if (!this.memory) trap('missing required memory export');
    this.run.checkMemory(this.memory);
    return new Uint8Array(this.memory.buffer);
  }

  view() {
    return new DataView(this.memory.buffer);
  }

  need(ptr, size, align) {
    const len = this.memory.buffer.byteLength;
    if (ptr + size > len) trap(`out of bounds pointer: ${ptr} + ${size} > ${len}`);
    if (ptr % align !== 0) trap(`pointer not aligned to ${align}: ${ptr}`);
  }

  store32(ptr, v) {
    this.need(ptr, 4, 4);
    this.view().setUint32(ptr, v, true);
  }

  store64(ptr, v) {
    this.need(ptr, 8, 8);
    this.view().setBigUint64(ptr, BigInt.asUintN(64, BigInt(v)), true);
  }

  /** `first_non_empty_(c)iovec`: {ptr, len} of the first non-empty buffer, or an errno. */
  firstBuffer(iovs, n) {
    let fuel = HOSTCALL_FUEL;
    if (n * 8 > fuel) return ENOMEM;
    fuel -= n * 8;
    this.bytes();
    for (let i = 0; i < n; i++) {
      const at = iovs + i * 8;
      if (at > 0xffffffff) trap('pointer overflow');
      this.need(at, 4, 4);
      this.need(at + 4, 4, 4);
      const dv = this.view();
      const buf = dv.getUint32(at, true);
      const len = dv.getUint32(at + 4, true);
      if (len === 0) continue;
      if (len > fuel) return ENOMEM;
      return { ptr: buf, len };
    }
    return { ptr: 0, len: 0 };
  }

  /** The write of `writeBytes` (`write_bytes`): bounds-checked unless empty. */
  put(ptr, data) {
    if (data.length === 0) return;
    this.need(ptr, data.length, 1);
    new Uint8Array(this.memory.buffer).set(data, ptr);
  }

  // --- argument conversions of wiggle's glue: anything invalid traps ---

  static flags(value, bits, repr) {
    const v = repr === 64 ? BigInt(value) : value;
    if (repr === 64) {
      if (v < 0n || (v & ~((1n << BigInt(bits)) - 1n)) !== 0n) trap('invalid flags value');
      return v;
    }
    const max = repr === 32 ? 0xffffffff : repr === 16 ? 0xffff : 0xff;
    if (v < 0 || v > max || v >= 2 ** bits) trap('invalid flags value');
    return v;
  }

  static enumeration(value, count) {
    if (value < 0 || value >= count) trap('invalid enum value');
    return value;
  }

  /** The descriptor `fd` names, or undefined. */
  fd(fd) {
    return this.fds.get(fd >>> 0);
  }

  imports() {
    const s = this;
    const run = this.run;
    // Every host call counts the guest's running time and may find the memory over the limit.
    const call = (f) => (...args) => {
      try {
        if (run.signal) throw run.signal;
        run.checkWall();
        if (s.memory) run.checkMemory(s.memory);
        return f(...args);
      } catch (e) {
        run.signal ??= e;
        throw e;
      }
    };
    const badfUnlessPresent = (fd, present) => (s.fd(fd) === undefined ? EBADF : present);
    const wasi = {
      args_get(argv, buf) {
        argv >>>= 0;
        buf >>>= 0;
        s.bytes();
        s.store32(argv, buf);
        s.put(buf, new TextEncoder().encode('main\0'));
        return ESUCCESS;
      },
      args_sizes_get(argc, size) {
        s.bytes();
        s.store32(argc >>> 0, 1);
        s.store32(size >>> 0, 5);
        return ESUCCESS;
      },
      environ_get() {
        return ESUCCESS;
      },
      environ_sizes_get(count, size) {
        s.bytes();
        s.store32(count >>> 0, 0);
        s.store32(size >>> 0, 0);
        return ESUCCESS;
      },
      clock_res_get(id, res) {
        id = Segment.enumeration(id, 4);
        if (id >= 2) return EBADF;
        s.bytes();
        s.store64(res >>> 0, 1_000_000_000n);
        return ESUCCESS;
      },
      clock_time_get(id, _precision, time) {
        id = Segment.enumeration(id, 4);
        if (id >= 2) return EBADF;
        s.bytes();
        s.store64(time >>> 0, id === 0 ? FROZEN_NS : 0n);
        return ESUCCESS;
      },
      fd_advise(fd, _offset, _len, advice) {
        Segment.enumeration(advice, 6);
        return EBADF;
      },
      fd_allocate() {
        return EBADF;
      },
      fd_close(fd) {
        if (!s.fds.delete(fd >>> 0)) return EBADF;
        return ESUCCESS;
      },
      fd_datasync() {
        return EBADF;
      },
      fd_fdstat_get(fd, buf) {
        const d = s.fd(fd);
        if (d === undefined) return EBADF;
        buf >>>= 0;
        s.bytes();
        // struct fdstat { u8 filetype @0; u16 flags @2; u64 rights_base @8; u64 inheriting @16 },
        // written field by field as wiggle writes it (padding untouched).
        s.need(buf, 1, 1);
        s.need(buf + 2, 2, 2);
        s.need(buf + 8, 8, 8);
        s.need(buf + 16, 8, 8);
        const rights = d === 'stdin' ? 2n : 64n; // FD_READ or FD_WRITE
        const dv = s.view();
        dv.setUint8(buf, 0); // filetype unknown: not a terminal
        dv.setUint16(buf + 2, 0, true);
        dv.setBigUint64(buf + 8, rights, true);
        dv.setBigUint64(buf + 16, rights, true);
        return ESUCCESS;
      },
      fd_fdstat_set_flags(fd, flags) {
        Segment.flags(flags, 5, 16);
        return EBADF;
      },
      fd_fdstat_set_rights(fd, base, inheriting) {
        Segment.flags(base, 29, 64);
        Segment.flags(inheriting, 29, 64);
        return EBADF;
      },
      // Fallow's own (host.rs `fd_filestat_get`): stdio's all-zero stat, EFAULT where it
      // does not fit, written field by field.
      fd_filestat_get(fd, buf) {
        if (s.fd(fd) === undefined) return EBADF;
        buf >>>= 0;
        s.bytes();
        const len = s.memory.buffer.byteLength;
        const fields = [[0, 8], [8, 8], [16, 1], [24, 8], [32, 8], [40, 8], [48, 8], [56, 8]];
        const mem = new Uint8Array(s.memory.buffer);
        for (const [off, size] of fields) {
          const at = buf + off;
          if (at > 0xffffffff || at + size > len || at % size !== 0) return EFAULT;
          mem.fill(0, at, at + size);
        }
        return ESUCCESS;
      },
      fd_filestat_set_size() {
        return EBADF;
      },
      fd_filestat_set_times(fd, _atim, _mtim, fst) {
        fst = Segment.flags(fst, 4, 16);
        if ((fst & 3) === 3 || (fst & 12) === 12) return EINVAL;
        return EBADF;
      },
      fd_pread(fd, iovs, n, _offset, _nread) {
        const b = s.firstBuffer(iovs >>> 0, n >>> 0);
        if (typeof b === 'number') return b;
        const d = s.fd(fd);
        return d === 'stdin' ? ESPIPE : EBADF;
      },
      fd_prestat_get() {
        return EBADF; // no preopened directories
      },
      fd_prestat_dir_name(fd) {
        return badfUnlessPresent(fd, ENOTDIR);
      },
      fd_pwrite(fd, iovs, n, _offset, _nwritten) {
        const b = s.firstBuffer(iovs >>> 0, n >>> 0);
        if (typeof b === 'number') return b;
        const d = s.fd(fd);
        return d === 'stdout' || d === 'stderr' ? ESPIPE : EBADF;
      },
      fd_read(fd, iovs, n, nread) {
        const b = s.firstBuffer(iovs >>> 0, n >>> 0);
        if (typeof b === 'number') return b;
        if (s.fd(fd) !== 'stdin') return EBADF;
        const input = run.input;
        let got;
        if (s.stdinPos >= input.length) {
          got = 0; // end of input: the pipe is closed, a read of 0
        } else if (b.len === 0) {
          return EINTR; // an empty read of a pipe with bytes left
        } else {
          got = Math.min(b.len, input.length - s.stdinPos);
          const data = input.subarray(s.stdinPos, s.stdinPos + got);
          s.stdinPos += got;
          s.put(b.ptr, data);
        }
        s.store32(nread >>> 0, got);
        return ESUCCESS;
      },
      // Fallow's own (host.rs `fd_readdir`): no directory here.
      fd_readdir(fd) {
        return badfUnlessPresent(fd, ENOTDIR);
      },
      fd_renumber(from, to) {
        from >>>= 0;
        to >>>= 0;
        if (!s.fds.has(from) || !s.fds.has(to)) return EBADF;
        if (from === to) return ESUCCESS;
        const d = s.fds.get(from);
        s.fds.delete(from);
        s.fds.set(to, d);
        return ESUCCESS;
      },
      fd_seek(fd, _offset, whence, _newoffset) {
        Segment.enumeration(whence, 3);
        return badfUnlessPresent(fd, ESPIPE);
      },
      fd_sync() {
        return EBADF;
      },
      fd_tell(fd) {
        return badfUnlessPresent(fd, ESPIPE);
      },
      fd_write(fd, iovs, n, nwritten) {
        const b = s.firstBuffer(iovs >>> 0, n >>> 0);
        if (typeof b === 'number') return b;
        const d = s.fd(fd);
        if (d !== 'stdout' && d !== 'stderr') return EBADF;
        if (b.len > 0) s.need(b.ptr, b.len, 1);
        const data = new Uint8Array(s.memory.buffer, b.ptr, b.len);
        const errno = (d === 'stdout' ? s.stdout : s.stderr).write(data);
        if (errno !== ESUCCESS) return errno;
        s.store32(nwritten >>> 0, b.len);
        return ESUCCESS;
      },
      path_create_directory() {
        return EBADF;
      },
      // Fallow's own (host.rs `path_filestat_get`): flags first, then no directory.
      path_filestat_get(fd, flags) {
        if ((flags >>> 0) > 1) return EINVAL;
        return EBADF;
      },
      path_filestat_set_times(fd, flags, _path, _len, _atim, _mtim, fst) {
        Segment.flags(flags, 1, 32);
        fst = Segment.flags(fst, 4, 16);
        if ((fst & 3) === 3 || (fst & 12) === 12) return EINVAL;
        return EBADF;
      },
      path_link(fd, flags) {
        Segment.flags(flags, 1, 32);
        return EBADF;
      },
      path_open(fd, dirflags, path, len, oflags, base, inheriting, fdflags, _opened) {
        Segment.flags(dirflags, 1, 32);
        Segment.flags(oflags, 4, 16);
        Segment.flags(base, 29, 64);
        Segment.flags(inheriting, 29, 64);
        Segment.flags(fdflags, 5, 16);
        path >>>= 0;
        len >>>= 0;
        if (len > HOSTCALL_FUEL) return ENOMEM;
        s.bytes();
        s.need(path, len, 1);
        try {
          new TextDecoder('utf-8', { fatal: true }).decode(new Uint8Array(s.memory.buffer, path, len));
        } catch {
          return EILSEQ;
        }
        return EBADF; // no directory to open anything in
      },
      path_readlink() {
        return EBADF;
      },
      path_remove_directory() {
        return EBADF;
      },
      path_rename() {
        return EBADF;
      },
      path_symlink() {
        return EBADF;
      },
      path_unlink_file() {
        return EBADF;
      },
      // Fallow's own: sleeping has no place in deterministic compute (host.rs).
      poll_oneoff() {
        return ENOTSUP;
      },
      proc_exit(code) {
        code >>>= 0;
        if (code >= 126) trap('exit with invalid exit status outside of [0..126)');
        throw new Exit(code);
      },
      proc_raise(sig) {
        Segment.enumeration(sig, 31);
        return ENOTSUP;
      },
      sched_yield() {
        return ESUCCESS;
      },
      random_get(buf, len) {
        buf >>>= 0;
        len >>>= 0;
        if (len > RANDOM_MAX) trap(`requested len ${len} exceeds limit ${RANDOM_MAX}`);
        // wasmtime-wasi draws each byte as `next_u32() as u8`: four bytes of the stream.
        const raw = run.streams[0].read(s.random[0], 4 * len);
        s.random[0] += 4 * len;
        const out = new Uint8Array(len);
        for (let i = 0; i < len; i++) out[i] = raw[4 * i];
        s.bytes();
        s.put(buf, out);
        return ESUCCESS;
      },
      sock_accept(fd, flags) {
        Segment.flags(flags, 5, 16);
        return badfUnlessPresent(fd, ENOTSOCK);
      },
      sock_recv(fd, _data, _len, flags) {
        Segment.flags(flags, 2, 16);
        return badfUnlessPresent(fd, ENOTSOCK);
      },
      sock_send(fd, _data, _len, flags) {
        if (flags < 0 || flags > 0xffff) trap('invalid siflags');
        return badfUnlessPresent(fd, ENOTSOCK);
      },
      sock_shutdown(fd, how) {
        Segment.flags(how, 2, 8);
        return badfUnlessPresent(fd, ENOTSOCK);
      },
    };
    // Every host function goes through `call`, which also makes the first signal thrown
    // (exit, checkpoint, trap, out of fuel...) stick: a guest that caught it (wasm exception
    // handling can catch JS exceptions; wasmtime refuses such modules, this is defence in
    // depth) meets it again at its next host call or slice, and it is the run's outcome.
    const wrapped = {};
    for (const [name, f] of Object.entries(wasi)) wrapped[name] = call(f);
    const fallow = {
      checkpoint_save: call((ptr, len) => {
        ptr >>>= 0;
        len >>>= 0;
        const max = run.limits.max_checkpoint_bytes;
        if (len > max) throw new CheckpointTooLarge(len, max);
        const mem = s.bytes();
        if (ptr > mem.length || ptr + len > mem.length) trap('out of bounds memory access');
        s.saved = mem.slice(ptr, ptr + len);
        throw new Saved(s.saved);
      }),
      checkpoint_load: call((ptr, cap) => {
        if (s.load === null) return -1;
        ptr >>>= 0;
        cap >>>= 0;
        const len = s.load.length;
        if (len > cap) return len;
        const mem = s.bytes();
        if (ptr > mem.length || ptr + len > mem.length) trap('out of bounds memory access');
        mem.set(s.load, ptr);
        return len;
      }),
    };
    const meter = { slice: call((counter) => run.slice(BigInt.asIntN(64, BigInt(counter)), s)) };
    return { [WASI]: wrapped, [CHECKPOINT]: fallow, [METER]: meter };
  }
}

// ---------------------------------------------------------------------------------------
// A run: the segments of one unit, as `Sandbox::run_resumable`.

class Run {
  constructor(opts, prepared) {
    this.limits = opts.limits;
    this.input = opts.input;
    this.prepared = prepared;
    this.sliceSize = opts.slice;
    this.onSlice = opts.onSlice;
    this.streams = [
      randomStream(opts.seed, 'fallow secure random v1'),
      randomStream(opts.seed, 'fallow insecure random v1'),
    ];
    this.now = opts.now;
    this.wallMs = this.limits.wall_seconds * 1000;
    this.running = 0; // ms of guest running time before the current stretch
    this.stretch = this.now();
    this.budget = 0n;
    this.issued = 0n;
    this.before = 0n;
    this.memoryLimit = this.limits.memory_mb * 1024 * 1024;
    this.memoryHit = false;
    this.signal = null; // the first signal a host function threw in this segment
  }

  checkWall() {
    if (this.running + (this.now() - this.stretch) >= this.wallMs) throw new WallOut();
  }

  checkMemory(memory) {
    if (!this.prepared.capped && memory.buffer.byteLength > this.memoryLimit) {
      this.memoryHit = true;
      throw new MemoryOut();
    }
  }

  /** `fallow_meter::slice`: the next slice of the budget, or the end of the run. */
  slice(counter, segment) {
    const used = this.issued - counter;
    if (used > this.budget) throw new FuelOut();
    this.checkWall();
    if (segment.memory) this.checkMemory(segment.memory);
    if (this.onSlice) {
      // The pause point: time spent in the hook is not the guest's running time.
      this.running += this.now() - this.stretch;
      this.onSlice({ fuelUsed: this.before + used });
      this.stretch = this.now();
    }
    const left = this.budget - used;
    const next = left < this.sliceSize ? left : this.sliceSize;
    this.issued = used + next;
    return next;
  }
}

function normalizeLimits(limits = {}) {
  const l = { ...DEFAULT_LIMITS, ...limits };
  if (limits.output_bytes !== undefined) l.max_output_bytes = limits.output_bytes;
  for (const k of ['memory_mb', 'wall_seconds', 'max_output_bytes', 'max_checkpoint_bytes']) {
    l[k] = Number(l[k]);
  }
  l.fuel = BigInt(l.fuel);
  return l;
}

function concat(a, b) {
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}

/**
 * Runs one unit, as `Sandbox::run_resumable` does, synchronously (in a Web Worker, or
 * node).
 *
 * - `module`: the module's bytes, or `prepareModule(bytes, limits.memory_mb)`'s result to
 *   compile it once for many units (both enforce the memory limit inside the engine, see
 *   the file's doc), or a `WebAssembly.Module` (memory then checked at host calls).
 * - `input` (Uint8Array), `seed` (32 bytes, `unitSeed(name, input)`), `limits` (protocol
 *   `Limits`: fuel, memory_mb, wall_seconds, max_output_bytes or output_bytes,
 *   max_checkpoint_bytes, nan_canonicalization).
 * - `resume`: a checkpoint (`decodeCheckpoint`'s form) of this module, input and seed.
 * - `onSlice({fuelUsed})`: called at each slice of a metered run and may block (the page
 *   holds a paused guest there, e.g. with `Atomics.wait`); its time is not running time.
 * - `onCheckpoint(checkpoint)`: after each `checkpoint_save`; return 'stop' to end the run
 *   there (the result's `checkpoint`), anything else to go on.
 * - `slice`: fuel per slice (BigInt, default SLICE). `now`: a clock in ms (tests).
 * - `data`: the project's data files; any is refused (`bad_module`): the browser worker
 *   has no `/data` mount.
 * - `nanCanonicalized`: true when `module` is the coordinator's NaN-canonicalising rewrite
 *   (GetModule with `canonical_nans`). Without it, limits that ask for
 *   `nan_canonicalization` are refused (`bad_module`): the engine's own NaN bits differ.
 *
 * Returns `{ stdout, stderrTail, fuel, fuelHere, exitCode, failure, checkpoint,
 * checkpoints, resumedFrom, metered }`: `fuel` and `fuelHere` are BigInts (0n for a module
 * that is not metered; the limit after `fuel_exhausted`), `failure` is null or
 * `{kind, message}` with `kind` a `FailureKind` value and `message` the native detail,
 * `stdout` is null after a failure.
 */
export function runUnit(opts) {
  const limits = normalizeLimits(opts.limits);
  const seed = opts.seed;
  const input = opts.input ?? new Uint8Array(0);
  const result = {
    stdout: null,
    stderrTail: '',
    fuel: 0n,
    fuelHere: 0n,
    exitCode: null,
    failure: null,
    checkpoint: null,
    checkpoints: 0,
    resumedFrom: opts.resume ? opts.resume.segment : 0,
    metered: false,
  };
  const fail = (kind, message) => {
    result.failure = failure(kind, message);
    return result;
  };
  if (!(seed instanceof Uint8Array) || seed.length !== 32) {
    throw new TypeError('runUnit: seed must be 32 bytes (unitSeed(name, input))');
  }
  if (opts.data && opts.data.length > 0) {
    return fail(
      FailureKind.BadModule,
      'this project has data files (/data), which the browser worker does not support; native workers run it',
    );
  }
  if (limits.nan_canonicalization && !opts.nanCanonicalized) {
    return fail(
      FailureKind.BadModule,
      'this project asks for NaN canonicalization, and this module was not rewritten for it ' +
        '(GetModule with canonical_nans); native workers run it',
    );
  }
  let prepared;
  try {
    // A prepared module (prepareModule's result) is compiled once for many units.
    const given = opts.module;
    prepared =
      given && given.module instanceof WebAssembly.Module && given.memoryMb === limits.memory_mb
        ? given
        : prepareModule(given && given.module instanceof WebAssembly.Module ? given.module : given, limits.memory_mb);
  } catch (e) {
    if (e instanceof MemoryOut) {
      return fail(FailureKind.MemoryExhausted, `guest tried to grow memory past memory_mb = ${limits.memory_mb}`);
    }
    if (e instanceof BadModule) return fail(FailureKind.BadModule, e.message);
    throw e;
  }
  result.metered = prepared.metered;
  const resume = opts.resume ?? null;
  if (
    resume &&
    (BigInt(resume.fuel) > limits.fuel ||
      resume.stdout.length > limits.max_output_bytes ||
      resume.state.length > limits.max_checkpoint_bytes)
  ) {
    return fail(FailureKind.BadModule, 'checkpoint does not fit this unit\'s limits');
  }
  const run = new Run(
    {
      limits,
      input,
      seed,
      slice: opts.slice ?? SLICE,
      onSlice: opts.onSlice,
      now: opts.now ?? (() => globalThis.performance.now()),
    },
    prepared,
  );
  // Asked once before the guest starts, as the native pacer is.
  if (opts.onSlice) opts.onSlice({ fuelUsed: resume ? BigInt(resume.fuel) : 0n });
  run.stretch = run.now();
  let segment = resume ? resume.segment : 0;
  let current = resume;
  let fuelHere = 0n;
  for (;;) {
    const before = current ? BigInt(current.fuel) : 0n;
    const seg = new Segment(run, current);
    run.before = before;
    run.budget = limits.fuel - before;
    run.memoryHit = false;
    run.signal = null;
    // As `sandbox::meter::Meter`: nothing handed out yet and the guest's counter at its
    // initial 0, so the first check point asks for a slice.
    run.issued = 0n;
    let outcome = null;
    let instance = null;
    try {
      instance = new WebAssembly.Instance(prepared.module, seg.imports());
      seg.memory = instance.exports.memory;
      run.lastMemory = seg.memory;
      if (prepared.metered) seg.fuelGlobal = instance.exports.fallow_meter_fuel;
      instance.exports._start();
      outcome = { exit: 0 };
    } catch (e) {
      outcome = { error: e };
    }
    if (run.signal) outcome = { error: run.signal };
    // The counter as the guest last stored it (before every call and return), 0 if the
    // instance never came to be: fuel used = handed out - left. Out of fuel, the whole
    // budget (the guest may have charged past it before the check that stopped it).
    let used = 0n;
    if (prepared.metered) {
      const counter = seg.fuelGlobal ? BigInt(seg.fuelGlobal.value) : 0n;
      used = outcome.error instanceof FuelOut ? run.budget : run.issued - counter;
    }
    fuelHere += used;
    const fuel = before + used;
    result.fuel = fuel;
    result.fuelHere = fuelHere;
    let output = current ? concat(current.stdout, seg.stdout.contents()) : seg.stdout.contents();
    const tail = stderrTail(seg.stderr.contents());
    result.stderrTail = tail;
    if (output.length > limits.max_output_bytes) {
      return fail(FailureKind.OutputTooLarge, `stdout exceeded max_output_bytes = ${limits.max_output_bytes}`);
    }
    // The limit is checked at function entries and loop heads, so the segments after the
    // last check can take a run past it: out of fuel too, as `Sandbox::run_resumable` says.
    if (fuel > limits.fuel) {
      return fail(FailureKind.FuelExhausted, `used all ${limits.fuel} fuel${stderrSuffix(tail)}`);
    }
    let exit;
    const e = outcome.error;
    if (e === undefined) {
      exit = 0;
    } else if (e instanceof Exit) {
      exit = e.code;
    } else if (e instanceof Saved) {
      segment += 1;
      const next = {
        segment,
        fuel,
        stdout: output,
        random: [seg.random[0], seg.random[1]],
        state: e.state,
      };
      result.checkpoints = segment;
      const proceed = opts.onCheckpoint ? opts.onCheckpoint(next) : 'continue';
      if (proceed === 'stop') {
        result.checkpoint = next;
        return result;
      }
      current = next;
      continue;
    } else {
      return classify(e, run, limits, tail, result, fail);
    }
    result.exitCode = exit;
    if (exit !== 0) return fail(FailureKind.ExitCode, `exit code ${exit}${stderrSuffix(tail)}`);
    result.stdout = output;
    result.checkpoints = segment;
    return result;
  }
}

/** `classify_error`: the failure of a segment that ended with an error. */
function classify(e, run, limits, tail, result, fail) {
  const suffix = stderrSuffix(tail);
  if (e instanceof CheckpointTooLarge) return fail(FailureKind.CheckpointTooLarge, e.message);
  const memoryMessage = `guest tried to grow memory past memory_mb = ${limits.memory_mb}${suffix}`;
  if (e instanceof MemoryOut || run.memoryHit) return fail(FailureKind.MemoryExhausted, memoryMessage);
  if (e instanceof FuelOut) {
    result.fuel = limits.fuel;
    return fail(FailureKind.FuelExhausted, `used all ${limits.fuel} fuel${suffix}`);
  }
  if (e instanceof WallOut) {
    return fail(FailureKind.Timeout, `still running after wall_seconds = ${limits.wall_seconds}${suffix}`);
  }
  if (isStackOverflow(e)) return fail(FailureKind.StackOverflow, `wasm stack overflow${suffix}`);
  if (e instanceof HostTrap) {
    return fail(FailureKind.Trap, `a host call refused the guest's arguments: ${e.message}${suffix}`);
  }
  if (e instanceof WebAssembly.RuntimeError) {
    // The refusal of a memory.grow past the limit is invisible from here (see the file's
    // doc): an allocation failure on stderr, or a memory at the limit, says it was that.
    if (run.prepared.capped && memoryAtLimit(e, run, tail)) {
      return fail(FailureKind.MemoryExhausted, memoryMessage);
    }
    return fail(FailureKind.Trap, `${trapText(e.message)}${suffix}`);
  }
  if (e instanceof WebAssembly.LinkError || e instanceof WebAssembly.CompileError) {
    return fail(FailureKind.BadModule, `cannot instantiate: ${e.message}`);
  }
  if (e instanceof RangeError && /memory/i.test(e.message)) {
    return fail(FailureKind.MemoryExhausted, memoryMessage);
  }
  throw e; // a bug in this runtime or in a hook: not the guest's doing
}

function memoryAtLimit(e, run, tail) {
  if (/memory allocation of \d+ bytes failed/.test(tail)) return true;
  const mem = run.lastMemory;
  return mem !== undefined && mem.buffer.byteLength + PAGE > run.memoryLimit;
}
