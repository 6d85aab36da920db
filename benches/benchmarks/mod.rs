//! The benchmark modules of `benches/main.rs`.

pub mod common;
pub mod conv;
pub mod cputime;
pub mod kernels;
pub mod network;
#[cfg(feature = "torch")]
pub mod torch;
