//! The runtime must compile without `std` (the `no_std` path: no `std` feature, no allocator).
//! This builds it that way with the same cargo; the bare-metal target build is in
//! `runtime/check-no-std.sh` (needs a toolchain with the thumbv7em target or `build-std`).

use std::process::Command;

#[test]
fn compiles_without_std() {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let target = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/rt-nostd");
    let out = Command::new(env!("CARGO"))
        .args([
            "check",
            "--offline",
            "--no-default-features",
            "--lib",
            "--manifest-path",
            manifest,
            "--target-dir",
            target,
        ])
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "no_std build failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
