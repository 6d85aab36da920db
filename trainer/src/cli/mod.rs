//! The `slb` command line's subcommands (`train`, `export`, `plot`; `eval`, `inspect` and `bench` read
//! packed models and live beside them).

pub mod export;
pub mod plot;
pub mod train;

use tch::Device;

use crate::error::{Error, Result};

/// Parses `cpu`, `cuda` or `cuda:N`; CUDA must be available.
pub fn parse_device(s: &str) -> Result<Device> {
    let d = match s {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        s if s.starts_with("cuda:") => Device::Cuda(s[5..].parse().map_err(|_| {
            Error::config(format!("bad device {s:?}: expected cpu, cuda or cuda:N"))
        })?),
        s => {
            return Err(Error::config(format!(
                "bad device {s:?}: expected cpu, cuda or cuda:N"
            )))
        }
    };
    if d.is_cuda() && !tch::Cuda::is_available() {
        return Err(Error::config(format!(
            "device {s} requested but CUDA is not available"
        )));
    }
    Ok(d)
}
