//! Training data: loaders for the CIFAR-10 binary format and for image-folder trees (on disk or
//! inside a `.tar` / `.tar.xz` archive), and whole-batch augmentation on the training device.
//!
//! Images are decoded once (in parallel, with rayon) into one `u8` buffer in HWC order
//! ([`Dataset`]); [`DeviceData`] keeps that buffer on the training device and hands out shuffled
//! batches; [`Augment`] turns a `u8` NHWC batch into the normalised `f32` NCHW tensor the network
//! reads, with random crop and flip done by index arithmetic on the device (no host loop, no
//! host synchronisation).
//!
//! The normalisation formula lives in one place, [`normalise_value`]; the exporter builds the
//! packed model's input look-up table from it and [`Augment`] computes exactly the same `f32`
//! values on the device.
//!
//! Layouts [`load`] accepts:
//! * a CIFAR-10 binary folder (`data_batch_1.bin` .. `data_batch_5.bin`, `test_batch.bin`,
//!   optional `batches.meta.txt`), or a folder that contains one (`cifar-10-batches-bin/`);
//! * an image-folder tree `root/{train,test}/<class>/*.{jpg,jpeg,png}` (classes in sorted name
//!   order, as torchvision's `ImageFolder`), also one level down (`root/cifar10/train/..`);
//! * a `.tar`, `.tar.xz` or `.txz` archive holding such a tree, read in one streaming pass.
//!
//! The test split of an image-folder tree is `test/`, or `val/` where there is no `test/`.
//!
//! A tree too large for memory (ImageNet) is streamed instead ([`StreamData`]): files are
//! decoded per batch by worker threads, with torchvision's ImageNet transforms
//! ([`Transform`]); [`use_streaming`] decides which path a dataset takes. Both paths serve
//! batches through [`BatchSource`], in the order [`order`] defines.

mod augment;
mod cifar_bin;
mod decode;
mod device;
mod error;
mod folder;
pub mod order;
mod stream;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;

pub use augment::{
    normalise_value, Augment, Normalization, CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD,
};
pub use decode::{center_crop_rect, decode_into, random_resized_crop, Rect, Transform};
pub use device::DeviceData;
pub use error::DataError;
pub use folder::{MAX_IMAGE_FILE_BYTES, MAX_IMAGE_SIDE};
pub use order::Shard;
pub use stream::{StreamData, StreamOptions};

/// An epoch's batches: `u8` NHWC images and `i64` labels on the source's device.
pub type BatchIter<'a> = Box<dyn Iterator<Item = (tch::Tensor, tch::Tensor)> + 'a>;

/// A rank's parts of an epoch's global batches: `u8` NHWC images, `i64` labels, and the number
/// of images of the global batch they are part of (the same on every rank).
pub type ShardIter<'a> = Box<dyn Iterator<Item = (tch::Tensor, tch::Tensor, i64)> + 'a>;

/// Where training and evaluation batches come from: a dataset resident on the device
/// ([`DeviceData`]) or one streamed from disk ([`StreamData`]).
pub trait BatchSource {
    /// Number of images (of this rank's whole split, before any is skipped).
    fn len(&self) -> usize;

    /// Whether there are no images.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The device batches are delivered on.
    fn device(&self) -> tch::Device;

    /// One epoch of batches of `batch` images (the last, and any with skipped files, shorter),
    /// shuffled by `seed` when `shuffle`, else in stored order.
    fn epoch(&self, batch: i64, shuffle: bool, seed: u64) -> BatchIter<'_>;

    /// One epoch in the order of [`order`]: global batches of `batch` images (shuffled by
    /// `seed` when `shuffle`), of which this rank, `shard`, gets its interleaved part, with the
    /// global batch's size. Every global batch yields one item on every rank, even one whose
    /// part here is empty (a data-parallel step needs every rank), so all ranks take the same
    /// number of steps.
    fn shard_epoch(&self, batch: i64, shuffle: bool, seed: u64, shard: Shard) -> ShardIter<'_>;

    /// Files skipped so far (unreadable or undecodable), over the source's life.
    fn skipped(&self) -> u64 {
        0
    }
}

impl BatchSource for DeviceData {
    fn len(&self) -> usize {
        DeviceData::len(self)
    }

    fn device(&self) -> tch::Device {
        DeviceData::device(self)
    }

    fn epoch(&self, batch: i64, shuffle: bool, seed: u64) -> BatchIter<'_> {
        Box::new(self.batches(batch, shuffle, seed))
    }

    fn shard_epoch(&self, batch: i64, shuffle: bool, seed: u64, shard: Shard) -> ShardIter<'_> {
        Box::new(self.shard_batches(batch, shuffle, seed, shard))
    }
}

/// Which loader a dataset uses (`streaming` in the configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Streaming {
    /// Stream an image-folder tree on disk when its images differ in size or would take more
    /// than [`STREAM_ABOVE_BYTES`] decoded; everything else in memory.
    #[default]
    Auto,
    /// Always stream (only an image-folder tree on disk can be streamed).
    Always,
    /// Never stream: decode everything into memory (every image must have one size).
    Never,
}

/// Decoded size above which `streaming = "auto"` streams: 8 GiB.
pub const STREAM_ABOVE_BYTES: u64 = 8 << 30;

/// Whether the dataset at `path` is streamed under `mode`: a sample of the training split's
/// headers (up to 64 files spread over it) estimates the decoded size. CIFAR binaries and
/// archives are never streamed (`Always` on them is an error naming the path).
pub fn use_streaming(path: &Path, mode: Streaming) -> Result<bool, DataError> {
    if mode == Streaming::Never {
        return Ok(false);
    }
    let root = if path.is_dir() && cifar_bin::find(path).is_none() {
        folder::find_root(path)
    } else {
        None
    };
    let Some(root) = root else {
        return match mode {
            Streaming::Always => Err(DataError::NotStreamable {
                path: path.to_path_buf(),
            }),
            _ => Ok(false),
        };
    };
    if mode == Streaming::Always {
        return Ok(true);
    }
    let (files, _) = folder::list_tree(&root, Split::Train, None)?;
    if files.is_empty() {
        return Ok(false);
    }
    let step = (files.len() / 64).max(1);
    let mut sizes = Vec::new();
    for (p, _) in files.iter().step_by(step).take(64) {
        let Ok(r) = image::ImageReader::open(p).and_then(|r| r.with_guessed_format()) else {
            continue;
        };
        if let Ok(d) = r.into_dimensions() {
            sizes.push(d);
        }
    }
    let mixed = sizes.windows(2).any(|w| w[0] != w[1]);
    let mean_px = sizes
        .iter()
        .map(|&(w, h)| u64::from(w) * u64::from(h))
        .sum::<u64>()
        / sizes.len().max(1) as u64;
    Ok(mixed || mean_px * 3 * files.len() as u64 > STREAM_ABOVE_BYTES)
}

/// The class names of CIFAR-10 in label order (used when a binary folder has no
/// `batches.meta.txt`).
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Which part of a dataset to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// The training images (`train/`, `data_batch_*.bin`).
    Train,
    /// The held-out images (`test/`, `test_batch.bin`).
    Test,
}

impl Split {
    /// The folder name of this split in an image-folder tree (`"train"` or `"test"`).
    pub fn dir_name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.dir_name())
    }
}

/// Decoded images of one split, all of the same size, with their labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    /// `len() * height * width * 3` bytes: the images one after another, each in HWC (RGB) order.
    pub images: Vec<u8>,
    /// One label per image, an index into `classes`.
    pub labels: Vec<i64>,
    /// Image height in pixels.
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// Class names in label order.
    pub classes: Vec<String>,
}

impl Dataset {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes per image (`height * width * 3`).
    pub fn image_len(&self) -> usize {
        self.height * self.width * 3
    }

    /// Image `i` in HWC order. Panics if `i >= len()`, like slice indexing.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// A stratified subset: for each class, `per_class` images (all of them where the class has
    /// fewer) drawn at random with `seed`; the same seed always gives the same subset. The kept
    /// images stay in their original order.
    pub fn subset(&self, per_class: usize, seed: u64) -> Dataset {
        // A map rather than a vector indexed by label: a hand-built dataset whose labels fall
        // outside `classes` still subsets without a panic.
        let mut by_class: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
        for (i, &l) in self.labels.iter().enumerate() {
            by_class.entry(l).or_default().push(i);
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut keep = Vec::new();
        for bucket in by_class.values_mut() {
            bucket.shuffle(&mut rng);
            keep.extend_from_slice(&bucket[..per_class.min(bucket.len())]);
        }
        keep.sort_unstable();
        self.select(&keep)
    }

    /// The images at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Dataset {
        let mut images = Vec::with_capacity(indices.len() * self.image_len());
        for &i in indices {
            images.extend_from_slice(self.image(i));
        }
        Dataset {
            images,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            height: self.height,
            width: self.width,
            classes: self.classes.clone(),
        }
    }
}

/// Matches the labels of `ds` to a reference class list (the training split's, or the class
/// names stored in a model) by name, so that label `i` means `reference[i]`.
///
/// The same names in another order are re-labelled. Any other difference (a class missing or
/// extra) is a [`DataError::ClassMismatch`] naming the classes, unless `allow_mismatch`: then
/// images of classes the reference lacks are left out and the rest re-labelled by name; the
/// names of the classes left out are returned. With no name in common there is nothing to match
/// and it is an error either way. `context` says what is compared, for the message.
pub fn align_classes(
    ds: &mut Dataset,
    reference: &[String],
    context: &str,
    allow_mismatch: bool,
) -> Result<Vec<String>, DataError> {
    if ds.classes == reference {
        return Ok(Vec::new());
    }
    let index: std::collections::HashMap<&str, usize> = reference
        .iter()
        .enumerate()
        .rev()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let missing: Vec<String> = reference
        .iter()
        .filter(|n| !ds.classes.contains(n))
        .cloned()
        .collect();
    let extra: Vec<String> = ds
        .classes
        .iter()
        .filter(|n| !index.contains_key(n.as_str()))
        .cloned()
        .collect();
    let none_shared = extra.len() == ds.classes.len();
    let same_set = missing.is_empty() && extra.is_empty();
    if none_shared || !(allow_mismatch || same_set) {
        return Err(DataError::ClassMismatch {
            context: context.to_string(),
            missing,
            extra,
            none_shared,
        });
    }
    let map: Vec<Option<i64>> = ds
        .classes
        .iter()
        .map(|n| index.get(n.as_str()).map(|&i| i as i64))
        .collect();
    let mut keep = Vec::with_capacity(ds.len());
    let mut labels = Vec::with_capacity(ds.len());
    for (i, &l) in ds.labels.iter().enumerate() {
        if let Some(Some(new)) = usize::try_from(l).ok().and_then(|l| map.get(l)) {
            keep.push(i);
            labels.push(*new);
        }
    }
    if keep.is_empty() {
        return Err(DataError::ClassMismatch {
            context: context.to_string(),
            missing,
            extra,
            none_shared: true,
        });
    }
    if keep.len() != ds.len() {
        *ds = ds.select(&keep);
    }
    ds.labels = labels;
    ds.classes = reference.to_vec();
    Ok(extra)
}

/// Loads one split of the dataset at `path` (see the [module docs](self) for the layouts).
pub fn load(path: &Path, split: Split) -> Result<Dataset, DataError> {
    load_limited(path, split, None)
}

/// Like [`load`], but with `Some(k)` keeps only the first `k` images of each class (by file name
/// in an image folder, by position in a binary folder) and stops reading or decoding as early as
/// the layout allows. Meant for quick runs on a CPU.
pub fn load_limited(
    path: &Path,
    split: Split,
    per_class: Option<usize>,
) -> Result<Dataset, DataError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            DataError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            DataError::Io {
                path: path.to_path_buf(),
                source: e,
            }
        }
    })?;
    let ds = if meta.is_file() {
        if !folder::is_archive(path) {
            return Err(DataError::UnknownLayout {
                path: path.to_path_buf(),
            });
        }
        folder::load_archive(path, split, per_class)?
    } else if let Some(dir) = cifar_bin::find(path) {
        cifar_bin::load(&dir, split, per_class)?
    } else if let Some(root) = folder::find_root(path) {
        folder::load_tree(&root, split, per_class)?
    } else {
        return Err(DataError::UnknownLayout {
            path: path.to_path_buf(),
        });
    };
    if ds.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
            split,
        });
    }
    Ok(ds)
}

/// `path` itself when `is(path)`, else `path/preferred`, else the first sub-folder (by name)
/// for which `is` holds: how both loaders find their folder below what the user named.
pub(crate) fn find_dir(
    path: &Path,
    preferred: &str,
    is: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    if is(path) {
        return Some(path.to_path_buf());
    }
    let preferred = path.join(preferred);
    if is(&preferred) {
        return Some(preferred);
    }
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(path)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    subdirs.sort();
    subdirs.into_iter().find(|d| is(d))
}
