//! Umbrella crate: re-exports the format and runtime for the examples and benches.
#![deny(missing_docs)]
pub use slb_format as format;
pub use slb_runtime as runtime;

pub mod synth;
