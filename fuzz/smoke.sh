#!/usr/bin/env bash
# Fuzz smoke run for CI (FUZZING.md): builds the cargo-fuzz targets on stable Rust (no
# sanitizer, so no nightly) and runs each for a few seconds from its seed corpus. New
# inputs go to a temporary directory, never into the committed seeds.
#
#   fuzz/smoke.sh [SECONDS_PER_TARGET]        default 20
#   FUZZ_TARGETS="wire claims" fuzz/smoke.sh  a subset
#   FUZZ_BUILD=dev fuzz/smoke.sh              unoptimized build (~20 % less compile CPU, but
#                                             unoptimized signature checks are far slower)
#
# `inspect` and `abi` (wasmtime + Cranelift) are left out by default: building them
# instrumented takes longer than the whole smoke budget. Add them with
# FUZZ_TARGETS="... inspect abi".
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-20}
targets=${FUZZ_TARGETS:-manifest wire claims call board membership reduce}
# Optimized by default: a cold debug build saves only ~20 % of the compile CPU (measured),
# while an optimized one runs the signature-heavy targets through far more inputs.
case ${FUZZ_BUILD:-release} in
  dev) profile=(--dev) ;;
  release) profile=() ;; # cargo-fuzz builds optimized by default
  *) echo "FUZZ_BUILD must be dev or release" >&2; exit 2 ;;
esac
# cargo-fuzz 0.13.2 is known to work on stable with `--sanitizer none`.
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --version 0.13.2 --locked
fi
# `--sanitizer none`: sanitizers need nightly (-Zsanitizer); safe Rust does not need them.
# `-a`: debug assertions and overflow checks on, so an overflow is a crash.
flags=(--sanitizer none -a "${profile[@]}")
features=()
for t in $targets; do
  if [ "$t" = inspect ] || [ "$t" = abi ]; then features=(--features sandbox); fi
done

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cargo fuzz build "${flags[@]}" "${features[@]}"
for t in $targets; do
  mkdir -p "$scratch/$t"
  echo "fuzz smoke: $t for ${seconds}s"
  # libFuzzer exits non-zero on a crash, a panic, an input slower than -timeout or the
  # memory limit; the failing input is saved in fuzz/artifacts/$t/.
  if ! cargo fuzz run "${flags[@]}" "${features[@]}" "$t" "$scratch/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$scratch/$t.log" 2>&1; then
    tail -n 60 "$scratch/$t.log" >&2
    echo "fuzz smoke: $t FAILED; reproduce with: cargo fuzz run ${flags[*]} ${features[*]} $t fuzz/artifacts/$t/<file>" >&2
    exit 1
  fi
  grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added)' "$scratch/$t.log" || true
done
n=$(wc -w <<<"$targets")
echo "fuzz: $n passed, 0 failed"
