//! The packed-model subcommands of `slb`: `eval`, `inspect` and `bench`. They read model files
//! with `slb-format` and execute them with the `no_std` runtime, on the host.

pub mod bench;
pub mod eval;
pub mod inspect;

use std::path::Path;

use anyhow::{Context, Result};

/// Reads a model file, naming it in every error.
pub fn read_model_file(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read model file {}", path.display()))?;
    slb_format::Model::parse(&bytes)
        .with_context(|| format!("{} is not a valid model", path.display()))?;
    Ok(bytes)
}
