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
    /// A libtorch operation failed (shown without libtorch's C++ backtrace).
    #[error("libtorch: {}", torch_message(.0))]
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
    /// The loss became NaN or infinite; the last good checkpoint is kept (the message says
    /// so only when one exists).
    #[error(
        "loss is {value} at epoch {epoch}, step {step}: training stopped; {}",
        kept(checkpoint)
    )]
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
    /// Another process holds the lock on the output folder.
    #[error(
        "output folder {} is in use by another slb run{}: wait for it to finish or choose \
         another --out",
        path.display(),
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    OutputBusy {
        /// The output folder.
        path: PathBuf,
        /// The holder's process id, as it wrote it in the lock file.
        pid: Option<u32>,
    },
    /// Not enough free space for a file about to be written.
    #[error(
        "not enough free space in {}: {needed} bytes needed, {available} available",
        path.display()
    )]
    DiskFull {
        /// The folder written to.
        path: PathBuf,
        /// Bytes needed.
        needed: u64,
        /// Bytes free.
        available: u64,
    },
    /// A run cannot continue from its checkpoint (finished, or made for other data).
    #[error("cannot resume from {}: {msg}", path.display())]
    Resume {
        /// The checkpoint.
        path: PathBuf,
        /// Why.
        msg: String,
    },
    /// A data-parallel launch setting is wrong, or the launcher could not start the ranks.
    #[error("{0}")]
    Launch(String),
    /// A collective or the process group of a data-parallel run failed on this rank.
    #[error("rank {rank}: {msg}")]
    Dist {
        /// This process's rank.
        rank: usize,
        /// What failed, and which ranks did not report it.
        msg: String,
    },
    /// Every training image of an epoch was skipped (unreadable or undecodable files).
    #[error(
        "epoch {epoch} trained on no image: all {skipped} files of its batches were skipped \
         (unreadable or undecodable; the warnings above name them)"
    )]
    NothingTrained {
        /// The epoch.
        epoch: i64,
        /// Files skipped in it.
        skipped: u64,
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

/// A libtorch error's message without the C++ backtrace libtorch appends (`Exception raised
/// from ...` and its `frame #N` lines), on one line.
pub fn torch_message(e: &tch::TchError) -> String {
    one_line_torch(&e.to_string())
}

/// [`torch_message`] on text.
pub fn one_line_torch(text: &str) -> String {
    let cut = [
        "Exception raised from",
        "\nframe #",
        "(most recent call first)",
    ]
    .iter()
    .filter_map(|m| text.find(m))
    .min()
    .unwrap_or(text.len());
    let words: Vec<&str> = text[..cut].split_whitespace().collect();
    words.join(" ")
}

fn kept(checkpoint: &str) -> String {
    if !checkpoint.is_empty() && std::path::Path::new(checkpoint).is_file() {
        format!("the last good checkpoint ({checkpoint}) is left untouched")
    } else {
        "no checkpoint was written before it (nothing to resume from)".into()
    }
}
