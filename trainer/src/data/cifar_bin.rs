//! The CIFAR-10 binary format: `data_batch_1.bin` .. `data_batch_5.bin` and `test_batch.bin`,
//! each a sequence of 3073-byte records (one label byte, then the 32x32 red plane, green plane
//! and blue plane), and `batches.meta.txt` with one class name per line.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{DataError, Dataset, Split, CIFAR10_CLASSES};

/// Image side in pixels.
const SIDE: usize = 32;
/// Pixels per plane.
const PLANE: usize = SIDE * SIDE;
/// Bytes per record: the label, then three planes.
pub(crate) const RECORD: usize = 1 + 3 * PLANE;

fn is_bin_dir(dir: &Path) -> bool {
    dir.join("data_batch_1.bin").is_file() || dir.join("test_batch.bin").is_file()
}

/// The binary folder at `path`, or in a sub-folder of it (the download unpacks to
/// `cifar-10-batches-bin/`), if there is one.
pub(crate) fn find(path: &Path) -> Option<PathBuf> {
    super::find_dir(path, "cifar-10-batches-bin", is_bin_dir)
}

/// The batch files of a split: `test_batch.bin`, or `data_batch_<n>.bin` in numeric order.
fn batch_files(dir: &Path, split: Split) -> Result<Vec<PathBuf>, DataError> {
    match split {
        Split::Test => {
            let f = dir.join("test_batch.bin");
            Ok(if f.is_file() { vec![f] } else { Vec::new() })
        }
        Split::Train => {
            let mut files: Vec<(u64, PathBuf)> = Vec::new();
            for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
                let entry = entry.map_err(|e| DataError::io(dir, e))?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                let number = name
                    .strip_prefix("data_batch_")
                    .and_then(|s| s.strip_suffix(".bin"))
                    .and_then(|s| s.parse::<u64>().ok());
                if let Some(n) = number {
                    files.push((n, entry.path()));
                }
            }
            files.sort();
            Ok(files.into_iter().map(|(_, p)| p).collect())
        }
    }
}

/// Class names from `batches.meta.txt` (non-empty lines), or CIFAR-10's when it is absent.
fn class_names(dir: &Path) -> Result<Vec<String>, DataError> {
    let meta = dir.join("batches.meta.txt");
    if !meta.is_file() {
        return Ok(CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect());
    }
    let text = std::fs::read_to_string(&meta).map_err(|e| DataError::io(&meta, e))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// Loads one split from the binary folder `dir`.
pub(crate) fn load(
    dir: &Path,
    split: Split,
    per_class: Option<usize>,
) -> Result<Dataset, DataError> {
    let classes = class_names(dir)?;
    let mut counts = vec![0usize; classes.len()];
    let mut labels = Vec::new();
    let mut images = Vec::new();
    for file in batch_files(dir, split)? {
        if let Some(k) = per_class {
            if counts.iter().all(|&c| c >= k) {
                break;
            }
        }
        // The length first, from the file system: a file that is not whole records (or not a
        // regular file, /dev/zero) is refused before it is read.
        let meta = std::fs::metadata(&file).map_err(|e| DataError::io(&file, e))?;
        let len = meta.len();
        if !meta.is_file() || len == 0 || len % RECORD as u64 != 0 {
            return Err(DataError::Truncated {
                path: file,
                len,
                record: RECORD,
            });
        }
        let bytes = std::fs::read(&file).map_err(|e| DataError::io(&file, e))?;
        if bytes.is_empty() || bytes.len() % RECORD != 0 {
            return Err(DataError::Truncated {
                path: file,
                len: bytes.len() as u64,
                record: RECORD,
            });
        }
        // Labels first (cheap, sequential: they decide which records are kept).
        let mut kept = Vec::new();
        for (r, rec) in bytes.chunks_exact(RECORD).enumerate() {
            let label = rec[0];
            let Some(count) = counts.get_mut(label as usize) else {
                return Err(DataError::BadLabel {
                    path: file,
                    record: r,
                    label,
                    classes: classes.len(),
                });
            };
            if per_class.is_some_and(|k| *count >= k) {
                continue;
            }
            *count += 1;
            kept.push(r);
            labels.push(i64::from(label));
        }
        // Planes to HWC, in parallel over records.
        let start = images.len();
        images.resize(start + kept.len() * 3 * PLANE, 0);
        images[start..]
            .par_chunks_mut(3 * PLANE)
            .zip(kept.par_iter())
            .for_each(|(out, &r)| {
                let planes = &bytes[r * RECORD + 1..(r + 1) * RECORD];
                planes_to_hwc(planes, out);
            });
    }
    Ok(Dataset {
        images,
        labels,
        height: SIDE,
        width: SIDE,
        classes,
    })
}

/// One image from three consecutive `PLANE`-byte planes (R, G, B) to interleaved HWC.
fn planes_to_hwc(planes: &[u8], out: &mut [u8]) {
    let (r, rest) = planes.split_at(PLANE);
    let (g, b) = rest.split_at(PLANE);
    for (i, px) in out.chunks_exact_mut(3).enumerate() {
        px[0] = r[i];
        px[1] = g[i];
        px[2] = b[i];
    }
}
