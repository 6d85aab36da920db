//! The training loop: SGD with momentum, LR schedules, label smoothing, the temperature and BN
//! calibration callbacks, atomic checkpoints, resume, NaN stop, evaluation and JSONL metrics.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::algo::SlbQuantAwareTraining;
use crate::config::Config;
use crate::cuda::StepGraph;
use crate::data::{Augment, Dataset, DeviceData};
use crate::error::{Error, Result};
use crate::nn::net::{Ctx, Net, NetConfig};
use crate::nn::QuantMode;

/// What a checkpoint says besides its tensors (stored as JSON inside the checkpoint file).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// Checkpoint layout version.
    pub version: u32,
    /// Schedule epochs completed (has_trained_epoch for a resume).
    pub epoch: i64,
    /// Optimizer steps done.
    pub step: i64,
    /// Temperature of the last epoch trained.
    pub temperature: f64,
    /// Whether the last epoch trained with hard weights.
    pub hard: bool,
    /// The configuration the run used.
    pub config: Config,
    /// Class names, in label order.
    pub classes: Vec<String>,
    /// Image side the network reads.
    pub image_size: i64,
    /// Whether the 8-bit ranges hold calibrated values (trained with enable_act_quant, or
    /// calibrated by the exporter).
    pub ranges_valid: bool,
}

/// The network configuration a [`Config`] describes for `classes` classes at `image_size`.
pub fn net_config(cfg: &Config, classes: i64, image_size: i64) -> NetConfig {
    NetConfig {
        arch: cfg.model,
        num_classes: classes,
        width: cfg.width.unwrap_or(cfg.model.default_width()),
        image_size,
    }
}

/// Builds the network of a configuration: the algorithm's `apply`, or, with `float_weights`,
/// the same network with plain float convolutions (the float baseline).
pub fn build(
    algo: &SlbQuantAwareTraining,
    vs: &nn::VarStore,
    cfg: NetConfig,
    float_weights: bool,
) -> Net {
    if float_weights {
        Net::new(&vs.root(), cfg, 0, algo.act_quant_dtype().bits())
    } else {
        algo.apply(&vs.root(), cfg)
    }
}

/// SGD with momentum (optionally Nesterov) and weight decay on some variables, over one flat
/// buffer: every trainable variable of the store becomes a view into `flat` (decayed
/// variables first), so that a step is a handful of kernels over the whole network instead of
/// six per variable. tch 0.24 exposes no `_foreach_*`/`_fused_sgd_` op; this is the same
/// idea with plain tensor ops. The per-variable reference it must equal bit for bit is
/// `tests::RefSgd`.
#[derive(Debug)]
pub struct Sgd {
    /// `(name, variable, offset, numel)`, decayed variables first.
    vars: Vec<(String, Tensor, i64, i64)>,
    /// All trainable values (the variables are views into it).
    flat: Tensor,
    /// The momentum buffer, laid out as `flat`.
    buf: Tensor,
    /// The gradient of the last [`Sgd::backward`], laid out as `flat`.
    grad: Option<Tensor>,
    /// Zeros standing in for a variable that got no gradient (as long as the largest one).
    zeros: Tensor,
    /// The learning rate, a device scalar so that a captured step reads the current one.
    lr: Tensor,
    /// Elements of the decayed variables (the head of `flat`).
    n_decay: i64,
    /// Elements of the SLB logits (the head of the decayed part).
    n_logits: i64,
    momentum: f64,
    nesterov: bool,
    weight_decay: f64,
    /// The logits' weight decay ([`Sgd::with_logit_decay`]; default `weight_decay`).
    logit_decay: f64,
}

/// Whether a variable is an SLB conv's logits (decayed at `logit_weight_decay`).
pub fn is_logit(name: &str) -> bool {
    name.ends_with(".logits")
}

/// Whether a variable gets weight decay: conv logits and dense weights do, BatchNorm, biases
/// and quantizer parameters do not (as Golden Stick).
pub fn decays(name: &str) -> bool {
    name.ends_with(".logits") || name.ends_with("conv.weight") || name.ends_with("dense.weight")
}

impl Sgd {
    /// An optimizer over the trainable (f32) variables of `vs`. It moves their storage into one
    /// flat buffer (values kept): the store, and every module holding a variable, sees the
    /// same tensors as before.
    pub fn new(vs: &nn::VarStore, momentum: f64, nesterov: bool, weight_decay: f64) -> Sgd {
        let mut named: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        // Logits first, then the other decayed variables, then by name: the decay is one op
        // over the head of the buffer (two when the logits' rate differs).
        let group = |n: &str| (!is_logit(n), !decays(n));
        named.sort_by(|a, b| (group(&a.0), &a.0).cmp(&(group(&b.0), &b.0)));
        let total: i64 = named.iter().map(|(_, t)| t.numel() as i64).sum();
        let largest = named
            .iter()
            .map(|(_, t)| t.numel() as i64)
            .max()
            .unwrap_or(0);
        let n_decay = named
            .iter()
            .filter(|(n, _)| decays(n))
            .map(|(_, t)| t.numel() as i64)
            .sum();
        let n_logits = named
            .iter()
            .filter(|(n, _)| is_logit(n))
            .map(|(_, t)| t.numel() as i64)
            .sum();
        let opts = (Kind::Float, vs.device());
        let flat = Tensor::zeros([total], opts);
        let mut vars = Vec::with_capacity(named.len());
        let mut off = 0;
        tch::no_grad(|| {
            for (name, mut var) in named {
                let n = var.numel() as i64;
                let mut view = flat.narrow(0, off, n).view(var.size().as_slice());
                view.copy_(&var);
                var.set_data(&view);
                vars.push((name, var, off, n));
                off += n;
            }
        });
        Sgd {
            vars,
            buf: flat.zeros_like(),
            flat,
            grad: None,
            zeros: Tensor::zeros([largest], opts),
            lr: Tensor::zeros([], opts),
            n_decay,
            n_logits,
            momentum,
            nesterov,
            weight_decay,
            logit_decay: weight_decay,
        }
    }

    /// The same optimizer with weight decay `wd` on the SLB logits (the config's
    /// `logit_weight_decay`).
    pub fn with_logit_decay(mut self, wd: f64) -> Sgd {
        self.logit_decay = wd;
        self
    }

    /// Back-propagates `loss` into the optimizer's flat gradient (nothing accumulates in the
    /// variables' `.grad`, so there is nothing to zero). A variable without a gradient this
    /// step (the logits in the hard phase) gets zeros: it still sees momentum and weight
    /// decay, exactly as a zeroed gradient would, so a resumed run matches an uninterrupted one.
    pub fn backward(&mut self, loss: &Tensor) {
        let inputs: Vec<&Tensor> = self.vars.iter().map(|(_, v, _, _)| v).collect();
        let grads = Tensor::run_backward(&[loss], &inputs, false, false);
        let parts: Vec<Tensor> = grads
            .iter()
            .zip(&self.vars)
            .map(|(g, (_, _, _, n))| {
                if g.defined() {
                    g.reshape([-1])
                } else {
                    self.zeros.narrow(0, 0, *n)
                }
            })
            .collect();
        self.grad = Some(Tensor::cat(&parts, 0));
    }

    /// One step at learning rate `lr` with the gradient of the last [`Sgd::backward`] (none
    /// yet: a zero gradient): [`Sgd::set_lr`] then [`Sgd::apply`].
    pub fn step(&mut self, lr: f64) {
        self.set_lr(lr);
        self.apply();
    }

    /// Sets the learning rate the next [`Sgd::apply`] uses (in place, on the device).
    pub fn set_lr(&mut self, lr: f64) {
        // Rounded to f32 here (as the update would round a scalar): an out-of-range rate
        // becomes infinite, and the loss check then stops the run, instead of libtorch
        // refusing the fill.
        let _ = self.lr.fill_(lr as f32 as f64);
    }

    /// The update itself, reading the learning rate from the device: nothing in it comes from
    /// the host, so a CUDA graph can record it once.
    pub fn apply(&mut self) {
        tch::no_grad(|| {
            let g = match self.grad.take() {
                Some(g) => g,
                None => self.flat.zeros_like(),
            };
            // (offset, length, rate) of the decayed parts of the buffer's head.
            let parts = if self.logit_decay == self.weight_decay {
                [(0, self.n_decay, self.weight_decay), (0, 0, 0.0)]
            } else {
                [
                    (0, self.n_logits, self.logit_decay),
                    (
                        self.n_logits,
                        self.n_decay - self.n_logits,
                        self.weight_decay,
                    ),
                ]
            };
            for (off, len, wd) in parts {
                if wd > 0.0 && len > 0 {
                    let p = self.flat.narrow(0, off, len);
                    let _ = g.narrow(0, off, len).g_add_(&(p * wd));
                }
            }
            let _ = self.buf.g_mul_scalar_(self.momentum).g_add_(&g);
            let d = if self.nesterov {
                g + &self.buf * self.momentum
            } else {
                self.buf.shallow_clone()
            };
            let _ = self.flat.g_sub_(&(d * &self.lr));
        });
    }

    /// The momentum buffers, named `opt.<variable>` (views into the flat buffer).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.vars
            .iter()
            .map(|(n, v, off, len)| {
                let b = self.buf.narrow(0, *off, *len).view(v.size().as_slice());
                (format!("opt.{n}"), b)
            })
            .collect()
    }

    /// Restores the momentum buffers from named tensors.
    pub fn load_state(&mut self, named: &[(String, Tensor)], path: &Path) -> Result<()> {
        for (n, mut b) in self.state() {
            let t = named
                .iter()
                .find(|(k, _)| *k == n)
                .ok_or_else(|| Error::Checkpoint {
                    path: path.to_path_buf(),
                    msg: format!("missing optimizer state {n}"),
                })?;
            if t.1.size() != b.size() {
                return Err(Error::Checkpoint {
                    path: path.to_path_buf(),
                    msg: format!("{n}: shape {:?}, expected {:?}", t.1.size(), b.size()),
                });
            }
            tch::no_grad(|| b.copy_(&t.1));
        }
        Ok(())
    }
}

/// Ends the `--trace` recording of `steps` steps and writes it to `path`.
fn end_trace(path: &Path, tracing: &mut bool, steps: i64) -> Result<()> {
    *tracing = false;
    crate::cuda::trace_end(path).map_err(|e| Error::config(format!("--trace: {e}")))?;
    if !path.is_file() {
        return Err(Error::config(format!(
            "--trace: the profiler wrote no file at {}",
            path.display()
        )));
    }
    eprintln!("trace of {steps} steps: {}", path.display());
    Ok(())
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename,
/// fsync of the directory. A reader never sees a half-written file.
pub fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let written = write(&tmp).and_then(|()| {
        let f = std::fs::File::open(&tmp).map_err(|e| Error::io("open", &tmp, e))?;
        f.sync_all().map_err(|e| Error::io("fsync", &tmp, e))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| Error::io("rename", &tmp, e))
    });
    if let Err(e) = written {
        // A failed write leaves no temporary file behind.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A checkpoint's contents in host memory, detached from the training state: the network
/// variables, the optimizer state and the metadata, by name.
pub struct Snapshot {
    named: Vec<(String, Tensor)>,
}

impl Snapshot {
    /// Copies the variables, the optimizer state and `meta` to host memory (a copy even for a
    /// CPU run, which goes on updating its tensors in place). On CUDA the copy follows the
    /// step's work in stream order, so it holds the state at the end of the epoch.
    pub fn take(path: &Path, vs: &nn::VarStore, opt: Option<&Sgd>, meta: &Meta) -> Result<Self> {
        let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        if let Some(opt) = opt {
            named.extend(opt.state());
        }
        let mut named: Vec<(String, Tensor)> = named
            .into_iter()
            .map(|(n, t)| {
                let t = t.detach();
                let host = if t.device() == Device::Cpu {
                    t.copy()
                } else {
                    t.to_device(Device::Cpu)
                };
                (n, host)
            })
            .collect();
        let json = serde_json::to_vec(meta).map_err(|e| Error::Checkpoint {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        named.push(("meta".into(), Tensor::from_slice(&json)));
        named.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Snapshot { named })
    }

    /// Writes the snapshot to `path`, atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let bytes: u64 = self
            .named
            .iter()
            .map(|(_, t)| (t.numel() * t.kind().elt_size_in_bytes()) as u64)
            .sum();
        let dir = path.parent().unwrap_or(Path::new("."));
        crate::lock::check_free_space(dir, bytes + (1 << 20))?;
        write_atomic(path, |tmp| {
            Tensor::save_multi(&self.named, tmp).map_err(|e| Error::Checkpoint {
                path: path.to_path_buf(),
                msg: format!(
                    "cannot write it (is the disk full or the folder read-only?): {}",
                    crate::error::torch_message(&e)
                ),
            })
        })
    }
}

/// Saves the network variables, the optimizer state and `meta` in one file, atomically.
pub fn save_checkpoint(
    path: &Path,
    vs: &nn::VarStore,
    opt: Option<&Sgd>,
    meta: &Meta,
) -> Result<()> {
    Snapshot::take(path, vs, opt, meta)?.write(path)
}

/// Writes each epoch's checkpoint, then appends that epoch's metrics line, on a background
/// thread, one epoch at a time, so that the next epoch trains while the file is written and
/// synced (a ResNet-18 W1 checkpoint is 179 MB). The loop waits only for the copy to host
/// memory, and for the previous epoch's write if it still runs. The metrics line follows its
/// checkpoint's rename, so `metrics.jsonl` never runs ahead of the checkpoint a resume starts
/// from. Dropping the writer waits for the write in flight, so an error return (a NaN loss)
/// still leaves the last checkpoint complete; [`CheckpointWriter::finish`] reports its error.
struct CheckpointWriter {
    /// The metrics file (`None` while a write holds it).
    metrics: Option<std::fs::File>,
    metrics_path: PathBuf,
    path: PathBuf,
    inflight: Option<std::thread::JoinHandle<(std::fs::File, Result<()>)>>,
}

impl CheckpointWriter {
    fn new(path: PathBuf, metrics: std::fs::File, metrics_path: PathBuf) -> Self {
        CheckpointWriter {
            metrics: Some(metrics),
            metrics_path,
            path,
            inflight: None,
        }
    }

    /// Waits for the write in flight, if any; its error.
    fn finish(&mut self) -> Result<()> {
        let Some(h) = self.inflight.take() else {
            return Ok(());
        };
        let (f, r) = h.join().map_err(|_| Error::Checkpoint {
            path: self.path.clone(),
            msg: "the checkpoint writer thread panicked".into(),
        })?;
        self.metrics = Some(f);
        r
    }

    /// Waits for the previous write, then writes `snap` and appends `line` in the background.
    fn submit(&mut self, snap: Snapshot, line: String) -> Result<()> {
        self.finish()?;
        let Some(mut f) = self.metrics.take() else {
            return Err(Error::Checkpoint {
                path: self.path.clone(),
                msg: "the metrics file was lost with a failed write".into(),
            });
        };
        let (path, mpath) = (self.path.clone(), self.metrics_path.clone());
        self.inflight = Some(std::thread::spawn(move || {
            let r = snap.write(&path).and_then(|()| {
                writeln!(f, "{line}")
                    .and_then(|()| f.flush())
                    .map_err(|e| Error::io("write", &mpath, e))
            });
            (f, r)
        }));
        Ok(())
    }
}

impl Drop for CheckpointWriter {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// A loaded checkpoint: its named tensors (on the CPU) and its metadata.
pub struct Checkpoint {
    /// The file.
    pub path: PathBuf,
    /// Every tensor (variables and `opt.*` state).
    pub tensors: Vec<(String, Tensor)>,
    /// The metadata.
    pub meta: Meta,
}

impl Checkpoint {
    /// Reads a checkpoint file.
    pub fn load(path: &Path) -> Result<Checkpoint> {
        let ck = |msg: String| Error::Checkpoint {
            path: path.to_path_buf(),
            msg,
        };
        if !path.exists() {
            return Err(ck("no such file".into()));
        }
        let mut tensors = Tensor::load_multi_with_device(path, tch::Device::Cpu)
            .map_err(|e| ck(crate::error::torch_message(&e)))?;
        let pos = tensors
            .iter()
            .position(|(n, _)| n == "meta")
            .ok_or_else(|| ck("no metadata (not an slb checkpoint)".into()))?;
        let (_, m) = tensors.remove(pos);
        let bytes = Vec::<u8>::try_from(&m).map_err(|e| ck(crate::error::torch_message(&e)))?;
        let meta: Meta = serde_json::from_slice(&bytes).map_err(|e| ck(e.to_string()))?;
        Ok(Checkpoint {
            path: path.to_path_buf(),
            tensors,
            meta,
        })
    }

    /// Copies the stored variables into `vs` (every variable of `vs` must be present with the
    /// same shape).
    pub fn restore(&self, vs: &nn::VarStore) -> Result<()> {
        for (name, mut var) in vs.variables() {
            let t = self
                .tensors
                .iter()
                .find(|(n, _)| *n == name)
                .ok_or_else(|| Error::Checkpoint {
                    path: self.path.clone(),
                    msg: format!("missing variable {name} (different network?)"),
                })?;
            if t.1.size() != var.size() {
                return Err(Error::Checkpoint {
                    path: self.path.clone(),
                    msg: format!(
                        "{name}: shape {:?}, network expects {:?}",
                        t.1.size(),
                        var.size()
                    ),
                });
            }
            tch::no_grad(|| var.copy_(&t.1));
        }
        Ok(())
    }
}

/// Top-1 and top-5 accuracy (fractions) of `net` on `data`, in evaluation mode (hard weights,
/// BatchNorm running statistics, activation nodes quantizing when `quant`), always in f32:
/// the network exactly as it is exported, whose integer twin the packed runtime runs. (With
/// bf16 activations the trainer's figure came out 0.16 points above the packed model's on the
/// H100; with f32 evaluation the two had agreed exactly.)
pub fn evaluate(
    net: &Net,
    data: &DeviceData,
    aug: &Augment,
    batch: i64,
    quant: bool,
) -> (f64, f64) {
    let ctx = Ctx {
        train: false,
        t: 1.0,
        hard: true,
        q: QuantMode {
            observe: false,
            quantize: quant,
            ema: false,
        },
        amp: false,
    };
    let k = 5.min(net.cfg.num_classes);
    let dev = data.device();
    let mut top1 = Tensor::zeros([], (Kind::Int64, dev));
    let mut top5 = Tensor::zeros([], (Kind::Int64, dev));
    tch::no_grad(|| {
        for (x, y) in data.batches(batch, false, 0) {
            let logits = net.forward(&aug.eval(&x), &ctx);
            let (_, idx) = logits.topk(k, -1, true, true);
            let hit = idx.eq_tensor(&y.unsqueeze(1));
            top1 += hit.narrow(1, 0, 1).sum(Kind::Int64);
            top5 += hit.sum(Kind::Int64);
        }
    });
    let n = data.len().max(1) as f64;
    (
        top1.int64_value(&[]) as f64 / n,
        top5.int64_value(&[]) as f64 / n,
    )
}

/// The predicted class of every image of `data` (in order), in evaluation mode as
/// [`evaluate`].
pub fn predict(net: &Net, data: &DeviceData, aug: &Augment, batch: i64, quant: bool) -> Vec<i64> {
    let ctx = Ctx {
        train: false,
        t: 1.0,
        hard: true,
        q: QuantMode {
            observe: false,
            quantize: quant,
            ema: false,
        },
        amp: false,
    };
    let mut out = Vec::with_capacity(data.len());
    tch::no_grad(|| {
        for (x, _) in data.batches(batch, false, 0) {
            let p = net
                .forward(&aug.eval(&x), &ctx)
                .argmax(-1, false)
                .to_device(Device::Cpu);
            out.extend(Vec::<i64>::try_from(p).unwrap_or_default());
        }
    });
    out
}

/// One epoch's record in `metrics.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// Schedule epoch (1-based).
    pub epoch: i64,
    /// Temperature.
    pub temperature: f64,
    /// Hard weights in training.
    pub hard: bool,
    /// Learning rate at the epoch's last step.
    pub lr: f64,
    /// Mean training loss.
    pub train_loss: f64,
    /// Training top-1 (on augmented images).
    pub train_top1: f64,
    /// Test top-1.
    pub test_top1: f64,
    /// Test top-5.
    pub test_top5: f64,
    /// Training images per second.
    pub images_per_s: f64,
    /// Seconds of the training pass.
    pub train_seconds: f64,
    /// Seconds of the test evaluation after the training pass (and of the BatchNorm
    /// calibration pass, when there is one).
    #[serde(default)]
    pub eval_seconds: f64,
    /// Seconds the loop spent on this epoch's checkpoint: copying the state to host memory
    /// and waiting for the previous epoch's write, which runs in the background.
    #[serde(default)]
    pub checkpoint_seconds: f64,
    /// Whether BatchNorm was recalibrated after this epoch (in place, as Golden Stick).
    pub bn_calibrated: bool,
    /// Whether the test figures used BatchNorm statistics measured for the argmax weights
    /// (in place, or for the evaluation only before the temperature starts).
    #[serde(default)]
    pub eval_bn_calibrated: bool,
    /// Where a training step's time goes (`RunOptions::profile_steps`), if profiled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<StepProfile>,
}

/// Mean time per training step by phase, over the profiled steps of an epoch. The device is
/// synchronised at every phase boundary, so `total_ms` is the phase's own time; `host_ms` is
/// the part spent enqueueing it on the host before the synchronisation. A phase whose
/// `host_ms` is close to its `total_ms` is bound by the host (per-op launch overhead), one
/// with a much larger `total_ms` by the device.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StepProfile {
    /// Steps measured.
    pub steps: i64,
    /// One entry per phase: augment, forward (with the loss), backward (into the optimizer's
    /// flat gradient), optimizer, metrics.
    pub phases: Vec<PhaseTime>,
}

/// One phase of [`StepProfile`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PhaseTime {
    /// Phase name.
    pub name: String,
    /// Mean host time to enqueue the phase, ms.
    pub host_ms: f64,
    /// Mean time of the phase including the device's work, ms.
    pub total_ms: f64,
}

/// The step phases [`StepProfile`] reports.
const PHASES: [&str; 5] = ["augment", "forward", "backward", "optimizer", "metrics"];

/// Times the phases of profiled steps (a no-op when off).
struct Profiler {
    on: bool,
    cuda: Option<i64>,
    last: Instant,
    host: [f64; PHASES.len()],
    total: [f64; PHASES.len()],
    steps: i64,
}

impl Profiler {
    fn new(cuda: Option<i64>) -> Profiler {
        Profiler {
            on: false,
            cuda,
            last: Instant::now(),
            host: [0.0; PHASES.len()],
            total: [0.0; PHASES.len()],
            steps: 0,
        }
    }

    fn sync(&self) {
        if let Some(d) = self.cuda {
            tch::Cuda::synchronize(d);
        }
    }

    /// Starts a step (profiled if `on`).
    fn start(&mut self, on: bool) {
        self.on = on;
        if on {
            self.sync();
            self.last = Instant::now();
        }
    }

    /// Ends phase `k` of the current step.
    fn phase(&mut self, k: usize) {
        if !self.on {
            return;
        }
        let host = self.last.elapsed().as_secs_f64();
        self.sync();
        let total = self.last.elapsed().as_secs_f64();
        self.host[k] += host;
        self.total[k] += total;
        if k + 1 == PHASES.len() {
            self.steps += 1;
        }
        self.last = Instant::now();
    }

    /// The means so far, `None` if no step was profiled.
    fn report(&self) -> Option<StepProfile> {
        (self.steps > 0).then(|| StepProfile {
            steps: self.steps,
            phases: PHASES
                .iter()
                .enumerate()
                .map(|(k, name)| PhaseTime {
                    name: name.to_string(),
                    host_ms: self.host[k] * 1e3 / self.steps as f64,
                    total_ms: self.total[k] * 1e3 / self.steps as f64,
                })
                .collect(),
        })
    }
}

/// Steps skipped at the start of an epoch before profiling (cuDNN's algorithm search, caches).
const PROFILE_WARMUP: i64 = 3;

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
}

/// The result of a run.
#[derive(Debug)]
pub struct RunSummary {
    /// Metrics of every epoch trained in this run.
    pub epochs: Vec<EpochMetrics>,
    /// The checkpoint written last.
    pub checkpoint: PathBuf,
}

/// The checkpoint file of an output directory.
pub fn checkpoint_path(out: &Path) -> PathBuf {
    out.join("checkpoint.ot")
}

/// Trains `cfg` on `train` (evaluating on `test` after each epoch), writing a checkpoint every
/// epoch. `cfg` must have been validated with [`Config::algorithm`].
pub fn run(cfg: &Config, train: &Dataset, test: &Dataset, opts: &RunOptions) -> Result<RunSummary> {
    let mut cfg = cfg.clone();
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io("create", &opts.out, e))?;
    let ckpt_path = checkpoint_path(&opts.out);
    // A stale temporary file from a killed run is never a checkpoint: remove it.
    if let Ok(rd) = std::fs::read_dir(&opts.out) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n.starts_with(".checkpoint.ot.tmp") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let resume = if opts.resume && ckpt_path.exists() {
        let ck = Checkpoint::load(&ckpt_path)?;
        check_resume(&ck, &cfg, train)?;
        cfg.has_trained_epoch = Some(ck.meta.epoch);
        Some(ck)
    } else {
        None
    };
    let algo = cfg.algorithm()?;
    let dev = opts.device;
    let cuda = dev.is_cuda();
    if cuda {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    tch::manual_seed(cfg.seed as i64);
    let classes = train.classes.len() as i64;
    let image_size = cfg.resize.unwrap_or(train.height as i64);
    let vs = nn::VarStore::new(dev);
    let net = build(
        &algo,
        &vs,
        net_config(&cfg, classes, image_size),
        cfg.float_weights,
    );
    let mut opt = Sgd::new(&vs, cfg.momentum, cfg.nesterov, cfg.weight_decay)
        .with_logit_decay(cfg.logit_decay());
    let mut step = 0i64;
    let mut ranges_valid = cfg.enable_act_quant;
    if let Some(ck) = &resume {
        ck.restore(&vs)?;
        opt.load_state(&ck.tensors, &ck.path)?;
        step = ck.meta.step;
        ranges_valid = ck.meta.ranges_valid;
    }
    std::fs::write(opts.out.join("config.toml"), cfg.to_toml())
        .map_err(|e| Error::io("write", &opts.out.join("config.toml"), e))?;
    let train_data = DeviceData::new(train, dev);
    let test_data = DeviceData::new(test, dev);
    let aug = Augment {
        pad: cfg.crop_pad,
        flip: cfg.flip,
        resize: cfg.resize,
        ..Augment::cifar()
    };
    let amp = cuda && cfg.mixed_precision;
    let steps_per_epoch = (train_data.len() as i64 + cfg.batch_size - 1) / cfg.batch_size;
    let total = algo.epoch_size().unwrap_or(cfg.epochs);
    let first = algo.has_trained_epoch().unwrap_or(0) + 1;
    let last = match opts.stop_after {
        Some(n) => (first + n - 1).min(total),
        None => total,
    };
    let metrics_path = opts.out.join("metrics.jsonl");
    let metrics_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|e| Error::io("open", &metrics_path, e))?;
    let mut writer = CheckpointWriter::new(ckpt_path.clone(), metrics_file, metrics_path);
    let show = opts.progress && std::io::stderr().is_terminal();
    let mut summary = RunSummary {
        epochs: Vec::new(),
        checkpoint: ckpt_path.clone(),
    };
    let mut loss_sum = Tensor::zeros([], (Kind::Float, dev));
    let mut correct = Tensor::zeros([], (Kind::Int64, dev));
    let mut tracing = false;
    let mut graphs = if cuda && cfg.cuda_graphs && opts.profile_steps == 0 {
        if !crate::cuda::AVAILABLE {
            eprintln!("CUDA graphs off (this slb was built without them); training runs eagerly");
        }
        crate::cuda::AVAILABLE.then(|| StepGraph::new(dev_index(dev)))
    } else {
        None
    };
    for epoch in first..=last {
        let temp = algo.temperature(epoch);
        // Every epoch's randomness depends only on (seed, epoch): resuming reproduces it.
        tch::manual_seed(
            (cfg.seed as i64)
                .wrapping_mul(1_000_003)
                .wrapping_add(epoch),
        );
        let bar = if show {
            let b = indicatif::ProgressBar::new(steps_per_epoch as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "epoch {prefix} [{bar:30}] {pos}/{len} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_prefix(format!("{epoch}/{total}"));
            Some(b)
        } else {
            None
        };
        let t0 = Instant::now();
        // Zeroed in place: a captured step accumulates into these very tensors.
        let _ = loss_sum.zero_();
        let _ = correct.zero_();
        let mut seen = 0i64;
        let mut lr = cfg.lr_at(step, steps_per_epoch);
        let seed = cfg.seed.wrapping_mul(7919).wrapping_add(epoch as u64);
        let mut prof = Profiler::new(cuda.then(|| dev_index(dev)));
        for (i, (x, y)) in train_data.batches(cfg.batch_size, true, seed).enumerate() {
            let i64i = i as i64;
            prof.start(i64i >= PROFILE_WARMUP && i64i < PROFILE_WARMUP + opts.profile_steps);
            if let Some(path) = opts.trace.as_ref().filter(|_| epoch == first) {
                if i64i == PROFILE_WARMUP {
                    crate::cuda::trace_begin()
                        .map_err(|e| Error::config(format!("--trace: {e}")))?;
                    tracing = true;
                } else if tracing && i64i == PROFILE_WARMUP + opts.profile_steps {
                    end_trace(path, &mut tracing, i64i - PROFILE_WARMUP)?;
                }
            }
            let active = cfg.enable_act_quant && step >= cfg.quant_delay;
            let ctx = Ctx {
                train: true,
                t: temp.t,
                hard: temp.hard,
                q: QuantMode {
                    observe: cfg.enable_act_quant,
                    quantize: active,
                    ema: cfg.ema,
                },
                amp,
            };
            let mut xin = aug.train(&x);
            if cuda && cfg.channels_last {
                xin = xin.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
            }
            prof.phase(0);
            lr = cfg.lr_at(step, steps_per_epoch);
            opt.set_lr(lr);
            net.set_temperature(ctx.t);
            let n = y.size()[0];
            let mut body = |x: &Tensor, y: &Tensor, prof: &mut Profiler| {
                let logits = net.forward(x, &ctx).to_kind(Kind::Float);
                let loss = logits.cross_entropy_loss::<Tensor>(
                    y,
                    None,
                    tch::Reduction::Mean,
                    -100,
                    cfg.label_smoothing,
                );
                prof.phase(1);
                opt.backward(&loss);
                prof.phase(2);
                opt.apply();
                prof.phase(3);
                tch::no_grad(|| {
                    loss_sum += loss.detach() * n as f64;
                    correct += logits.argmax(-1, false).eq_tensor(y).sum(Kind::Int64);
                });
                prof.phase(4);
            };
            let replayed = match graphs.as_mut() {
                Some(g) if n == cfg.batch_size => {
                    g.step(&ctx, &xin, &y, |x, y| body(x, y, &mut Profiler::new(None)))
                }
                _ => false,
            };
            if !replayed {
                body(&xin, &y, &mut prof);
            }
            step += 1;
            seen += n;
            if (i as i64 + 1) % cfg.log_every == 0 || i as i64 + 1 == steps_per_epoch {
                // One host read every log_every steps: the progress bar and the NaN check.
                let l = loss_sum.double_value(&[]) / seen as f64;
                if !l.is_finite() {
                    return Err(Error::NonFiniteLoss {
                        value: l,
                        epoch,
                        step: i as i64 + 1,
                        checkpoint: ckpt_path.display().to_string(),
                    });
                }
                if let Some(b) = &bar {
                    let acc = correct.int64_value(&[]) as f64 / seen as f64;
                    let ips = seen as f64 / t0.elapsed().as_secs_f64();
                    b.set_position(i as u64 + 1);
                    b.set_message(format!(
                        "loss {l:.4} acc {:.2}% T {:.3}{} {ips:.0} img/s",
                        acc * 100.0,
                        temp.t,
                        if temp.hard { " hard" } else { "" }
                    ));
                }
            }
        }
        if let Some(path) = opts.trace.as_ref().filter(|_| tracing) {
            // An epoch shorter than the profiled steps: the trace ends with it.
            end_trace(path, &mut tracing, steps_per_epoch - PROFILE_WARMUP)?;
        }
        if cuda {
            tch::Cuda::synchronize(dev_index(dev));
        }
        let secs = t0.elapsed().as_secs_f64();
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let train_loss = loss_sum.double_value(&[]) / seen.max(1) as f64;
        if !train_loss.is_finite() {
            return Err(Error::NonFiniteLoss {
                value: train_loss,
                epoch,
                step: steps_per_epoch,
                checkpoint: ckpt_path.display().to_string(),
            });
        }
        let t_eval = Instant::now();
        let quant_now = cfg.enable_act_quant && step >= cfg.quant_delay;
        if quant_now {
            ranges_valid = true;
        }
        let calibrate_pass = || {
            bn_calibrate(
                &net,
                &train_data,
                &aug,
                cfg.batch_size,
                quant_now,
                amp,
                seed,
                cfg.bn_calibration_batches,
            )
        };
        let eval = || {
            evaluate(
                &net,
                &test_data,
                &aug,
                cfg.batch_size,
                cfg.enable_act_quant && ranges_valid,
            )
        };
        // Golden Stick calibrates in place after the temperature starts. Before that (and only
        // with enable_bn_calibration), the test figure still uses statistics measured for the
        // argmax weights, put back afterwards: the epoch line shows what export would give.
        let calibrate = algo.epoch_end_calibrates(epoch);
        let (top1, top5, eval_bn_calibrated) = if calibrate {
            let k = calibrate_pass();
            let (a, b) = eval();
            (a, b, k > 0)
        } else if cfg.enable_bn_calibration && !cfg.float_weights {
            let ((a, b), k) = with_bn_calibrated(&net, calibrate_pass, eval);
            (a, b, k > 0)
        } else {
            let (a, b) = eval();
            (a, b, false)
        };
        let eval_seconds = t_eval.elapsed().as_secs_f64();
        let mut m = EpochMetrics {
            epoch,
            temperature: temp.t,
            hard: temp.hard,
            lr,
            train_loss,
            train_top1: correct.int64_value(&[]) as f64 / seen.max(1) as f64,
            test_top1: top1,
            test_top5: top5,
            images_per_s: seen as f64 / secs,
            train_seconds: secs,
            eval_seconds,
            checkpoint_seconds: 0.0,
            bn_calibrated: calibrate,
            eval_bn_calibrated,
            profile: prof.report(),
        };
        if let Some(p) = &m.profile {
            eprintln!(
                "epoch {epoch}: step profile over {} steps (ms, host / total):",
                p.steps
            );
            for ph in &p.phases {
                eprintln!(
                    "  {:<10} {:>8.3} / {:>8.3}",
                    ph.name, ph.host_ms, ph.total_ms
                );
            }
        }
        let meta = Meta {
            version: 1,
            epoch,
            step,
            temperature: temp.t,
            hard: temp.hard,
            config: cfg.clone(),
            classes: train.classes.clone(),
            image_size,
            ranges_valid,
        };
        let t_ck = Instant::now();
        let snap = Snapshot::take(&ckpt_path, &vs, Some(&opt), &meta)?;
        writer.finish()?;
        m.checkpoint_seconds = t_ck.elapsed().as_secs_f64();
        let line = serde_json::to_string(&m).unwrap_or_default();
        writer.submit(snap, line)?;
        eprintln!(
            "epoch {epoch}/{total}: T {:.4}{} lr {lr:.5} loss {train_loss:.4} train {:.2}% test top1 {:.2}% top5 {:.2}%{} {:.1}s {:.0} img/s",
            temp.t,
            if temp.hard { " (hard)" } else { "" },
            m.train_top1 * 100.0,
            top1 * 100.0,
            top5 * 100.0,
            if eval_bn_calibrated {
                " (BN calibrated)"
            } else {
                ""
            },
            secs,
            m.images_per_s
        );
        summary.epochs.push(m);
    }
    writer.finish()?;
    Ok(summary)
}

/// Whether the checkpoint of `OUT` can be continued with `cfg` on `train`: its schedule is not
/// finished, and it was trained on the same classes (by name) at the same image size.
fn check_resume(ck: &Checkpoint, cfg: &Config, train: &Dataset) -> Result<()> {
    let err = |msg: String| Error::Resume {
        path: ck.path.clone(),
        msg,
    };
    let total = cfg.schedule_epochs();
    if ck.meta.epoch >= total {
        return Err(err(format!(
            "the run has finished: it trained {} of {total} epochs; raise `epochs` (or \
             --epochs) to train longer, or export it with `slb export`",
            ck.meta.epoch
        )));
    }
    if ck.meta.classes != train.classes {
        return Err(err(format!(
            "it was trained on {} classes ({}) but the data has {} ({})",
            ck.meta.classes.len(),
            ck.meta.classes.join(", "),
            train.classes.len(),
            train.classes.join(", ")
        )));
    }
    let size = cfg.resize.unwrap_or(train.height as i64);
    if ck.meta.image_size != size {
        return Err(err(format!(
            "it was trained at image size {} but this run's images are {size}x{size} \
             (check `resize` and the data)",
            ck.meta.image_size
        )));
    }
    Ok(())
}

fn dev_index(d: Device) -> i64 {
    match d {
        Device::Cuda(i) => i as i64,
        _ => 0,
    }
}

/// The momentum of every BatchNorm the networks build (tch's default): a training-mode forward
/// pass sets `running = (1 - m) * running + m * batch statistic`.
const BN_MOMENTUM: f64 = 0.1;

/// Golden Stick's BN calibration: a pass over (the first `max_batches` shuffled batches of) the
/// training data with hard weights and frozen activation ranges; no gradient step. Each
/// BatchNorm's running mean and variance become the plain average of the batch statistics
/// (PyTorch's cumulative average, `momentum=None`), so the result depends on every batch
/// equally and not on the statistics before the pass. Batches of one image (no variance) are
/// skipped. Returns the number of batches averaged (0 leaves the statistics as they were).
#[allow(clippy::too_many_arguments)]
pub fn bn_calibrate(
    net: &Net,
    data: &DeviceData,
    aug: &Augment,
    batch: i64,
    quant: bool,
    amp: bool,
    seed: u64,
    max_batches: Option<i64>,
) -> i64 {
    let ctx = Ctx {
        train: true,
        t: 1.0,
        hard: true,
        q: QuantMode {
            observe: false,
            quantize: quant,
            ema: false,
        },
        amp,
    };
    let stats = bn_stats(net);
    let limit = max_batches.map_or(usize::MAX, |n| n.max(0) as usize);
    let mut k = 0i64;
    tch::no_grad(|| {
        let sums: Vec<Tensor> = stats.iter().map(|t| t.zeros_like()).collect();
        for (x, _) in data
            .batches(batch, true, seed ^ 0x5eed)
            .filter(|(x, _)| x.size()[0] > 1)
            .take(limit)
        {
            // From zero, one step leaves exactly `m * batch statistic` in the buffers.
            for t in &stats {
                let _ = t.shallow_clone().zero_();
            }
            let _ = net.forward(&aug.train(&x), &ctx);
            for (sum, t) in sums.iter().zip(&stats) {
                let _ = sum.shallow_clone().g_add_(t);
            }
            k += 1;
        }
        if k > 0 {
            for (sum, t) in sums.iter().zip(&stats) {
                t.shallow_clone().copy_(&(sum / (k as f64 * BN_MOMENTUM)));
            }
        }
    });
    k
}

/// Every BatchNorm's running mean and variance, in a fixed order (views of the buffers).
pub fn bn_stats(net: &Net) -> Vec<Tensor> {
    net.convs()
        .into_iter()
        .flat_map(|c| {
            [
                c.bn.running_mean.shallow_clone(),
                c.bn.running_var.shallow_clone(),
            ]
        })
        .collect()
}

/// Evaluation-only calibration: the BatchNorm statistics of [`bn_stats`] are copied, replaced
/// by the calibrated ones while `f` runs, and put back afterwards, so training goes on exactly
/// as without it.
pub fn with_bn_calibrated<R>(
    net: &Net,
    calibrate: impl FnOnce() -> i64,
    f: impl FnOnce() -> R,
) -> (R, i64) {
    let stats = bn_stats(net);
    let saved: Vec<Tensor> = tch::no_grad(|| stats.iter().map(|t| t.copy()).collect());
    let k = calibrate();
    let r = f();
    tch::no_grad(|| {
        for (t, s) in stats.iter().zip(&saved) {
            t.shallow_clone().copy_(s);
        }
    });
    (r, k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_decay_groups() {
        assert!(decays("block1.c1.conv.logits"));
        assert!(decays("dense.weight"));
        assert!(!decays("dense.bias"));
        assert!(!decays("block1.c1.bn.weight"));
        assert!(!decays("block1.c1.bn.bias"));
        assert!(!decays("block1.act.alpha"));
    }

    #[test]
    fn atomic_write_leaves_only_the_final_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f.bin");
        write_atomic(&p, |tmp| {
            std::fs::write(tmp, b"abc").map_err(|e| Error::io("write", tmp, e))
        })
        .unwrap();
        // A failing writer leaves the previous file untouched.
        let r = write_atomic(&p, |_| Err(Error::config("boom")));
        assert!(r.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"abc");
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f.bin")]);
    }

    fn meta(epoch: i64) -> Meta {
        Meta {
            version: 1,
            epoch,
            step: 10 * epoch,
            temperature: 1.0,
            hard: false,
            config: Config::default(),
            classes: vec!["a".into(), "b".into()],
            image_size: 32,
            ranges_valid: true,
        }
    }

    #[test]
    fn checkpoints_are_written_in_the_background_from_a_detached_snapshot() {
        let d = tempfile::tempdir().unwrap();
        let ck = d.path().join("checkpoint.ot");
        let mp = d.path().join("metrics.jsonl");
        let vs = nn::VarStore::new(Device::Cpu);
        let mut x = (vs.root() / "x").var("logits", &[3], nn::Init::Const(1.0));
        let file = std::fs::File::create(&mp).unwrap();
        let mut w = CheckpointWriter::new(ck.clone(), file, mp.clone());
        // The snapshot is taken before the variable changes in place, as the next epoch does
        // while the write runs: the file holds the snapshot's values.
        let snap = Snapshot::take(&ck, &vs, None, &meta(1)).unwrap();
        w.submit(snap, "{\"epoch\":1}".into()).unwrap();
        tch::no_grad(|| {
            let _ = x.fill_(5.0);
        });
        w.finish().unwrap();
        let got = Checkpoint::load(&ck).unwrap();
        assert_eq!(got.meta, meta(1));
        let (_, t) = got.tensors.iter().find(|(n, _)| n == "x.logits").unwrap();
        assert_eq!(Vec::<f32>::try_from(t).unwrap(), vec![1.0; 3]);
        assert_eq!(std::fs::read_to_string(&mp).unwrap(), "{\"epoch\":1}\n");
        // The second epoch's line follows its own checkpoint.
        let snap = Snapshot::take(&ck, &vs, None, &meta(2)).unwrap();
        w.submit(snap, "{\"epoch\":2}".into()).unwrap();
        drop(w); // waits for the write
        let got = Checkpoint::load(&ck).unwrap();
        assert_eq!(got.meta.epoch, 2);
        let (_, t) = got.tensors.iter().find(|(n, _)| n == "x.logits").unwrap();
        assert_eq!(Vec::<f32>::try_from(t).unwrap(), vec![5.0; 3]);
        assert_eq!(
            std::fs::read_to_string(&mp).unwrap(),
            "{\"epoch\":1}\n{\"epoch\":2}\n"
        );
    }

    #[test]
    fn a_failed_background_write_is_reported_and_appends_no_metrics() {
        let d = tempfile::tempdir().unwrap();
        let ck = d.path().join("missing-folder").join("checkpoint.ot");
        let mp = d.path().join("metrics.jsonl");
        let vs = nn::VarStore::new(Device::Cpu);
        let _x = (vs.root() / "x").var("logits", &[3], nn::Init::Const(1.0));
        let file = std::fs::File::create(&mp).unwrap();
        let mut w = CheckpointWriter::new(ck.clone(), file, mp.clone());
        let snap = Snapshot::take(&ck, &vs, None, &meta(1)).unwrap();
        w.submit(snap, "{}".into()).unwrap();
        assert!(w.finish().is_err());
        assert_eq!(std::fs::read_to_string(&mp).unwrap(), "");
        // The writer keeps working (the metrics file came back with the error).
        let snap = Snapshot::take(&ck, &vs, None, &meta(2)).unwrap();
        w.submit(snap, "{}".into()).unwrap();
        assert!(w.finish().is_err());
    }

    #[test]
    fn sgd_momentum_and_decay_by_hand() {
        let vs = nn::VarStore::new(Device::Cpu);
        let p = (vs.root() / "x").var("logits", &[1], nn::Init::Const(1.0));
        let b = (vs.root() / "x").var("bias", &[1], nn::Init::Const(1.0));
        let mut opt = Sgd::new(&vs, 0.9, false, 0.1);
        for _ in 0..2 {
            opt.backward(&(&p * 2.0 + &b * 3.0).sum(Kind::Float));
            opt.step(0.5);
        }
        // logits: g1 = 2 + 0.1*1 = 2.1, p = 1 - 1.05 = -0.05;
        // g2 = 2 - 0.005 = 1.995, buf = 0.9*2.1 + 1.995 = 3.885, p = -0.05 - 1.9425 = -1.9925.
        assert!((p.double_value(&[0]) + 1.9925).abs() < 1e-6);
        // bias (no decay): buf 3 then 5.7; b = 1 - 1.5 - 2.85 = -3.35.
        assert!((b.double_value(&[0]) + 3.35).abs() < 1e-6);
    }

    /// The per-variable SGD that [`Sgd`] replaces: its reference twin (each variable with
    /// its own decay rate).
    struct RefSgd {
        params: Vec<(Tensor, f64)>,
        bufs: Vec<Tensor>,
        momentum: f64,
        nesterov: bool,
    }

    impl RefSgd {
        fn step(&mut self, lr: f64) {
            tch::no_grad(|| {
                for ((p, decay), buf) in self.params.iter_mut().zip(self.bufs.iter_mut()) {
                    let g = p.grad();
                    let g = if g.defined() { g } else { p.zeros_like() };
                    let g = if *decay > 0.0 { g + &*p * *decay } else { g };
                    let _ = buf.g_mul_scalar_(self.momentum).g_add_(&g);
                    let d = if self.nesterov {
                        g + &*buf * self.momentum
                    } else {
                        buf.shallow_clone()
                    };
                    let _ = p.g_sub_(&(d * lr));
                }
            });
        }
    }

    /// A small network (conv logits with decay, a BN-like scale without, a variable that gets
    /// no gradient on odd steps), for both optimizers.
    fn tiny(seed: i64) -> (nn::VarStore, Vec<Tensor>) {
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(Device::Cpu);
        let r = vs.root();
        let w = (&r / "c").var(
            "logits",
            &[4, 3, 3, 3, 2],
            nn::Init::Randn {
                mean: 0.0,
                stdev: 0.3,
            },
        );
        let s = (&r / "bn").var("weight", &[4], nn::Init::Const(1.0));
        let d = (&r / "dense").var(
            "weight",
            &[5, 4],
            nn::Init::Randn {
                mean: 0.0,
                stdev: 0.3,
            },
        );
        let b = (&r / "dense").var("bias", &[5], nn::Init::Const(0.1));
        (vs, vec![w, s, d, b])
    }

    fn tiny_loss(v: &[Tensor], step: i64) -> Tensor {
        tch::manual_seed(100 + step);
        let x = Tensor::randn([2, 3, 6, 6], (Kind::Float, Device::Cpu));
        let w = if step % 2 == 0 {
            crate::nn::quant::relaxed_weight(&v[0], 1.5, 1)
        } else {
            // Hard weights: no gradient reaches the logits this step.
            crate::nn::quant::hard_weight(&v[0], 1)
        };
        let h = x.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
        let h =
            (h * v[1].view([1, 4, 1, 1]))
                .relu()
                .mean_dim([2i64, 3].as_slice(), false, Kind::Float);
        h.linear(&v[2], Some(&v[3])).square().mean(Kind::Float)
    }

    #[test]
    fn flat_sgd_equals_the_per_variable_reference_bit_for_bit() {
        // The logits' own decay rate: the same as the weights' (one op) or not (two).
        for (nesterov, logit_decay) in [(false, 5e-4), (true, 5e-4), (true, 1e-4), (false, 0.0)] {
            let (vs_a, va) = tiny(7);
            let (_vs_b, vb) = tiny(7);
            let mut fast = Sgd::new(&vs_a, 0.9, nesterov, 5e-4).with_logit_decay(logit_decay);
            let mut reference = RefSgd {
                params: vb
                    .iter()
                    .zip([logit_decay, 0.0, 5e-4, 0.0])
                    .map(|(t, d)| (t.shallow_clone(), d))
                    .collect(),
                bufs: vb.iter().map(|t| t.zeros_like()).collect(),
                momentum: 0.9,
                nesterov,
            };
            for step in 0..6 {
                fast.backward(&tiny_loss(&va, step));
                fast.step(0.05);
                for (p, _) in &reference.params {
                    let mut g = p.grad();
                    if g.defined() {
                        let _ = g.detach_();
                        let _ = g.zero_();
                    }
                }
                tiny_loss(&vb, step).backward();
                reference.step(0.05);
            }
            for (a, b) in va.iter().zip(&vb) {
                assert!(
                    a.equal(b),
                    "nesterov {nesterov}, logit decay {logit_decay}: {a:?} vs {b:?}"
                );
            }
            // The state round-trips through named tensors.
            let state = fast.state();
            assert_eq!(state.len(), 4);
            for (name, t) in &state {
                let (i, _) = reference
                    .params
                    .iter()
                    .enumerate()
                    .find(|(_, (p, _))| p.size() == t.size())
                    .unwrap();
                assert!(t.equal(&reference.bufs[i]), "{name}");
            }
        }
    }
}
