//! # slb-trainer
//!
//! SLB (Searching for Low-Bit weights) quantization-aware training on libtorch (`tch`):
//! the algorithm object ([`algo::SlbQuantAwareTraining`]), SLB convolutions and activation
//! quantizers ([`nn`]), the four networks, the training loop with atomic checkpoints
//! ([`train`]), the exporter to the `slb-format` model file ([`export`]) and the `slb` command
//! line ([`cli`]). Data loading and on-device augmentation live in [`data`].
#![deny(missing_docs)]

pub mod algo;
pub mod cli;
pub mod config;
pub mod cuda;
pub mod data;
pub mod dist;
pub mod error;
pub mod export;
pub mod lock;
pub mod nn;
pub mod tools;
pub mod train;

pub use algo::{QuantDtype, SlbQuantAwareTraining, Temperature};
pub use error::{Error, Result};
