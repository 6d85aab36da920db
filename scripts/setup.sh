#!/usr/bin/env bash
# Installs what this project needs on a fresh machine (idempotent; skips what is there):
#   - libtorch: `torch==2.11.0` from the Python package registry into .venv (about a minute),
#     linked at .venv/libtorch where .cargo/config.toml points LIBTORCH;
#   - with --mcu: Debian's Cortex-M toolchain and QEMU (see docs/MCU.md).
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.11.0

if ! [ -e .venv/libtorch/lib/libtorch_cpu.so ] || \
   ! .venv/bin/python -c "import torch,sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  echo "setup: installing torch==$TORCH_VERSION into .venv (libtorch for tch)"
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION"
fi
ln -sfn "$(.venv/bin/python -W ignore -c 'import os, torch; print(os.path.dirname(torch.__file__))' 2>/dev/null)" .venv/libtorch

if [ "${1:-}" = "--mcu" ]; then
  missing=()
  command -v arm-none-eabi-ld >/dev/null || missing+=(gcc-arm-none-eabi)
  command -v qemu-system-arm >/dev/null || missing+=(qemu-system-arm)
  [ -x /usr/bin/rustc ] && [ -x /usr/bin/cargo ] || missing+=(rustc-web cargo-web)
  [ -d /usr/lib/rustlib/src/rust/library ] || missing+=(rust-web-src)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]} (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q rustc-web cargo-web rust-web-src gcc-arm-none-eabi qemu-system-arm >/dev/null
  fi
fi
