#!/usr/bin/env bash
# The Cortex-M example under QEMU, bit-exact with the host runtime (CI runs this).
#
#   scripts/mcu-test.sh            build examples/cortex-m for thumbv7em-none-eabihf (Cortex-M4F)
#                                  with the trained ResNet20 W1A8 model of examples/cortex-m/trained
#                                  and four test images, run it on QEMU's
#                                  mps2-an386, and require its logits to equal the host runtime's
#                                  bit for bit; also build it for thumbv6m-none-eabi (Cortex-M0).
#   scripts/mcu-test.sh budget     also measure the flash/RAM/instruction table of docs/MCU.md
#                                  (several minutes; writes examples/cortex-m/models/budget.md).
#   scripts/mcu-test.sh costs      only the per-layer int8 instruction counts behind the Cortex-M4
#                                  cost table (writes examples/cortex-m/models/layer-costs.md).
#
# SLB_MCU_MODEL=path.slb uses that model file instead (SLB_MCU_MODEL=synth: a generated one).
# Installs Debian's Cortex-M toolchain and QEMU when missing (needs root, as CI is).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

missing=()
command -v arm-none-eabi-ld >/dev/null || missing+=(gcc-arm-none-eabi)
command -v arm-none-eabi-size >/dev/null || missing+=(binutils-arm-none-eabi)
command -v qemu-system-arm >/dev/null || missing+=(qemu-system-arm)
{ [ -x /usr/bin/rustc ] && [ -x /usr/bin/cargo ]; } || missing+=(rustc-web cargo-web)
[ -d /usr/lib/rustlib/src/rust/library ] || missing+=(rust-web-src)
if [ ${#missing[@]} -gt 0 ]; then
  echo "mcu-test: installing ${missing[*]} (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q "${missing[@]}" >/dev/null
fi

# Host builds of this test use their own target folder, so that they never wait on the
# workspace's during development; CI reuses the workspace's (scripts/test.sh built it already).
if [ -z "${CI:-}" ]; then
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/mcu-host}"
fi
tests=(qemu_matches_host)
[ "${1:-}" = "budget" ] && tests+=(budget_table)
[ "${1:-}" = "costs" ] && tests=(layer_costs)
for t in "${tests[@]}"; do
  cargo test --release --test mcu_qemu -- --ignored --exact "$t" --nocapture
done
