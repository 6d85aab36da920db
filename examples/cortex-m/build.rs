//! Puts `memory.x` on the linker's search path and tells the program where its model and test
//! images are (`SLB_MODEL`, `SLB_IMAGES`, paths relative to this package or absolute).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    fs::copy(dir.join("memory.x"), out.join("memory.x")).expect("copy memory.x");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");

    let model = input(&dir, "SLB_MODEL", "trained/resnet20-w1a8.slb");
    let images = input(&dir, "SLB_IMAGES", "models/images.bin");
    println!("cargo:rustc-env=SLB_MODEL_PATH={}", model.display());
    println!("cargo:rustc-env=SLB_IMAGES_PATH={}", images.display());

    // The arena is a static buffer; its size is a build-time constant (the program checks it
    // against the plan's need at run time and prints both).
    let arena: usize = match env::var("SLB_ARENA_BYTES") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("SLB_ARENA_BYTES={v:?} is not a number")),
        Err(_) => 192 * 1024,
    };
    println!("cargo:rerun-if-env-changed=SLB_ARENA_BYTES");
    // Kernel choices to run, in order: `default` (the runtime's own choice), `fit` (the default
    // if it fits the static arena, else the smallest prepared weights), `bitserial`, `int8dot`,
    // `reference`.
    let algos = env::var("SLB_ALGOS").unwrap_or_else(|_| "default".into());
    println!("cargo:rerun-if-env-changed=SLB_ALGOS");
    let mut list = String::new();
    for a in algos.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        if slb_runtime::PlanChoice::from_name(a).is_none() {
            panic!(
                "SLB_ALGOS: unknown kernel choice {a:?} ({})",
                slb_runtime::PlanChoice::NAMES.join(", ")
            );
        }
        list.push_str(&format!("{a:?}, "));
    }
    fs::write(
        out.join("config.rs"),
        format!(
            "/// Bytes of the static arena (SLB_ARENA_BYTES at build time).\n\
             pub const ARENA_BYTES: usize = {arena};\n\
             /// Kernel choices to run (SLB_ALGOS at build time).\n\
             pub const ALGOS: &[&str] = &[{list}];\n"
        ),
    )
    .expect("write config.rs");
}

/// The absolute path of an input file named by `var` (default `default`), which must exist.
fn input(dir: &Path, var: &str, default: &str) -> PathBuf {
    println!("cargo:rerun-if-env-changed={var}");
    let p = env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    let p = if p.is_absolute() { p } else { dir.join(p) };
    if !p.is_file() {
        panic!(
            "{var}: {} does not exist; scripts/mcu-test.sh generates the model and images \
             (or set {var} to a file)",
            p.display()
        );
    }
    println!("cargo:rerun-if-changed={}", p.display());
    p
}
