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

#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;
