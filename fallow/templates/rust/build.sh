#!/usr/bin/env sh
# Builds {{name}}.wasm, the module fallow.toml names. Needs the wasm32-wasip1 target:
#   rustup target add wasm32-wasip1
# simd128 is deterministic and lets LLVM vectorise; relaxed SIMD stays off (Fallow refuses it).
set -eu
cd "$(dirname "$0")"
# --target-dir: the build stays here even when CARGO_TARGET_DIR points elsewhere.
RUSTFLAGS="-C target-feature=+simd128" cargo build --release --target wasm32-wasip1 --target-dir target
cp target/wasm32-wasip1/release/{{name}}.wasm {{name}}.wasm
echo "built {{name}}.wasm"
