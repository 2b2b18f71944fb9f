#!/usr/bin/env bash
# The project's test command (README, "Tests"; .ci/run calls it): set-up if needed, format check,
# then every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo test --workspace --no-fail-fast "$@"
