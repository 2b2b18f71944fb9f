#!/usr/bin/env bash
# The tests of edge and its libraries (fss-core, fss-runtime, fss-lab) on aarch64 under qemu-user, once per CPU model (cortex-a72 = Pi 4: no
# dotprod/fp16; cortex-a76 = Pi 5: dotprod + fp16), `edge doctor` under both, the x86_64 vs
# aarch64 parity test of `edge segment` (edge/tests/arm_parity.rs), then the .deb and the tarball
# with their smoke test (scripts/package-arm.sh). Needs scripts/setup-arm.sh first
# (scripts/test.sh runs both). Exits non-zero on any failure. ~3.5 min warm, ~15 min cold on
# 2 cores (docs/arm.md).
#   scripts/test-arm.sh [extra cargo test args]
# The tests are built with --release: the same compiled tract as the shipped binary
# (scripts/build-arm.sh), one aarch64 build of the dependencies instead of two, and faster
# under emulation (qemu runs the encoder ~100x slower than native; the tests use small inputs).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=aarch64-unknown-linux-gnu
SYSROOT=/usr/aarch64-linux-gnu
CPUS=${EDGE_ARM_CPUS:-cortex-a72 cortex-a76}
log() { printf '[test-arm] %s\n' "$*" >&2; }
for tool in aarch64-linux-gnu-gcc qemu-aarch64; do
  command -v "$tool" >/dev/null || { echo "error: $tool missing: run scripts/setup-arm.sh" >&2; exit 1; }
done

# The device crate and the libraries it stands on (fss-lab too: edge eval runs it on boards).
PKGS="-p fss-core -p fss-runtime -p fss-lab -p edge"

t0=$(date +%s)
cargo test --release $PKGS --features edge/camera --target "$TARGET" --no-run
log "aarch64 build (tests, with the lab): $(( $(date +%s) - t0 )) s"
BIN="target/$TARGET/release/edge"

for cpu in $CPUS; do
  t=$(date +%s)
  log "cargo test $PKGS under qemu-aarch64 -cpu $cpu"
  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu $cpu -L $SYSROOT" \
    cargo test --release $PKGS --features edge/camera --target "$TARGET" --no-fail-fast "$@"
  log "tests under $cpu: $(( $(date +%s) - t )) s"
done

# The device binary (no `lab` feature: what the packages ship), built after the tests, whose
# build links the lab-enabled binary to the same path; doctor, the parity test and the packages
# below run it.
cargo build --release -p edge --no-default-features --features camera,gpio --target "$TARGET"
if qemu-aarch64 -L "$SYSROOT" "$BIN" eval --help >/dev/null 2>&1; then
  echo "error: $BIN has the lab's eval command: not the device build" >&2; exit 1
fi
log "device binary $BIN: $(stat -c %s "$BIN") bytes (unstripped)"

# edge doctor: exit 0 without camera, dotprod as the CPU model says.
for cpu in $CPUS; do
  json=$(qemu-aarch64 -cpu "$cpu" -L "$SYSROOT" "$BIN" doctor --json)
  echo "$json" | grep -q '"arch":"aarch64"' || { echo "error: doctor under $cpu: $json" >&2; exit 1; }
  case $cpu in
    cortex-a72|cortex-a53|cortex-a57) want=false ;;
    cortex-a76|cortex-a710|neoverse-n1|max) want=true ;;
    *) want="" ;;
  esac
  if [ -n "$want" ] && ! echo "$json" | grep -q "\"cpuinfo\":\"asimddp\",\"name\":\"dotprod\",\"present\":$want"; then
    echo "error: doctor under $cpu: dotprod should be $want: $json" >&2; exit 1
  fi
  log "doctor under $cpu: ok (dotprod ${want:-?})"
done

# x86_64 (native) vs aarch64 (qemu, each CPU) on the same inputs: masks, features, logits.
# Selected with --workspace and the features of scripts/test.sh's workspace run, so cargo unifies
# the dependencies' features as it did there and reuses that build (`-p edge` alone resolved other
# features and compiled tract a second time: ~5 GB of target/debug and minutes).
# The test is #[ignore]d in plain runs (it needs this binary); here it runs with --ignored, and
# the step fails unless exactly that one test ran and passed.
t=$(date +%s)
EDGE_ARM_BIN="$PWD/$BIN" EDGE_ARM_CPUS="$CPUS" EDGE_ARM_QEMU="qemu-aarch64 -L $SYSROOT" \
  cargo test --workspace --features edge/camera --test arm_parity -- --ignored --nocapture \
  | tee target/arm-parity.log
grep -q "test result: ok. 1 passed" target/arm-parity.log \
  || { echo "error: the ARM parity test did not run and pass (target/arm-parity.log)" >&2; exit 1; }
log "parity test: $(( $(date +%s) - t )) s; all aarch64 steps: $(( $(date +%s) - t0 )) s"

# The .deb and the tarball, unpacked/installed into a scratch root and checked with edge doctor.
t=$(date +%s)
scripts/package-arm.sh
log "packages: $(( $(date +%s) - t )) s; all aarch64 steps: $(( $(date +%s) - t0 )) s"
