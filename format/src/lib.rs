//! # The SLB model file
//!
//! A compact, versioned, checksummed description of a quantized convolutional network, produced
//! by the trainer's exporter and executed by `slb-runtime`. It is read straight from a borrowed
//! byte slice (a model in a microcontroller's flash) with no allocator: [`Model::parse`] checks
//! the whole file once and returns a zero-copy view whose weights and per-channel parameters
//! borrow from the input bytes. Files are written with [`ModelBuilder`] (feature `alloc`),
//! which owns the tensors and layers and validates what it encodes with the same parser.
//!
//! The byte layout, the arithmetic every field stands for, the weight bit layout and the
//! validation rules are specified in `docs/FORMAT.md` at the repository root (complete enough
//! to write another reader); this page summarises them. [`Model::parse`] has been fuzzed with
//! 10,000,000 inputs (cargo-fuzz, debug assertions on) without a panic; commands, counts and
//! results are recorded in `docs/RELIABILITY.md`.
//!
//! ## Container
//! ```text
//! offset  size  field
//! 0       4     magic  b"SLBM"
//! 4       2     format version, u16 little-endian (this crate writes VERSION)
//! 6       2     flags, u16 LE, must be 0 (reserved)
//! 8       4     payload length n, u32 LE
//! 12      n     payload: postcard encoding of the model description
//! 12+n    4     CRC-32 (IEEE, as zlib) of the payload, u32 LE
//! ```
//!
//! ## Versioning policy
//! The version is a single number. Any change to the payload's encoding or to the meaning of a
//! field bumps it (postcard has no skippable fields, so even an added field or enum variant
//! does). A reader accepts every version it knows (today only 1) and rejects a newer one, and
//! 0, with [`Error::UnsupportedVersion`] instead of guessing; it never silently reads a file
//! written by a newer writer. Writers always write [`VERSION`]. Older versions stay readable as
//! long as the runtime can execute them. The reserved header flags must be 0. A new validation
//! rule that only rejects files no runtime could execute correctly does not bump the version.
//!
//! ## Payload
//! The payload is the postcard encoding of: name (`&str`), [`InputSpec`], tensor count (`u16`),
//! tensor table (bytes holding that many [`TensorDesc`] records), layer count (`u16`), layer
//! table (bytes holding that many [`Layer`] records), output tensor id (`u16`). Per-channel
//! arrays ([`F32s`], [`I32s`]) are little-endian byte arrays borrowed in place. Enum tags are
//! the variants' declaration order: never reorder variants or fields.
//!
//! ## Example
//! ```
//! use slb_format::*;
//! let q = |scale, zero_point, bits| DType::Quant { scale, zero_point, bits };
//! let input = OwnedInput {
//!     shape: Shape::new(1, 2, 2), mean: f32_bytes(&[0.5]), std: f32_bytes(&[0.25]),
//!     classes: "a\nb".into(), tensor: 0, lut: (0..=255).collect(),
//! };
//! let mut b = ModelBuilder::new("g", input);
//! let x = b.tensor(Shape::new(1, 2, 2), q(0.5, 128, 8))?;
//! let y = b.tensor(Shape::new(2, 2, 2), q(1.0, 1, 2))?;
//! let pooled = b.tensor(Shape::new(2, 1, 1), DType::F32)?;
//! let logits = b.tensor(Shape::new(2, 1, 1), DType::F32)?;
//! b.layer(OwnedLayer::Conv(OwnedConv {
//!     input: x, output: y, out_channels: 2, in_channels: 1, kernel: [1, 1], stride: [1, 1],
//!     padding: [0, 0], groups: 1, weight_bits: 1,
//!     codes: pack_codes(&[1, 0], 2, [1, 1], 1, 1)?, // two 1x1 filters, 1-bit codes
//!     requant: OwnedRequant {
//!         raw: RawQuant { mult: 3, shift: 2, zero_point: 1, bits: 2, scale: 1.0 },
//!         affine: None,
//!     },
//! }));
//! b.layer(OwnedLayer::GlobalAvgPool(Unary { input: y, output: pooled }));
//! b.layer(OwnedLayer::Dense(OwnedDense {
//!     input: pooled, output: logits,
//!     weights: OwnedDenseWeights::F32(f32_bytes(&[1.0, 0.0, 0.0, -1.0])),
//!     bias: f32_bytes(&[0.0, 0.5]),
//! }));
//! b.output = logits;
//! let bytes = b.build()?; // encoded, then validated by `Model::parse`
//! assert_eq!(bytes.len(), 386);
//!
//! // In flash: no allocator needed from here on.
//! let model = Model::parse(&bytes)?;
//! let Some(Layer::Conv(conv)) = model.layers.get(0) else { unreachable!() };
//! assert_eq!(CodeReader::new(&conv).numerator(0, 0, 0, 0), 1); // code 1 of 1 bit: +1
//! assert_eq!(Model::parse(&bytes[..100]).unwrap_err(), Error::Truncated { needed: 386, got: 100 });
//! # Ok::<(), Error>(())
//! ```
//!
//! ## Numbers
//! * A `b`-bit weight code `k` stands for `(2k - (2^b - 1)) / (2^b - 1)` (SLB's discrete sets,
//!   never zero). Kernels work with the odd integer numerator `2k - (2^b - 1)`.
//! * An activation tensor of dtype [`DType::Quant`] holds codes `q`; for 2, 4 and 8 bits its real
//!   value is `scale * (q - zero_point)`; for 1 bit it is `scale * (2q - 1)` (a sign) and the
//!   zero point must be 0.
//! * Requantization is integer-only (see [`RawQuant`], [`ChannelAffine`], [`AddParams`]); the
//!   float scales are stored alongside so that a float executor can run the same graph.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![deny(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;

mod error;
mod model;
mod pack;
mod validate;

#[cfg(feature = "alloc")]
mod build;
#[cfg(feature = "alloc")]
mod encode;

pub use error::{Error, Result, Site};
pub use model::*;
pub use pack::{packed_len, row_bytes, CodeReader};
pub use validate::{MAX_LAYERS, MAX_TENSORS};

#[cfg(feature = "alloc")]
pub use build::{
    ModelBuilder, OwnedAdd, OwnedAddParams, OwnedAffine, OwnedConv, OwnedDense, OwnedDenseWeights,
    OwnedInput, OwnedLayer, OwnedRequant,
};
#[cfg(feature = "alloc")]
pub use encode::{f32_bytes, i32_bytes, pack_codes};

/// The four bytes every model file starts with.
pub const MAGIC: [u8; 4] = *b"SLBM";
/// The format version this crate writes (and the newest it reads).
pub const VERSION: u16 = 1;
/// Bytes before the payload: magic, version, flags, payload length.
pub const HEADER_LEN: usize = 12;
/// Bytes after the payload: the CRC-32.
pub const TRAILER_LEN: usize = 4;
