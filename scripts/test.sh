#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine of this kind; installs what it needs first
# (torch==2.11.0 into .venv for libtorch, Debian's Cortex-M toolchain and QEMU, cargo-mutants).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
# Every build here happens once: no incremental caches (they took 240 MB of the disk).
export CARGO_INCREMENTAL=0

step() { printf '\n== %s\n' "$*"; }

step "set-up"
# A fresh run writes about 8 GB (libtorch's wheel 4.6 GB, the builds 3 GB): say what is free, so
# that a run that stops on a full disk says so at its start.
echo "test: $(df -h --output=avail . | tail -1 | tr -d ' ') free on the disk of $(pwd)"
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

step "mutation testing: the last commit's lines and a rotating slice (docs/RELIABILITY.md)"
# cargo-mutants, the version the results were measured with, installed when missing: an
# unoptimized build (`--debug`: half the compile time of a release one, 71 s of CPU against
# 152 s; it only parses sources and starts cargo). The time it takes comes out of the mutants'
# 5 min (at least 90 s are left to them).
MUTANTS_VERSION=27.1.0
t=$(date +%s)
if [ "$(cargo mutants --version 2>/dev/null)" != "cargo-mutants $MUTANTS_VERSION" ]; then
    cargo install --locked --debug --quiet "cargo-mutants@$MUTANTS_VERSION"
fi
installed=$(($(date +%s) - t))
MUTANTS_CI_SECONDS=$((300 - installed > 90 ? 300 - installed : 90)) scripts/mutants.sh --ci
