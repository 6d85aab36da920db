//! The crate's error type.

use core::fmt;

use crate::Shape;

/// Everything that can be wrong with a model file. Parsing never panics; it returns one of these.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// The input ends before the container says it should.
    Truncated {
        /// Bytes the container needs.
        needed: usize,
        /// Bytes available.
        got: usize,
    },
    /// Bytes follow the checksum.
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// The file does not start with `SLBM`.
    BadMagic([u8; 4]),
    /// The file was written by a newer (or unknown) format version.
    UnsupportedVersion {
        /// Version in the file.
        found: u16,
        /// Newest version this reader knows.
        supported: u16,
    },
    /// Reserved header flags are set.
    UnknownFlags(u16),
    /// The payload's CRC-32 does not match the stored one (corruption).
    ChecksumMismatch {
        /// CRC stored in the file.
        stored: u32,
        /// CRC of the bytes read.
        computed: u32,
    },
    /// The payload (or a record inside it) is not a valid postcard encoding.
    Malformed {
        /// Which part failed to decode.
        what: &'static str,
    },
    /// A tensor id that does not exist.
    UnknownTensor {
        /// Where: the model or a layer.
        layer: Site,
        /// The id.
        tensor: u16,
    },
    /// A tensor is read before any layer wrote it, or written twice.
    Dataflow {
        /// Where: the model or a layer.
        layer: Site,
        /// The tensor.
        tensor: u16,
        /// What went wrong.
        what: &'static str,
    },
    /// A bit width outside its allowed set.
    BadBits {
        /// Where: the model or a layer.
        layer: Site,
        /// Which width.
        what: &'static str,
        /// The value found.
        bits: u8,
    },
    /// A packed array's length does not match the shape.
    Length {
        /// Where: the model or a layer.
        layer: Site,
        /// Which array.
        what: &'static str,
        /// Expected length in bytes.
        expected: usize,
        /// Length found.
        got: usize,
    },
    /// Shapes that do not chain.
    ShapeMismatch {
        /// Where: the model or a layer.
        layer: Site,
        /// Which tensor.
        what: &'static str,
        /// Shape implied by the layer.
        expected: Shape,
        /// Shape declared by the tensor.
        got: Shape,
    },
    /// A parameter out of range (zero stride, groups not dividing channels, bad scale, ...).
    InvalidParam {
        /// Where: the model or a layer.
        layer: Site,
        /// Which parameter and why.
        what: &'static str,
    },
    /// A size computation overflows.
    Overflow {
        /// Where: the model or a layer.
        layer: Site,
        /// Which size.
        what: &'static str,
    },
    /// The model's output is not an F32 tensor written by a layer.
    BadOutput,
}

/// Result with the crate's [`Error`].
pub type Result<T> = core::result::Result<T, Error>;

/// Where in a model a problem lies: the model as a whole (its container, input or output), one
/// tensor of its tensor table, or one layer, by index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site {
    /// The model as a whole.
    Model,
    /// The tensor of this id.
    Tensor(u16),
    /// The layer of this index.
    Layer(u16),
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Site::Model => f.write_str("model"),
            Site::Tensor(i) => write!(f, "tensor {i}"),
            Site::Layer(i) => write!(f, "layer {i}"),
        }
    }
}

fn shape(s: &Shape) -> impl fmt::Display + '_ {
    struct D<'s>(&'s Shape);
    impl fmt::Display for D<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{}x{}x{}", self.0.c, self.0.h, self.0.w)
        }
    }
    D(s)
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated { needed, got } => {
                write!(f, "truncated model file: needs {needed} bytes, has {got}")
            }
            Error::TrailingBytes { extra } => {
                write!(f, "{extra} unexpected bytes after the model's checksum")
            }
            Error::BadMagic(m) => write!(f, "not an SLB model file (magic {m:02x?}, expected \"SLBM\")"),
            Error::UnsupportedVersion { found, supported } => write!(
                f,
                "model format version {found} is not supported (this build reads up to {supported}); upgrade slb"
            ),
            Error::UnknownFlags(x) => write!(f, "unknown header flags {x:#06x}"),
            Error::ChecksumMismatch { stored, computed } => write!(
                f,
                "model file is corrupt: CRC-32 {computed:#010x} does not match stored {stored:#010x}"
            ),
            Error::Malformed { what } => write!(f, "malformed model file: cannot decode {what}"),
            Error::UnknownTensor { layer, tensor } => {
                write!(f, "{}: tensor {tensor} does not exist", layer)
            }
            Error::Dataflow { layer, tensor, what } => {
                write!(f, "{}: tensor {tensor} {what}", layer)
            }
            Error::BadBits { layer, what, bits } => {
                write!(f, "{}: {what} of {bits} bits is not allowed", layer)
            }
            Error::Length { layer, what, expected, got } => write!(
                f,
                "{}: {what} has {got} bytes, the shape needs {expected}",
                layer
            ),
            Error::ShapeMismatch { layer, what, expected, got } => write!(
                f,
                "{}: {what} is {} but the layer needs {}",
                layer,
                shape(got),
                shape(expected)
            ),
            Error::InvalidParam { layer, what } => write!(f, "{}: invalid {what}", layer),
            Error::Overflow { layer, what } => write!(f, "{}: {what} overflows", layer),
            Error::BadOutput => f.write_str("the model's output is not an F32 tensor written by a layer"),
        }
    }
}

impl core::error::Error for Error {}
