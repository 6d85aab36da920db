//! Times one packed model, one thread: `prof_model MODEL.slb [SECONDS]` (min and median of
//! batches of 20 runs, thread CPU ms per image). A harness for profiling (`perf record`).
use std::time::Instant;

/// This thread's CPU time in ms (waiting for a core on a shared machine is not counted).
fn cpu_ms() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}

use slb_format::Model;
use slb_runtime::{run, Engine, Plan, PlanOptions};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bytes = std::fs::read(&args[0]).expect("read model");
    let secs: f64 = args.get(1).map_or(2.0, |s| s.parse().unwrap());
    let model = Model::parse(&bytes).expect("parse");
    let plan = Plan::with_options(&model, Engine::Packed, PlanOptions::default()).expect("plan");
    if std::env::var("PLAN").is_ok() {
        println!(
            "arena {} B (weights {}, activations {}, scratch {})",
            plan.arena_bytes(),
            plan.weights_bytes(),
            plan.activation_peak_bytes(),
            plan.scratch_bytes()
        );
        for l in 0..plan.layers() {
            println!("{l}: {:?}", plan.kernel(l).map(|k| k.name()));
        }
    }
    let mut arena = vec![0u8; plan.arena_bytes()];
    let n_in: usize = {
        let s = model.input.shape;
        (s.c * s.h * s.w) as usize
    };
    let image: Vec<u8> = (0..n_in).map(|i| (i * 7 % 251) as u8).collect();
    let mut logits = vec![0f32; 10];
    run(&model, &plan, &mut arena, &image, &mut logits).unwrap();
    let mut v = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed().as_secs_f64() < secs {
        let t = cpu_ms();
        for _ in 0..20 {
            run(&model, &plan, &mut arena, &image, &mut logits).unwrap();
        }
        v.push((cpu_ms() - t) / 20.0);
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "{} min {:.3} ms median {:.3} ms logits[0] {}",
        args[0],
        v[0],
        v[v.len() / 2],
        logits[0]
    );
}
