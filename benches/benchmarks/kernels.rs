//! One conv layer per kernel: every kernel this CPU has that can run the layer, side by side
//! (`PlanOptions::kernel`), on the shapes where the planner's choice between them matters.
//! Each case is the whole single-conv model through `slb_runtime::run`, so a kernel's input
//! preparation (padding, bit packing, table building) and the requantization are counted.

use criterion::{BenchmarkId, Criterion, Throughput};
use slb::format::{Layer, Model};
use slb::runtime::{Engine, KernelKind, Plan, PlanOptions};

use super::common::lazy_run_with;
use super::conv::{model, shape_name};
use super::cputime::CpuTime;

/// `(channels, spatial size, kernel size)`: the ResNet18-CIFAR 3x3 shapes, two smaller maps
/// and a 1x1.
pub const SHAPES: [(u32, u32, u16); 7] = [
    (64, 32, 3),
    (64, 8, 3),
    (128, 16, 3),
    (128, 8, 3),
    (256, 8, 3),
    (512, 4, 3),
    (128, 16, 1),
];
/// Weight x activation bits.
pub const BITS: [(u8, u8); 4] = [(1, 8), (1, 2), (2, 2), (1, 1)];

/// The case's parameter name, e.g. `W1A8-c64-s32-k3`.
pub fn case_name(wb: u8, ab: u8, c: u32, s: u32, k: u16) -> String {
    format!("W{wb}A{ab}-{}", shape_name(c, s, k))
}

/// The kernels that run the single conv of `bytes` here: those the plan gives the conv when
/// asked for them (not the reference loop nest or the float kernels).
pub fn kernels_for(bytes: &[u8]) -> Vec<KernelKind> {
    let model = Model::parse(bytes).expect("synthetic model parses");
    let conv = model
        .layers
        .iter()
        .position(|l| matches!(l, Layer::Conv(_)))
        .expect("a conv");
    KernelKind::ALL
        .into_iter()
        .filter(|&k| k != KernelKind::Reference && k.algo().is_some())
        .filter(|&k| {
            let opts = PlanOptions {
                kernel: Some(k),
                ..PlanOptions::default()
            };
            Plan::with_options(&model, Engine::Packed, opts)
                .is_ok_and(|p| p.kernel(conv) == Some(k))
        })
        .collect()
}

pub fn bench(c: &mut Criterion<CpuTime>) {
    let mut g = c.benchmark_group("kernel");
    for (ch, s, k) in SHAPES {
        let macs = ch as u64 * ch as u64 * (s * s) as u64 * (k as u64).pow(2);
        g.throughput(Throughput::Elements(macs));
        for (wb, ab) in BITS {
            let bytes = model(ch, s, k, wb, ab);
            for kind in kernels_for(&bytes) {
                let opts = PlanOptions {
                    kernel: Some(kind),
                    ..PlanOptions::default()
                };
                g.bench_function(
                    BenchmarkId::new(kind.name().replace('/', "-"), case_name(wb, ab, ch, s, k)),
                    lazy_run_with(move || model(ch, s, k, wb, ab), Engine::Packed, opts),
                );
            }
        }
    }
    g.finish();
}
