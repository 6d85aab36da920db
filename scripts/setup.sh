#!/usr/bin/env bash
# Installs what this project needs on a fresh machine (idempotent; skips what is there):
#   - libtorch: `torch==2.11.0` from the Python package registry into .venv (about a minute),
#     linked at .venv/libtorch where .cargo/config.toml points LIBTORCH;
#   - the CUDA runtime's crt/ and CCCL headers (`nvidia-cuda-crt`, `nvidia-cuda-cccl`, the
#     versions torch's CUDA runtime wheel pairs with) so that the trainer's CUDA shims and the
#     NCCL backend compile against one set of CUDA headers;
#   - Debian's libgloo-dev: the headers of Gloo, whose compiled backend libtorch carries, for
#     data-parallel training (trainer/csrc/dist.cpp);
#   - with --mcu: Debian's Cortex-M toolchain and QEMU (see docs/MCU.md).
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.11.0

if ! [ -e .venv/libtorch/lib/libtorch_cpu.so ] || \
   ! .venv/bin/python -c "import torch,sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  echo "setup: installing torch==$TORCH_VERSION into .venv (libtorch for tch)"
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --no-cache-dir --disable-pip-version-check "torch==$TORCH_VERSION"
fi
ln -sfn "$(.venv/bin/python -W ignore -c 'import os, torch; print(os.path.dirname(torch.__file__))' 2>/dev/null)" .venv/libtorch
CU13="$(readlink -f .venv/libtorch)/../nvidia/cu13/include"
CUDA_HEADERS=(nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85)
if ! [ -e "$CU13"/crt/host_config.h ] || \
   ! [ -e "$CU13"/nv/target ]; then
  echo "setup: installing ${CUDA_HEADERS[*]} into .venv (CUDA headers for the shims)"
  .venv/bin/python -m pip install --quiet --no-cache-dir --disable-pip-version-check "${CUDA_HEADERS[@]}"
fi
if ! [ -e /usr/include/gloo/config.h ] && [ -z "${GLOO_INCLUDE:-}" ]; then
  echo "setup: installing libgloo-dev (Debian package; Gloo headers for data-parallel training)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q libgloo-dev >/dev/null
fi

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
