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
pub(crate) fn is_image_name(name: &str) -> bool {
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
    ["train", "test", "val"]
        .iter()
        .any(|s| dir.join(s).is_dir())
}

/// The tree root at `path`: `path` itself when it holds `train/`, `test/` or `val/`, else
/// `path/cifar10`, else the first sub-folder (by name) that holds one.
pub(crate) fn find_root(path: &Path) -> Option<PathBuf> {
    super::find_dir(path, "cifar10", has_split_dir)
}

/// Sorted entries of `dir` that satisfy `keep`, hidden ones (`.*`) left out; a kept entry whose
/// name is not UTF-8 is an error (skipping it would silently drop a class or an image).
fn sorted_entries(
    dir: &Path,
    keep: impl Fn(&Path) -> bool,
) -> Result<Vec<(String, PathBuf)>, DataError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let path = entry.path();
        let os_name = entry.file_name();
        if os_name.as_encoded_bytes().first() == Some(&b'.') {
            // Hidden (editor and macOS litter): never a class or an image.
            continue;
        }
        let Ok(name) = os_name.into_string() else {
            if keep(&path) {
                return Err(DataError::NonUtf8Name { path, member: None });
            }
            continue;
        };
        if keep(&path) {
            out.push((name, path));
        }
    }
    out.sort();
    Ok(out)
}

/// Image files with their labels.
pub(crate) type ImageFiles = Vec<(PathBuf, i64)>;

/// The folder of `split` in the tree at `root`: `train/`, and for the test split `test/`, or
/// `val/` when there is no `test/` (ImageNet's name for it).
pub(crate) fn split_dir(root: &Path, split: Split) -> PathBuf {
    let dir = root.join(split.dir_name());
    if split == Split::Test && !dir.is_dir() && root.join("val").is_dir() {
        return root.join("val");
    }
    dir
}

/// The image files of one split of the tree at `root`, each with its label, and the class
/// names in label order (as torchvision's `ImageFolder`: classes and files in sorted name
/// order); with `per_class`, the first `k` files of each class.
pub(crate) fn list_tree(
    root: &Path,
    split: Split,
    per_class: Option<usize>,
) -> Result<(ImageFiles, Vec<String>), DataError> {
    let split_dir = split_dir(root, split);
    if !split_dir.is_dir() {
        return Err(DataError::Empty {
            path: split_dir,
            split,
        });
    }
    let class_dirs = sorted_entries(&split_dir, |p| p.is_dir())?;
    let split_real = std::fs::canonicalize(&split_dir).map_err(|e| DataError::io(&split_dir, e))?;
    let mut files: Vec<(PathBuf, i64)> = Vec::new();
    let mut classes = Vec::new();
    for (label, (name, dir)) in class_dirs.into_iter().enumerate() {
        let real = std::fs::canonicalize(&dir).map_err(|e| DataError::io(&dir, e))?;
        if split_real.starts_with(&real) {
            return Err(DataError::LinkLoop {
                path: dir,
                target: real,
            });
        }
        let mut images = sorted_entries(&dir, |p| {
            p.is_file()
                && p.file_name()
                    .map(|n| n.to_string_lossy())
                    .is_some_and(|n| is_image_name(&n))
        })?;
        if images.is_empty() {
            return Err(DataError::EmptyClass {
                path: dir,
                member: None,
            });
        }
        if let Some(k) = per_class {
            images.truncate(k);
        }
        files.extend(images.into_iter().map(|(_, p)| (p, label as i64)));
        classes.push(name);
    }
    Ok((files, classes))
}

/// Loads one split of the tree at `root`.
pub(crate) fn load_tree(
    root: &Path,
    split: Split,
    per_class: Option<usize>,
) -> Result<Dataset, DataError> {
    let (files, classes) = list_tree(root, split, per_class)?;
    let (images, (width, height)) = decode_all(
        &files,
        |(p, _)| {
            let len = std::fs::metadata(p).map_err(|e| DataError::io(p, e))?.len();
            if len > MAX_IMAGE_FILE_BYTES {
                return Err(too_large_file(p.clone(), None, len));
            }
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
        let lossy = member_path.to_string_lossy().into_owned();
        let Some(member) = member_path.to_str().map(str::to_string) else {
            // Only an error where it matters: a member of the wanted split.
            let in_split = lossy.split('/').any(|p| p == split.dir_name());
            if in_split {
                return Err(DataError::NonUtf8Name {
                    path: archive_path.to_path_buf(),
                    member: Some(lossy),
                });
            }
            continue;
        };
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
        // The header's size is only a claim: bound it before reading, and read no more than
        // the bound whatever the header says.
        let size = entry.size();
        if size > MAX_IMAGE_FILE_BYTES {
            return Err(too_large_file(
                archive_path.to_path_buf(),
                Some(member),
                size,
            ));
        }
        let mut bytes = Vec::new();
        (&mut entry)
            .take(MAX_IMAGE_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| archive_err(Some(member.clone()), e))?;
        if bytes.len() as u64 > MAX_IMAGE_FILE_BYTES {
            return Err(too_large_file(
                archive_path.to_path_buf(),
                Some(member),
                bytes.len() as u64,
            ));
        }
        class.insert(name.to_string(), (member, bytes));
        if let Some(k) = per_class {
            while class.len() > k {
                class.pop_last();
            }
        }
    }
    if let Some((class, _)) = by_class.iter().find(|(_, files)| files.is_empty()) {
        return Err(DataError::EmptyClass {
            path: archive_path.to_path_buf(),
            member: Some(format!("{}/{class}/", split.dir_name())),
        });
    }
    Ok(by_class)
}

/// The largest image file (or archive member) the loaders read: 64 MiB.
pub const MAX_IMAGE_FILE_BYTES: u64 = 64 << 20;
/// The largest image side the loaders decode: 8192 pixels (an image of 8192 x 8192 decodes to
/// 192 MiB of RGB).
pub const MAX_IMAGE_SIDE: u32 = 8192;

fn too_large_file(path: PathBuf, member: Option<String>, len: u64) -> DataError {
    DataError::ImageTooLarge {
        path,
        member,
        detail: format!("{len} bytes (the limit is {MAX_IMAGE_FILE_BYTES})"),
    }
}

/// The decoder's limits: [`MAX_IMAGE_SIDE`] on each side, and no more memory than such an image.
fn limits() -> image::Limits {
    let mut l = image::Limits::default();
    l.max_image_width = Some(MAX_IMAGE_SIDE);
    l.max_image_height = Some(MAX_IMAGE_SIDE);
    l.max_alloc = Some(u64::from(MAX_IMAGE_SIDE) * u64::from(MAX_IMAGE_SIDE) * 4 + (16 << 20));
    l
}

fn reader(
    data: &[u8],
    limits: image::Limits,
) -> std::io::Result<image::ImageReader<std::io::Cursor<&[u8]>>> {
    let mut r = image::ImageReader::new(std::io::Cursor::new(data)).with_guessed_format()?;
    r.limits(limits);
    Ok(r)
}

/// One image decoded to RGB: a JPEG by zune-jpeg in strict mode, as the streaming loader
/// (`image`'s own JPEG path fills a truncated file's missing part with grey and reports
/// nothing), anything else through `image` within [`limits`].
fn decode_rgb(data: &[u8]) -> Result<image::RgbImage, image::ImageError> {
    if data.starts_with(&[0xFF, 0xD8, 0xFF]) {
        let bad = |e: String| {
            image::ImageError::Decoding(image::error::DecodingError::new(
                image::error::ImageFormatHint::Exact(image::ImageFormat::Jpeg),
                e,
            ))
        };
        let (pixels, w, h) = super::decode::decode_jpeg_rgb(data).map_err(bad)?;
        return image::RgbImage::from_raw(w, h, pixels)
            .ok_or_else(|| bad(format!("{w}x{h}: wrong number of decoded bytes")));
    }
    Ok(reader(data, limits())
        .map_err(image::ImageError::IoError)?
        .decode()?
        .into_rgb8())
}

/// Decodes every item (in parallel) into one HWC buffer; returns it and the common
/// (width, height). `bytes` fetches an item's encoded bytes, `locate` names it for errors.
///
/// A first pass reads only each image's header: every side is checked against
/// [`MAX_IMAGE_SIDE`], the common size is the one most images have (so an odd image is the
/// one blamed, wherever it sorts), and the whole buffer is reserved fallibly before any pixel
/// is decoded.
fn decode_all<T: Sync>(
    items: &[T],
    bytes: impl Fn(&T) -> Result<Cow<'_, [u8]>, DataError> + Sync,
    locate: impl Fn(&T) -> (PathBuf, Option<String>) + Sync,
) -> Result<(Vec<u8>, (usize, usize)), DataError> {
    if items.is_empty() {
        return Ok((Vec::new(), (0, 0)));
    }
    let decode_err = |item: &T, source: image::ImageError| {
        let (path, member) = locate(item);
        DataError::Decode {
            path,
            member,
            source,
        }
    };
    let dims: Vec<(usize, usize)> = items
        .par_iter()
        .map(|item| {
            let data = bytes(item)?;
            // Only the header is read here: no decoder limit, the sides are checked below.
            let (w, h) = reader(&data, image::Limits::no_limits())
                .map_err(image::ImageError::IoError)
                .and_then(|r| r.into_dimensions())
                .map_err(|e| decode_err(item, e))?;
            if w > MAX_IMAGE_SIDE || h > MAX_IMAGE_SIDE {
                let (path, member) = locate(item);
                return Err(DataError::ImageTooLarge {
                    path,
                    member,
                    detail: format!(
                        "{w}x{h} pixels (the limit is {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE})"
                    ),
                });
            }
            Ok((w as usize, h as usize))
        })
        .collect::<Result<_, _>>()?;
    // The most common size (the first image's on a tie).
    let mut counts: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    for &d in &dims {
        *counts.entry(d).or_default() += 1;
    }
    let best = counts.values().copied().max().unwrap_or(0);
    let size = if counts[&dims[0]] == best {
        dims[0]
    } else {
        *dims.iter().find(|d| counts[*d] == best).unwrap_or(&dims[0])
    };
    if let Some(i) = dims.iter().position(|&d| d != size) {
        let (path, member) = locate(&items[i]);
        return Err(DataError::SizeMismatch {
            path,
            member,
            expected: size,
            found: dims[i],
        });
    }
    let per_image = size.0 * size.1 * 3;
    let total = (per_image as u128) * items.len() as u128;
    let mut out: Vec<u8> = Vec::new();
    let reserved = usize::try_from(total)
        .ok()
        .is_some_and(|t| out.try_reserve_exact(t).is_ok());
    if !reserved {
        let (path, _) = locate(&items[0]);
        return Err(DataError::DatasetTooLarge {
            path,
            count: items.len(),
            bytes: total,
        });
    }
    out.resize(total as usize, 0);
    out.par_chunks_mut(per_image.max(1))
        .zip(items.par_iter())
        .try_for_each(|(dst, item)| {
            let data = bytes(item)?;
            let img = decode_rgb(&data).map_err(|e| decode_err(item, e))?;
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
