// A metered guest assembled byte by byte (node has no WAT parser), for the runner tests:
// it charges `k` fuel `n` times the way a Fallow-rewritten module charges (decrement
// `fallow_meter_fuel`; below zero, `fallow_meter::slice(counter)` gives the next slice),
// then writes "ok\n". Its fuel is n × k.

/** Unsigned LEB128, as WebAssembly encodes integers. */
export const uleb = (n) => {
  const out = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n !== 0) b |= 0x80;
    out.push(b);
  } while (n !== 0);
  return out;
};
/** Signed LEB128. */
export const sleb = (v) => {
  let n = BigInt(v);
  const out = [];
  for (;;) {
    const b = Number(n & 0x7fn);
    n >>= 7n;
    if ((n === 0n && (b & 0x40) === 0) || (n === -1n && (b & 0x40) !== 0)) return [...out, b];
    out.push(b | 0x80);
  }
};
export const str = (s) => [...uleb(s.length), ...new TextEncoder().encode(s)];
export const vec = (items) => [...uleb(items.length), ...items.flat()];
export const section = (id, body) => [id, ...uleb(body.length), ...body];
const I32 = 0x7f;
const I64 = 0x7e;

/** The module's bytes. */
export function burner(n, k) {
  const charge = [
    0x23, 0, 0x42, ...sleb(k), 0x7d, 0x24, 0, // fuel -= k
    0x23, 0, 0x42, 0, 0x53, 0x04, 0x40, // if fuel < 0
    0x23, 0, 0x10, 0, 0x24, 0, // fuel = slice(fuel)
    0x0b,
  ];
  const body = [
    0x41, 0, 0x21, 0, 0x03, 0x40, ...charge,
    0x20, 0, 0x41, 1, 0x6a, 0x22, 0, 0x41, ...sleb(n), 0x49, 0x0d, 0, 0x0b, // while ++i < n
    0x41, 1, 0x41, 0, 0x41, 1, 0x41, 8, 0x10, 1, 0x1a, // fd_write(1, iov 0, 1, 8)
    0x0b,
  ];
  const types = [
    [0x60, ...vec([[I64]]), ...vec([[I64]])],
    [0x60, ...vec([]), ...vec([])],
    [0x60, ...vec([[I32], [I32], [I32], [I32]]), ...vec([[I32]])],
  ];
  const imports = [
    [...str('fallow_meter'), ...str('slice'), 0x00, 0],
    [...str('wasi_snapshot_preview1'), ...str('fd_write'), 0x00, 2],
  ];
  const exports = [
    [...str('_start'), 0x00, 2],
    [...str('memory'), 0x02, 0],
    [...str('fallow_meter_fuel'), 0x03, 0],
  ];
  const code = [...vec([[1, I32]]), ...body];
  const iov = [0x00, 0x41, 0, 0x0b, ...vec([16, 0, 0, 0, 3, 0, 0, 0].map((b) => [b]))];
  const text = [0x00, 0x41, 16, 0x0b, ...str('ok\n')];
  return new Uint8Array([
    0x00, 0x61, 0x73, 0x6d, 1, 0, 0, 0,
    ...section(1, vec(types)),
    ...section(2, vec(imports)),
    ...section(3, vec([[1]])),
    ...section(5, vec([[0x00, 1]])),
    ...section(6, vec([[I64, 0x01, 0x42, 0, 0x0b]])),
    ...section(7, vec(exports)),
    ...section(10, vec([[...uleb(code.length), ...code]])),
    ...section(11, vec([iov, text])),
  ]);
}
