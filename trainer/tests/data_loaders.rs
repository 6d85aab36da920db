//! The dataset loaders on files the tests write: CIFAR-10 binary batches, image-folder trees of
//! PNG/JPEG files, the same trees inside `.tar` / `.tar.xz` archives, and the shared JPEG
//! CIFAR-10 archive.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use slb_trainer::data::{load, load_limited, DataError, Dataset, Split, CIFAR10_CLASSES};

// ---------------------------------------------------------------------------------------------
// CIFAR-10 binary

const RECORD: usize = 3073;

/// Pixel value of record `r` (global index), channel `c`, pixel `p` (row-major within a plane).
fn px(r: usize, c: usize, p: usize) -> u8 {
    ((r * 31 + c * 97 + p * 7 + p / 32) % 256) as u8
}

/// One binary record: label, then R, G, B planes.
fn record(global: usize, label: u8) -> Vec<u8> {
    let mut v = vec![label];
    for c in 0..3 {
        v.extend((0..1024).map(|p| px(global, c, p)));
    }
    v
}

fn write_batch(path: &Path, records: &[(usize, u8)]) {
    let mut bytes = Vec::new();
    for &(g, l) in records {
        bytes.extend(record(g, l));
    }
    fs::write(path, bytes).unwrap();
}

/// A binary folder: data_batch_1 (records 0..3), data_batch_2 (3..5), test_batch (100..102).
fn binary_folder(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    write_batch(&dir.join("data_batch_1.bin"), &[(0, 2), (1, 0), (2, 1)]);
    write_batch(&dir.join("data_batch_2.bin"), &[(3, 2), (4, 2)]);
    write_batch(&dir.join("test_batch.bin"), &[(100, 1), (101, 0)]);
    fs::write(dir.join("batches.meta.txt"), "red\ngreen\nblue\n\n").unwrap();
}

fn check_hwc(ds: &Dataset, i: usize, global: usize) {
    let img = ds.image(i);
    assert_eq!(img.len(), 32 * 32 * 3);
    for y in 0..32 {
        for x in 0..32 {
            for c in 0..3 {
                assert_eq!(
                    img[(y * 32 + x) * 3 + c],
                    px(global, c, y * 32 + x),
                    "image {i} pixel ({y},{x}) channel {c}"
                );
            }
        }
    }
}

#[test]
fn binary_labels_and_plane_order() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cifar-10-batches-bin");
    binary_folder(&dir);

    let train = load(&dir, Split::Train).unwrap();
    assert_eq!((train.len(), train.height, train.width), (5, 32, 32));
    assert_eq!(train.labels, vec![2, 0, 1, 2, 2]);
    assert_eq!(train.classes, vec!["red", "green", "blue"]);
    for (i, g) in [0, 1, 2, 3, 4].into_iter().enumerate() {
        check_hwc(&train, i, g);
    }

    // The parent folder works too, and gives the same data.
    let test = load(tmp.path(), Split::Test).unwrap();
    assert_eq!(test.labels, vec![1, 0]);
    check_hwc(&test, 0, 100);
    check_hwc(&test, 1, 101);

    // Per-class limit: first image of each class, in file order.
    let lim = load_limited(&dir, Split::Train, Some(1)).unwrap();
    assert_eq!(lim.labels, vec![2, 0, 1]);
    check_hwc(&lim, 2, 2);
}

#[test]
fn binary_batches_in_numeric_order_and_default_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_batch(&dir.join("data_batch_10.bin"), &[(10, 9)]);
    write_batch(&dir.join("data_batch_2.bin"), &[(2, 3)]);
    write_batch(&dir.join("data_batch_1.bin"), &[(1, 5)]);
    let ds = load(dir, Split::Train).unwrap();
    assert_eq!(ds.labels, vec![5, 3, 9]);
    check_hwc(&ds, 2, 10);
    assert_eq!(ds.classes, CIFAR10_CLASSES.to_vec());
    // No test_batch.bin: an error naming the folder and the split.
    let err = load(dir, Split::Test).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::Empty {
                split: Split::Test,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn binary_truncated_and_bad_label_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    binary_folder(dir);
    let f = dir.join("data_batch_2.bin");
    let bytes = fs::read(&f).unwrap();
    fs::write(&f, &bytes[..2 * RECORD - 100]).unwrap();
    let err = load(dir, Split::Train).unwrap_err();
    assert!(
        matches!(err, DataError::Truncated { ref path, .. } if *path == f),
        "{err:?}"
    );
    assert!(err.to_string().contains("data_batch_2.bin"), "{err}");

    // Label 3 with three class names.
    write_batch(&f, &[(3, 1), (4, 3)]);
    let err = load(dir, Split::Train).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::BadLabel {
                record: 1,
                label: 3,
                classes: 3,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("data_batch_2.bin"), "{err}");
}

#[test]
fn missing_path_and_unknown_layout_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-dataset");
    let err = load(&missing, Split::Train).unwrap_err();
    assert!(matches!(err, DataError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-dataset"), "{err}");

    let empty = tmp.path().join("empty-dir");
    fs::create_dir(&empty).unwrap();
    let err = load(&empty, Split::Train).unwrap_err();
    assert!(matches!(err, DataError::UnknownLayout { .. }), "{err:?}");
    assert!(err.to_string().contains("empty-dir"), "{err}");

    let zip = tmp.path().join("data.zip");
    fs::write(&zip, b"PK").unwrap();
    let err = load(&zip, Split::Train).unwrap_err();
    assert!(err.to_string().contains("data.zip"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Image folders

/// An 8x6 (w x h) test image whose pixels encode `seed`.
fn test_image(seed: u8, w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            seed.wrapping_mul(40)
                .wrapping_add((x as u8).wrapping_mul(20)),
            seed.wrapping_mul(13).wrapping_add(y as u8 * 30),
            200u8.wrapping_sub(seed.wrapping_mul(7)),
        ])
    })
}

/// Writes `root/<split>/<class>/<name>` for each entry; `.png` names are PNG, `.jpg` JPEG.
fn write_tree(root: &Path, files: &[(&str, &str, &str, u8)]) {
    for &(split, class, name, seed) in files {
        let dir = root.join(split).join(class);
        fs::create_dir_all(&dir).unwrap();
        test_image(seed, 8, 6).save(dir.join(name)).unwrap();
    }
}

const TREE: &[(&str, &str, &str, u8)] = &[
    ("train", "zebra", "b.png", 1),
    ("train", "zebra", "a.png", 2),
    ("train", "ant", "2.png", 3),
    ("train", "ant", "10.png", 4),
    ("train", "ant", "x.jpg", 5),
    ("train", "moth", "m.PNG", 6),
    ("test", "ant", "t.png", 7),
    ("test", "zebra", "t.png", 8),
];

#[test]
fn folder_classes_sorted_labels_and_pixels() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cifar10");
    write_tree(&root, TREE);
    fs::write(root.join("train/ant/notes.txt"), "not an image").unwrap();
    fs::write(root.join("train/zebra/.hidden.png"), "junk").unwrap();

    // Found through the parent (root/cifar10/train).
    let ds = load(tmp.path(), Split::Train).unwrap();
    assert_eq!(ds.classes, vec!["ant", "moth", "zebra"]);
    assert_eq!((ds.width, ds.height), (8, 6));
    // Files sorted by name within a class: ant/10.png, ant/2.png, ant/x.jpg, moth, zebra a, b.
    assert_eq!(ds.labels, vec![0, 0, 0, 1, 2, 2]);
    let seeds_png = [(0, 4), (1, 3), (3, 6), (4, 2), (5, 1)];
    for (i, seed) in seeds_png {
        assert_eq!(
            ds.image(i),
            test_image(seed, 8, 6).as_raw().as_slice(),
            "image {i}"
        );
    }
    // The JPEG decodes to nearly the original (lossy).
    let jpg = test_image(5, 8, 6);
    let max_diff = ds
        .image(2)
        .iter()
        .zip(jpg.as_raw())
        .map(|(&a, &b)| (a as i32 - b as i32).abs())
        .max()
        .unwrap();
    assert!(max_diff < 40, "jpeg differs by {max_diff}");
    // The same pixels as `image`'s decoder gives a whole file (the strict decoder changes
    // only what a damaged file does).
    let bytes = fs::read(root.join("train/ant/x.jpg")).unwrap();
    let by_image = image::load_from_memory(&bytes).unwrap().into_rgb8();
    assert_eq!(ds.image(2), by_image.as_raw().as_slice());

    let test = load(&root, Split::Test).unwrap();
    assert_eq!(test.classes, vec!["ant", "zebra"]);
    assert_eq!(test.labels, vec![0, 1]);

    let lim = load_limited(&root, Split::Train, Some(1)).unwrap();
    assert_eq!(lim.labels, vec![0, 1, 2]);
    assert_eq!(lim.image(0), test_image(4, 8, 6).as_raw().as_slice());
    assert_eq!(lim.image(2), test_image(2, 8, 6).as_raw().as_slice());
}

#[test]
fn folder_corrupt_and_mismatched_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write_tree(root, TREE);
    let bad = root.join("train/moth/broken.jpg");
    fs::write(&bad, b"\xFF\xD8\xFF\xE0 definitely not a jpeg").unwrap();
    let err = load(root, Split::Train).unwrap_err();
    assert!(
        matches!(err, DataError::Decode { ref path, member: None, .. } if *path == bad),
        "{err:?}"
    );
    assert!(err.to_string().contains("broken.jpg"), "{err}");
    fs::remove_file(&bad).unwrap();

    // A JPEG cut in its scan data is an error naming it, not an image whose missing part is
    // filled in (what `image`'s own JPEG decoder does: it reports nothing).
    let other = tmp.path().join("cut");
    let dir = other.join("train/a");
    fs::create_dir_all(&dir).unwrap();
    test_image(3, 96, 64).save(dir.join("1.jpg")).unwrap();
    let whole = fs::read(dir.join("1.jpg")).unwrap();
    let cut = dir.join("2.jpg");
    fs::write(&cut, &whole[..whole.len() - 200]).unwrap();
    let err = load(&other, Split::Train).unwrap_err();
    assert!(
        matches!(err, DataError::Decode { ref path, member: None, .. } if *path == cut),
        "{err:?}"
    );

    let big = root.join("train/zebra/c.png");
    test_image(9, 16, 6).save(&big).unwrap();
    let err = load(root, Split::Train).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::SizeMismatch {
                expected: (8, 6),
                found: (16, 6),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("c.png"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Archives

/// Writes the tree's files into a tar (xz-compressed when the name ends in `.xz`), in the given
/// order, under `prefix/`, plus `extra` raw members.
fn write_archive(
    path: &Path,
    tree_root: &Path,
    files: &[(&str, &str, &str, u8)],
    extra: &[(&str, &[u8])],
) {
    let file = fs::File::create(path).unwrap();
    let sink: Box<dyn Write> = if path.to_string_lossy().ends_with(".xz") {
        Box::new(xz2::write::XzEncoder::new(file, 6))
    } else {
        Box::new(file)
    };
    let mut builder = tar::Builder::new(sink);
    for &(split, class, name, _) in files {
        let rel = PathBuf::from("cifar10").join(split).join(class).join(name);
        builder
            .append_path_with_name(tree_root.join(split).join(class).join(name), &rel)
            .unwrap();
    }
    for &(name, bytes) in extra {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, bytes).unwrap();
    }
    builder.into_inner().unwrap().flush().unwrap();
}

#[test]
fn archive_matches_tree_and_names_corrupt_members() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    write_tree(&tree, TREE);
    // Reverse order in the archive: the loader must sort, not follow archive order.
    let reversed: Vec<_> = TREE.iter().rev().copied().collect();
    let txz = tmp.path().join("data.tar.xz");
    write_archive(&txz, &tree, &reversed, &[]);
    let tar_path = tmp.path().join("data.tar");
    write_archive(&tar_path, &tree, TREE, &[]);

    for split in [Split::Train, Split::Test] {
        let from_tree = load(&tree, split).unwrap();
        assert_eq!(
            load(&txz, split).unwrap(),
            from_tree,
            "{split} from .tar.xz"
        );
        assert_eq!(
            load(&tar_path, split).unwrap(),
            from_tree,
            "{split} from .tar"
        );
    }
    let lim = load_limited(&txz, Split::Train, Some(1)).unwrap();
    assert_eq!(lim, load_limited(&tree, Split::Train, Some(1)).unwrap());

    let bad = tmp.path().join("bad.tar.xz");
    write_archive(
        &bad,
        &tree,
        TREE,
        &[("cifar10/train/moth/zz.jpg", b"garbage bytes")],
    );
    let err = load(&bad, Split::Train).unwrap_err();
    assert!(
        matches!(err, DataError::Decode { ref member, .. } if member.as_deref() == Some("cifar10/train/moth/zz.jpg")),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("bad.tar.xz") && msg.contains("cifar10/train/moth/zz.jpg"),
        "{msg}"
    );
    // The test split does not contain the corrupt member.
    assert_eq!(load(&bad, Split::Test).unwrap().len(), 2);

    // A damaged xz stream is an archive error naming the file.
    let mut bytes = fs::read(&txz).unwrap();
    let n = bytes.len();
    bytes.truncate(n / 2);
    let cut = tmp.path().join("cut.tar.xz");
    fs::write(&cut, bytes).unwrap();
    let err = load(&cut, Split::Train).unwrap_err();
    assert!(err.to_string().contains("cut.tar.xz"), "{err}");
}

/// The shared JPEG CIFAR-10 archive (CI has it; a missing file fails the test).
fn shared_archive() -> PathBuf {
    if let Some(p) = std::env::var_os("SLB_CIFAR_ARCHIVE") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/cifar10-jpeg.tar.xz")
}

#[test]
fn shared_cifar10_archive_limited() {
    let path = shared_archive();
    assert!(
        path.is_file(),
        "the shared CIFAR-10 archive {} is missing (set SLB_CIFAR_ARCHIVE to its path)",
        path.display()
    );
    let ds = load_limited(&path, Split::Test, Some(20)).unwrap();
    assert_eq!(ds.len(), 200);
    assert_eq!((ds.height, ds.width), (32, 32));
    assert_eq!(ds.images.len(), 200 * 32 * 32 * 3);
    assert_eq!(ds.classes, CIFAR10_CLASSES.to_vec());
    for c in 0..10 {
        assert_eq!(
            ds.labels.iter().filter(|&&l| l == c).count(),
            20,
            "class {c}"
        );
    }
    // Labels come in class order, and the images are not blank.
    assert!(ds.labels.windows(2).all(|w| w[0] <= w[1]));
    let mean = ds.images.iter().map(|&v| v as f64).sum::<f64>() / ds.images.len() as f64;
    assert!((60.0..200.0).contains(&mean), "mean pixel {mean}");

    let sub = ds.subset(3, 7);
    assert_eq!(sub.len(), 30);
    assert_eq!(sub, ds.subset(3, 7));
    assert_ne!(sub, ds.subset(3, 8));
}

/// Full load of both splits of the shared archive, timed (run with `--ignored --nocapture`,
/// in release).
#[test]
#[ignore]
fn shared_cifar10_archive_full_timed() {
    let path = shared_archive();
    let t = std::time::Instant::now();
    let train = load(&path, Split::Train).unwrap();
    let t_train = t.elapsed();
    let test = load(&path, Split::Test).unwrap();
    let t_all = t.elapsed();
    assert_eq!((train.len(), test.len()), (50_000, 5_000));
    println!(
        "full load of {}: train {:.2} s, train+test {:.2} s",
        path.display(),
        t_train.as_secs_f64(),
        t_all.as_secs_f64()
    );
}
