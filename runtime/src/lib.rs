//! # slb-runtime: allocation-free execution of SLB model files
//!
//! `#![no_std]`, no allocator: the caller hands [`run`] a byte arena whose size the [`Plan`]
//! computed beforehand from tensor lifetimes ([`Plan::arena_bytes`]). Convolutions run on
//! bit-packed popcount kernels (XNOR for W1A1, bit-serial AND + popcount for W{1,2,4}xA{1,2,4,8})
//! or on an unpacked small-integer dot product (A8), each with a plain reference twin; the
//! [`Engine::Float`] executor runs the same graph in `f32` with dequantized weights.
//!
//! ```no_run
//! # fn demo(bytes: &[u8], image: &[u8]) -> slb_runtime::Result<()> {
//! use slb_runtime::{run, Engine, Model, Plan};
//! let model = Model::parse(bytes)?;
//! let plan = Plan::new(&model, Engine::Packed)?;
//! let mut arena = vec![0u8; plan.arena_bytes()];
//! let mut logits = vec![0f32; plan.output_len()];
//! run(&model, &plan, &mut arena, image, &mut logits)?;
//! # Ok(()) }
//! ```
//!
//! See `README.md` for the arena layout, the kernel selection rule and the exact arithmetic.
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
