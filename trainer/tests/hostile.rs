//! What a hostile or careless user can type or point `slb` at (issue 14), one test per class of
//! defect: every case ends in a one-line error naming its cause with exit code 2, before any
//! training step where it can be known then, and never in a panic, an abort, a silently wrong
//! figure or an unbounded allocation.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::{assert_clean_error, slb};
use slb_trainer::data::{align_classes, load, DataError, Split};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A PNG whose header claims `w` x `h` pixels (the pixel data is not there: only the header
/// is read before the size is refused).
/// `slb train --config CFG --data DATA --device cpu --out OUT`.
fn train_cpu(cfg: &Path, data: &str, out: &Path) -> (i32, String, String) {
    slb(&[
        "train",
        "--config",
        s(cfg),
        "--data",
        data,
        "--device",
        "cpu",
        "--out",
        s(out),
    ])
}

fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    v.extend(13u32.to_be_bytes());
    v.extend(&ihdr);
    v.extend(crc32(&ihdr).to_be_bytes());
    // An empty IDAT (the decoder reads up to the first one for the header) and the end.
    for name in [b"IDAT", b"IEND"] {
        v.extend(0u32.to_be_bytes());
        v.extend(name);
        v.extend(crc32(name).to_be_bytes());
    }
    v
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A train/test image-folder tree of 8x8 PNGs: `classes` in both splits, 4 images each.
fn tree(root: &Path, train: &[&str], test: &[&str]) {
    for (split, names, seed) in [("train", train, 1u64), ("test", test, 2)] {
        let mut ds = common::synthetic(4 * names.len(), 8, names.len(), seed);
        ds.classes = names.iter().map(|n| n.to_string()).collect();
        common::write_png_split(&ds, root, split);
    }
}

// ---------------------------------------------------------------------------------------------
// Class 1: panics and aborts on input

#[test]
fn bad_numbers_and_huge_inputs_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    // `slb bench --seconds`: Duration::from_secs_f64 panicked on each of these.
    for bad in ["-1", "nan", "inf", "1e30", "0", "x"] {
        let r = slb(&[
            "bench",
            "--model",
            "/nonexistent.slb",
            &format!("--seconds={bad}"),
        ]);
        assert_clean_error(&r, &["--seconds"]);
    }
    // Step counts that overflowed the loop's arithmetic.
    let cfg = dir.path().join("ok0.toml");
    fs::write(&cfg, "model = \"resnet20\"\nepochs = 1\n").unwrap();
    for (flag, value) in [
        ("--stop-after", "9223372036854775807"),
        ("--profile-steps", "9223372036854775807"),
        ("--profile-steps", "-1"),
    ] {
        let r = slb(&[
            "train",
            "--config",
            s(&cfg),
            "--data",
            "/nonexistent/data",
            &format!("{flag}={value}"),
        ]);
        assert_clean_error(&r, &[flag]);
    }
    // Configs whose first step asked libtorch for terabytes.
    for (toml, key) in [
        ("resize = 100000\n", "resize"),
        ("width = 1000000\n", "width"),
        ("crop_pad = 100000\n", "crop_pad"),
        ("batch_size = 100000000\n", "batch_size"),
        // Each within its bound, together a terabyte per activation.
        (
            "batch_size = 4096\nresize = 1024\n",
            "lower batch_size, width or resize",
        ),
    ] {
        let cfg = dir.path().join("c.toml");
        fs::write(&cfg, toml).unwrap();
        let out = dir.path().join("out");
        let r = train_cpu(&cfg, "/nonexistent/data", &out);
        assert_clean_error(&r, &[key]);
        assert!(!out.exists(), "{toml}: the run started");
    }
    // An image whose header claims 10000 x 10000 pixels, sorting first in its class: refused
    // from its header (it was decoded, then 30 GB were asked for the whole split).
    let root = dir.path().join("big");
    tree(&root, &["a", "b"], &["a", "b"]);
    fs::write(
        root.join("train/a/0000-huge.png"),
        png_header_only(10_000, 10_000),
    )
    .unwrap();
    let err = load(&root, Split::Train).unwrap_err();
    assert!(matches!(err, DataError::ImageTooLarge { .. }), "{err:?}");
    assert!(err.to_string().contains("0000-huge.png"), "{err}");
    assert!(err.to_string().contains("10000x10000"), "{err}");
    // A tar member whose header claims 1 TB, with nothing behind it.
    let tar_path = dir.path().join("huge.tar");
    let mut h = tar::Header::new_gnu();
    h.set_path("cifar10/train/a/x.png").unwrap();
    h.set_size(1 << 40);
    h.set_mode(0o644);
    h.set_cksum();
    let mut f = fs::File::create(&tar_path).unwrap();
    f.write_all(h.as_bytes()).unwrap();
    f.write_all(&[0u8; 1024]).unwrap();
    drop(f);
    let t = Instant::now();
    let err = load(&tar_path, Split::Train).unwrap_err();
    assert!(matches!(err, DataError::ImageTooLarge { .. }), "{err:?}");
    assert!(err.to_string().contains("cifar10/train/a/x.png"), "{err}");
    assert!(t.elapsed().as_secs() < 10);
    let cfg = dir.path().join("ok.toml");
    fs::write(&cfg, "model = \"resnet20\"\nepochs = 1\n").unwrap();
    let r = train_cpu(&cfg, s(&tar_path), &dir.path().join("out"));
    assert_clean_error(&r, &["huge.tar", "is too large"]);
}

// ---------------------------------------------------------------------------------------------
// Class 2: a config that trains and then cannot be used

#[test]
fn every_config_value_is_checked_before_the_run_in_its_own_key_name() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str)] = &[
        ("warmup_epochs = inf\n", "warmup_epochs"),
        ("poly_power = inf\n", "poly_power"),
        ("poly_power = nan\n", "poly_power"),
        ("weight_decay = inf\n", "weight_decay"),
        ("weight_decay = nan\n", "weight_decay"),
        ("momentum = nan\n", "momentum"),
        ("label_smoothing = nan\n", "label_smoothing"),
        ("lr = inf\n", "lr"),
        ("t_factor = nan\n", "t_factor"),
        ("t_factor = 1e300\n", "t_factor"),
        ("t_start_val = inf\n", "t_start_val"),
        ("resize = 0\n", "resize"),
        ("resize = -3\n", "resize"),
        ("calibration_batches = 0\n", "calibration_batches"),
        ("train_per_class = 0\n", "train_per_class"),
        ("epochs = 0\n", "epochs"),
        ("epochs = 1.5\n", "epochs"),
        ("", "empty"),
        ("# only a comment\n\n", "empty"),
    ];
    for (toml, key) in cases {
        let cfg = dir.path().join("c.toml");
        fs::write(&cfg, toml).unwrap();
        let out = dir.path().join("out");
        let r = train_cpu(&cfg, "/nonexistent/data", &out);
        assert_clean_error(&r, &[key]);
        assert!(
            !r.2.contains("nonexistent"),
            "{toml}: data was read: {}",
            r.2
        );
        assert!(!out.exists(), "{toml}: the run started");
    }
    // A config file that is not one (an endless device) is refused without reading it all.
    let r = slb(&["train", "--config", "/dev/zero", "--data", "x"]);
    assert_clean_error(&r, &["/dev/zero"]);
}

// ---------------------------------------------------------------------------------------------
// Class 3: silently wrong results (class lists, data trees)

#[test]
fn class_lists_are_matched_by_name_or_refused() {
    // The library's rule.
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut ds = common::synthetic(6, 4, 3, 1);
    ds.classes = names(&["cat", "dog", "frog"]);
    // Same names in another order: re-labelled by name.
    let mut same = ds.clone();
    assert!(
        align_classes(&mut same, &names(&["dog", "frog", "cat"]), "t", false)
            .unwrap()
            .is_empty()
    );
    assert_eq!(same.labels, vec![2, 0, 1, 2, 0, 1]);
    // A class missing or extra: refused, naming it.
    for reference in [
        names(&["cat", "dog"]),
        names(&["cat", "dog", "frog", "owl"]),
    ] {
        let mut d = ds.clone();
        let err = align_classes(&mut d, &reference, "t", false).unwrap_err();
        assert!(matches!(err, DataError::ClassMismatch { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("frog") || msg.contains("owl"), "{msg}");
        assert!(msg.contains("--allow-class-mismatch"), "{msg}");
        assert_eq!(d, ds, "a refused dataset is left as it was");
    }
    // With the flag: matched by name, images of unknown classes left out.
    let mut d = ds.clone();
    let dropped = align_classes(&mut d, &names(&["frog", "cat"]), "t", true).unwrap();
    assert_eq!(dropped, names(&["dog"]));
    assert_eq!(d.labels, vec![1, 0, 1, 0]);
    assert_eq!(d.image(1), ds.image(2));
    // No name in common (c0..c9 against a model's names): refused even with the flag.
    let err = align_classes(&mut ds.clone(), &names(&["c0", "c1", "c2"]), "t", true).unwrap_err();
    assert!(err.to_string().contains("no class name is shared"), "{err}");

    // The command line: a test split missing a class is refused before any training.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tree(&data, &["cat", "dog", "frog"], &["cat", "frog"]);
    let cfg = dir.path().join("c.toml");
    fs::write(
        &cfg,
        "model = \"resnet20\"\nwidth = 4\nepochs = 1\nbatch_size = 4\nmixed_precision = false\n",
    )
    .unwrap();
    let out = dir.path().join("run");
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--config",
            s(&cfg),
            "--data",
            s(&data),
            "--device",
            "cpu",
            "--threads",
            "1",
            "--out",
            s(&out),
        ];
        args.extend_from_slice(extra);
        slb(&args)
    };
    let r = train(&[]);
    assert_clean_error(&r, &["class names differ", "dog"]);
    assert!(!out.join("metrics.jsonl").exists());
    // Accepted with the flag: the run trains (and exports).
    let r = train(&["--allow-class-mismatch"]);
    assert_eq!(r.0, 0, "{}", r.2);
    let model = out.join("model.slb");

    // `slb eval` compares the model's stored names with the folders.
    let renamed = dir.path().join("renamed");
    tree(&renamed, &["c0", "c1", "c2"], &["c0", "c1", "c2"]);
    let r = slb(&["eval", "--model", s(&model), "--data", s(&renamed)]);
    assert_clean_error(&r, &["class names differ", "no class name is shared"]);
    let fewer = dir.path().join("fewer");
    tree(&fewer, &["cat", "dog"], &["cat", "dog"]);
    let r = slb(&["eval", "--model", s(&model), "--data", s(&fewer)]);
    assert_clean_error(&r, &["class names differ", "frog"]);
    let r = slb(&[
        "eval",
        "--model",
        s(&model),
        "--data",
        s(&fewer),
        "--allow-class-mismatch",
        "--json",
    ]);
    assert_eq!(r.0, 0, "{}", r.2);
    let v: serde_json::Value = serde_json::from_str(r.1.trim()).unwrap();
    assert_eq!(v["images"], 8);

    // `slb export --data` calibrates only on the checkpoint's classes and image size.
    let ck = out.join("checkpoint.ot");
    let again = dir.path().join("again.slb");
    let export = |data: &Path| {
        slb(&[
            "export",
            "--checkpoint",
            s(&ck),
            "--out",
            s(&again),
            "--data",
            s(data),
        ])
    };
    let r = export(&renamed);
    assert_clean_error(&r, &["class names differ"]);
    let bigger = dir.path().join("bigger");
    for split in ["train", "test"] {
        let mut ds = common::synthetic(6, 16, 3, 5);
        ds.classes = names(&["cat", "dog", "frog"]);
        common::write_png_split(&ds, &bigger, split);
    }
    let r = export(&bigger);
    assert_clean_error(&r, &["16x16", "8x8"]);
    assert!(!again.exists());

    // `--resume` checks the checkpoint against the data and says plainly when it is done.
    let r = train(&["--resume", "--allow-class-mismatch"]);
    assert_clean_error(&r, &["cannot resume", "has finished", "1 of 1 epochs"]);
    let r = slb(&[
        "train",
        "--config",
        s(&cfg),
        "--data",
        s(&bigger),
        "--device",
        "cpu",
        "--epochs",
        "3",
        "--resume",
        "--out",
        s(&out),
    ]);
    assert_clean_error(&r, &["cannot resume", "image size 8", "16x16"]);
}

#[test]
fn odd_trees_are_refused_naming_the_folder_or_file() {
    let dir = tempfile::tempdir().unwrap();
    // An empty class folder shifted every later label.
    let root = dir.path().join("empty");
    tree(&root, &["a", "c"], &["a", "c"]);
    fs::create_dir(root.join("train/b")).unwrap();
    fs::write(root.join("train/b/notes.txt"), "no images").unwrap();
    let err = load(&root, Split::Train).unwrap_err();
    assert!(matches!(err, DataError::EmptyClass { .. }), "{err:?}");
    assert!(err.to_string().contains("train/b"), "{err}");
    // The same inside an archive.
    let tar_path = dir.path().join("empty.tar");
    let mut b = tar::Builder::new(fs::File::create(&tar_path).unwrap());
    b.append_dir_all("cifar10", &root).unwrap();
    b.into_inner().unwrap().flush().unwrap();
    let err = load(&tar_path, Split::Train).unwrap_err();
    assert!(matches!(err, DataError::EmptyClass { .. }), "{err:?}");
    assert!(err.to_string().contains("train/b/"), "{err}");

    // A `self -> .` link in a split folder.
    let root = dir.path().join("loop");
    tree(&root, &["a", "b"], &["a", "b"]);
    std::os::unix::fs::symlink(".", root.join("train/self")).unwrap();
    let err = load(&root, Split::Train).unwrap_err();
    assert!(matches!(err, DataError::LinkLoop { .. }), "{err:?}");
    assert!(err.to_string().contains("self"), "{err}");

    // A class or image name that is not UTF-8 was skipped silently.
    use std::os::unix::ffi::OsStrExt;
    let bad = std::ffi::OsStr::from_bytes(b"caf\xe9");
    let root = dir.path().join("nonutf8");
    tree(&root, &["a", "b"], &["a", "b"]);
    fs::rename(root.join("train/b"), root.join("train").join(bad)).unwrap();
    let err = load(&root, Split::Train).unwrap_err();
    assert!(matches!(err, DataError::NonUtf8Name { .. }), "{err:?}");
    let root = dir.path().join("nonutf8-file");
    tree(&root, &["a", "b"], &["a", "b"]);
    let mut name = b"x".to_vec();
    name.extend(b"\xff.png");
    fs::copy(
        root.join("train/a/0000.png"),
        root.join("train/a")
            .join(std::ffi::OsStr::from_bytes(&name)),
    )
    .unwrap();
    let err = load(&root, Split::Train).unwrap_err();
    assert!(matches!(err, DataError::NonUtf8Name { .. }), "{err:?}");

    // A size mismatch blames the odd image, even when it sorts first.
    let root = dir.path().join("odd");
    tree(&root, &["a", "b"], &["a", "b"]);
    let odd: PathBuf = root.join("train/a/0000-first.png");
    image::RgbImage::new(16, 16).save(&odd).unwrap();
    let err = load(&root, Split::Train).unwrap_err();
    match &err {
        DataError::SizeMismatch {
            path,
            expected,
            found,
            ..
        } => {
            assert_eq!(path, &odd);
            assert_eq!((*expected, *found), ((8, 8), (16, 16)));
        }
        e => panic!("{e:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Class 4: two runs on one --out

#[test]
fn a_second_run_on_a_busy_out_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let cfg = dir.path().join("c.toml");
    fs::write(&cfg, "model = \"resnet20\"\nepochs = 1\n").unwrap();
    let train = || train_cpu(&cfg, "/nonexistent/data", &out);
    let lock = slb_trainer::lock::OutLock::acquire(&out).unwrap();
    let r = train();
    assert_clean_error(
        &r,
        &[
            "in use by another slb run",
            &format!("pid {}", std::process::id()),
        ],
    );
    // A second lock in this process is refused too (the lock is per open file).
    assert!(matches!(
        slb_trainer::lock::OutLock::acquire(&out),
        Err(slb_trainer::Error::OutputBusy { .. })
    ));
    drop(lock);
    // Released: the next run gets past the lock (and stops at the missing data).
    let r = train();
    assert_clean_error(&r, &["/nonexistent/data"]);
}

// ---------------------------------------------------------------------------------------------
// Class 5: unbounded memory from small inputs

#[test]
fn model_files_are_sized_from_their_header_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    // An 8 GB sparse file (zeros) and /dev/zero: refused after the header.
    let sparse = dir.path().join("f.slb");
    fs::File::create(&sparse).unwrap().set_len(8 << 30).unwrap();
    for path in [sparse.as_path(), Path::new("/dev/zero")] {
        let t = Instant::now();
        let r = slb(&["inspect", s(path)]);
        assert_clean_error(&r, &[s(path), "not an SLB model file"]);
        assert!(t.elapsed().as_secs() < 20, "{path:?} was read whole");
    }
    // A sound header that claims a 4 GiB payload, on a small file or a huge sparse one.
    let mut head = b"SLBM".to_vec();
    head.extend(1u16.to_le_bytes());
    head.extend(0u16.to_le_bytes());
    head.extend(u32::MAX.to_le_bytes());
    head.extend([0u8; 4]);
    let short = dir.path().join("short.slb");
    fs::write(&short, &head).unwrap();
    let r = slb(&["inspect", s(&short)]);
    assert_clean_error(&r, &["truncated model file", "4294967311"]);
    let long = dir.path().join("long.slb");
    let mut f = fs::File::create(&long).unwrap();
    f.write_all(&head).unwrap();
    f.set_len(5 << 30).unwrap();
    drop(f);
    let t = Instant::now();
    let r = slb(&["eval", "--model", s(&long), "--data", "/nonexistent"]);
    assert_clean_error(&r, &["unexpected bytes after the model's checksum"]);
    assert!(t.elapsed().as_secs() < 20);
}

// ---------------------------------------------------------------------------------------------
// Class 6: messages

#[test]
fn messages_are_one_line_with_each_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    // An I/O error's cause was printed twice (`(os error 20): ... (os error 20)`).
    let file = dir.path().join("a-file");
    fs::write(&file, "x").unwrap();
    let cfg = dir.path().join("c.toml");
    fs::write(&cfg, "model = \"resnet20\"\nepochs = 1\n").unwrap();
    let r = train_cpu(&cfg, "/nonexistent", &file.join("sub"));
    assert_clean_error(&r, &["a-file/sub"]);
    assert_eq!(r.2.matches("os error").count(), 1, "{}", r.2);
    // A checkpoint libtorch cannot read: no C++ backtrace, one line.
    let ck = dir.path().join("bad.ot");
    fs::write(&ck, b"PK\x03\x04 not a zip at all").unwrap();
    let r = slb(&[
        "export",
        "--checkpoint",
        s(&ck),
        "--out",
        s(&dir.path().join("m.slb")),
    ]);
    assert_clean_error(&r, &["bad.ot"]);
    // `--out` a folder (the export's rename failed after all the work, leaving `.NAME.tmpPID`).
    let r = slb(&["export", "--checkpoint", s(&ck), "--out", s(dir.path())]);
    assert_clean_error(&r, &["is a folder"]);
    assert!(!r.2.contains("Exception raised from"), "{}", r.2);
    assert_eq!(r.2.lines().count(), 1, "{}", r.2);
    let e = tch::TchError::Torch(
        "PytorchStreamReader failed\nException raised from readRecord at x.cpp:1\nframe #0: f()"
            .into(),
    );
    assert_eq!(
        slb_trainer::error::torch_message(&e),
        "Internal torch error: PytorchStreamReader failed"
    );
    // The NaN stop claims a checkpoint only when there is one.
    let nan = |checkpoint: &Path| {
        slb_trainer::Error::NonFiniteLoss {
            value: f64::NAN,
            epoch: 1,
            step: 2,
            checkpoint: checkpoint.display().to_string(),
        }
        .to_string()
    };
    assert!(nan(&dir.path().join("none.ot")).contains("no checkpoint was written"));
    assert!(nan(&file).contains("is left untouched"));
    // `--trace` to a path that cannot be written is refused before the run.
    let r = slb(&[
        "train",
        "--config",
        s(&cfg),
        "--data",
        "/nonexistent",
        "--device",
        "cpu",
        "--profile-steps",
        "1",
        "--trace",
        "/nonexistent-dir/t.json",
        "--out",
        s(&dir.path().join("o")),
    ]);
    assert_clean_error(&r, &["--trace", "/nonexistent-dir/t.json"]);
}

#[test]
fn a_checkpoint_that_cannot_fit_is_refused_before_libtorch_writes_it() {
    let dir = tempfile::tempdir().unwrap();
    let free = slb_trainer::lock::available_space(dir.path()).expect("statvfs on Linux");
    assert!(free > 0);
    slb_trainer::lock::check_free_space(dir.path(), 1).unwrap();
    let err =
        slb_trainer::lock::check_free_space(dir.path(), free.saturating_mul(4) + 1).unwrap_err();
    assert!(
        matches!(err, slb_trainer::Error::DiskFull { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("not enough free space"), "{err}");
}

#[test]
fn failed_and_killed_writes_leave_no_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("model.slb");
    // A write that fails half-way.
    let r = slb_trainer::train::write_atomic(&target, |tmp| {
        fs::write(tmp, b"half").unwrap();
        Err(slb_trainer::Error::config("disk full"))
    });
    assert!(r.is_err());
    let names = |d: &Path| {
        let mut v: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        v.sort();
        v
    };
    assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
    // A killed writer's file (its pid is gone) is removed; a live one's is kept.
    let dead = dir.path().join(".model.slb.tmp4294967");
    let live = dir
        .path()
        .join(format!(".model.slb.tmp{}", std::process::id()));
    let other = dir.path().join(".checkpoint.ot.tmp4294967");
    for p in [&dead, &live, &other] {
        fs::write(p, b"x").unwrap();
    }
    assert_eq!(
        slb_trainer::lock::remove_stale_temps(dir.path(), "model.slb"),
        1
    );
    assert!(!dead.exists() && live.exists() && other.exists());
}

/// `slb bench --image`: a real image is timed (decoded and cropped as `slb eval` would, named in
/// the report); a file that is not an image, a missing one and a directory are one-line errors
/// naming the image, with exit code 2.
#[test]
fn bench_times_a_given_image_and_refuses_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/resnet18-cifar-w1a8.slb");
    let png = dir.path().join("photo.png");
    image::RgbImage::from_fn(40, 36, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 7) as u8, 90])
    })
    .save(&png)
    .unwrap();
    let bench = |img: &Path| {
        slb(&[
            "bench",
            "--model",
            s(&model),
            "--image",
            s(img),
            "--seconds",
            "0.05",
            "--packed-only",
        ])
    };
    let (code, out, err) = bench(&png);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("photo.png") && out.contains("packed runtime"),
        "{out}"
    );
    let junk = dir.path().join("junk.jpg");
    fs::write(&junk, b"not an image at all").unwrap();
    for bad in [
        junk,
        dir.path().join("missing.png"),
        dir.path().to_path_buf(),
    ] {
        assert_clean_error(&bench(&bad), &["image"]);
    }
}
