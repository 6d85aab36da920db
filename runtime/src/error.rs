//! The crate's error type.

use core::fmt;

use slb_format::Site;

/// Everything `Plan::new`, `prepare` and `run` can reject. Nothing in this crate panics on a
/// model that `Model::parse` accepted or on buffers of the wrong size; it returns one of these.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// The arena is smaller than [`crate::Plan::arena_bytes`].
    ArenaTooSmall {
        /// Bytes the plan needs.
        needed: usize,
        /// Bytes given.
        got: usize,
    },
    /// The image does not have `H * W * C` bytes.
    InputSize {
        /// Expected length in bytes.
        expected: usize,
        /// Length given.
        got: usize,
    },
    /// The logits slice does not have the model's output length.
    OutputSize {
        /// Expected number of `f32`s.
        expected: usize,
        /// Number given.
        got: usize,
    },
    /// A layer this runtime (or the chosen engine) cannot execute.
    Unsupported {
        /// The layer, or the model as a whole.
        layer: Site,
        /// What is not supported.
        what: &'static str,
    },
    /// The model has more layers or tensors than a plan can hold ([`crate::MAX_LAYERS`],
    /// [`crate::MAX_TENSORS`]).
    TooManyLayers,
    /// A size computation overflows `usize`.
    Overflow {
        /// Which size.
        what: &'static str,
    },
    /// The plan was made for another model (shapes or weights differ).
    PlanMismatch {
        /// The layer where the difference was found, or the model as a whole.
        layer: Site,
    },
    /// A forced kernel (see [`crate::PlanOptions`]) cannot run this layer or this CPU.
    KernelUnavailable {
        /// Layer index.
        layer: u16,
        /// The kernel's name.
        kernel: &'static str,
    },
    /// The model file is invalid.
    Format(slb_format::Error),
    /// The busy/idle pin could not be driven.
    Pin,
}

/// Result with the crate's [`Error`].
pub type Result<T> = core::result::Result<T, Error>;

impl From<slb_format::Error> for Error {
    fn from(e: slb_format::Error) -> Self {
        Error::Format(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::ArenaTooSmall { needed, got } => {
                write!(
                    f,
                    "arena too small: the plan needs {needed} bytes, got {got}"
                )
            }
            Error::InputSize { expected, got } => {
                write!(
                    f,
                    "input image has {got} bytes, the model needs {expected} (H*W*C)"
                )
            }
            Error::OutputSize { expected, got } => {
                write!(
                    f,
                    "output slice holds {got} values, the model produces {expected}"
                )
            }
            Error::Unsupported { layer, what } => match layer {
                Site::Model => write!(f, "unsupported model: {what}"),
                Site::Tensor(i) => write!(f, "tensor {i}: unsupported {what}"),
                Site::Layer(i) => write!(f, "layer {i}: unsupported {what}"),
            },
            Error::TooManyLayers => write!(
                f,
                "model has more than {} layers or {} tensors",
                crate::MAX_LAYERS,
                crate::MAX_TENSORS
            ),
            Error::Overflow { what } => write!(f, "{what} overflows"),
            Error::PlanMismatch { layer } => match layer {
                Site::Model => write!(f, "the plan was made for another model"),
                Site::Tensor(_) | Site::Layer(_) => {
                    write!(f, "the plan was made for another model ({layer} differs)")
                }
            },
            Error::KernelUnavailable { layer, kernel } => {
                write!(
                    f,
                    "layer {layer}: kernel {kernel} is not available for it here"
                )
            }
            Error::Format(e) => write!(f, "invalid model: {e}"),
            Error::Pin => write!(f, "could not drive the busy pin"),
        }
    }
}

impl core::error::Error for Error {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Error::Format(e) => Some(e),
            _ => None,
        }
    }
}
