#!/usr/bin/env bash
# The project's test command (README, "The two commands", and docs/testing.md; .ci/run calls it): set-up if needed, format check,
# then every test of the workspace; then the aarch64 build and edge's tests under qemu (docs/arm.md;
# FSS_SKIP_ARM=1 skips that part locally).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo test --workspace --no-fail-fast --features edge/camera "$@"
if [ "${FSS_SKIP_ARM:-0}" != 1 ]; then
  scripts/setup-arm.sh
  scripts/test-arm.sh
fi
