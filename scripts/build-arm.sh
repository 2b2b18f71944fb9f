#!/usr/bin/env bash
# One command for the aarch64 edge: set-up (idempotent), cross build of the device binary
# (features `camera` and `gpio`; the `lab` feature with `edge eval` stays out of the device),
# a check that tract-linalg's arm64 NEON kernels were assembled and linked in, then the .deb and
# the tarball (scripts/package-arm.sh).
#   scripts/build-arm.sh [--no-package]                 Debian's cross gcc: glibc floor 2.35
#                                                       (Pi OS bookworm, JetPack 6); what CI runs
#   scripts/build-arm.sh --glibc 2.31 [--no-package]    cargo-zigbuild (PyPI ziglang + cargo-zigbuild,
#                                                       installed into .venv-zig): glibc floor <= 2.31
#                                                       (Pi OS bullseye, JetPack 5); release builds;
#                                                       own target dir target/zig, packages in
#                                                       target/arm-dist-glibc2.31
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=aarch64-unknown-linux-gnu
GLIBC_TARGET=""
PACKAGE=1
while [ $# -gt 0 ]; do
  case $1 in
    --no-package) PACKAGE=0 ;;
    --glibc) GLIBC_TARGET=$2; shift ;;
    *) echo "error: unknown argument $1 (use --no-package, --glibc X.Y)" >&2; exit 2 ;;
  esac
  shift
done
log() { printf '[build-arm] %s\n' "$*" >&2; }

scripts/setup-arm.sh
start=$(date +%s)
if [ -z "$GLIBC_TARGET" ]; then
  TARGET_DIR=target
  cargo build --release -p edge --no-default-features --features camera,gpio --target "$TARGET"
else
  scripts/setup-arm.sh --zig
  TARGET_DIR=target/zig
  # bindgen (v4l's V4L2 bindings) must parse linux/videodev2.h, which zig's trimmed kernel
  # headers lack, and under cargo-zigbuild bindgen's clang sees no libc headers: give clang
  # Debian's arm64 cross headers through C_INCLUDE_PATH (the only C code edge compiles is
  # tract-linalg's assembly, which includes no libc header). zig links against its glibc
  # $GLIBC_TARGET stubs; the floor check below reads the symbol versions actually needed.
  C_INCLUDE_PATH=/usr/aarch64-linux-gnu/include PATH="$(pwd)/.venv-zig/bin:$PATH" CARGO_TARGET_DIR=$TARGET_DIR \
    cargo zigbuild --release -p edge --no-default-features --features camera,gpio --target "$TARGET.$GLIBC_TARGET"
fi
BIN="$TARGET_DIR/$TARGET/release/edge"
log "cargo build: $(( $(date +%s) - start )) s"

# tract-linalg's build.rs assembles the NEON (and SVE/fp16) kernels with the target C compiler
# and probes the assembler; its output says what it linked and which cfgs it set.
out=$(ls -t $TARGET_DIR/$TARGET/release/build/tract-linalg-*/output 2>/dev/null | head -1 || true)
[ -n "$out" ] || { echo "error: no tract-linalg build output under $TARGET_DIR/$TARGET/release/build" >&2; exit 1; }
for lib in arm64simd arm64simd_dot arm64fp16; do
  grep -q "rustc-link-lib=static=$lib\$" "$out" \
    || { echo "error: $out: tract-linalg did not assemble its $lib kernels" >&2; exit 1; }
done
cfgs=$(grep -o 'rustc-cfg=tract_[a-z0-9_]*' "$out" | sed 's/rustc-cfg=//' | sort -u | tr '\n' ' ')
# ... and that the kernels are in the binary (symbols are kept by Debian's gcc: release strips
# debuginfo only; zig's linker strips the symbol table, so there only the build output above and
# the smoke test of the package, which runs the encoder, vouch for them).
if [ -n "$GLIBC_TARGET" ] && aarch64-linux-gnu-nm "$BIN" 2>&1 | grep -q "no symbols"; then
  nsym="(stripped by zig)"; dot="(stripped by zig)"
else
  nsym=$(aarch64-linux-gnu-nm "$BIN" | grep -c 'arm64simd_mmm_f32_' || true)
  [ "$nsym" -gt 0 ] || { echo "error: $BIN: no arm64simd_mmm_f32 kernel symbols" >&2; exit 1; }
  dot=$(aarch64-linux-gnu-nm "$BIN" | grep -c 'arm64simd_mmm_i32_8x8_dot' || true)
fi
glibc=$(aarch64-linux-gnu-objdump -T "$BIN" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
log "tract-linalg: static kernel libs $(grep -o 'static=[a-z0-9_]*' "$out" | sed 's/static=//' | tr '\n' ' ')"
log "tract-linalg cfgs: $cfgs"
log "$BIN: $(stat -c %s "$BIN") bytes, $nsym NEON f32 kernel symbols, $dot SDOT kernel symbols, needs $glibc"

if [ "$PACKAGE" = 1 ]; then
  if [ -z "$GLIBC_TARGET" ]; then
    scripts/package-arm.sh
  else
    EDGE_BIN="$BIN" DIST_DIR="target/arm-dist-glibc$GLIBC_TARGET" scripts/package-arm.sh
  fi
fi
