//! Times one packed model, one thread: `prof_model MODEL.slb [SECONDS]` (min and median of
//! batches of 20 runs, thread CPU ms per image). A harness for profiling (`perf record`; build it with
//! `--profile profiling` for line tables);
//! `KERNEL=name` plans every conv that kernel fits with it, `PLAN=1` prints the plan,
//! `LAYERS=1` times each layer too (wall clock around each layer, `slb_runtime::run_observed`;
//! per layer the lowest and the median of its batch means, in us, and conv MAC/ns);
//! `IMAGE=file` runs on that image (raw HWC bytes of the model's input shape, e.g. a decoded
//! CIFAR-10 test JPEG) instead of a synthetic one: the table lookups' runs depend on the
//! activations.
use std::cell::Cell;
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

use slb_format::{Layer, Model};
use slb_runtime::{run_observed, Engine, KernelKind, LayerEvent, Plan, PlanOptions};

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
    let n = (s.c * s.h * s.w) as usize;
    let image: Vec<u8> = match std::env::var("IMAGE") {
        Ok(f) => {
            let v = std::fs::read(&f).map_err(|e| format!("{f}: {e}"))?;
            if v.len() != n {
                return Err(format!("{f}: {} bytes, the input takes {n}", v.len()));
            }
            v
        }
        Err(_) => (0..n).map(|i| (i * 7 % 251) as u8).collect(),
    };
    let classes = model.tensor(model.output).map_or(0, |t| t.shape.c as usize);
    let mut logits = vec![0f32; classes];
    // `LAYERS=1`: the wall-clock ns of each layer, summed over a batch (cells, so that the
    // observer and the batch loop can both reach them).
    let layers = std::env::var("LAYERS").is_ok();
    let spent: Vec<Cell<u64>> = vec![Cell::new(0); model.layers.len()];
    let started = Cell::new(Instant::now());
    let mut observe = |e: LayerEvent| match e {
        LayerEvent::Start(_) => started.set(Instant::now()),
        LayerEvent::End(l) => {
            if let Some(t) = spent.get(l as usize) {
                t.set(t.get() + started.get().elapsed().as_nanos() as u64);
            }
        }
    };
    let mut ignore = |_: LayerEvent| {};
    let observer: &mut dyn FnMut(LayerEvent) = if layers { &mut observe } else { &mut ignore };
    let mut infer = |observer: &mut dyn FnMut(LayerEvent)| {
        run_observed(&model, &plan, &mut arena, &image, &mut logits, observer)
            .map_err(|e| format!("{path}: {e}"))
    };
    infer(observer)?;
    spent.iter().for_each(|t| t.set(0));
    let mut v = Vec::new();
    // Per layer, the mean ns of each batch.
    let mut per_layer: Vec<Vec<f64>> = vec![Vec::new(); spent.len()];
    let t0 = Instant::now();
    while t0.elapsed().as_secs_f64() < secs || v.is_empty() {
        let t = cpu_ms();
        for _ in 0..20 {
            infer(observer)?;
        }
        v.push((cpu_ms() - t) / 20.0);
        for (l, t) in per_layer.iter_mut().zip(&spent) {
            l.push(t.replace(0) as f64 / 20.0);
        }
    }
    v.sort_by(f64::total_cmp);
    if layers {
        print_layers(&model, &plan, &mut per_layer);
    }
    println!(
        "{path} min {:.3} ms median {:.3} ms logits[0] {}",
        v[0],
        v[v.len() / 2],
        logits.first().copied().unwrap_or(f32::NAN)
    );
    Ok(())
}

/// Prints each layer's lowest and median batch mean (us), its kernel, and for convs the
/// multiply-adds per ns at the lowest.
fn print_layers(model: &Model<'_>, plan: &Plan, per_layer: &mut [Vec<f64>]) {
    println!("layer  kind  kernel  min us  median us  MAC/ns");
    for (i, (layer, t)) in model.layers.iter().zip(per_layer.iter_mut()).enumerate() {
        t.sort_by(f64::total_cmp);
        let (min, med) = (t[0] / 1e3, t[t.len() / 2] / 1e3);
        let (what, macs) = match layer {
            Layer::Conv(c) => {
                let out = model.tensor(c.output).map(|t| t.shape);
                let macs = out.map_or(0, |o| {
                    u64::from(o.c)
                        * u64::from(o.h)
                        * u64::from(o.w)
                        * u64::from(c.in_per_group())
                        * u64::from(c.kernel[0])
                        * u64::from(c.kernel[1])
                });
                let o = out.map_or((0, 0, 0), |o| (o.c, o.h, o.w));
                (
                    format!(
                        "conv {}->{} {}x{} k{} s{}",
                        c.in_channels, o.0, o.1, o.2, c.kernel[0], c.stride[0]
                    ),
                    macs,
                )
            }
            Layer::Dense(_) => ("dense".into(), 0),
            Layer::MaxPool(_) => ("max pool".into(), 0),
            Layer::AvgPool(_) => ("avg pool".into(), 0),
            Layer::GlobalAvgPool(_) => ("global avg pool".into(), 0),
            Layer::Add(_) => ("add".into(), 0),
            Layer::Relu(_) => ("relu".into(), 0),
            Layer::Flatten(_) => ("flatten".into(), 0),
        };
        let kernel = plan.kernel(i).map_or("-", |k| k.name());
        let rate = if macs > 0 && min > 0.0 {
            format!("{:.0}", macs as f64 / (min * 1e3))
        } else {
            String::new()
        };
        println!("{i:>3}  {what}  {kernel}  {min:.1}  {med:.1}  {rate}");
    }
}
