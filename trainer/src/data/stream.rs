//! The streaming image-folder loader, for datasets larger than memory: per epoch an order from
//! [`order`](super::order) (the same permutation on every rank, sharded by [`Shard`]), files read
//! and decoded by a pool of worker threads, up to `prefetch` batches at once (so that a batch's
//! serial end, its assembly and pinning, overlaps the next ones' decoding instead of idling the
//! pool), delivered in order; memory is bounded by `prefetch`, not by the dataset. The host batch
//! is pinned when the device is CUDA and copied to it asynchronously.
//!
//! A file that cannot be read or decoded (truncated, empty, neither JPEG nor PNG, too large) is
//! skipped: a warning naming it is printed once per run, and it is counted
//! ([`BatchSource::skipped`]), which the epoch line shows. Grey and CMYK JPEGs and PNGs with
//! alpha are converted to RGB (alpha dropped, as PIL's `convert("RGB")`).

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rand::SeedableRng;
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use super::decode::{decode_into, Transform};
use super::order::Shard;
use super::{
    folder, order, BatchIter, BatchSource, DataError, ShardIter, Split, MAX_IMAGE_FILE_BYTES,
};

/// Settings of a [`StreamData`].
#[derive(Clone, Debug)]
pub struct StreamOptions {
    /// How each image becomes the network's input (ImageNet's training or evaluation transform).
    pub transform: Transform,
    /// Decoding threads (at least 1).
    pub workers: usize,
    /// Batches decoded ahead of the training step, concurrently (at least 1), which bounds the
    /// loader's memory to `(prefetch + 2) * batch * side^2 * 3` bytes.
    pub prefetch: usize,
    /// The device batches are delivered on (pinned host memory and an asynchronous copy when
    /// it is CUDA).
    pub device: Device,
}

/// One split of an image-folder tree, read from disk as it is used.
pub struct StreamData {
    files: Arc<Vec<(PathBuf, i64)>>,
    classes: Vec<String>,
    opts: StreamOptions,
    pool: Arc<rayon::ThreadPool>,
    skipped: Arc<AtomicU64>,
    warned: Arc<Mutex<HashSet<PathBuf>>>,
}

impl std::fmt::Debug for StreamData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamData")
            .field("files", &self.files.len())
            .field("classes", &self.classes.len())
            .field("opts", &self.opts)
            .finish()
    }
}

impl StreamData {
    /// Lists one split of the tree at or below `path` (as [`load`](super::load) finds it;
    /// `per_class` keeps the first `k` files of each class) without reading any image.
    pub fn open(
        path: &Path,
        split: Split,
        per_class: Option<usize>,
        opts: StreamOptions,
    ) -> Result<StreamData, DataError> {
        if !path.is_dir() {
            return Err(if path.exists() {
                DataError::NotStreamable {
                    path: path.to_path_buf(),
                }
            } else {
                DataError::NotFound {
                    path: path.to_path_buf(),
                }
            });
        }
        let root = folder::find_root(path).ok_or_else(|| DataError::NotStreamable {
            path: path.to_path_buf(),
        })?;
        let (files, classes) = folder::list_tree(&root, split, per_class)?;
        if files.is_empty() {
            return Err(DataError::Empty {
                path: path.to_path_buf(),
                split,
            });
        }
        StreamData::from_files(files, classes, opts)
    }

    /// A loader over `files` (path, label) with class names `classes`.
    pub fn from_files(
        files: Vec<(PathBuf, i64)>,
        classes: Vec<String>,
        opts: StreamOptions,
    ) -> Result<StreamData, DataError> {
        let workers = opts.workers.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(workers)
            .thread_name(|i| format!("slb-decode-{i}"))
            .build()
            .map_err(|e| DataError::Io {
                path: PathBuf::from("<decode threads>"),
                source: std::io::Error::other(e),
            })?;
        Ok(StreamData {
            files: Arc::new(files),
            classes,
            opts: StreamOptions {
                workers,
                prefetch: opts.prefetch.max(1),
                ..opts
            },
            pool: Arc::new(pool),
            skipped: Arc::new(AtomicU64::new(0)),
            warned: Arc::new(Mutex::new(HashSet::new())),
        })
    }

    /// Class names in label order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// The files and their labels, in stored order.
    pub fn files(&self) -> &[(PathBuf, i64)] {
        &self.files
    }

    /// The output side of the transform.
    pub fn side(&self) -> i64 {
        i64::from(self.opts.transform.side())
    }

    /// The settings.
    pub fn options(&self) -> &StreamOptions {
        &self.opts
    }

    /// Decodes the images at `indices` (stored order) on the host with the loader's transform
    /// and seed `seed`: `u8` NHWC images, `i64` labels, on the CPU. Files that fail are skipped
    /// as in an epoch.
    pub fn host_batch(&self, indices: &[usize], seed: u64) -> (Tensor, Tensor) {
        let job = Job {
            files: Arc::clone(&self.files),
            transform: self.opts.transform,
            skipped: Arc::clone(&self.skipped),
            warned: Arc::clone(&self.warned),
            pin: None,
            cancel: Arc::new(AtomicBool::new(false)),
        };
        // The flag is this call's own and never set, so `None` cannot come back; an empty
        // batch stands for it rather than a panic.
        let batch = self.pool.install(|| job.batch(indices, seed));
        batch.unwrap_or_else(|| {
            let side = i64::from(self.opts.transform.side());
            (
                Tensor::zeros([0, side, side, 3], (Kind::Uint8, Device::Cpu)),
                Tensor::zeros([0], (Kind::Int64, Device::Cpu)),
            )
        })
    }
}

/// What the producer thread needs to turn a list of indices into a host batch.
#[derive(Clone)]
struct Job {
    files: Arc<Vec<(PathBuf, i64)>>,
    transform: Transform,
    skipped: Arc<AtomicU64>,
    warned: Arc<Mutex<HashSet<PathBuf>>>,
    /// Pin the batch for this CUDA device.
    pin: Option<Device>,
    /// Set when the epoch's consumer is gone: batches still to decode are dropped.
    cancel: Arc<AtomicBool>,
}

impl Job {
    /// Reads and decodes `indices` in parallel (on the current rayon pool); failed files are
    /// left out, warned about once and counted. Each image's randomness comes from
    /// `(seed, index)` alone, so the batch does not depend on thread timing. `None` when the
    /// epoch was cancelled meanwhile (its images are then neither decoded nor counted).
    fn batch(&self, indices: &[usize], seed: u64) -> Option<(Tensor, Tensor)> {
        let side = self.transform.side() as usize;
        let len = side * side * 3;
        let mut buf = vec![0u8; indices.len() * len];
        let ok: Vec<Result<(), String>> = buf
            .par_chunks_mut(len.max(1))
            .zip(indices.par_iter())
            .map(|(out, &i)| {
                if self.cancel.load(Ordering::Relaxed) {
                    return Err(String::new());
                }
                let path = &self.files[i].0;
                let bytes = read_file(path)?;
                let mut rng =
                    rand::rngs::StdRng::seed_from_u64(mix(seed ^ mix(i as u64 ^ 0xA076_1D64)));
                decode_into(&bytes, &self.transform, &mut rng, out)
            })
            .collect();
        if self.cancel.load(Ordering::Relaxed) {
            return None;
        }
        let mut labels = Vec::with_capacity(indices.len());
        let mut kept = 0usize;
        for (slot, (&i, r)) in indices.iter().zip(ok).enumerate() {
            match r {
                Ok(()) => {
                    if slot != kept {
                        buf.copy_within(slot * len..(slot + 1) * len, kept * len);
                    }
                    labels.push(self.files[i].1);
                    kept += 1;
                }
                Err(why) => self.skip(&self.files[i].0, &why),
            }
        }
        buf.truncate(kept * len);
        let x = Tensor::from_slice(&buf).view([kept as i64, side as i64, side as i64, 3]);
        let y = Tensor::from_slice(&labels);
        Some(match self.pin {
            Some(d) => (x.pin_memory(d), y.pin_memory(d)),
            None => (x, y),
        })
    }

    fn skip(&self, path: &Path, why: &str) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
        let first = self
            .warned
            .lock()
            .map(|mut w| w.insert(path.to_path_buf()))
            .unwrap_or(true);
        if first {
            eprintln!("warning: skipping image {}: {why}", path.display());
        }
    }
}

/// Reads a whole image file, at most [`MAX_IMAGE_FILE_BYTES`].
fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut bytes = Vec::new();
    f.take(MAX_IMAGE_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_IMAGE_FILE_BYTES {
        return Err(format!(
            "larger than {MAX_IMAGE_FILE_BYTES} bytes, the limit"
        ));
    }
    Ok(bytes)
}

/// SplitMix64's output function.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl StreamData {
    /// Decodes `batches` (each: the indices of a batch and a number carried along with it) on
    /// the worker pool, ahead of the consumer by at most `prefetch` batches, augmented with the
    /// epoch's `seed`. A batch whose every file was skipped is left out unless `keep_empty`.
    fn produce(&self, batches: Vec<(Vec<usize>, usize)>, seed: u64, keep_empty: bool) -> Batches {
        let device = self.opts.device;
        let job = Job {
            files: Arc::clone(&self.files),
            transform: self.opts.transform,
            skipped: Arc::clone(&self.skipped),
            warned: Arc::clone(&self.warned),
            pin: device.is_cuda().then_some(device),
            cancel: Arc::new(AtomicBool::new(false)),
        };
        let cancel = Arc::clone(&job.cancel);
        let pool = Arc::clone(&self.pool);
        let aug_seed = mix(seed ^ 0x5EED_A116);
        let prefetch = self.opts.prefetch.max(1);
        // A rendezvous channel: the batches in memory are the `prefetch` being decoded or
        // done, the one the producer hands over and the one the consumer holds.
        let (tx, rx) = sync_channel(0);
        let producer = std::thread::Builder::new()
            .name("slb-batches".into())
            .spawn(move || {
                let mut todo = batches.into_iter();
                let mut pending = VecDeque::with_capacity(prefetch);
                loop {
                    // Keep `prefetch` batches decoding on the pool (each a parallel loop over
                    // its images), in order.
                    while pending.len() < prefetch {
                        let Some((b, tag)) = todo.next() else { break };
                        let (done, result) = sync_channel(1);
                        let job = job.clone();
                        pool.spawn(move || {
                            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                job.batch(&b, aug_seed)
                            }));
                            let _ = done.send(r);
                        });
                        pending.push_back((result, tag));
                    }
                    let Some((result, tag)) = pending.pop_front() else {
                        return;
                    };
                    let (x, y) = match result.recv() {
                        Ok(Ok(Some(batch))) => batch,
                        Ok(Err(panic)) => std::panic::resume_unwind(panic),
                        Ok(Ok(None)) | Err(_) => return, // cancelled
                    };
                    if y.size()[0] == 0 && !keep_empty {
                        continue;
                    }
                    if tx.send((x, y, tag)).is_err() {
                        return; // the epoch's consumer stopped early
                    }
                }
            })
            .expect("cannot start the batch thread");
        Batches {
            cancel,
            rx: Some(rx),
            producer: Some(producer),
            device,
        }
    }
}

impl BatchSource for StreamData {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn device(&self) -> Device {
        self.opts.device
    }

    fn epoch(&self, batch: i64, shuffle: bool, seed: u64) -> BatchIter<'_> {
        let batches = order::shard_batches(
            self.files.len(),
            shuffle,
            seed,
            batch.max(1) as usize,
            Shard::single(),
        );
        Box::new(self.produce(batches, seed, false).map(|(x, y, _)| (x, y)))
    }

    fn shard_epoch(&self, batch: i64, shuffle: bool, seed: u64, shard: Shard) -> ShardIter<'_> {
        let batches = order::shard_batches(
            self.files.len(),
            shuffle,
            seed,
            batch.max(1) as usize,
            shard,
        );
        // Every global batch yields on every rank (a data-parallel step needs every rank).
        let keep_empty = shard.world > 1;
        Box::new(
            self.produce(batches, seed, keep_empty)
                .map(|(x, y, global)| (x, y, global as i64)),
        )
    }

    fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
}

/// An epoch's batches as they arrive from the producer thread, moved to the device.
struct Batches {
    /// Tells the batches still decoding that nobody will read them.
    cancel: Arc<AtomicBool>,
    rx: Option<Receiver<(Tensor, Tensor, usize)>>,
    producer: Option<JoinHandle<()>>,
    device: Device,
}

impl Iterator for Batches {
    type Item = (Tensor, Tensor, usize);

    fn next(&mut self) -> Option<(Tensor, Tensor, usize)> {
        let Ok((x, y, tag)) = self.rx.as_ref()?.recv() else {
            // The producer ended: at the epoch's end, or by a panic, which is raised here
            // rather than ending the epoch early without a word.
            self.rx = None;
            if let Some(p) = self.producer.take() {
                if let Err(panic) = p.join() {
                    std::panic::resume_unwind(panic);
                }
            }
            return None;
        };
        if self.device == Device::Cpu {
            return Some((x, y, tag));
        }
        // From pinned memory the copy is asynchronous: the host goes on to enqueue the step.
        Some((
            x.to_device_(self.device, Kind::Uint8, true, false),
            y.to_device_(self.device, Kind::Int64, true, false),
            tag,
        ))
    }
}

impl Drop for Batches {
    fn drop(&mut self) {
        // The batches still decoding stop at their next image; closing the queue stops the
        // producer.
        self.cancel.store(true, Ordering::Relaxed);
        drop(self.rx.take());
        if let Some(p) = self.producer.take() {
            let _ = p.join();
        }
    }
}
