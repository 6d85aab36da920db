//! `slb export`.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::data::{self, DeviceData, Split};
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
}

/// Runs `slb export`.
pub fn main(a: &ExportArgs) -> Result<()> {
    let ck = Checkpoint::load(&a.checkpoint)?;
    let calib = match (&a.data, ck.meta.ranges_valid) {
        (Some(p), false) => {
            let n = (ck.meta.config.calibration_batches * ck.meta.config.batch_size) as usize;
            let per_class = n.div_ceil(ck.meta.classes.len().max(1));
            let ds = data::load_limited(p, Split::Train, Some(per_class))
                .with_context(|| format!("loading {}", p.display()))?;
            Some(DeviceData::new(&ds, tch::Device::Cpu))
        }
        _ => None,
    };
    let ex = export_checkpoint(&ck, calib.as_ref())?;
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
