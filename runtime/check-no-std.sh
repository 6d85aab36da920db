#!/bin/sh
# Checks that slb-runtime builds without std: on the host, and for a Cortex-M4F
# (thumbv7em-none-eabihf) with Debian's rustc + build-std (see /work/shared/docs/MCU.md).
set -eu
cd "$(dirname "$0")/.."
cargo check -p slb-runtime --no-default-features --lib --target-dir target/rt-nostd
if [ -x /usr/bin/cargo ] && /usr/bin/rustc --print sysroot >/dev/null 2>&1; then
    RUSTC_BOOTSTRAP=1 RUSTC=/usr/bin/rustc CARGO_TARGET_DIR=target/rt-thumb \
        /usr/bin/cargo build -p slb-runtime --no-default-features --lib \
        --target thumbv7em-none-eabihf -Z build-std=core --release
    echo "thumbv7em-none-eabihf: ok"
else
    echo "thumbv7em-none-eabihf: skipped (no /usr/bin/cargo with rust-src)"
fi
