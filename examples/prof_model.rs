//! Times one packed model, one thread: `prof_model MODEL.slb [SECONDS]` (min and median of
//! batches of 20 runs, thread CPU ms per image). A harness for profiling (`perf record`; build it with
//! `--profile profiling` for line tables);
//! `KERNEL=name` plans every conv that kernel fits with it, `PLAN=1` prints the plan.
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
use slb_runtime::{run, Engine, KernelKind, Plan, PlanOptions};

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match profile(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

fn profile(args: &[String]) -> Result<(), String> {
    let path = args
        .first()
        .ok_or("usage: prof_model MODEL.slb [SECONDS]")?;
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let secs: f64 = match args.get(1) {
        None => 2.0,
        Some(s) => s
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v > 0.0)
            .ok_or_else(|| format!("SECONDS: {s:?} is not a positive number"))?,
    };
    let model = Model::parse(&bytes).map_err(|e| format!("{path}: {e}"))?;
    // `KERNEL=name` (e.g. `xnor-popcnt/avx2`) runs every conv that kernel fits with it.
    let kernel = match std::env::var("KERNEL") {
        Ok(name) => Some(
            KernelKind::ALL
                .into_iter()
                .find(|k| k.name() == name)
                .ok_or_else(|| format!("KERNEL: no kernel named {name:?}"))?,
        ),
        Err(_) => None,
    };
    let opts = PlanOptions {
        kernel,
        ..PlanOptions::default()
    };
    let plan =
        Plan::with_options(&model, Engine::Packed, opts).map_err(|e| format!("{path}: {e}"))?;
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
    let s = model.input.shape;
    let image: Vec<u8> = (0..(s.c * s.h * s.w) as usize)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let classes = model.tensor(model.output).map_or(0, |t| t.shape.c as usize);
    let mut logits = vec![0f32; classes];
    let mut infer =
        || run(&model, &plan, &mut arena, &image, &mut logits).map_err(|e| format!("{path}: {e}"));
    infer()?;
    let mut v = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed().as_secs_f64() < secs || v.is_empty() {
        let t = cpu_ms();
        for _ in 0..20 {
            infer()?;
        }
        v.push((cpu_ms() - t) / 20.0);
    }
    v.sort_by(f64::total_cmp);
    println!(
        "{path} min {:.3} ms median {:.3} ms logits[0] {}",
        v[0],
        v[v.len() / 2],
        logits.first().copied().unwrap_or(f32::NAN)
    );
    Ok(())
}
