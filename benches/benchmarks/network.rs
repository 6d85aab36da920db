//! A whole ResNet18-CIFAR-shaped model with random packed weights: every bit pair with the
//! default plan and with each algorithm forced on every conv, and the float engines.

use criterion::{BenchmarkId, Criterion, Throughput};
use slb::format::Model;
use slb::runtime::{Algo, Engine, PlanOptions};
use slb::synth::{resnet18_cifar, Quant};

use super::common::{conv_macs, lazy_run, lazy_run_with};
use super::cputime::CpuTime;

/// Bit pairs of the whole-network runs.
pub const BITS: [(u8, u8); 7] = [(1, 8), (1, 1), (1, 2), (2, 2), (2, 8), (4, 4), (4, 8)];

/// The algorithm families forced on every conv besides the default plan (`packed`), named
/// as the benchmark's parameter: `packed-int8-dot`, `packed-bitserial`.
pub const FORCED: [(Algo, &str); 2] = [
    (Algo::Int8Dot, "packed-int8-dot"),
    (Algo::BitSerial, "packed-bitserial"),
];

/// The synthetic network of a bit pair (seed fixed).
pub fn net(wb: u8, ab: u8) -> Vec<u8> {
    resnet18_cifar(Quant::new(wb, ab, 11)).expect("synthetic resnet18")
}

pub fn bench(c: &mut Criterion<CpuTime>) {
    let mut g = c.benchmark_group("resnet18");
    // The conv MACs do not depend on the bits.
    let macs = conv_macs(&Model::parse(&net(1, 8)).expect("parses"));
    g.throughput(Throughput::Elements(macs));
    for &(wb, ab) in &BITS {
        g.bench_function(
            BenchmarkId::new(format!("W{wb}A{ab}"), "packed"),
            lazy_run(move || net(wb, ab), Engine::Packed),
        );
        for (algo, name) in FORCED {
            let opts = PlanOptions {
                force: Some(algo),
                ..PlanOptions::default()
            };
            g.bench_function(
                BenchmarkId::new(format!("W{wb}A{ab}"), name),
                lazy_run_with(move || net(wb, ab), Engine::Packed, opts),
            );
        }
    }
    g.bench_function(
        BenchmarkId::new("f32-inhouse", "float"),
        lazy_run(|| net(1, 8), Engine::Float),
    );
    #[cfg(feature = "torch")]
    {
        let mut t = None;
        g.bench_function(BenchmarkId::new("f32-torch", "float"), |b| {
            let t = t.get_or_insert_with(super::torch::ResNet18::new);
            b.iter(|| t.run())
        });
    }
    g.finish();
}
