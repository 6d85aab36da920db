//! Evaluation: test accuracy ([`evaluate`]), predictions ([`predict`]) and Golden Stick's
//! BatchNorm calibration ([`bn_calibrate`], [`bn_stats`], [`with_bn_calibrated`]).

use tch::{Device, Kind, Tensor};

use crate::data::{Augment, BatchSource, DeviceData, Shard};
use crate::nn::net::{Ctx, Net};
use crate::nn::QuantMode;

/// Top-1 and top-5 accuracy (fractions) of `net` on `data`, in evaluation mode (hard weights,
/// BatchNorm running statistics, activation nodes quantizing when `quant`), always in f32:
/// the network exactly as it is exported, whose integer twin the packed runtime runs. (With
/// bf16 activations the trainer's figure came out 0.16 points above the packed model's on the
/// H100; with f32 evaluation the two had agreed exactly.)
pub fn evaluate(
    net: &Net,
    data: &dyn BatchSource,
    aug: &Augment,
    batch: i64,
    quant: bool,
) -> (f64, f64) {
    let counts = evaluate_counts(net, data, aug, batch, quant, Shard::single());
    let n = counts.int64_value(&[2]).max(1) as f64;
    (
        counts.int64_value(&[0]) as f64 / n,
        counts.int64_value(&[1]) as f64 / n,
    )
}

/// The top-1 and top-5 hit counts and the images seen (an `i64` tensor of 3 on the data's
/// device) of [`evaluate`] over this rank's part (`shard`) of the test batches: the ranks of a
/// data-parallel run each count their share, and the sums are the whole set's. Images are
/// counted as the batches come: a streamed split may skip unreadable files.
pub fn evaluate_counts(
    net: &Net,
    data: &dyn BatchSource,
    aug: &Augment,
    batch: i64,
    quant: bool,
    shard: Shard,
) -> Tensor {
    let ctx = hard_ctx(false, quant, false);
    let k = 5.min(net.cfg.num_classes);
    let dev = data.device();
    let counts = Tensor::zeros([3], (Kind::Int64, dev));
    let mut seen = 0i64;
    tch::no_grad(|| {
        for (x, y, _) in data.shard_epoch(batch, false, 0, shard) {
            let n = y.size()[0];
            if n == 0 {
                continue;
            }
            seen += n;
            let logits = net.forward(&aug.eval(&x), &ctx);
            let (_, idx) = logits.topk(k, -1, true, true);
            let hit = idx.eq_tensor(&y.unsqueeze(1));
            let _ = counts.get(0).g_add_(&hit.narrow(1, 0, 1).sum(Kind::Int64));
            let _ = counts.get(1).g_add_(&hit.sum(Kind::Int64));
        }
        let _ = counts.get(2).fill_(seen);
    });
    counts
}

/// A forward pass with hard weights and frozen activation ranges (quantizing when `quant`):
/// in evaluation mode and f32 for [`evaluate`] and [`predict`], in training mode (batch
/// statistics) for [`bn_calibrate`].
fn hard_ctx(train: bool, quant: bool, amp: bool) -> Ctx {
    Ctx {
        train,
        t: 1.0,
        hard: true,
        q: QuantMode {
            observe: false,
            quantize: quant,
            ema: false,
            fused: false,
        },
        amp,
    }
}

/// The predicted class of every image of `data` (in order), in evaluation mode as
/// [`evaluate`].
pub fn predict(net: &Net, data: &DeviceData, aug: &Augment, batch: i64, quant: bool) -> Vec<i64> {
    let ctx = hard_ctx(false, quant, false);
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
    data: &dyn BatchSource,
    aug: &Augment,
    batch: i64,
    quant: bool,
    amp: bool,
    seed: u64,
    max_batches: Option<i64>,
) -> i64 {
    let ctx = hard_ctx(true, quant, amp);
    let stats = bn_stats(net);
    let limit = max_batches.map_or(usize::MAX, |n| n.max(0) as usize);
    let mut k = 0i64;
    tch::no_grad(|| {
        let sums: Vec<Tensor> = stats.iter().map(|t| t.zeros_like()).collect();
        for (x, _) in data
            .epoch(batch, true, seed ^ 0x5eed)
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
pub fn with_bn_calibrated<R, K>(
    net: &Net,
    calibrate: impl FnOnce() -> K,
    f: impl FnOnce() -> R,
) -> (R, K) {
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
