//! The trainer's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the trainer library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An algorithm or recipe setting is out of range (the message names the setting and the
    /// accepted values, as Golden Stick's validation does).
    #[error("{0}")]
    Config(String),
    /// A configuration file could not be read or parsed.
    #[error("cannot read config {path}: {msg}")]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        msg: String,
    },
    /// A libtorch operation failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A checkpoint is missing a piece or does not match the configured network.
    #[error("checkpoint {path}: {msg}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// The loss became NaN or infinite; the last good checkpoint is kept.
    #[error("loss is {value} at epoch {epoch}, step {step}: training stopped; the last good checkpoint ({checkpoint}) is left untouched")]
    NonFiniteLoss {
        /// The loss value.
        value: f64,
        /// Epoch (1-based, counting has_trained_epoch).
        epoch: i64,
        /// Step inside the epoch.
        step: i64,
        /// The checkpoint that survives.
        checkpoint: String,
    },
    /// Export failed (the model does not fit the file format).
    #[error("export: {0}")]
    Export(String),
    /// The model file writer rejected the model.
    #[error("model format: {0}")]
    Format(#[from] slb_format::Error),
}

/// The trainer's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A configuration error with a message.
    pub fn config(msg: impl Into<String>) -> Error {
        Error::Config(msg.into())
    }

    pub(crate) fn io(what: &'static str, path: &std::path::Path, source: std::io::Error) -> Error {
        Error::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}
