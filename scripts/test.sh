#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine of this kind; installs what it needs first
# (torch==2.11.0 into .venv for libtorch, Debian's Cortex-M toolchain and QEMU).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

step() { printf '\n== %s\n' "$*"; }

step "set-up"
scripts/setup.sh --mcu

step "rustfmt and clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The trainer as it builds against a libtorch without the CUDA headers (no graph/trace shims).
SLB_NO_CUDA_SHIMS=1 cargo clippy -q -p slb-trainer --all-targets -- -D warnings

step "no_std builds (format and runtime without std)"
cargo build -q -p slb-format --no-default-features
cargo build -q -p slb-runtime --no-default-features

step "workspace tests"
cargo test --workspace --release

step "Cortex-M example under QEMU, bit-exact with the host"
scripts/mcu-test.sh

step "aarch64 NEON kernels under qemu-aarch64, bit-exact with the reference"
scripts/aarch64-test.sh
