//! Criterion benchmarks of the packed runtime against float convolution, one thread.
//!
//! * `conv/<bits>/<shape>`: one ResNet18-CIFAR conv layer (64ch 32x32, 128ch 16x16, 256ch 8x8,
//!   512ch 4x4; 3x3 and 1x1; stride 1, same padding) as a whole single-conv model run through
//!   `slb_runtime::run` (input lookup, padding, bit packing, the kernel, requantization, global
//!   pooling): W1A1, W1A8, W2A8, W4A8, and the float side (`f32-inhouse`: the runtime's float
//!   executor; `f32-torch`: libtorch's CPU conv through tch, with `--features torch`).
//! * `resnet18/<bits>/packed` (the default plan), `resnet18/<bits>/packed-int8-dot` and
//!   `resnet18/<bits>/packed-bitserial` (that algorithm forced on every conv), seven bit pairs,
//!   and `resnet18/f32-*/float`: the whole network.
//! * `kernel/<kernel>/<bits>-<shape>`: one conv layer per kernel that can run it on this CPU
//!   (`PlanOptions::kernel`), W1A8 and W1A1 on the shapes where the planner's choice matters.
//!   `cargo bench --bench main -- kernel/` runs only these.
//!
//! Time is the thread's CPU time (see `benchmarks/cputime.rs`); throughput is conv MACs per ns. After
//! criterion's own report a markdown summary (median MAC/ns and speed-up over float) is
//! printed from criterion's saved estimates. Command: `cargo bench --bench main [--features
//! torch]`; `SLB_BENCH_QUICK=1` shortens the measurement further.

mod benchmarks;

use std::path::PathBuf;
use std::time::Duration;

use criterion::Criterion;

use benchmarks::cputime::CpuTime;
use benchmarks::{common, conv, kernels, network};

fn main() {
    #[cfg(feature = "torch")]
    tch::set_num_threads(1);
    let quick = std::env::var_os("SLB_BENCH_QUICK").is_some();
    let mut c = Criterion::default()
        .with_measurement(CpuTime)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(if quick { 200 } else { 500 }))
        .measurement_time(Duration::from_millis(if quick { 500 } else { 1500 }))
        .configure_from_args();
    conv::bench(&mut c);
    network::bench(&mut c);
    kernels::bench(&mut c);
    c.final_summary();
    summary();
}

/// Criterion's output folder (`CRITERION_HOME`, else `$CARGO_TARGET_DIR/criterion`, else
/// `target/criterion`).
fn criterion_dir() -> PathBuf {
    if let Some(h) = std::env::var_os("CRITERION_HOME") {
        return h.into();
    }
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => PathBuf::from(t).join("criterion"),
        None => PathBuf::from("target/criterion"),
    }
}

/// The median time in ns of a benchmark, from criterion's `estimates.json`.
fn median_ns(group: &str, func: &str, param: &str) -> Option<f64> {
    let p = criterion_dir()
        .join(group)
        .join(func)
        .join(param)
        .join("new/estimates.json");
    let text = std::fs::read_to_string(p).ok()?;
    let at = text.find("\"median\"")?;
    let rest = &text[at..];
    let at = rest.find("\"point_estimate\":")? + "\"point_estimate\":".len();
    let rest = &rest[at..];
    let end = rest.find([',', '}'])?;
    rest[..end].trim().parse().ok()
}

fn cell(macs: f64, ns: Option<f64>) -> String {
    ns.map_or("-".into(), |t| format!("{:.1}", macs / t))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format!("{:.1}x", b / a),
        _ => "-".into(),
    }
}

/// Prints the markdown tables of `docs/PERFORMANCE.md` from the saved estimates.
fn summary() {
    let float = if cfg!(feature = "torch") {
        "f32-torch"
    } else {
        "f32-inhouse"
    };
    println!("\n## Conv layers (median MAC/ns; speed-up over {float})\n");
    let mut head = String::from("| shape |");
    let mut rule = String::from("|---|");
    for (wb, ab) in conv::BITS {
        head += &format!(" W{wb}A{ab} |");
        rule += "---:|";
    }
    head += " f32-inhouse | f32-torch |";
    rule += "---:|---:|";
    for (wb, ab) in conv::BITS {
        head += &format!(" W{wb}A{ab}/f32 |");
        rule += "---:|";
    }
    println!("{head}\n{rule}");
    for (ch, s) in conv::STAGES {
        for k in conv::KERNELS {
            let name = conv::shape_name(ch, s, k);
            let macs = (ch as u64 * ch as u64 * (s * s) as u64 * (k as u64).pow(2)) as f64;
            let fl = median_ns("conv", float, &name);
            let mut line = format!("| {name} |");
            let mut ratios = String::new();
            for (wb, ab) in conv::BITS {
                let t = median_ns("conv", &format!("W{wb}A{ab}"), &name);
                line += &format!(" {} |", cell(macs, t));
                ratios += &format!(" {} |", ratio(t, fl));
            }
            line += &format!(
                " {} | {} |",
                cell(macs, median_ns("conv", "f32-inhouse", &name)),
                cell(macs, median_ns("conv", "f32-torch", &name))
            );
            println!("{line}{ratios}");
        }
    }
    kernel_summary();
    println!("\n## ResNet18-CIFAR, whole network (ms per image; speed-up over {float})\n");
    println!("| model | ms | MAC/ns | speed-up | conv weights |");
    println!("|---|---:|---:|---:|---:|");
    let fl = median_ns("resnet18", float, "float");
    for (wb, ab) in network::BITS {
        let bytes = network::net(wb, ab);
        let model = slb::format::Model::parse(&bytes).expect("parses");
        let macs = common::conv_macs(&model) as f64;
        let (packed, f32b) = common::conv_weight_bytes(&model);
        for plan in ["packed"].into_iter().chain(network::FORCED.map(|f| f.1)) {
            let t = median_ns("resnet18", &format!("W{wb}A{ab}"), plan);
            println!(
                "| W{wb}A{ab} {plan} | {} | {} | {} | {:.2} MB ({:.1}x smaller than f32) |",
                t.map_or("-".into(), |t| format!("{:.2}", t / 1e6)),
                cell(macs, t),
                ratio(t, fl),
                packed as f64 / 1e6,
                f32b as f64 / packed as f64
            );
        }
        if (wb, ab) == network::BITS[0] {
            for f in ["f32-inhouse", "f32-torch"] {
                let t = median_ns("resnet18", f, "float");
                println!(
                    "| {f} | {} | {} | 1.0x | {:.2} MB |",
                    t.map_or("-".into(), |t| format!("{:.2}", t / 1e6)),
                    cell(macs, t),
                    f32b as f64 / 1e6
                );
            }
        }
    }
}

/// The `kernel` group as one table per bit pair: median MAC/ns of each kernel per shape.
fn kernel_summary() {
    for (wb, ab) in kernels::BITS {
        let cases: Vec<(String, f64, Vec<slb::runtime::KernelKind>)> = kernels::SHAPES
            .iter()
            .map(|&(ch, s, k)| {
                let macs = (ch as u64 * ch as u64 * (s * s) as u64 * (k as u64).pow(2)) as f64;
                let kinds = kernels::kernels_for(&conv::model(ch, s, k, wb, ab));
                (kernels::case_name(wb, ab, ch, s, k), macs, kinds)
            })
            .collect();
        let mut kinds: Vec<slb::runtime::KernelKind> = Vec::new();
        for (_, _, ks) in &cases {
            for k in ks {
                if !kinds.contains(k) {
                    kinds.push(*k);
                }
            }
        }
        println!("\n## One conv layer per kernel, W{wb}A{ab} (median MAC/ns, whole layer)\n");
        let mut head = String::from("| shape |");
        let mut rule = String::from("|---|");
        for k in &kinds {
            head += &format!(" {} |", k.name());
            rule += "---:|";
        }
        println!("{head}\n{rule}");
        for (name, macs, ks) in &cases {
            let mut line = format!("| {name} |");
            for k in &kinds {
                let t = ks
                    .contains(k)
                    .then(|| median_ns("kernel", &k.name().replace('/', "-"), name))
                    .flatten();
                line += &format!(" {} |", cell(*macs, t));
            }
            println!("{line}");
        }
    }
}
