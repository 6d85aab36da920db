//! The data loaders' error type.

use std::path::{Path, PathBuf};

use super::Split;

/// Why a dataset could not be loaded. Every variant names the file (and, inside an archive, the
/// member) it is about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// `streaming = "always"` on a dataset that is not an image-folder tree on disk.
    #[error(
        "{} cannot be streamed: only an image-folder tree on disk (train/<class>/*.jpg) can; \
         set streaming = \"auto\" or \"never\" for CIFAR binaries and archives",
        path.display()
    )]
    NotStreamable {
        /// The path given.
        path: PathBuf,
    },
    /// The path does not exist.
    #[error("dataset path {} does not exist", path.display())]
    NotFound {
        /// The path given.
        path: PathBuf,
    },
    /// The path is neither a CIFAR-10 binary folder, an image-folder tree nor an archive.
    #[error(
        "{} is not a dataset: expected a CIFAR-10 binary folder (data_batch_*.bin, \
         test_batch.bin), an image-folder tree (train/<class>/*.jpg, test/<class>/*.jpg) \
         or a .tar/.tar.xz archive of one",
        path.display()
    )]
    UnknownLayout {
        /// The path given.
        path: PathBuf,
    },
    /// The dataset has no images for the requested split.
    #[error("no {split} images found in {}", path.display())]
    Empty {
        /// The dataset's path.
        path: PathBuf,
        /// The split asked for.
        split: Split,
    },
    /// A file or folder could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An archive could not be decompressed or its tar structure is broken.
    #[error("cannot read archive {}{}: {source}", archive.display(), in_member(member))]
    Archive {
        /// The archive file.
        archive: PathBuf,
        /// The member being read when it failed, if any.
        member: Option<String>,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An image file could not be decoded.
    #[error("cannot decode image {}{}: {source}", path.display(), in_member(member))]
    Decode {
        /// The image file, or the archive holding it.
        path: PathBuf,
        /// The archive member, when `path` is an archive.
        member: Option<String>,
        /// The decoder's error.
        source: image::ImageError,
    },
    /// An image's size differs from the first image's.
    #[error(
        "image {}{} is {}x{} (width x height) but the dataset's images are {}x{}",
        path.display(), in_member(member), found.0, found.1, expected.0, expected.1
    )]
    SizeMismatch {
        /// The image file, or the archive holding it.
        path: PathBuf,
        /// The archive member, when `path` is an archive.
        member: Option<String>,
        /// The size of the first image (width, height).
        expected: (usize, usize),
        /// This image's size (width, height).
        found: (usize, usize),
    },
    /// A CIFAR binary batch file's length is not a whole number of records.
    #[error(
        "CIFAR batch file {} is truncated or not a CIFAR-10 batch: {len} bytes is not a \
         positive multiple of the {record}-byte record",
        path.display()
    )]
    Truncated {
        /// The batch file.
        path: PathBuf,
        /// Its length in bytes.
        len: u64,
        /// The record length (1 label byte + 3072 image bytes).
        record: usize,
    },
    /// A CIFAR binary record's label has no class name.
    #[error(
        "CIFAR batch file {}, record {record}: label {label} but only {classes} classes",
        path.display()
    )]
    BadLabel {
        /// The batch file.
        path: PathBuf,
        /// The record's index in the file.
        record: usize,
        /// The label byte.
        label: u8,
        /// Number of class names.
        classes: usize,
    },
    /// A class folder (or an archive's class prefix) holds no image.
    #[error(
        "class folder {}{} holds no .jpg, .jpeg or .png image: remove it or add images \
         (an empty folder would still count as a class and shift every later label)",
        path.display(), in_member(member)
    )]
    EmptyClass {
        /// The class folder, or the archive holding it.
        path: PathBuf,
        /// The class's member prefix, when `path` is an archive.
        member: Option<String>,
    },
    /// A class folder is a link back to its own split folder or above it.
    #[error(
        "class folder {} links back to {} (a loop): remove the link",
        path.display(), target.display()
    )]
    LinkLoop {
        /// The class folder (the link).
        path: PathBuf,
        /// Where it leads.
        target: PathBuf,
    },
    /// A file or folder name that is not UTF-8 (class names are stored in the model as text).
    #[error(
        "{}{}: the name is not valid UTF-8; rename it (class and image names must be UTF-8)",
        path.display(), in_member(member)
    )]
    NonUtf8Name {
        /// The file or folder (lossily shown), or the archive holding it.
        path: PathBuf,
        /// The archive member (lossily shown), when `path` is an archive.
        member: Option<String>,
    },
    /// An image is larger than the loader accepts (its file size or its pixel dimensions).
    #[error("image {}{} is too large: {detail}", path.display(), in_member(member))]
    ImageTooLarge {
        /// The image file, or the archive holding it.
        path: PathBuf,
        /// The archive member, when `path` is an archive.
        member: Option<String>,
        /// The size found and the limit.
        detail: String,
    },
    /// The decoded images do not fit in memory.
    #[error(
        "the {count} decoded images of {} need {bytes} bytes, which cannot be allocated; \
         use train_per_class / test_per_class or smaller images",
        path.display()
    )]
    DatasetTooLarge {
        /// The dataset.
        path: PathBuf,
        /// Number of images.
        count: usize,
        /// Bytes needed.
        bytes: u128,
    },
    /// A dataset's class names differ from the reference list (the training split's, or the
    /// model's), by name.
    #[error("{}", class_mismatch(context, missing, extra, none_shared))]
    ClassMismatch {
        /// What is compared ("test split of data/ vs training split").
        context: String,
        /// Reference classes the dataset lacks.
        missing: Vec<String>,
        /// Dataset classes the reference lacks.
        extra: Vec<String>,
        /// No class name is shared at all (matching by name cannot help).
        none_shared: bool,
    },
}

fn class_mismatch(
    context: &str,
    missing: &[String],
    extra: &[String],
    none_shared: &bool,
) -> String {
    let list = |v: &[String]| {
        let shown: Vec<&str> = v.iter().take(8).map(String::as_str).collect();
        let more = if v.len() > 8 {
            format!(" and {} more", v.len() - 8)
        } else {
            String::new()
        };
        format!("[{}]{more}", shown.join(", "))
    };
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("missing {}", list(missing)));
    }
    if !extra.is_empty() {
        parts.push(format!("not in the reference {}", list(extra)));
    }
    let hint = if *none_shared {
        "no class name is shared, so labels cannot be matched by name"
    } else {
        "pass --allow-class-mismatch to match labels by name and leave out images of classes \
         the reference lacks"
    };
    format!(
        "class names differ ({context}): {}; {hint}",
        parts.join(", ")
    )
}

fn in_member(member: &Option<String>) -> String {
    match member {
        Some(m) => format!(" (archive member {m})"),
        None => String::new(),
    }
}

impl DataError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> DataError {
        DataError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
