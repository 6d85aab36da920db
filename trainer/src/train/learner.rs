//! The epoch loop, shaped as burn's `Learner`: [`run`] sets a run up (or resumes it) into a
//! [`Learner`], then each epoch trains its steps, evaluates (calibrating BatchNorm when the
//! schedule says so), checkpoints and reports through one sink ([`Report`]).

use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use tch::{nn, Device, Kind, Tensor};

use super::checkpoint::{checkpoint_path, Meta, Snapshot};
use super::eval::{bn_calibrate, evaluate_counts, with_bn_calibrated};
use super::optimizer::Sgd;
use super::profile::{profiled, Profiler, Trace};
use super::report::{EpochMetrics, Report};
use super::resume::{prepare_out, resume_from, DataId};
use super::sync::{sync_buffers, sync_start};
use super::{build, net_config};
use crate::algo::{SlbQuantAwareTraining, Temperature};
use crate::config::Config;
use crate::cuda::StepGraph;
use crate::data::{order, Augment, BatchSource, Dataset, DeviceData, Shard};
use crate::dist::Dist;
use crate::error::{Error, Result};
use crate::nn::net::{Ctx, Net};
use crate::nn::QuantMode;

/// Options of one training run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Output directory (checkpoint.ot, metrics.jsonl, config.toml).
    pub out: PathBuf,
    /// Training device.
    pub device: Device,
    /// Resume from `out/checkpoint.ot` if it exists.
    pub resume: bool,
    /// Stop after this many epochs in this run (the schedule continues on resume).
    pub stop_after: Option<i64>,
    /// Show a progress bar (only drawn on a terminal anyway).
    pub progress: bool,
    /// Profile this many training steps of each epoch (after a few warm-up steps; 0: off):
    /// the device is synchronised between phases, which slows those steps a little, and the
    /// means land in `EpochMetrics::profile`.
    pub profile_steps: i64,
    /// Record the profiled steps of the run's first epoch (CPU ops and CUDA kernels, with
    /// device times) into this Chrome trace file (libtorch's Kineto profiler).
    pub trace: Option<PathBuf>,
    /// This process's place in a data-parallel run (`None`: a single process). `batch_size`
    /// stays the global batch; only rank 0 writes (config, metrics, checkpoints).
    pub dist: Option<Rc<Dist>>,
}

/// The result of a run.
#[derive(Debug)]
pub struct RunSummary {
    /// Metrics of every epoch trained in this run.
    pub epochs: Vec<EpochMetrics>,
    /// The checkpoint written last.
    pub checkpoint: PathBuf,
}

/// A run's data: where its batches come from and what the network reads.
pub struct RunData {
    /// The training batches (shuffled each epoch).
    pub train: Rc<dyn BatchSource>,
    /// The test batches (in stored order).
    pub test: Box<dyn BatchSource>,
    /// Class names of the training data, in label order.
    pub classes: Vec<String>,
    /// Image side the network reads.
    pub image_size: i64,
    /// The augmentation and normalisation done on the device.
    pub aug: Augment,
}

impl RunData {
    /// In-memory datasets copied to `device`, augmented on it as `cfg` says.
    pub fn in_memory(cfg: &Config, train: &Dataset, test: &Dataset, device: Device) -> RunData {
        RunData {
            train: Rc::new(DeviceData::new(train, device)),
            test: Box::new(DeviceData::new(test, device)),
            classes: train.classes.clone(),
            image_size: cfg.resize.unwrap_or(train.height as i64),
            aug: Augment {
                pad: cfg.crop_pad,
                flip: cfg.flip,
                resize: cfg.resize,
                mean: cfg.normalization.mean(),
                std: cfg.normalization.std(),
            },
        }
    }
}

/// Trains `cfg` on `train` (evaluating on `test` after each epoch), writing a checkpoint every
/// epoch. `cfg` must have been validated with [`Config::algorithm`].
pub fn run(cfg: &Config, train: &Dataset, test: &Dataset, opts: &RunOptions) -> Result<RunSummary> {
    run_with(cfg, RunData::in_memory(cfg, train, test, opts.device), opts)
}

/// [`run`] on any [`RunData`] (the streaming loader's, for one).
pub fn run_with(cfg: &Config, data: RunData, opts: &RunOptions) -> Result<RunSummary> {
    let mut learner = Learner::new(cfg, data, opts)?;
    let mut summary = RunSummary {
        epochs: Vec::new(),
        checkpoint: learner.ckpt_path.clone(),
    };
    for epoch in learner.first..=learner.last {
        summary.epochs.push(learner.epoch(epoch)?);
    }
    if let Some(r) = &mut learner.report {
        r.finish()?;
    }
    Ok(summary)
}

/// A run's state between epochs: the network, its optimizer, the data and the sink.
struct Learner<'a> {
    cfg: Config,
    opts: &'a RunOptions,
    /// Class names of the training data, in label order.
    classes: Vec<String>,
    algo: SlbQuantAwareTraining,
    dev: Device,
    cuda: bool,
    /// bf16 activations (CUDA with `mixed_precision`).
    amp: bool,
    /// The fused kernels of the 8-bit nodes run (`fused_kernels`, probed on the device).
    fused: bool,
    /// Image side the network reads.
    image_size: i64,
    vs: nn::VarStore,
    net: Net,
    opt: Sgd,
    /// Optimizer steps done.
    step: i64,
    /// Whether the 8-bit ranges hold calibrated values.
    ranges_valid: bool,
    /// The training images (shared with an epoch's batch iterator, which outlives the
    /// steps' mutable borrows of the learner).
    train_data: Rc<dyn BatchSource>,
    test_data: Box<dyn BatchSource>,
    aug: Augment,
    steps_per_epoch: i64,
    /// The first and last epochs this run trains.
    first: i64,
    last: i64,
    ckpt_path: PathBuf,
    /// The sink (rank 0 of a data-parallel run only).
    report: Option<Report>,
    /// The data-parallel run this process is a rank of.
    dist: Option<Rc<Dist>>,
    /// The epoch's loss sum and correct count, on the device (zeroed in place each epoch: a
    /// captured step accumulates into these very tensors).
    loss_sum: Tensor,
    correct: Tensor,
    /// The training step as a CUDA graph (`cuda_graphs`), if on.
    graphs: Option<StepGraph>,
}

/// The first and last epoch a run trains: after the schedule's last trained one, to its end
/// (`epoch_size`, else `epochs`) or `stop_after` epochs on, whichever comes first.
fn epoch_span(algo: &SlbQuantAwareTraining, epochs: i64, stop_after: Option<i64>) -> (i64, i64) {
    let total = algo.epoch_size().unwrap_or(epochs);
    let first = algo.has_trained_epoch().unwrap_or(0) + 1;
    let last = match stop_after {
        Some(n) => (first + n - 1).min(total),
        None => total,
    };
    (first, last)
}

impl<'a> Learner<'a> {
    /// Sets a run up: the output folder, the checkpoint it resumes from (if any), the network,
    /// the optimizer, the data on the device, the sink.
    fn new(cfg: &Config, data: RunData, opts: &'a RunOptions) -> Result<Learner<'a>> {
        let mut cfg = cfg.clone();
        let dist = opts.dist.clone();
        let main = dist.as_ref().is_none_or(|d| d.is_main());
        let ckpt_path = if main {
            prepare_out(&opts.out)?
        } else {
            checkpoint_path(&opts.out)
        };
        let id = DataId {
            classes: &data.classes,
            image_size: data.image_size,
        };
        let resume = resume_from(&ckpt_path, opts.resume, &mut cfg, &id)?;
        let algo = cfg.algorithm()?;
        let dev = opts.device;
        let cuda = dev.is_cuda();
        if cuda {
            tch::Cuda::cudnn_set_benchmark(true);
        }
        tch::manual_seed(cfg.seed as i64);
        let classes = data.classes.len() as i64;
        let image_size = data.image_size;
        let vs = nn::VarStore::new(dev);
        let net = build(
            &algo,
            &vs,
            net_config(&cfg, classes, image_size),
            cfg.float_weights,
        );
        let mut opt = Sgd::new(&vs, cfg.momentum, cfg.nesterov, cfg.weight_decay)
            .with_logit_decay(cfg.logit_decay());
        let (step, ranges_valid) = match &resume {
            Some(ck) => {
                ck.restore(&vs)?;
                opt.load_state(&ck.tensors, &ck.path)?;
                (ck.meta.step, ck.meta.ranges_valid)
            }
            None => (0, cfg.enable_act_quant),
        };
        if let Some(d) = &dist {
            sync_start(d, &vs, &opt, step, dev)?;
        }
        if main {
            std::fs::write(opts.out.join("config.toml"), cfg.to_toml())
                .map_err(|e| Error::io("write", &opts.out.join("config.toml"), e))?;
        }
        let RunData {
            train: train_data,
            test: test_data,
            classes: class_names,
            aug,
            ..
        } = data;
        let world = dist.as_ref().map_or(1, |d| d.world);
        let steps_per_epoch =
            order::train_steps(train_data.len(), cfg.batch_size.max(1) as usize, world) as i64;
        let (first, last) = epoch_span(&algo, cfg.epochs, opts.stop_after);
        let report = if main {
            let total = algo.epoch_size().unwrap_or(cfg.epochs);
            Some(Report::new(
                &opts.out,
                ckpt_path.clone(),
                opts.progress,
                total,
            )?)
        } else {
            None
        };
        Ok(Learner {
            amp: cuda && cfg.mixed_precision,
            fused: fused_kernels(&cfg, opts.device, main),
            loss_sum: Tensor::zeros([], (Kind::Float, dev)),
            correct: Tensor::zeros([], (Kind::Int64, dev)),
            graphs: step_graphs(&cfg, opts, dist.as_deref()),
            cfg,
            opts,
            classes: class_names,
            algo,
            dev,
            cuda,
            image_size,
            vs,
            net,
            opt,
            step,
            ranges_valid,
            train_data,
            test_data,
            aug,
            steps_per_epoch,
            first,
            last,
            ckpt_path,
            report,
            dist,
        })
    }

    /// Trains, evaluates, checkpoints and reports epoch `epoch`; its record.
    fn epoch(&mut self, epoch: i64) -> Result<EpochMetrics> {
        let temp = self.algo.temperature(epoch);
        // Every epoch's randomness depends only on (seed, epoch): resuming reproduces it.
        // Ranks draw different augmentations (the single-process seed is rank 0's).
        let rank = self.dist.as_ref().map_or(0, |d| d.rank as i64);
        tch::manual_seed(
            (self.cfg.seed as i64)
                .wrapping_mul(1_000_003)
                .wrapping_add(epoch)
                .wrapping_add(rank.wrapping_mul(0x9E37_79B9)),
        );
        let mut m = self.train_steps(epoch, temp)?;
        if let Some(d) = &self.dist {
            sync_buffers(d, &self.vs)?;
        }
        self.evaluate_epoch(epoch, &mut m)?;
        self.checkpoint_and_report(m)
    }

    /// This process's part of the data (the whole of it outside a data-parallel run).
    fn shard(&self) -> Shard {
        self.dist.as_ref().map_or(Shard::single(), |d| Shard {
            rank: d.rank,
            world: d.world,
        })
    }

    /// The seed of epoch `epoch`'s shuffles (training batches, calibration batches).
    fn shuffle_seed(&self, epoch: i64) -> u64 {
        self.cfg.seed.wrapping_mul(7919).wrapping_add(epoch as u64)
    }

    /// One epoch's training steps at temperature `temp`: its record so far (the test figures
    /// not yet filled in). Stops the run on a non-finite loss.
    fn train_steps(&mut self, epoch: i64, temp: Temperature) -> Result<EpochMetrics> {
        if let Some(r) = &mut self.report {
            r.start_epoch(epoch, self.steps_per_epoch);
        }
        let t0 = Instant::now();
        // Zeroed in place: a captured step accumulates into these very tensors.
        let _ = self.loss_sum.zero_();
        let _ = self.correct.zero_();
        let mut seen = 0i64;
        let mut lr = self.cfg.lr_at(self.step, self.steps_per_epoch);
        let seed = self.shuffle_seed(epoch);
        let mut prof = Profiler::new(self.cuda.then(|| dev_index(self.dev)));
        let opts = self.opts;
        let path = opts.trace.as_deref().filter(|_| epoch == self.first);
        let mut trace = Trace::new(path, opts.profile_steps);
        let data = Rc::clone(&self.train_data);
        let shard = self.shard();
        let skipped = data.skipped();
        let batches = data
            .shard_epoch(self.cfg.batch_size, true, seed, shard)
            .filter(|(_, _, global)| order::trains(*global as usize, shard.world));
        for (i, (x, y, global)) in batches.enumerate() {
            let i = i as i64;
            prof.start(profiled(i, opts.profile_steps));
            trace.before_step(i)?;
            let n = y.size()[0];
            lr = self.train_step(&x, &y, global, temp, &mut prof)?;
            seen += n;
            if (i + 1) % self.cfg.log_every == 0 || i + 1 == self.steps_per_epoch {
                self.log_progress(epoch, i + 1, seen, t0, temp)?;
            }
        }
        trace.end_epoch(self.steps_per_epoch)?;
        if self.cuda {
            tch::Cuda::synchronize(dev_index(self.dev));
        }
        let sums = self.epoch_sums(seen, data.skipped() - skipped)?;
        if sums.seen == 0 && sums.skipped > 0 {
            return Err(Error::NothingTrained {
                epoch,
                skipped: sums.skipped,
            });
        }
        let (loss_sum, correct, seen) = (sums.loss, sums.correct, sums.seen);
        let secs = t0.elapsed().as_secs_f64();
        if let Some(r) = &mut self.report {
            r.end_steps();
        }
        let train_loss = loss_sum / seen.max(1) as f64;
        if !train_loss.is_finite() {
            return Err(self.non_finite(train_loss, epoch, self.steps_per_epoch));
        }
        Ok(EpochMetrics {
            epoch,
            temperature: temp.t,
            hard: temp.hard,
            lr,
            train_loss,
            train_top1: correct as f64 / seen.max(1) as f64,
            test_top1: 0.0,
            test_top5: 0.0,
            images_per_s: seen as f64 / secs,
            train_seconds: secs,
            eval_seconds: 0.0,
            checkpoint_seconds: 0.0,
            bn_calibrated: false,
            eval_bn_calibrated: false,
            profile: prof.report(),
            skipped_images: sums.skipped,
        })
    }

    /// The epoch's loss sum, correct count, images seen (`seen` here) and files skipped
    /// (`skipped` here), summed over the ranks of a data-parallel run.
    fn epoch_sums(&self, seen: i64, skipped: u64) -> Result<EpochSums> {
        let local = EpochSums {
            loss: self.loss_sum.double_value(&[]),
            correct: self.correct.int64_value(&[]),
            seen,
            skipped,
        };
        let Some(d) = &self.dist else {
            return Ok(local);
        };
        let t = Tensor::from_slice(&[
            local.loss,
            local.correct as f64,
            local.seen as f64,
            local.skipped as f64,
        ])
        .to_device(self.dev);
        d.all_reduce_sum(&t)?;
        Ok(EpochSums {
            loss: t.double_value(&[0]),
            correct: t.double_value(&[1]).round() as i64,
            seen: t.double_value(&[2]).round() as i64,
            skipped: t.double_value(&[3]).round() as u64,
        })
    }

    /// One training step on the batch `(x, y)` (this rank's part of a global batch of
    /// `global` images): augment, forward, loss, backward, the ranks' gradient sum (a
    /// data-parallel run), update and the metric sums, replayed from a CUDA graph when there
    /// is one. Returns the learning rate it used.
    fn train_step(
        &mut self,
        x: &Tensor,
        y: &Tensor,
        global: i64,
        temp: Temperature,
        prof: &mut Profiler,
    ) -> Result<f64> {
        let n = y.size()[0];
        if let Some(d) = self.dist.as_deref().filter(|_| n < 2) {
            // This rank's part of the global batch is (nearly) empty (its files were skipped):
            // too few images for a forward pass in training mode; its zero gradient still
            // joins the ranks' sum, so every rank takes the same step.
            let lr = self.cfg.lr_at(self.step, self.steps_per_epoch);
            self.opt.set_lr(lr);
            self.opt.all_reduce_grad(d)?;
            self.opt.apply();
            self.step += 1;
            return Ok(lr);
        }
        let cfg = &self.cfg;
        let ctx = Ctx {
            train: true,
            t: temp.t,
            hard: temp.hard,
            q: QuantMode {
                observe: cfg.enable_act_quant,
                quantize: cfg.enable_act_quant && self.step >= cfg.quant_delay,
                ema: cfg.ema,
                fused: self.fused,
            },
            amp: self.amp,
        };
        let mut xin = self.aug.train(x);
        if self.cuda && cfg.channels_last {
            xin = xin.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
        }
        prof.phase(0);
        let lr = cfg.lr_at(self.step, self.steps_per_epoch);
        self.opt.set_lr(lr);
        self.net.set_temperature(ctx.t);
        let (net, opt) = (&self.net, &mut self.opt);
        let (loss_sum, correct) = (&mut self.loss_sum, &mut self.correct);
        let smoothing = cfg.label_smoothing;
        let dist = self.dist.as_deref();
        let mut failed = None;
        let mut body = |x: &Tensor, y: &Tensor, prof: &mut Profiler| {
            let logits = net.forward(x, &ctx).to_kind(Kind::Float);
            let loss =
                logits.cross_entropy_loss::<Tensor>(y, None, tch::Reduction::Mean, -100, smoothing);
            prof.phase(1);
            match dist {
                // Weighted by this rank's share of the global batch: the ranks' gradients
                // then sum to the global batch's mean gradient.
                Some(d) => {
                    opt.backward(&(&loss * (n as f64 / global as f64)));
                    prof.phase(2);
                    if let Err(e) = opt.all_reduce_grad(d) {
                        failed = Some(e);
                    }
                }
                None => {
                    opt.backward(&loss);
                    prof.phase(2);
                }
            }
            prof.phase(3);
            opt.apply();
            prof.phase(4);
            tch::no_grad(|| {
                *loss_sum += loss.detach() * n as f64;
                *correct += logits.argmax(-1, false).eq_tensor(y).sum(Kind::Int64);
            });
            prof.phase(5);
        };
        // A full global batch: this rank's part has the same shape every step.
        let replayed = match self.graphs.as_mut() {
            Some(g) if global == cfg.batch_size => {
                g.step(&ctx, &xin, y, |x, y| body(x, y, &mut Profiler::new(None)))
            }
            _ => false,
        };
        if !replayed {
            body(&xin, y, prof);
        }
        if let Some(e) = failed {
            return Err(e);
        }
        self.step += 1;
        Ok(lr)
    }

    /// Every `log_every` steps, after step `done` of epoch `epoch` (`seen` images since `t0`):
    /// one host read for the NaN check and the progress bar.
    fn log_progress(
        &self,
        epoch: i64,
        done: i64,
        seen: i64,
        t0: Instant,
        temp: Temperature,
    ) -> Result<()> {
        let l = self.loss_sum.double_value(&[]) / seen as f64;
        if !l.is_finite() {
            return Err(self.non_finite(l, epoch, done));
        }
        let Some(report) = &self.report else {
            return Ok(());
        };
        report.progress(done as u64, || {
            let acc = self.correct.int64_value(&[]) as f64 / seen as f64;
            let ips = seen as f64 / t0.elapsed().as_secs_f64();
            format!(
                "loss {l:.4} acc {:.2}% T {:.3}{} {ips:.0} img/s",
                acc * 100.0,
                temp.t,
                if temp.hard { " hard" } else { "" }
            )
        });
        Ok(())
    }

    /// The error that stops a run whose loss became `value` at step `step` of epoch `epoch`.
    fn non_finite(&self, value: f64, epoch: i64, step: i64) -> Error {
        Error::NonFiniteLoss {
            value,
            epoch,
            step,
            checkpoint: self.ckpt_path.display().to_string(),
        }
    }

    /// The end of epoch `epoch`'s training: BatchNorm calibration when the schedule or the
    /// config asks for it, and the test figures, into `m`.
    fn evaluate_epoch(&mut self, epoch: i64, m: &mut EpochMetrics) -> Result<()> {
        let t_eval = Instant::now();
        let cfg = &self.cfg;
        let quant_now = cfg.enable_act_quant && self.step >= cfg.quant_delay;
        if quant_now {
            self.ranges_valid = true;
        }
        let seed = self.shuffle_seed(epoch);
        let dist = self.dist.as_deref();
        let shard = self.shard();
        // Each rank calibrates on its own augmentations; rank 0's statistics are kept.
        let calibrate_pass = || -> Result<i64> {
            let k = bn_calibrate(
                &self.net,
                &*self.train_data,
                &self.aug,
                cfg.batch_size,
                quant_now,
                self.amp,
                seed,
                cfg.bn_calibration_batches,
            );
            if let Some(d) = dist {
                for t in super::eval::bn_stats(&self.net) {
                    d.broadcast(&t, 0)?;
                }
            }
            Ok(k)
        };
        // Each rank evaluates its share of the test batches; the counts are summed.
        let eval = || -> Result<(f64, f64)> {
            let counts = evaluate_counts(
                &self.net,
                &*self.test_data,
                &self.aug,
                cfg.batch_size,
                cfg.enable_act_quant && self.ranges_valid,
                shard,
            );
            if let Some(d) = dist {
                d.all_reduce_sum(&counts)?;
            }
            let n = counts.int64_value(&[2]).max(1) as f64;
            Ok((
                counts.int64_value(&[0]) as f64 / n,
                counts.int64_value(&[1]) as f64 / n,
            ))
        };
        // Golden Stick calibrates in place after the temperature starts. Before that (and only
        // with enable_bn_calibration), the test figure still uses statistics measured for the
        // argmax weights, put back afterwards: the epoch line shows what export would give.
        let calibrate = self.algo.epoch_end_calibrates(epoch);
        let (top1, top5, eval_bn_calibrated) = if calibrate {
            let k = calibrate_pass()?;
            let (a, b) = eval()?;
            (a, b, k > 0)
        } else if cfg.enable_bn_calibration && !cfg.float_weights {
            let (r, k) = with_bn_calibrated(&self.net, calibrate_pass, eval);
            let (a, b) = r?;
            (a, b, k? > 0)
        } else {
            let (a, b) = eval()?;
            (a, b, false)
        };
        m.test_top1 = top1;
        m.test_top5 = top5;
        m.eval_seconds = t_eval.elapsed().as_secs_f64();
        m.bn_calibrated = calibrate;
        m.eval_bn_calibrated = eval_bn_calibrated;
        Ok(())
    }

    /// Checkpoints the epoch of record `m` and reports it.
    fn checkpoint_and_report(&mut self, m: EpochMetrics) -> Result<EpochMetrics> {
        let meta = Meta {
            version: 1,
            epoch: m.epoch,
            step: self.step,
            temperature: m.temperature,
            hard: m.hard,
            config: self.cfg.clone(),
            classes: self.classes.clone(),
            image_size: self.image_size,
            ranges_valid: self.ranges_valid,
        };
        let (path, vs, opt) = (&self.ckpt_path, &self.vs, &self.opt);
        match &mut self.report {
            Some(r) => r.epoch(m, || Snapshot::take(path, vs, Some(opt), &meta)),
            None => Ok(m),
        }
    }
}

/// An epoch's training sums (over every rank of a data-parallel run).
struct EpochSums {
    loss: f64,
    correct: i64,
    seen: i64,
    skipped: u64,
}

/// Whether the 8-bit nodes use the fused kernels: asked for (`fused_kernels`), on a CUDA device,
/// and compiled and loaded there. When they cannot run on a CUDA device, rank 0 says why in one
/// line and the run uses the libtorch ops (the same results).
fn fused_kernels(cfg: &Config, device: Device, main: bool) -> bool {
    if !cfg.fused_kernels || !device.is_cuda() || !cfg.enable_act_quant {
        return false;
    }
    match crate::nn::fused::probe(device) {
        Ok(()) => true,
        Err(why) => {
            if main {
                eprintln!("{}", fused_fallback_line(&why));
            }
            false
        }
    }
}

/// The one line that says the fused kernels are not used, and why.
pub(crate) fn fused_fallback_line(why: &str) -> String {
    format!("fused quantizer kernels off ({why}); the 8-bit nodes use libtorch's ops")
}

/// The training step's CUDA graphs, when the run asks for them and can have them (not with
/// Gloo, whose collectives run on the host).
fn step_graphs(cfg: &Config, opts: &RunOptions, dist: Option<&Dist>) -> Option<StepGraph> {
    if let Some(d) = dist.filter(|d| d.backend == crate::dist::Backend::Gloo) {
        if opts.device.is_cuda() && cfg.cuda_graphs && d.is_main() {
            eprintln!(
                "CUDA graphs off: Gloo's all-reduce runs on the host, between backward and update"
            );
        }
        return None;
    }
    if let Some(d) = dist.filter(|d| d.is_main()) {
        if opts.device.is_cuda() && cfg.cuda_graphs && opts.profile_steps == 0 {
            eprintln!(
                "all-reduce: {} inside the captured CUDA graph",
                d.backend.name()
            );
        }
    }
    if opts.device.is_cuda() && cfg.cuda_graphs && opts.profile_steps == 0 {
        if !crate::cuda::AVAILABLE {
            eprintln!("CUDA graphs off (this slb was built without them); training runs eagerly");
        }
        crate::cuda::AVAILABLE.then(|| StepGraph::new(dev_index(opts.device)))
    } else {
        None
    }
}

fn dev_index(d: Device) -> i64 {
    match d {
        Device::Cuda(i) => i as i64,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fused_kernels_only_on_a_cuda_device_that_runs_them() {
        assert!(Config::default().fused_kernels, "on by default");
        let cfg = Config {
            enable_act_quant: true,
            ..Config::default()
        };
        // Never on the CPU, and never when asked not to or with no activation nodes.
        assert!(!fused_kernels(&cfg, Device::Cpu, true));
        for off in [
            Config {
                fused_kernels: false,
                ..cfg.clone()
            },
            Config::default(),
        ] {
            assert!(!fused_kernels(&off, Device::Cuda(0), true));
        }
        // On a CUDA device: exactly when the probe compiles and loads them there (without a
        // GPU, as in CI, the probe fails and the run takes the libtorch ops).
        let cuda = Device::Cuda(0);
        assert_eq!(
            fused_kernels(&cfg, cuda, true),
            crate::nn::fused::probe(cuda).is_ok()
        );
        let line = fused_fallback_line("no CUDA device");
        assert!(
            line.contains("no CUDA device") && !line.contains('\n'),
            "{line}"
        );
    }
}
