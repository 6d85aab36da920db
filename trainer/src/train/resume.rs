//! A run's output folder and what it continues: the folder made ready (a killed run's
//! temporary file removed), the checkpoint a resumed run starts from, checked against the
//! configuration and the data.

use std::path::{Path, PathBuf};

use super::checkpoint::{checkpoint_path, Checkpoint};
use crate::config::Config;
use crate::error::{Error, Result};

/// Creates the output folder `out` and removes the temporary file a killed run left there (a
/// stale one is never a checkpoint); the checkpoint's path.
pub(super) fn prepare_out(out: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(out).map_err(|e| Error::io("create", out, e))?;
    if let Ok(rd) = std::fs::read_dir(out) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n.starts_with(".checkpoint.ot.tmp") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(checkpoint_path(out))
}

/// What a checkpoint must have been trained on to be continued on a run's data.
pub(super) struct DataId<'a> {
    /// The class names, in label order.
    pub classes: &'a [String],
    /// The images' side in pixels.
    pub image_size: i64,
}

/// The checkpoint `ckpt_path` a run continues when `resume` is asked for, checked against
/// `cfg` and `data` (`None`: a fresh run); `cfg` then starts after the epochs it trained.
pub(super) fn resume_from(
    ckpt_path: &Path,
    resume: bool,
    cfg: &mut Config,
    data: &DataId<'_>,
) -> Result<Option<Checkpoint>> {
    if !(resume && ckpt_path.exists()) {
        return Ok(None);
    }
    let ck = Checkpoint::load(ckpt_path)?;
    check_resume(&ck, cfg, data)?;
    cfg.has_trained_epoch = Some(ck.meta.epoch);
    Ok(Some(ck))
}

/// Whether the checkpoint of `OUT` can be continued with `cfg` on `data`: its schedule is not
/// finished, and it was trained on the same classes (by name) at the same image size.
fn check_resume(ck: &Checkpoint, cfg: &Config, data: &DataId<'_>) -> Result<()> {
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
    if ck.meta.classes != data.classes {
        return Err(err(format!(
            "it was trained on {} classes ({}) but the data has {} ({})",
            ck.meta.classes.len(),
            ck.meta.classes.join(", "),
            data.classes.len(),
            data.classes.join(", ")
        )));
    }
    let size = data.image_size;
    if ck.meta.image_size != size {
        return Err(err(format!(
            "it was trained at image size {} but this run's images are {size}x{size} \
             (check `resize` and the data)",
            ck.meta.image_size
        )));
    }
    Ok(())
}
