//! Reporting: each epoch's record ([`EpochMetrics`]) and the one sink it goes through
//! ([`Report`]): the progress bar while the epoch trains, then the step profile and the epoch
//! line on stderr, and the record's line in `metrics.jsonl`, appended on the checkpoint
//! writer's thread once the epoch's checkpoint is in place.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::checkpoint::{CheckpointWriter, Snapshot};
use super::profile::StepProfile;
use crate::error::{Error, Result};

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
    /// Training images skipped this epoch because their file could not be read or decoded
    /// (the streaming loader; each is named in a warning).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped_images: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Where a run reports its epochs, modelled on burn's learner event processor: the progress
/// bar (drawn only on a terminal), the lines on stderr, and the metrics file, which it appends
/// to through the [`CheckpointWriter`] so that `metrics.jsonl` never runs ahead of the
/// checkpoint a resume starts from.
pub(super) struct Report {
    /// Draw a progress bar (asked for, and stderr is a terminal).
    show: bool,
    /// Epochs of the schedule, for the bar and the epoch line.
    total: i64,
    /// The bar of the epoch training now.
    bar: Option<indicatif::ProgressBar>,
    /// The checkpoint and the metrics line, written in the background.
    writer: CheckpointWriter,
}

impl Report {
    /// A sink appending to `out/metrics.jsonl` (created if missing) and writing the
    /// checkpoint `checkpoint`, for a schedule of `total` epochs; `progress` asks for a bar.
    pub(super) fn new(
        out: &Path,
        checkpoint: PathBuf,
        progress: bool,
        total: i64,
    ) -> Result<Report> {
        let metrics_path = out.join("metrics.jsonl");
        let metrics_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .map_err(|e| Error::io("open", &metrics_path, e))?;
        Ok(Report {
            show: progress && std::io::stderr().is_terminal(),
            total,
            bar: None,
            writer: CheckpointWriter::new(checkpoint, metrics_file, metrics_path),
        })
    }

    /// Starts the progress bar of epoch `epoch`, `steps` steps long.
    pub(super) fn start_epoch(&mut self, epoch: i64, steps: i64) {
        self.bar = self.show.then(|| {
            let b = indicatif::ProgressBar::new(steps as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "epoch {prefix} [{bar:30}] {pos}/{len} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_prefix(format!("{epoch}/{}", self.total));
            b
        });
    }

    /// Moves the bar to step `pos` with the message `msg` makes (called only when a bar is
    /// drawn: the message may read the device).
    pub(super) fn progress(&self, pos: u64, msg: impl FnOnce() -> String) {
        if let Some(b) = &self.bar {
            b.set_position(pos);
            b.set_message(msg());
        }
    }

    /// Clears the bar: the epoch's training steps are done.
    pub(super) fn end_steps(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }

    /// Reports a trained and evaluated epoch: prints its step profile, takes its checkpoint
    /// (`snapshot`), waits for the previous epoch's write (both timed as
    /// `checkpoint_seconds`), hands the checkpoint and the record's metrics line to the
    /// background writer and prints the epoch line. Returns the record as written.
    pub(super) fn epoch(
        &mut self,
        mut m: EpochMetrics,
        snapshot: impl FnOnce() -> Result<Snapshot>,
    ) -> Result<EpochMetrics> {
        if let Some(p) = &m.profile {
            eprintln!(
                "epoch {}: step profile over {} steps (ms, host / total):",
                m.epoch, p.steps
            );
            for ph in &p.phases {
                eprintln!(
                    "  {:<10} {:>8.3} / {:>8.3}",
                    ph.name, ph.host_ms, ph.total_ms
                );
            }
        }
        let t_ck = Instant::now();
        let snap = snapshot()?;
        self.writer.finish()?;
        m.checkpoint_seconds = t_ck.elapsed().as_secs_f64();
        let line = serde_json::to_string(&m).unwrap_or_default();
        self.writer.submit(snap, line)?;
        eprintln!(
            "epoch {}/{}: T {:.4}{} lr {:.5} loss {:.4} train {:.2}% test top1 {:.2}% top5 {:.2}%{} {:.1}s {:.0} img/s{}",
            m.epoch,
            self.total,
            m.temperature,
            if m.hard { " (hard)" } else { "" },
            m.lr,
            m.train_loss,
            m.train_top1 * 100.0,
            m.test_top1 * 100.0,
            m.test_top5 * 100.0,
            if m.eval_bn_calibrated {
                " (BN calibrated)"
            } else {
                ""
            },
            m.train_seconds,
            m.images_per_s,
            if m.skipped_images > 0 {
                format!(" ({} images skipped)", m.skipped_images)
            } else {
                String::new()
            }
        );
        Ok(m)
    }

    /// Waits for the last checkpoint and metrics line to be written; their error.
    pub(super) fn finish(&mut self) -> Result<()> {
        self.writer.finish()
    }
}

#[cfg(test)]
mod tests {
    use tch::{nn, Device};

    use super::*;
    use crate::config::Config;
    use crate::train::{Checkpoint, Meta};

    fn record(epoch: i64) -> EpochMetrics {
        EpochMetrics {
            epoch,
            temperature: 1.5,
            hard: false,
            lr: 0.1,
            train_loss: 1.25,
            train_top1: 0.5,
            test_top1: 0.25,
            test_top5: 1.0,
            images_per_s: 100.0,
            train_seconds: 2.0,
            eval_seconds: 0.5,
            checkpoint_seconds: 0.0,
            bn_calibrated: false,
            eval_bn_calibrated: true,
            profile: None,
            skipped_images: 0,
        }
    }

    #[test]
    fn an_epoch_goes_to_the_checkpoint_then_the_metrics_file() {
        let d = tempfile::tempdir().unwrap();
        let ck = d.path().join("checkpoint.ot");
        let vs = nn::VarStore::new(Device::Cpu);
        let _x = (vs.root() / "x").var("logits", &[2], nn::Init::Const(1.0));
        let meta = Meta {
            version: 1,
            epoch: 1,
            step: 3,
            temperature: 1.5,
            hard: false,
            config: Config::default(),
            classes: vec!["a".into()],
            image_size: 8,
            ranges_valid: true,
        };
        let mut report = Report::new(d.path(), ck.clone(), false, 4).unwrap();
        report.start_epoch(1, 3);
        report.progress(3, || unreachable!("no bar was asked for"));
        report.end_steps();
        let m = report
            .epoch(record(1), || Snapshot::take(&ck, &vs, None, &meta))
            .unwrap();
        report.finish().unwrap();
        assert_eq!(Checkpoint::load(&ck).unwrap().meta, meta);
        let line = std::fs::read_to_string(d.path().join("metrics.jsonl")).unwrap();
        assert_eq!(line, serde_json::to_string(&m).unwrap() + "\n");
        assert!(m.checkpoint_seconds >= 0.0);
        // A snapshot that fails reports its error and appends nothing.
        let err = report.epoch(record(2), || Err(Error::config("no snapshot")));
        assert!(err.is_err());
        report.finish().unwrap();
        let again = std::fs::read_to_string(d.path().join("metrics.jsonl")).unwrap();
        assert_eq!(again, line);
    }
}
