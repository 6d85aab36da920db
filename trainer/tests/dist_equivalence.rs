//! Data-parallel equivalence, without BatchNorm: 2 ranks x their shares of a global batch B
//! (c10d over Gloo, two CPU processes) end with the same weights as 1 process x B after
//! several steps of SGD with momentum and weight decay, to float tolerance.
//!
//! A test of its own harness (`harness = false`): the check is this program's `main`, which
//! starts two copies of itself as the ranks (`SLB_EQ_RANK_OUT` set), trains the single-process
//! reference meanwhile, and compares. The shards come from `DeviceData::shard_batches`, the
//! gradient sum from `Sgd::all_reduce_grad`, the weighting by each rank's share as in the
//! trainer; the global batch of 15 splits 8 + 7 and the last one (4 of 64) 2 + 2, so the weighting
//! matters.
//!
//! The same two ranks then check `train::sync_buffers` (what the trainer runs after each
//! epoch's steps): floating-point buffers become the ranks' mean, the others rank 0's.
mod common;

use std::path::Path;
use std::time::Duration;

use slb_trainer::data::{order, DeviceData, Shard};
use slb_trainer::dist::{Backend, Dist, Launch, Store};
use slb_trainer::train::{sync_buffers, Sgd};
use tch::{nn, Device, Kind, Tensor};

const BATCH: i64 = 15;
const EPOCHS: u64 = 2;

/// A BatchNorm-free SLB network: a 1-bit SLB conv (relaxed weights), ReLU, mean pool, dense.
fn model(vs: &nn::VarStore) -> (Tensor, Tensor, Tensor) {
    tch::manual_seed(11);
    let r = vs.root();
    let logits = (&r / "c").var(
        "logits",
        &[6, 3, 3, 3, 2],
        nn::Init::Randn {
            mean: 0.0,
            stdev: 0.5,
        },
    );
    let w = (&r / "dense").var(
        "weight",
        &[4, 6],
        nn::Init::Randn {
            mean: 0.0,
            stdev: 0.3,
        },
    );
    let b = (&r / "dense").var("bias", &[4], nn::Init::Const(0.0));
    (logits, w, b)
}

/// Trains `EPOCHS` epochs as rank `rank` of `world` (`dist` when `world > 1`); the final
/// trainable values, flattened.
fn train(rank: usize, world: usize, dist: Option<&Dist>) -> Vec<f64> {
    let data = DeviceData::new(&common::synthetic(64, 8, 4, 3), Device::Cpu);
    let vs = nn::VarStore::new(Device::Cpu);
    let (logits, w, b) = model(&vs);
    let mut opt = Sgd::new(&vs, 0.9, true, 5e-4);
    for epoch in 0..EPOCHS {
        let shard = Shard { rank, world };
        for (x, y, global) in data
            .shard_batches(BATCH, true, 77 + epoch, shard)
            .filter(|(_, _, g)| order::trains(*g as usize, world))
        {
            let n = y.size()[0];
            let x = x.permute([0, 3, 1, 2]).to_kind(Kind::Float) / 255.0;
            let wq = slb_trainer::nn::quant::relaxed_weight(&logits, 2.0, 1);
            let h = x
                .conv2d(&wq, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1)
                .relu()
                .mean_dim([2i64, 3].as_slice(), false, Kind::Float);
            let loss = h.linear(&w, Some(&b)).cross_entropy_for_logits(&y);
            match dist {
                Some(d) => {
                    opt.backward(&(loss * (n as f64 / global as f64)));
                    opt.all_reduce_grad(d).unwrap();
                }
                None => opt.backward(&loss),
            }
            opt.step(0.1);
        }
    }
    [&logits, &w, &b]
        .iter()
        .flat_map(|t| Vec::<f64>::try_from(t.flatten(0, -1).to_kind(Kind::Double)).unwrap())
        .collect()
}

fn worker(out: &Path) {
    let launch = Launch::from_env()
        .unwrap()
        .expect("RANK and WORLD_SIZE set");
    let d = Dist::init(&launch, Backend::Gloo, Duration::from_secs(60)).unwrap();
    let v = train(d.rank, d.world, Some(&d));
    let text: Vec<String> = v.iter().map(|x| format!("{x:e}")).collect();
    std::fs::write(out, text.join("\n")).unwrap();
    let b = rank_buffers(d.rank);
    sync_buffers(&d, &b).unwrap();
    std::fs::write(
        out.with_extension("buffers"),
        format!("{:?}", buffer_values(&b)),
    )
    .unwrap();
}

/// Buffers (not trained) of two dtypes whose values differ by rank, besides a trained
/// variable, which the sync must leave alone.
fn rank_buffers(rank: usize) -> nn::VarStore {
    let vs = nn::VarStore::new(Device::Cpu);
    let r = vs.root();
    let f = rank as f64;
    let mut mean = (&r / "bn").zeros_no_train("running_mean", &[5]);
    let mut max = (&r / "q").zeros_no_train("max", &[1]);
    let tracked = Tensor::from_slice(&[100 + rank as i64, 7 * rank as i64]);
    let _ = (&r / "bn").add("num_batches_tracked", tracked, false);
    let mut w = r.var("weight", &[3], nn::Init::Const(0.0));
    tch::no_grad(|| {
        mean.copy_(&(Tensor::arange(5, (Kind::Float, Device::Cpu)) + 10.0 * f));
        let _ = max.fill_(2.0 + 4.0 * f);
        let _ = w.fill_(f);
    });
    vs
}

/// The store's variables by name, as f64.
fn buffer_values(vs: &nn::VarStore) -> Vec<(String, Vec<f64>)> {
    let mut v: Vec<_> = vs
        .variables()
        .into_iter()
        .map(|(k, t)| (k, Vec::<f64>::try_from(t.to_kind(Kind::Double)).unwrap()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn main() {
    if let Ok(out) = std::env::var("SLB_EQ_RANK_OUT") {
        worker(Path::new(&out));
        return;
    }
    // `cargo test -- --list` and filters: this file has one check, named below.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("two_ranks_equal_one_big_batch: test");
        println!("sync_buffers_averages_floats_and_broadcasts_the_rest: test");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new("127.0.0.1", 0, true, 2, Duration::from_secs(60), "").unwrap();
    let exe = std::env::current_exe().unwrap();
    let ranks: Vec<_> = (0..2)
        .map(|r| {
            std::process::Command::new(&exe)
                .env("SLB_EQ_RANK_OUT", dir.path().join(format!("rank{r}")))
                .env("RANK", r.to_string())
                .env("WORLD_SIZE", "2")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", store.port().to_string())
                .env("TORCHELASTIC_USE_AGENT_STORE", "True")
                .env("OMP_NUM_THREADS", "1")
                .spawn()
                .unwrap()
        })
        .collect();
    let single = train(0, 1, None);
    for (r, mut c) in ranks.into_iter().enumerate() {
        assert!(c.wait().unwrap().success(), "rank {r} failed");
    }
    let read = |r: usize| -> Vec<f64> {
        std::fs::read_to_string(dir.path().join(format!("rank{r}")))
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect()
    };
    let (r0, r1) = (read(0), read(1));
    assert_eq!(r0, r1, "the ranks' weights differ");
    assert_eq!(r0.len(), single.len());
    let mut worst = 0f64;
    for (a, b) in r0.iter().zip(&single) {
        worst = worst.max((a - b).abs() / (1e-3 + b.abs()));
    }
    // The weights moved (the check is not of an untrained net) ...
    let vs = nn::VarStore::new(Device::Cpu);
    let (l0, _, _) = model(&vs);
    let moved = (l0.double_value(&[0, 0, 0, 0, 0]) - single[0]).abs();
    assert!(moved > 1e-3, "training did not move the weights ({moved})");
    // ... and agree to float rounding (summation order differs between the two).
    assert!(
        worst < 1e-4,
        "2 ranks vs 1: worst relative difference {worst}"
    );
    println!("test two_ranks_equal_one_big_batch ... ok (worst relative difference {worst:.2e})");
    // After `sync_buffers`: f32 buffers are the mean of rank 0's and rank 1's, the i64 one is
    // rank 0's, the trained weight is each rank's own.
    for r in 0..2 {
        let got = std::fs::read_to_string(dir.path().join(format!("rank{r}.buffers"))).unwrap();
        let want = format!(
            "{:?}",
            vec![
                ("bn.num_batches_tracked".to_string(), vec![100.0, 0.0]),
                ("bn.running_mean".to_string(), vec![5.0, 6.0, 7.0, 8.0, 9.0]),
                ("q.max".to_string(), vec![4.0]),
                ("weight".to_string(), vec![r as f64; 3]),
            ]
        );
        assert_eq!(got, want, "rank {r}'s buffers after sync_buffers");
    }
    println!("test sync_buffers_averages_floats_and_broadcasts_the_rest ... ok");
}
