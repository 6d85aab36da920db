//! The `slb` command line's subcommands (`train`, `export`, `plot`; `eval`, `inspect` and `bench` read
//! packed models and live beside them).

pub mod data_bench;
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

/// The longest `slb bench --seconds`: one hour per engine.
pub const MAX_BENCH_SECONDS: f64 = 3600.0;

/// Parses `slb bench --seconds`: a finite number of seconds in (0, [`MAX_BENCH_SECONDS`]].
pub fn parse_seconds(s: &str) -> std::result::Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if v.is_finite() && v > 0.0 && v <= MAX_BENCH_SECONDS {
        Ok(v)
    } else {
        Err(format!(
            "must be more than 0 and at most {MAX_BENCH_SECONDS} seconds, but got {s}"
        ))
    }
}

/// An error and its causes on one line, for the command line: each cause once (a cause whose
/// text its parent already shows, as `thiserror` messages that embed their source do, is not
/// repeated), libtorch's C++ backtrace cut, line breaks folded.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = crate::error::one_line_torch(&cause.to_string());
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
