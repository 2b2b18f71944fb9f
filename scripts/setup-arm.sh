#!/usr/bin/env bash
# Idempotent set-up for the aarch64 cross build and the qemu tests (docs/arm.md): Debian's
# cross gcc + arm64 libc (linker, C compiler for tract-linalg's NEON assembly), qemu-user (test
# runner) and the rustup target. Re-running it does nothing that is already done.
# The cross linker itself is configured in .cargo/config.toml ([target.aarch64-unknown-linux-gnu]).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup-arm] %s\n' "$*" >&2; }

need_apt=()
for pkg in gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user libclang-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  log "installing apt packages: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

TARGET=aarch64-unknown-linux-gnu
if ! rustup target list --installed | grep -qx "$TARGET"; then
  log "adding rustup target $TARGET"
  rustup target add "$TARGET"
fi

for tool in aarch64-linux-gnu-gcc qemu-aarch64; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found after set-up" >&2; exit 1; }
done
# --zig: cargo-zigbuild and zig from PyPI (wheels: nothing is compiled) in .venv-zig, for the
# glibc 2.31 release build (scripts/build-arm.sh --glibc 2.31).
if [ "${1:-}" = --zig ]; then
  ZVENV=.venv-zig
  [ -x "$ZVENV/bin/python" ] || python3 -m venv "$ZVENV"
  if ! "$ZVENV/bin/python" -m pip show cargo-zigbuild ziglang >/dev/null 2>&1; then
    log "installing cargo-zigbuild==0.24.0 ziglang==0.17.1 into $ZVENV"
    "$ZVENV/bin/python" -m pip install -q cargo-zigbuild==0.24.0 ziglang==0.17.1
  fi
  # cargo-zigbuild looks for `python3 -m ziglang` or a `zig` on PATH.
  [ -e "$ZVENV/bin/zig" ] || ln -s "$("$ZVENV/bin/python" -c 'import ziglang, os; print(os.path.join(os.path.dirname(ziglang.__file__), "zig"))')" "$ZVENV/bin/zig"
  log "zig $("$ZVENV/bin/zig" version), $("$ZVENV/bin/cargo-zigbuild" --version)"
  exit 0
fi
log "done: $(aarch64-linux-gnu-gcc -dumpfullversion) cross gcc, $(qemu-aarch64 --version | head -1), target $TARGET"
