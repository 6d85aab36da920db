#!/usr/bin/env bash
# The runtime's aarch64 NEON kernels, run under qemu-aarch64 (user mode) and checked bit for bit
# against the reference kernels by the runtime's own tests (CI runs this; see docs/PERFORMANCE.md
# for what is and is not measured on aarch64).
#
# Installs what it needs when missing: Debian's qemu-user and the aarch64 cross linker and libc
# (needs root, as CI is), and the aarch64-unknown-linux-gnu standard library through rustup.
# QEMU's default CPU for user mode ("max") has NEON and the dot-product extension, so every NEON
# kind runs, `sdot` included.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

missing=()
command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu)
[ -d /usr/aarch64-linux-gnu/lib ] || missing+=(libc6-dev-arm64-cross)
if [ ${#missing[@]} -gt 0 ]; then
  echo "aarch64-test: installing ${missing[*]} (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q "${missing[@]}" >/dev/null
fi
target=aarch64-unknown-linux-gnu
# The target's standard library from rustup; if rustup cannot fetch it, Debian's rustc with
# `-Zbuild-std` (the same toolchain scripts/mcu-test.sh uses for the Cortex-M builds).
build_std=()
if ! rustc --print sysroot | xargs -I{} test -d "{}/lib/rustlib/$target"; then
  echo "aarch64-test: adding the $target standard library (rustup)"
  if ! rustup target add "$target"; then
    echo "aarch64-test: rustup could not add $target; building std with Debian's rustc instead"
    if ! { [ -x /usr/bin/rustc ] && [ -x /usr/bin/cargo ] && [ -d /usr/lib/rustlib/src/rust/library ]; }; then
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -q >/dev/null
      apt-get install -y -q rustc-web cargo-web rust-web-src >/dev/null
    fi
    build_std=(-Zbuild-std=std,panic_abort)
  fi
fi

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
# Its own target folder, so that it never waits on (or invalidates) the host builds.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR_AARCH64:-$PWD/target/aarch64}"

if [ ${#build_std[@]} -eq 0 ]; then
  cargo clippy -q -p slb-runtime --target "$target" --all-targets -- -D warnings
  cargo build -q -p slb-runtime --no-default-features --target "$target"
else
  # Debian's toolchain: no clippy for the target; the same tests below.
  cargo() { env -u RUSTUP_TOOLCHAIN RUSTC_BOOTSTRAP=1 RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc /usr/bin/cargo "$@"; }
  cargo build -q -p slb-runtime --no-default-features --target "$target" -Zbuild-std=core
fi
# The kernel tests print "skipped <kind>" for kinds this CPU lacks (the x86 ones here); a NEON
# kind skipped would mean QEMU's CPU lacks a feature: SLB_REQUIRE_KERNELS=neon makes the tests
# fail then, and so does this check.
log="$CARGO_TARGET_DIR/aarch64-test.log"
mkdir -p "$CARGO_TARGET_DIR"
SLB_REQUIRE_KERNELS=neon cargo test -q -p slb-format -p slb-runtime --release --target "$target" "${build_std[@]}" -- --nocapture 2>&1 | tee "$log"
if grep -q "skipped .*neon" "$log"; then
  echo "aarch64-test: a NEON kernel was skipped (see above)" >&2
  exit 1
fi
echo "aarch64-test: format and runtime tests passed under qemu-aarch64 (NEON kernels included)"
