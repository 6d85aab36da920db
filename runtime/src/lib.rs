#![doc = include_str!("../README.md")]
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![deny(missing_docs)]

mod error;
mod exec;
mod float;
mod kernels;
mod plan;
mod quant;

pub use error::{Error, Result};
pub use exec::{prepare, run, run_with_busy_pin};
pub use kernels::{Algo, KernelKind};
pub use plan::{Engine, Plan, PlanOptions, MAX_LAYERS, MAX_TENSORS};
pub use slb_format::Model;

/// Reference kernels and kernel-level entry points, exposed for benchmarks and tests.
///
/// These run one convolution's raw sums outside a model (see `kernels/CONTRACT.md`); most
/// users only need [`run`].
pub mod bench {
    pub use crate::kernels::bench::*;
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;
