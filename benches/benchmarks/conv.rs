//! ResNet18-CIFAR conv layer shapes: packed kernels against a float conv, one thread.

use criterion::{BenchmarkId, Criterion, Throughput};
use slb::runtime::Engine;

use super::common::lazy_run;
use super::cputime::CpuTime;
use slb::synth::{single_conv, ConvGeom, Quant};

/// `(channels, spatial size)` of the four ResNet18-CIFAR stages.
pub const STAGES: [(u32, u32); 4] = [(64, 32), (128, 16), (256, 8), (512, 4)];
/// Kernel sizes: the 3x3 body convs and 1x1 (downsample-like, stride 1 here).
pub const KERNELS: [u16; 2] = [3, 1];
/// Weight x activation bits.
pub const BITS: [(u8, u8); 4] = [(1, 1), (1, 8), (2, 8), (4, 8)];

/// The case name of a shape, e.g. `c64-s32-k3`.
pub fn shape_name(c: u32, s: u32, k: u16) -> String {
    format!("c{c}-s{s}-k{k}")
}

/// The single-conv model file of a shape and bit pair.
pub fn model(c: u32, s: u32, k: u16, wb: u8, ab: u8) -> Vec<u8> {
    single_conv(ConvGeom::square(c, c, s, k, 1), Quant::new(wb, ab, 7)).expect("synthetic conv")
}

pub fn bench(c: &mut Criterion<CpuTime>) {
    let mut g = c.benchmark_group("conv");
    for &(ch, s) in &STAGES {
        for &k in &KERNELS {
            let name = shape_name(ch, s, k);
            let macs = ch as u64 * ch as u64 * (s * s) as u64 * (k as u64).pow(2);
            g.throughput(Throughput::Elements(macs));
            for &(wb, ab) in &BITS {
                g.bench_function(
                    BenchmarkId::new(format!("W{wb}A{ab}"), &name),
                    lazy_run(move || model(ch, s, k, wb, ab), Engine::Packed),
                );
            }
            // The in-house float executor on the same graph (f32 activations and weights).
            g.bench_function(
                BenchmarkId::new("f32-inhouse", &name),
                lazy_run(move || model(ch, s, k, 1, 8), Engine::Float),
            );
            #[cfg(feature = "torch")]
            {
                let mut t = None;
                g.bench_function(BenchmarkId::new("f32-torch", &name), |b| {
                    let t = t.get_or_insert_with(|| super::torch::Conv::new(ch, s, k));
                    b.iter(|| t.run())
                });
            }
        }
    }
    g.finish();
}
