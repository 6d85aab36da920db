//! A whole ResNet18-CIFAR-shaped model with random packed weights, packed vs float.

use criterion::{BenchmarkId, Criterion, Throughput};
use slb::runtime::Engine;

use super::common::{conv_macs, Ready};
use super::cputime::CpuTime;
use slb::synth::{resnet18_cifar, Quant};

/// Bit pairs of the whole-network runs.
pub const BITS: [(u8, u8); 2] = [(1, 8), (1, 1)];

pub fn bench(c: &mut Criterion<CpuTime>) {
    let mut g = c.benchmark_group("resnet18");
    for &(wb, ab) in &BITS {
        let bytes = resnet18_cifar(Quant::new(wb, ab, 11)).expect("synthetic resnet18");
        let mut r = Ready::new(&bytes, Engine::Packed, false);
        g.throughput(Throughput::Elements(conv_macs(&r.model)));
        g.bench_function(BenchmarkId::new(format!("W{wb}A{ab}"), "packed"), |b| {
            b.iter(|| r.run())
        });
    }
    let bytes = resnet18_cifar(Quant::new(1, 8, 11)).expect("synthetic resnet18");
    let mut r = Ready::new(&bytes, Engine::Float, false);
    g.throughput(Throughput::Elements(conv_macs(&r.model)));
    g.bench_function(BenchmarkId::new("f32-inhouse", "float"), |b| {
        b.iter(|| r.run())
    });
    #[cfg(feature = "torch")]
    {
        let t = super::torch::ResNet18::new();
        g.throughput(Throughput::Elements(conv_macs(&r.model)));
        g.bench_function(BenchmarkId::new("f32-torch", "float"), |b| {
            b.iter(|| t.run())
        });
    }
    g.finish();
}
