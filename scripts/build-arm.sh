#!/usr/bin/env bash
# One command for the aarch64 edge: set-up (idempotent), cross build with Debian's gcc
# (target/aarch64-unknown-linux-gnu/release/edge), a check that tract-linalg's arm64 NEON kernels
# were assembled and linked in, then the .deb and the tarball (scripts/package-arm.sh).
#   scripts/build-arm.sh [--no-package]
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=aarch64-unknown-linux-gnu
BIN="target/$TARGET/release/edge"
log() { printf '[build-arm] %s\n' "$*" >&2; }

scripts/setup-arm.sh
start=$(date +%s)
cargo build --release -p edge --features camera --target "$TARGET"
log "cargo build: $(( $(date +%s) - start )) s"

# tract-linalg's build.rs assembles the NEON (and SVE/fp16) kernels with the target C compiler
# and probes the assembler; its output says what it linked and which cfgs it set.
out=$(ls -t target/$TARGET/release/build/tract-linalg-*/output 2>/dev/null | head -1 || true)
[ -n "$out" ] || { echo "error: no tract-linalg build output under target/$TARGET/release/build" >&2; exit 1; }
for lib in arm64simd arm64simd_dot arm64fp16; do
  grep -q "rustc-link-lib=static=$lib\$" "$out" \
    || { echo "error: $out: tract-linalg did not assemble its $lib kernels" >&2; exit 1; }
done
cfgs=$(grep -o 'rustc-cfg=tract_[a-z0-9_]*' "$out" | sed 's/rustc-cfg=//' | sort -u | tr '\n' ' ')
# ... and that the kernels are in the binary (symbols are kept: release strips debuginfo only).
nsym=$(aarch64-linux-gnu-nm "$BIN" | grep -c 'arm64simd_mmm_f32_' || true)
[ "$nsym" -gt 0 ] || { echo "error: $BIN: no arm64simd_mmm_f32 kernel symbols" >&2; exit 1; }
dot=$(aarch64-linux-gnu-nm "$BIN" | grep -c 'arm64simd_mmm_i32_8x8_dot' || true)
glibc=$(aarch64-linux-gnu-objdump -T "$BIN" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
log "tract-linalg: static kernel libs $(grep -o 'static=[a-z0-9_]*' "$out" | sed 's/static=//' | tr '\n' ' ')"
log "tract-linalg cfgs: $cfgs"
log "$BIN: $(stat -c %s "$BIN") bytes, $nsym NEON f32 kernel symbols, $dot SDOT kernel symbols, needs $glibc"

if [ "${1:-}" != "--no-package" ]; then
  scripts/package-arm.sh
fi
