// Guest speed in V8 (node): each kernel the bench times (`cargo run --release -p bench --
// --only guest`, same inputs) run through guest.js as built and as metered, interleaved,
// median of RUNS. The browser's side of BENCHMARKS.md's "Fuel metered by rewriting the
// module"; run it beside the bench.
//
//   cargo build --release -p artifacts && cargo run -p sandbox --example meter -- IN OUT
//   node coordinator/assets/volunteer/tools/speed.mjs [RUNS]
//
// Modules from $FALLOW_ARTIFACTS and $FALLOW_METERED, or as test/cases.mjs finds them.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { artifactsDir, meteredDir } from '../test/cases.mjs';
import { prepareModule, runUnit, unitSeed } from '../guest.js';

const KERNELS = [
  ['primes', '0 30000000\n'],
  ['pi', '0 20000000\n'],
  ['mandelbrot', '0 0 512 384 512 384 2000\n'],
  ['nbody', '1000000\n'],
];
const runs = Number(process.argv[2] ?? 5);
const built = artifactsDir();
const metered = meteredDir();
if (!built || !metered) throw new Error('no modules: see the comment at the top');
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const limits = { fuel: 1_000_000_000_000, memory_mb: 256, wall_seconds: 600 };

console.log('| kernel | V8, module as built | V8, metered | metered / as built | fuel |');
console.log('|---|---|---|---|---|');
for (const [name, text] of KERNELS) {
  const input = new TextEncoder().encode(text);
  const seed = unitSeed('bench', input);
  const prepared = [built, metered].map((dir) =>
    prepareModule(readFileSync(join(dir, `${name}.wasm`)), limits.memory_mb),
  );
  const times = [[], []];
  let fuel = 0n;
  for (let i = 0; i < runs; i++) {
    prepared.forEach((module, which) => {
      const start = process.hrtime.bigint();
      const r = runUnit({ module, input, seed, limits });
      times[which].push(Number(process.hrtime.bigint() - start) / 1e6);
      if (r.failure) throw new Error(`${name}: ${r.failure.kind}: ${r.failure.message ?? ''}`);
      if (which === 1) fuel = r.fuel;
    });
  }
  const [plain, meter] = times.map(median);
  console.log(
    `| ${name} | ${plain.toFixed(1)} ms | ${meter.toFixed(1)} ms | ${(meter / plain).toFixed(2)}x | ${fuel} |`,
  );
}
