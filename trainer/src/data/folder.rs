//! Image-folder trees (`root/{train,test}/<class>/<file>`), on disk or inside a tar archive.
//!
//! Classes are the sub-folders of the split folder in sorted name order (label 0 is the first),
//! files within a class are taken in sorted name order. Only `.jpg`, `.jpeg` and `.png` files
//! (any case) count, and names starting with `.` are skipped (editor and macOS `._*` litter);
//! every counted file must decode, and to the same size as the first.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{DataError, Dataset, Split};

/// Whether a file name has an image extension the decoder handles.
fn is_image_name(name: &str) -> bool {
    if name.starts_with('.') {
        return false;
    }
    let Some((_, ext)) = name.rsplit_once('.') else {
        return false;
    };
    ["jpg", "jpeg", "png"]
        .iter()
        .any(|e| ext.eq_ignore_ascii_case(e))
}

/// Whether `path` names an archive this module reads (`.tar`, `.tar.xz`, `.txz`).
pub(crate) fn is_archive(path: &Path) -> bool {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    name.ends_with(".tar") || name.ends_with(".tar.xz") || name.ends_with(".txz")
}

fn has_split_dir(dir: &Path) -> bool {
    dir.join("train").is_dir() || dir.join("test").is_dir()
}

/// The tree root at `path`: `path` itself when it holds `train/` or `test/`, else
/// `path/cifar10`, else the first sub-folder (by name) that holds one.
pub(crate) fn find_root(path: &Path) -> Option<PathBuf> {
    super::find_dir(path, "cifar10", has_split_dir)
}

/// Sorted entries of `dir` (names as UTF-8; other names are skipped) that satisfy `keep`.
fn sorted_entries(
    dir: &Path,
    keep: impl Fn(&Path) -> bool,
) -> Result<Vec<(String, PathBuf)>, DataError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let path = entry.path();
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if keep(&path) {
            out.push((name, path));
        }
    }
    out.sort();
    Ok(out)
}

/// Loads one split of the tree at `root`.
pub(crate) fn load_tree(
    root: &Path,
    split: Split,
    per_class: Option<usize>,
) -> Result<Dataset, DataError> {
    let split_dir = root.join(split.dir_name());
    if !split_dir.is_dir() {
        return Err(DataError::Empty {
            path: split_dir,
            split,
        });
    }
    let class_dirs = sorted_entries(&split_dir, |p| p.is_dir())?;
    let mut files: Vec<(PathBuf, i64)> = Vec::new();
    let mut classes = Vec::new();
    for (label, (name, dir)) in class_dirs
        .into_iter()
        .filter(|(n, _)| !n.starts_with('.'))
        .enumerate()
    {
        let mut images = sorted_entries(&dir, |p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(is_image_name)
        })?;
        if let Some(k) = per_class {
            images.truncate(k);
        }
        files.extend(images.into_iter().map(|(_, p)| (p, label as i64)));
        classes.push(name);
    }
    let (images, (width, height)) = decode_all(
        &files,
        |(p, _)| {
            std::fs::read(p)
                .map(Cow::Owned)
                .map_err(|e| DataError::io(p, e))
        },
        |(p, _)| (p.clone(), None),
    )?;
    Ok(Dataset {
        images,
        labels: files.iter().map(|&(_, l)| l).collect(),
        height,
        width,
        classes,
    })
}

/// The files of one class kept from an archive: file name -> (member path, bytes).
type ClassFiles = BTreeMap<String, (String, Vec<u8>)>;

/// Loads one split of a tree stored in the tar (or xz-compressed tar) archive `path`, in one
/// streaming pass: members are `.../<split>/<class>/<file>`; the bytes of the wanted split's
/// images are collected (with a per-class limit, only the first names), then decoded in
/// parallel.
pub(crate) fn load_archive(
    path: &Path,
    split: Split,
    per_class: Option<usize>,
) -> Result<Dataset, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let reader = BufReader::with_capacity(1 << 20, file);
    let lower = path.to_string_lossy().to_ascii_lowercase();
    let by_class = if lower.ends_with(".tar") {
        collect_members(path, reader, split, per_class)?
    } else {
        collect_members(path, xz2::read::XzDecoder::new(reader), split, per_class)?
    };

    let classes: Vec<String> = by_class.keys().cloned().collect();
    let mut members: Vec<(String, Vec<u8>, i64)> = Vec::new();
    for (label, files) in by_class.into_values().enumerate() {
        for (member, bytes) in files.into_values() {
            members.push((member, bytes, label as i64));
        }
    }
    let (images, (width, height)) = decode_all(
        &members,
        |(_, bytes, _)| Ok(Cow::Borrowed(bytes.as_slice())),
        |(member, _, _)| (path.to_path_buf(), Some(member.clone())),
    )?;
    Ok(Dataset {
        images,
        labels: members.iter().map(|&(_, _, l)| l).collect(),
        height,
        width,
        classes,
    })
}

fn collect_members<R: Read>(
    archive_path: &Path,
    reader: R,
    split: Split,
    per_class: Option<usize>,
) -> Result<BTreeMap<String, ClassFiles>, DataError> {
    let archive_err = |member: Option<String>, source| DataError::Archive {
        archive: archive_path.to_path_buf(),
        member,
        source,
    };
    let mut archive = tar::Archive::new(reader);
    let mut by_class: BTreeMap<String, ClassFiles> = BTreeMap::new();
    for entry in archive.entries().map_err(|e| archive_err(None, e))? {
        let mut entry = entry.map_err(|e| archive_err(None, e))?;
        let kind = entry.header().entry_type();
        let member_path = entry.path().map_err(|e| archive_err(None, e))?.into_owned();
        let member = member_path.to_string_lossy().into_owned();
        let parts: Vec<&str> = member
            .split('/')
            .filter(|s| !s.is_empty() && *s != ".")
            .collect();
        let n = parts.len();
        if n < 3 || parts[n - 3] != split.dir_name() || parts[n - 2].starts_with('.') {
            continue;
        }
        let class = by_class.entry(parts[n - 2].to_string()).or_default();
        let name = parts[n - 1];
        if !kind.is_file() || !is_image_name(name) {
            continue;
        }
        if let Some(k) = per_class {
            // Keep the `k` smallest names of each class, whatever order the archive lists them in.
            let full = class.len() >= k;
            if full
                && class
                    .last_key_value()
                    .is_none_or(|(last, _)| name >= last.as_str())
            {
                continue;
            }
        }
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| archive_err(Some(member.clone()), e))?;
        class.insert(name.to_string(), (member, bytes));
        if let Some(k) = per_class {
            while class.len() > k {
                class.pop_last();
            }
        }
    }
    Ok(by_class)
}

/// Decodes every item (in parallel) into one HWC buffer; returns it and the common
/// (width, height). `bytes` fetches an item's encoded bytes, `locate` names it for errors.
fn decode_all<T: Sync>(
    items: &[T],
    bytes: impl Fn(&T) -> Result<Cow<'_, [u8]>, DataError> + Sync,
    locate: impl Fn(&T) -> (PathBuf, Option<String>) + Sync,
) -> Result<(Vec<u8>, (usize, usize)), DataError> {
    let Some(first) = items.first() else {
        return Ok((Vec::new(), (0, 0)));
    };
    let decode = |item: &T| -> Result<image::RgbImage, DataError> {
        let data = bytes(item)?;
        image::load_from_memory(&data)
            .map(|img| img.into_rgb8())
            .map_err(|source| {
                let (path, member) = locate(item);
                DataError::Decode {
                    path,
                    member,
                    source,
                }
            })
    };
    let img0 = decode(first)?;
    let size = (img0.width() as usize, img0.height() as usize);
    let per_image = size.0 * size.1 * 3;
    let mut out = vec![0u8; items.len() * per_image];
    out[..per_image].copy_from_slice(img0.as_raw());
    out[per_image..]
        .par_chunks_mut(per_image.max(1))
        .zip(items[1..].par_iter())
        .try_for_each(|(dst, item)| {
            let img = decode(item)?;
            let found = (img.width() as usize, img.height() as usize);
            if found != size {
                let (path, member) = locate(item);
                return Err(DataError::SizeMismatch {
                    path,
                    member,
                    expected: size,
                    found,
                });
            }
            dst.copy_from_slice(img.as_raw());
            Ok(())
        })?;
    Ok((out, size))
}
