//! Training: the epoch loop ([`run`], in `learner`) and its parts, one file each:
//!
//! - `optimizer`: SGD with momentum and weight decay over one flat buffer ([`Sgd`]);
//! - `checkpoint`: the checkpoint file ([`Checkpoint`], [`Meta`]), atomic writes, the
//!   background writer;
//! - `eval`: test accuracy ([`evaluate`], [`predict`]) and BatchNorm calibration;
//! - `profile`: where a step's time goes (`--profile-steps`) and the `--trace` recording;
//! - `report`: each epoch's record ([`EpochMetrics`]) and the one sink it goes through (progress
//!   bar, epoch line, `metrics.jsonl`);
//! - `learner`: set-up, an epoch's steps, its evaluation, checkpoint and report;
//! - `resume`: the output folder and the checkpoint a resumed run continues;
//! - `sync`: the ranks of a data-parallel run kept in agreement.
//!
//! Which network a configuration builds ([`net_config`], [`build`]) is here: the exporter
//! and the tools build the same one.

mod checkpoint;
mod eval;
mod learner;
mod optimizer;
mod profile;
mod report;
mod resume;
mod sync;

use tch::nn;

use crate::algo::SlbQuantAwareTraining;
use crate::config::Config;
use crate::nn::net::{Net, NetConfig};

pub use checkpoint::{checkpoint_path, save_checkpoint, write_atomic, Checkpoint, Meta, Snapshot};
pub use eval::{bn_calibrate, bn_stats, evaluate, evaluate_counts, predict, with_bn_calibrated};
pub use learner::{run, run_with, RunData, RunOptions, RunSummary};
pub use optimizer::{decays, is_logit, Sgd};
pub use profile::{PhaseTime, StepProfile};
pub use report::EpochMetrics;
pub use sync::sync_buffers;

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
