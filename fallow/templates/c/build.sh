#!/usr/bin/env sh
# Builds {{name}}.wasm, the module fallow.toml names, with clang and wasi-libc.
#   Debian/Ubuntu: apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32
#   WASI SDK:      CC=/opt/wasi-sdk/bin/clang ./build.sh   (or WASI_SYSROOT=/path/to/sysroot)
# simd128 is deterministic and lets LLVM vectorise; relaxed SIMD stays off (Fallow refuses it).
set -eu
cd "$(dirname "$0")"
CC="${CC:-clang}"
if [ -n "${WASI_SYSROOT:-}" ]; then
    set -- --sysroot="$WASI_SYSROOT"
else
    set --
fi
"$CC" --target=wasm32-wasi "$@" -O2 -msimd128 -o {{name}}.wasm main.c
echo "built {{name}}.wasm"
