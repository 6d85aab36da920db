//! `slb train`.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::config::Config;
use crate::data::{self, DeviceData, Split, StreamData, StreamOptions, Transform};
use crate::dist::{self, Backend, Dist, Launch};
use crate::export::export_checkpoint;
use crate::lock::{remove_stale_temps, OutLock};
use crate::train::{checkpoint_path, run_with, Checkpoint, RunData, RunOptions};

/// Arguments of `slb train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// TOML configuration (Golden Stick's keys plus the recipe).
    #[arg(long)]
    pub config: PathBuf,
    /// Override a configuration key: `--set KEY=VALUE` (repeatable; VALUE in TOML, or a bare
    /// string), e.g. `--set weight_quant_dtype=INT2 --set epochs=50`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Dataset: a CIFAR-10 binary folder, an image-folder tree or a .tar/.tar.xz of one.
    #[arg(long)]
    pub data: PathBuf,
    /// Output directory (checkpoint.ot, metrics.jsonl, config.toml, model.slb; .slb.lock, whose
    /// advisory lock makes a second run on the same folder refuse).
    #[arg(long, default_value = "runs/slb")]
    pub out: PathBuf,
    /// Training device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// Epochs (overrides the config's `epochs`).
    #[arg(long)]
    pub epochs: Option<i64>,
    /// Continue from OUT/checkpoint.ot (has_trained_epoch is taken from it).
    #[arg(long)]
    pub resume: bool,
    /// Train at most this many epochs in this run (resume later to continue the schedule).
    #[arg(long)]
    pub stop_after: Option<i64>,
    /// Do not export OUT/model.slb at the end.
    #[arg(long)]
    pub no_export: bool,
    /// Seed (overrides the config's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// libtorch intra-op CPU threads (default: libtorch's choice).
    #[arg(long)]
    pub threads: Option<i32>,
    /// Profile N training steps per epoch (after 3 warm-up steps): time per phase (augment,
    /// forward, backward, optimizer, metrics), host enqueue vs total with the device
    /// synchronised; printed and written to metrics.jsonl ("profile"). Profiled runs train
    /// eagerly (no CUDA graphs: phases cannot be timed inside one).
    #[arg(long, default_value_t = 0)]
    pub profile_steps: i64,
    /// With --profile-steps: record those steps of the first epoch (CPU ops, CUDA kernels and
    /// their device times) into this Chrome trace (`scripts/trace_summary.py` sums it up).
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Accept a test split whose class names differ from the training split's: test labels are
    /// matched by name and test images of classes the training split lacks are left out
    /// (without it, any difference is an error).
    #[arg(long)]
    pub allow_class_mismatch: bool,
    /// Data-parallel training on this node: start N ranks of this command (one per GPU with
    /// `--device cuda`, which then means cuda:LOCAL_RANK), hosting their rendezvous here.
    /// `batch_size` stays the global batch. Under torchrun (`torchrun --nproc-per-node N
    /// --no-python slb train ...`) leave it out: RANK, WORLD_SIZE, MASTER_ADDR, ... say it.
    #[arg(long, value_name = "N")]
    pub nproc: Option<usize>,
    /// Collective backend of a data-parallel run: nccl (the default on CUDA) or gloo (the
    /// default on the CPU; also takes CUDA tensors, through the host).
    #[arg(long, value_name = "BACKEND")]
    pub dist_backend: Option<String>,
    /// Seconds a data-parallel rank waits for the others (rendezvous, each collective) before
    /// the run stops with an error naming the ranks that did not answer.
    #[arg(long, value_name = "SECONDS", default_value_t = 600.0, value_parser = super::parse_seconds)]
    pub dist_timeout: f64,
}

/// Runs `slb train`. The configuration is validated before any data is read or any device
/// memory is touched.
pub fn main(a: &TrainArgs) -> Result<()> {
    let timeout = std::time::Duration::from_secs_f64(a.dist_timeout);
    let launch = Launch::from_env()?;
    if let Some(n) = a.nproc {
        if launch.is_some() {
            anyhow::bail!(
                "--nproc starts its own ranks: leave it out under torchrun (RANK and WORLD_SIZE \
                 are set)"
            );
        }
        // The configuration is checked once here, before any rank starts.
        Config::from_file_with(&a.config, &a.set)?.algorithm()?;
        return Ok(dist::launch_local(n, &args_without_nproc(), timeout)?);
    }
    let mut cfg = Config::from_file_with(&a.config, &a.set)?;
    if let Some(e) = a.epochs {
        cfg.epochs = e;
    }
    if let Some(s) = a.seed {
        cfg.seed = s;
    }
    check_run_flags(a)?;
    let algo = cfg.algorithm()?;
    let mut device = super::parse_device(&a.device)?;
    let dist = match &launch {
        Some(l) => Some(std::rc::Rc::new(join_ranks(
            l,
            a,
            &cfg,
            &mut device,
            timeout,
        )?)),
        None => {
            if a.dist_backend.is_some() {
                anyhow::bail!("--dist-backend is for data-parallel runs (--nproc, or torchrun)");
            }
            None
        }
    };
    let main_rank = dist.as_ref().is_none_or(|d| d.is_main());
    if let Some(t) = &a.trace {
        check_writable(t).with_context(|| format!("--trace {}", t.display()))?;
    }
    if let Some(t) = a.threads {
        tch::set_num_threads(t.max(1));
    }
    // Held until this command ends (the export included): a second run on this folder refuses.
    // Only rank 0 writes there.
    let _lock = if main_rank {
        Some(take_out_folder(a, &cfg, &algo, dist.as_deref())?)
    } else {
        None
    };
    let streamed = data::use_streaming(&a.data, cfg.streaming)
        .with_context(|| format!("loading {}", a.data.display()))?;
    let (run_data, train) = if streamed {
        (streaming_data(&cfg, a, device, main_rank)?, None)
    } else {
        let (d, t) = in_memory_data(&cfg, a, device, main_rank)?;
        (d, Some(t))
    };
    let opts = RunOptions {
        out: a.out.clone(),
        device,
        resume: a.resume,
        stop_after: a.stop_after,
        progress: true,
        profile_steps: a.profile_steps,
        trace: a.trace.clone(),
        dist,
    };
    let summary = run_with(&cfg, run_data, &opts)?;
    if !main_rank {
        return Ok(());
    }
    if let Some(m) = summary.epochs.last() {
        eprintln!(
            "done: epoch {} test top1 {:.2}% top5 {:.2}%; checkpoint {}",
            m.epoch,
            m.test_top1 * 100.0,
            m.test_top5 * 100.0,
            summary.checkpoint.display()
        );
    }
    if cfg.float_weights {
        eprintln!("float-weight baseline: nothing to export");
    } else if !a.no_export {
        export_run(&cfg, a, train.as_ref())?;
    }
    Ok(())
}

/// Rank 0's hold on the output folder (stale temporary files from a killed run removed), then
/// the run's lines: the algorithm and, data-parallel, the ranks.
fn take_out_folder(
    a: &TrainArgs,
    cfg: &Config,
    algo: &impl std::fmt::Display,
    dist: Option<&Dist>,
) -> Result<OutLock> {
    let l = OutLock::acquire(&a.out)?;
    remove_stale_temps(&a.out, "model.slb");
    eprintln!("{algo}");
    if let Some(d) = dist {
        eprintln!(
            "data-parallel: {} ranks over {}, global batch {} ({} per rank)",
            d.world,
            d.backend.name(),
            cfg.batch_size,
            cfg.batch_size / d.world as i64
        );
    }
    Ok(l)
}

/// The flags of one run that the configuration does not check: `--stop-after`,
/// `--profile-steps` and `--trace`.
fn check_run_flags(a: &TrainArgs) -> Result<()> {
    let max = crate::config::MAX_EPOCHS;
    if a.stop_after.is_some_and(|n| n <= 0 || n > max) {
        anyhow::bail!("--stop-after must be greater than 0 and at most {max}");
    }
    if !(0..=crate::config::MAX_COUNT).contains(&a.profile_steps) {
        anyhow::bail!(
            "--profile-steps must be 0 or more and at most {}",
            crate::config::MAX_COUNT
        );
    }
    if a.trace.is_some() && a.profile_steps == 0 {
        anyhow::bail!("--trace records the profiled steps: give --profile-steps N too");
    }
    Ok(())
}

/// This rank's part of a data-parallel run started by torchrun or `--nproc`: its GPU (the
/// local rank's, unless `--device` names one), the backend, the global batch checked against
/// the ranks, then the process group.
fn join_ranks(
    l: &Launch,
    a: &TrainArgs,
    cfg: &Config,
    device: &mut tch::Device,
    timeout: std::time::Duration,
) -> Result<Dist> {
    if *device == tch::Device::Cuda(0) && !a.device.contains(':') {
        *device = tch::Device::Cuda(l.local_rank);
    }
    let backend = match &a.dist_backend {
        Some(b) => Backend::parse(b)?,
        None => Backend::for_device(*device),
    };
    if l.world as i64 * 2 > cfg.batch_size {
        anyhow::bail!(
            "batch_size {} is the global batch: with {} ranks it must be at least {} \
             (two images per rank)",
            cfg.batch_size,
            l.world,
            l.world * 2
        );
    }
    Ok(Dist::init(l, backend, timeout)?)
}

/// Exports the run's last checkpoint to `model.slb` in the output folder (atomically),
/// calibrating the 8-bit activation ranges on training images when training did not measure
/// them (`train`: the in-memory training split; else the streamed one's first images).
fn export_run(cfg: &Config, a: &TrainArgs, train: Option<&data::Dataset>) -> Result<()> {
    let ck = Checkpoint::load(&checkpoint_path(&a.out))?;
    let calib = (!ck.meta.ranges_valid).then(|| match train {
        Some(t) => DeviceData::new(t, tch::Device::Cpu),
        None => {
            // The first images of the training split, through the evaluation transform.
            let n = (cfg.calibration_batches * cfg.batch_size).max(1) as usize;
            let (x, y) = streamed_calibration(cfg, a, n);
            DeviceData::from_tensors(&x, &y, tch::Device::Cpu)
        }
    });
    let ex = export_checkpoint(&ck, calib.as_ref())?;
    let path = a.out.join("model.slb");
    crate::train::write_atomic(&path, |p| {
        std::fs::write(p, &ex.bytes).map_err(|e| crate::Error::io("write", p, e))
    })?;
    eprintln!(
        "exported {} ({} bytes, {} SLB convs){}",
        path.display(),
        ex.bytes.len(),
        ex.convs,
        if ex.calibrated {
            "; 8-bit activation ranges calibrated on training images (activation quantization was off in training)"
        } else {
            ""
        }
    );
    Ok(())
}

/// The in-memory path: both splits decoded, the test split's classes matched to the training
/// split's; the run's data and the training set (for export's calibration).
fn in_memory_data(
    cfg: &Config,
    a: &TrainArgs,
    device: tch::Device,
    verbose: bool,
) -> Result<(RunData, data::Dataset)> {
    let load = |split| {
        let per_class = match split {
            Split::Train => cfg.train_per_class,
            Split::Test => cfg.test_per_class,
        };
        data::load_limited(&a.data, split, per_class)
            .with_context(|| format!("loading {}", a.data.display()))
    };
    let train = load(Split::Train)?;
    let mut test = load(Split::Test)?;
    let dropped = data::align_classes(
        &mut test,
        &train.classes,
        &format!("test split of {} vs its training split", a.data.display()),
        a.allow_class_mismatch,
    )?;
    if !dropped.is_empty() {
        eprintln!(
            "warning: test images of classes the training split lacks are left out: {}",
            dropped.join(", ")
        );
    }
    cfg.check_memory(cfg.resize.unwrap_or(train.height.max(train.width) as i64))?;
    if verbose {
        eprintln!(
            "data: {} training, {} test images, {} classes, {}x{}",
            train.len(),
            test.len(),
            train.classes.len(),
            train.height,
            train.width
        );
    }
    Ok((RunData::in_memory(cfg, &train, &test, device), train))
}

/// The streaming path: both splits of the image-folder tree listed (nothing decoded yet), the
/// test split's classes matched to the training split's by name.
fn streaming_data(
    cfg: &Config,
    a: &TrainArgs,
    device: tch::Device,
    verbose: bool,
) -> Result<RunData> {
    let side = cfg.resize.unwrap_or(224);
    cfg.check_memory(side)?;
    let opts = |transform| StreamOptions {
        transform,
        workers: cfg.data_workers.unwrap_or_else(default_workers),
        prefetch: cfg.prefetch_batches,
        device,
    };
    let open = |split, per_class, transform| {
        StreamData::open(&a.data, split, per_class, opts(transform))
            .with_context(|| format!("loading {}", a.data.display()))
    };
    let train = open(
        Split::Train,
        cfg.train_per_class,
        Transform::imagenet_train(side as u32),
    )?;
    let test = open(
        Split::Test,
        cfg.test_per_class,
        Transform::imagenet_eval(side as u32),
    )?;
    let test = match_classes(test, train.classes(), a)?;
    let workers = train.options().workers;
    if verbose {
        eprintln!(
        "data: streaming {} training, {} test images, {} classes, {side}x{side} crops, {workers} \
         decoding threads, {} batches ahead",
        train.files().len(),
        test.files().len(),
        train.classes().len(),
            cfg.prefetch_batches
        );
    }
    Ok(RunData {
        classes: train.classes().to_vec(),
        train: std::rc::Rc::new(train),
        test: Box::new(test),
        image_size: side,
        aug: data::Augment {
            pad: 0,
            flip: false,
            resize: None,
            mean: cfg.normalization.mean(),
            std: cfg.normalization.std(),
        },
    })
}

/// `test` relabelled so that label `i` means `train_classes[i]` (by name), as
/// [`data::align_classes`] does for an in-memory split.
fn match_classes(test: StreamData, train_classes: &[String], a: &TrainArgs) -> Result<StreamData> {
    if test.classes() == train_classes {
        return Ok(test);
    }
    let index: std::collections::HashMap<&str, i64> = train_classes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i as i64))
        .collect();
    let missing: Vec<String> = train_classes
        .iter()
        .filter(|n| !test.classes().contains(n))
        .cloned()
        .collect();
    let extra: Vec<String> = test
        .classes()
        .iter()
        .filter(|n| !index.contains_key(n.as_str()))
        .cloned()
        .collect();
    let none_shared = extra.len() == test.classes().len();
    let same_set = missing.is_empty() && extra.is_empty();
    if none_shared || !(a.allow_class_mismatch || same_set) {
        return Err(data::DataError::ClassMismatch {
            context: format!("test split of {} vs its training split", a.data.display()),
            missing,
            extra,
            none_shared,
        }
        .into());
    }
    if !extra.is_empty() {
        eprintln!(
            "warning: test images of classes the training split lacks are left out: {}",
            extra.join(", ")
        );
    }
    let files: Vec<_> = test
        .files()
        .iter()
        .filter_map(|(p, l)| {
            let name = test.classes().get(*l as usize)?;
            index.get(name.as_str()).map(|&nl| (p.clone(), nl))
        })
        .collect();
    Ok(StreamData::from_files(
        files,
        train_classes.to_vec(),
        test.options().clone(),
    )?)
}

/// `n` training images of a streamed tree (a fixed shuffled sample) through the evaluation
/// transform: the images export calibrates 8-bit ranges on.
fn streamed_calibration(cfg: &Config, a: &TrainArgs, n: usize) -> (tch::Tensor, tch::Tensor) {
    let side = cfg.resize.unwrap_or(224) as u32;
    let opts = StreamOptions {
        transform: Transform::imagenet_eval(side),
        workers: cfg.data_workers.unwrap_or_else(default_workers),
        prefetch: 1,
        device: tch::Device::Cpu,
    };
    match StreamData::open(&a.data, Split::Train, cfg.train_per_class, opts) {
        Ok(d) => {
            // A shuffled sample, not the first files (which are the first classes').
            let mut idx = data::order::permutation(d.files().len(), 0);
            idx.truncate(n);
            d.host_batch(&idx, 0)
        }
        Err(_) => (
            tch::Tensor::zeros(
                [0, side as i64, side as i64, 3],
                (tch::Kind::Uint8, tch::Device::Cpu),
            ),
            tch::Tensor::zeros([0], (tch::Kind::Int64, tch::Device::Cpu)),
        ),
    }
}

/// Decoding threads when `data_workers` is not set: every core.
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// This command's arguments without `--nproc N` (what each rank of `--nproc` runs).
fn args_without_nproc() -> Vec<std::ffi::OsString> {
    let mut out = Vec::new();
    let mut args = std::env::args_os().skip(1);
    while let Some(x) = args.next() {
        if x == "--nproc" {
            args.next();
        } else if !x.to_string_lossy().starts_with("--nproc=") {
            out.push(x);
        }
    }
    out
}

/// Checks before a run that `path` can be created (its folder exists and is writable), so a
/// run is not spent on a trace that cannot be written. A file already there is left alone.
fn check_writable(path: &std::path::Path) -> Result<()> {
    if path.is_dir() {
        anyhow::bail!("is a folder");
    }
    let existed = path.exists();
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot be written: {e}"))?;
    if !existed {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}
