//! Checkpoints: the file a run resumes from and the exporter reads ([`Checkpoint`], its
//! [`Meta`]), written atomically ([`write_atomic`]) from a host copy of the training state
//! ([`Snapshot`]) on a background thread ([`CheckpointWriter`]), one epoch at a time.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Tensor};

use super::optimizer::Sgd;
use crate::config::Config;
use crate::error::{Error, Result};

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

/// The checkpoint file of an output directory.
pub fn checkpoint_path(out: &Path) -> PathBuf {
    out.join("checkpoint.ot")
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
pub(super) struct CheckpointWriter {
    /// The metrics file (`None` while a write holds it).
    metrics: Option<std::fs::File>,
    metrics_path: PathBuf,
    path: PathBuf,
    inflight: Option<std::thread::JoinHandle<(std::fs::File, Result<()>)>>,
}

impl CheckpointWriter {
    /// A writer of the checkpoint `path`, appending to the metrics file `metrics` (opened at
    /// `metrics_path`).
    pub(super) fn new(path: PathBuf, metrics: std::fs::File, metrics_path: PathBuf) -> Self {
        CheckpointWriter {
            metrics: Some(metrics),
            metrics_path,
            path,
            inflight: None,
        }
    }

    /// Waits for the write in flight, if any; its error.
    pub(super) fn finish(&mut self) -> Result<()> {
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
    pub(super) fn submit(&mut self, snap: Snapshot, line: String) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
