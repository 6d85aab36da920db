//! Profiling: where a training step's time goes ([`StepProfile`], measured by [`Profiler`] with
//! `--profile-steps`) and the Kineto trace of `--trace` ([`Trace`]): both cover the same steps
//! of an epoch, [`PROFILE_WARMUP`] steps after its start.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

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

/// The step phases [`StepProfile`] reports ("all-reduce": the gradient sum of a data-parallel
/// run, zero in a single process).
const PHASES: [&str; 6] = [
    "augment",
    "forward",
    "backward",
    "all-reduce",
    "optimizer",
    "metrics",
];

/// Times the phases of profiled steps (a no-op when off).
pub(super) struct Profiler {
    on: bool,
    cuda: Option<i64>,
    last: Instant,
    host: [f64; PHASES.len()],
    total: [f64; PHASES.len()],
    steps: i64,
}

impl Profiler {
    /// A profiler synchronising CUDA device `cuda` (`None`: the CPU) at phase boundaries.
    pub(super) fn new(cuda: Option<i64>) -> Profiler {
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
    pub(super) fn start(&mut self, on: bool) {
        self.on = on;
        if on {
            self.sync();
            self.last = Instant::now();
        }
    }

    /// Ends phase `k` of the current step.
    pub(super) fn phase(&mut self, k: usize) {
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
    pub(super) fn report(&self) -> Option<StepProfile> {
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
pub(super) const PROFILE_WARMUP: i64 = 3;

/// Whether step `i` (0-based) of an epoch is one of the `profile_steps` profiled steps.
pub(super) fn profiled(i: i64, profile_steps: i64) -> bool {
    i >= PROFILE_WARMUP && i < PROFILE_WARMUP + profile_steps
}

/// The `--trace` recording of one epoch: it starts at the first profiled step and ends after
/// the last (or with the epoch, if that is shorter).
pub(super) struct Trace {
    /// The trace file (`None`: no trace this epoch).
    path: Option<PathBuf>,
    profile_steps: i64,
    recording: bool,
}

impl Trace {
    /// A trace of this epoch's profiled steps into `path` (`None`: off).
    pub(super) fn new(path: Option<&Path>, profile_steps: i64) -> Trace {
        Trace {
            path: path.map(Path::to_path_buf),
            profile_steps,
            recording: false,
        }
    }

    /// Before step `i` (0-based): starts or ends the recording.
    pub(super) fn before_step(&mut self, i: i64) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if i == PROFILE_WARMUP {
            crate::cuda::trace_begin().map_err(|e| Error::config(format!("--trace: {e}")))?;
            self.recording = true;
        } else if self.recording && i == PROFILE_WARMUP + self.profile_steps {
            self.recording = false;
            end_trace(path, i - PROFILE_WARMUP)?;
        }
        Ok(())
    }

    /// After the epoch's `steps` steps: ends a recording still running (an epoch shorter than
    /// the profiled steps).
    pub(super) fn end_epoch(&mut self, steps: i64) -> Result<()> {
        match &self.path {
            Some(path) if self.recording => {
                self.recording = false;
                end_trace(path, steps - PROFILE_WARMUP)
            }
            _ => Ok(()),
        }
    }
}

/// Ends the `--trace` recording of `steps` steps and writes it to `path`.
fn end_trace(path: &Path, steps: i64) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profiled_steps_follow_the_warm_up() {
        let on: Vec<i64> = (0..10).filter(|&i| profiled(i, 4)).collect();
        assert_eq!(on, vec![3, 4, 5, 6]);
        assert!(!(0..10).any(|i| profiled(i, 0)));
    }

    #[test]
    fn the_profiler_counts_only_profiled_steps_and_no_trace_path_records_nothing() {
        let mut p = Profiler::new(None);
        for _ in 0..3 {
            p.start(false);
            for k in 0..PHASES.len() {
                p.phase(k);
            }
        }
        assert_eq!(p.report(), None);
        p.start(true);
        for k in 0..PHASES.len() {
            p.phase(k);
        }
        let r = p.report().unwrap();
        assert_eq!(r.steps, 1);
        let names: Vec<&str> = r.phases.iter().map(|ph| ph.name.as_str()).collect();
        assert_eq!(names, PHASES);
        let mut t = Trace::new(None, 2);
        for i in 0..10 {
            t.before_step(i).unwrap();
        }
        t.end_epoch(10).unwrap();
    }
}
