//! `slb export`.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::data::{self, Dataset, DeviceData, Split};
use crate::export::export_checkpoint;
use crate::train::Checkpoint;

/// Arguments of `slb export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Checkpoint written by `slb train`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Model file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Training data, needed only to calibrate 8-bit ranges when the network was trained
    /// without activation quantization.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Accept calibration data whose class names differ from the checkpoint's (only images of
    /// the checkpoint's classes are used); without it, any difference is an error.
    #[arg(long)]
    pub allow_class_mismatch: bool,
}

/// Runs `slb export`.
pub fn main(a: &ExportArgs) -> Result<()> {
    // Where the file goes, checked before the work: a folder or a missing parent is refused.
    if a.out.is_dir() {
        anyhow::bail!(
            "--out {} is a folder: give the model file's name (e.g. {})",
            a.out.display(),
            a.out.join("model.slb").display()
        );
    }
    if let Some(parent) = a.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            anyhow::bail!(
                "--out {}: folder {} does not exist",
                a.out.display(),
                parent.display()
            );
        }
    }
    let ck = Checkpoint::load(&a.checkpoint)?;
    let calib = match (&a.data, ck.meta.ranges_valid) {
        (Some(p), false) => {
            let n = (ck.meta.config.calibration_batches * ck.meta.config.batch_size) as usize;
            let per_class = n.div_ceil(ck.meta.classes.len().max(1));
            let mut ds = data::load_limited(p, Split::Train, Some(per_class))
                .with_context(|| format!("loading {}", p.display()))?;
            check_calibration_data(&ck, &mut ds, p, a.allow_class_mismatch)?;
            Some(DeviceData::new(&ds, tch::Device::Cpu))
        }
        _ => None,
    };
    let ex = export_checkpoint(&ck, calib.as_ref())?;
    if let (Some(dir), Some(name)) = (a.out.parent(), a.out.file_name()) {
        let dir = if dir.as_os_str().is_empty() {
            std::path::Path::new(".")
        } else {
            dir
        };
        crate::lock::remove_stale_temps(dir, &name.to_string_lossy());
    }
    crate::train::write_atomic(&a.out, |p| {
        std::fs::write(p, &ex.bytes).map_err(|e| crate::Error::io("write", p, e))
    })?;
    let m = slb_format::Model::parse(&ex.bytes)?;
    eprintln!(
        "wrote {} ({} bytes): {:?}, {} tensors, {} layers, {} SLB convs{}",
        a.out.display(),
        ex.bytes.len(),
        m.name,
        m.tensors.len(),
        m.layers.len(),
        ex.convs,
        if ex.calibrated {
            "; 8-bit activation ranges calibrated on training images (activation quantization was off in training)"
        } else {
            ""
        }
    );
    Ok(())
}

/// Calibration images must be those the checkpoint was trained on: the same classes (by name)
/// and, without `resize`, the same image size.
fn check_calibration_data(
    ck: &Checkpoint,
    ds: &mut Dataset,
    path: &std::path::Path,
    allow_class_mismatch: bool,
) -> Result<()> {
    let dropped = data::align_classes(
        ds,
        &ck.meta.classes,
        &format!(
            "calibration data {} vs checkpoint {}",
            path.display(),
            ck.path.display()
        ),
        allow_class_mismatch,
    )?;
    if !dropped.is_empty() {
        eprintln!(
            "warning: calibration images of classes the checkpoint lacks are left out: {}",
            dropped.join(", ")
        );
    }
    let side = ck.meta.image_size as usize;
    if ck.meta.config.resize.is_none() && (ds.height, ds.width) != (side, side) {
        anyhow::bail!(
            "calibration data {}: images are {}x{} but checkpoint {} was trained on {side}x{side}",
            path.display(),
            ds.width,
            ds.height,
            ck.path.display()
        );
    }
    Ok(())
}
