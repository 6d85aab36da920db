//! # The SLB model file
//!
//! A compact, versioned, checksummed description of a quantized convolutional network, produced
//! by the trainer's exporter and executed by `slb-runtime`. It is read straight from a borrowed
//! byte slice (a model in a microcontroller's flash) with no allocator: [`Model::parse`] checks
//! the whole file once and returns a zero-copy view whose weights and per-channel parameters
//! borrow from the input bytes.
//!
//! The byte layout, the arithmetic every field stands for and the weight bit layout are specified
//! in `docs/FORMAT.md` at the repository root; this page summarises them.
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
//! field bumps it. A reader accepts every version it knows (today only 1) and rejects a newer
//! one with [`Error::UnsupportedVersion`] instead of guessing; it never silently reads a file
//! written by a newer writer. Writers always write [`VERSION`]. Older versions stay readable as
//! long as the runtime can execute them.
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
mod encode;

pub use error::{Error, Result};
pub use model::*;
pub use pack::{packed_len, row_bytes, CodeReader};
pub use validate::{MAX_LAYERS, MAX_TENSORS};

#[cfg(feature = "alloc")]
pub use encode::{encode, encode_unchecked, f32_bytes, i32_bytes, pack_codes, ModelSpec};

/// The four bytes every model file starts with.
pub const MAGIC: [u8; 4] = *b"SLBM";
/// The format version this crate writes (and the newest it reads).
pub const VERSION: u16 = 1;
/// Bytes before the payload: magic, version, flags, payload length.
pub const HEADER_LEN: usize = 12;
/// Bytes after the payload: the CRC-32.
pub const TRAILER_LEN: usize = 4;
