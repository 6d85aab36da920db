//! Keeps libtorch_cuda linked (tch calls nothing in it directly, so `--as-needed` would drop it
//! and CUDA would look unavailable), adds an rpath to torch's library folder for local runs, and
//! compiles the CUDA graph and profiler shims (`csrc/`) when libtorch has CUDA and the CUDA
//! runtime headers are next to it (the `nvidia-*` wheels that `torch` installs) or under
//! `CUDA_HOME`. Without them, or with `SLB_NO_CUDA_SHIMS=1` (CI checks that build too), the
//! trainer builds without CUDA graphs and Kineto traces (`slb_cuda_graph` unset).
//!
//! With the CUDA shims it also compiles the fused activation-node kernels' shim
//! (`csrc/fused.cpp`, `slb_fused`) when NVRTC and the CUDA runtime are in the same wheel as the
//! headers; `csrc/fused_quant.h` is embedded as the source NVRTC compiles at run time.
//!
//! It also compiles the c10d shim (`csrc/dist.cpp`, data-parallel training) when Gloo's headers
//! are installed (Debian's `libgloo-dev`, which scripts/setup.sh installs; or `GLOO_INCLUDE`),
//! with NCCL when the CUDA shims build and `nccl.h` is in the `nvidia/nccl` wheel
//! (`slb_dist`, `slb_nccl`). Without Gloo's headers `slb train --nproc` says what is missing.
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=SLB_NO_CUDA_SHIMS");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=csrc/cuda_graph.cpp");
    println!("cargo:rerun-if-changed=csrc/profiler.cpp");
    println!("cargo:rerun-if-changed=csrc/dist.cpp");
    println!("cargo:rerun-if-changed=csrc/fused.cpp");
    println!("cargo:rerun-if-changed=csrc/fused_quant.h");
    println!("cargo:rerun-if-env-changed=GLOO_INCLUDE");
    println!("cargo:rustc-check-cfg=cfg(slb_cuda_graph)");
    println!("cargo:rustc-check-cfg=cfg(slb_dist)");
    println!("cargo:rustc-check-cfg=cfg(slb_nccl)");
    println!("cargo:rustc-check-cfg=cfg(slb_fused)");
    // LIBTORCH is set by .cargo/config.toml to .venv/libtorch; resolve the link so the rpath
    // survives a rebuild of the venv at the same place.
    let Some(root) = std::env::var("LIBTORCH")
        .ok()
        .and_then(|p| std::fs::canonicalize(p).ok())
    else {
        return;
    };
    let lib = root.join("lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    let cuda_shims = lib.join("libtorch_cuda.so").exists()
        && std::env::var_os("SLB_NO_CUDA_SHIMS").is_none_or(|v| v != "1");
    dist_shim(&root, cuda_shims.then(|| cuda_include(&root)).flatten());
    if !lib.join("libtorch_cuda.so").exists() {
        return;
    }
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch_cuda");
    println!("cargo:rustc-link-arg=-Wl,--as-needed");
    if std::env::var_os("SLB_NO_CUDA_SHIMS").is_some_and(|v| v == "1") {
        println!("cargo:warning=SLB_NO_CUDA_SHIMS=1: building without CUDA graphs");
        return;
    }
    match cuda_include(&root) {
        Some(cuda) if root.join("include/ATen/cuda/CUDAGraph.h").exists() => {
            cc::Build::new()
                .cpp(true)
                .std("c++17")
                .file("csrc/cuda_graph.cpp")
                .file("csrc/profiler.cpp")
                .include(root.join("include"))
                .include(root.join("include/torch/csrc/api/include"))
                .include(&cuda)
                .define("_GLIBCXX_USE_CXX11_ABI", "1")
                .warnings(false)
                .compile("slb_cuda_graph");
            println!("cargo:rustc-link-search=native={}", lib.display());
            for l in ["torch_cuda", "c10_cuda", "torch_cpu", "c10"] {
                println!("cargo:rustc-link-lib=dylib={l}");
            }
            println!("cargo:rustc-cfg=slb_cuda_graph");
            fused_shim(&root, &cuda);
        }
        _ => println!(
            "cargo:warning=no CUDA runtime headers next to libtorch: building without CUDA graphs"
        ),
    }
}

/// Compiles `csrc/fused.cpp` (the fused activation-node kernels, compiled at run time by NVRTC)
/// when NVRTC and the CUDA runtime are next to the CUDA headers `cuda` (`<include>/../lib`, the
/// `nvidia/cu13` wheel, or `$CUDA_HOME/lib64`), and embeds `csrc/fused_quant.h` as the source
/// NVRTC compiles (`slb_fused`).
fn fused_shim(root: &Path, cuda: &Path) {
    let Some(lib) = cuda.parent().and_then(|p| {
        ["lib", "lib64"]
            .into_iter()
            .map(|l| p.join(l))
            .find(|l| l.join("libnvrtc.so.13").exists() || l.join("libnvrtc.so").exists())
    }) else {
        println!(
            "cargo:warning=no NVRTC next to {}: building without the fused quantizer kernels",
            cuda.display()
        );
        return;
    };
    if !cuda.join("nvrtc.h").exists() {
        println!(
            "cargo:warning=no nvrtc.h in {}: building without the fused kernels",
            cuda.display()
        );
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let src = std::fs::read_to_string("csrc/fused_quant.h").expect("csrc/fused_quant.h");
    assert!(
        !src.contains(")slbsrc\""),
        "csrc/fused_quant.h holds the raw-string delimiter"
    );
    std::fs::write(
        out.join("fused_quant_src.inc"),
        format!("R\"slbsrc({src})slbsrc\"\n"),
    )
    .expect("writing OUT_DIR/fused_quant_src.inc");
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .file("csrc/fused.cpp")
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .include(cuda)
        .include("csrc")
        .include(&out)
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false)
        .compile("slb_fused");
    // The wheel ships only the versioned names (libnvrtc.so.13): link them by file name.
    let name = |stem: &str| {
        if lib.join(format!("{stem}.so.13")).exists() {
            format!("-l:{stem}.so.13")
        } else {
            format!("-l{}", stem.trim_start_matches("lib"))
        }
    };
    println!("cargo:rustc-link-arg=-L{}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-link-arg={}", name("libnvrtc"));
    println!("cargo:rustc-link-arg={}", name("libcudart"));
    println!(
        "cargo:rustc-link-search=native={}",
        root.join("lib").display()
    );
    for l in ["torch_cuda", "c10_cuda", "torch_cpu", "c10"] {
        println!("cargo:rustc-link-lib=dylib={l}");
    }
    println!("cargo:rustc-cfg=slb_fused");
}

/// Compiles `csrc/dist.cpp` (c10d: TCPStore, Gloo, and NCCL when `cuda` has the CUDA headers
/// and the `nvidia/nccl` wheel has `nccl.h`), if Gloo's headers are found.
fn dist_shim(root: &Path, cuda: Option<PathBuf>) {
    let gloo = std::env::var_os("GLOO_INCLUDE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/include"));
    if !gloo.join("gloo/config.h").exists() {
        println!(
            "cargo:warning=no Gloo headers (libgloo-dev) in {}: building without data-parallel \
             training (scripts/setup.sh installs them)",
            gloo.display()
        );
        return;
    }
    let mut b = cc::Build::new();
    b.cpp(true)
        .std("c++17")
        .file("csrc/dist.cpp")
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .include(&gloo)
        .define("USE_C10D_GLOO", None)
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false);
    let nccl = root.parent().map(|site| site.join("nvidia/nccl/include"));
    let nccl = nccl.filter(|p| p.join("nccl.h").exists());
    if let (Some(cuda), Some(nccl)) = (cuda, nccl) {
        b.include(cuda)
            .include(nccl)
            .define("USE_C10D_NCCL", None)
            .define("SLB_WITH_NCCL", None);
        println!("cargo:rustc-cfg=slb_nccl");
    }
    b.compile("slb_dist");
    println!(
        "cargo:rustc-link-search=native={}",
        root.join("lib").display()
    );
    for l in ["torch_cpu", "c10"] {
        println!("cargo:rustc-link-lib=dylib={l}");
    }
    println!("cargo:rustc-cfg=slb_dist");
}

/// A folder with the CUDA runtime headers (`cuda_runtime.h` and the `crt/` it includes):
/// `$CUDA_HOME/include`, else one in the Python environment that holds torch (`root` is
/// `<site-packages>/torch`): the `nvidia/*` wheels, or the toolkit headers of the `triton`
/// wheel that torch depends on.
fn cuda_include(root: &Path) -> Option<PathBuf> {
    let has = |p: &Path| p.join("cuda_runtime.h").exists() && p.join("crt/host_config.h").exists();
    let mut candidates = Vec::new();
    if let Some(h) = std::env::var_os("CUDA_HOME") {
        candidates.push(PathBuf::from(h).join("include"));
    }
    let site = root.parent()?;
    if let Ok(dirs) = std::fs::read_dir(site.join("nvidia")) {
        let mut v: Vec<PathBuf> = dirs.flatten().map(|e| e.path().join("include")).collect();
        v.sort();
        candidates.extend(v.into_iter().rev());
    }
    candidates.push(site.join("triton/backends/nvidia/include"));
    candidates.into_iter().find(|p| has(p))
}
