//! Keeps libtorch_cuda linked (tch calls nothing in it directly, so `--as-needed` would drop it
//! and CUDA would look unavailable) and adds an rpath to torch's library folder for local runs.
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=build.rs");
    // LIBTORCH is set by .cargo/config.toml to .venv/libtorch; resolve the link so the rpath
    // survives a rebuild of the venv at the same place.
    let lib = std::env::var("LIBTORCH")
        .ok()
        .map(|p| std::path::Path::new(&p).join("lib"))
        .and_then(|p| std::fs::canonicalize(p).ok())
        .map(|p| p.display().to_string());
    if let Some(lib) = lib {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
            println!("cargo:rustc-link-arg=-ltorch_cuda");
            println!("cargo:rustc-link-arg=-Wl,--as-needed");
        }
    }
}
