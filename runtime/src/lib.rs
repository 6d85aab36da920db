#![doc = include_str!("../README.md")]
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![deny(missing_docs)]

mod arena;
mod error;
mod exec;
mod float;
mod kernels;
mod layers;
mod packed;
mod plan;
mod quant;

pub use error::{Error, Result};
#[cfg(feature = "embedded-hal")]
pub use exec::run_with_busy_pin;
pub use exec::{prepare, run, run_observed, LayerEvent};
pub use kernels::{Algo, CostModel, KernelKind};
pub use plan::{Engine, Plan, PlanChoice, PlanOptions, MAX_LAYERS, MAX_TENSORS};
pub use slb_format::Model;

/// The environment variable that hides AVX-512 (and with it AMX) from the x86-64 kernels'
/// CPU detection (with `std`): set to anything but empty or `0`, the runtime plans and runs as
/// on a CPU without them (an AVX2-only core, with its cost table), to measure one instruction
/// set against the other on one machine, as oneDNN's `ONEDNN_MAX_CPU_ISA` does. Read once,
/// at the first detection in the process.
pub const NO_AVX512_VAR: &str = "SLB_NO_AVX512";

#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;
