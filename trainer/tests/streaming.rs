//! The streaming image-folder loader on a small ImageNet-shaped tree written at test time
//! (varied sizes around 500x375, grey and CMYK JPEGs, PNGs with alpha, corrupt files): order,
//! sharding and determinism, the file-by-file decisions, and one CPU epoch through `slb train`.

mod common;

use std::path::Path;

use image::ImageEncoder;

use slb_trainer::data::{
    use_streaming, BatchSource, Shard, Split, StreamData, StreamOptions, Streaming, Transform,
};
use tch::{Device, Kind, Tensor};

const CLASSES: usize = 20;
const PER_CLASS: usize = 20;
const VAL_PER_CLASS: usize = 4;

/// The colour of class `c` (channel values), distinct enough to learn.
fn colour(c: usize) -> [u8; 3] {
    [
        (40 + 97 * c % 200) as u8,
        (40 + 61 * (c + 3) % 200) as u8,
        (40 + 37 * (c + 7) % 200) as u8,
    ]
}

/// A `w x h` RGB image of class `c`: its colour, stripes across or down by class, some noise.
fn rgb(c: usize, i: usize, w: u32, h: u32) -> Vec<u8> {
    let col = colour(c);
    let mut v = Vec::with_capacity((w * h * 3) as usize);
    let mut s = (c * 131 + i * 7 + 1) as u32;
    for y in 0..h {
        for x in 0..w {
            s = s.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let stripe = if c.is_multiple_of(2) {
                (x / 16) % 2
            } else {
                (y / 16) % 2
            } as i32;
            for ch in col {
                let n = ((s >> 16) % 21) as i32 - 10;
                v.push((ch as i32 + 30 * stripe + n).clamp(0, 255) as u8);
            }
        }
    }
    v
}

fn jpeg(data: &[u8], w: u32, h: u32, ct: jpeg_encoder::ColorType) -> Vec<u8> {
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 90)
        .encode(data, w as u16, h as u16, ct)
        .unwrap();
    out
}

fn to_cmyk(rgb: &[u8]) -> Vec<u8> {
    rgb.chunks(3)
        .flat_map(|p| {
            let k = 255 - *p.iter().max().unwrap();
            let f = |v: u8| 255 - v - k;
            [f(p[0]), f(p[1]), f(p[2]), k]
        })
        .collect()
}

/// What the generator wrote that the loader must treat specially.
struct Tree {
    /// Training files that must be skipped.
    bad_train: Vec<String>,
    /// A grey JPEG, a CMYK JPEG, a PNG with alpha, a PNG named .JPEG (training split).
    grey: String,
    cmyk: (String, usize),
    png_alpha: String,
}

/// Writes `root/{train,val}/<class>/*.JPEG`: 20 classes x 20 training and 4 validation images
/// of sizes around 500x375; every 7th grey, one CMYK, one PNG with alpha, one PNG named
/// `.JPEG`, and in training a truncated JPEG, a 0-byte file and a text file named `.JPEG`.
fn imagenet_tree(root: &Path) -> Tree {
    let mut bad_train = Vec::new();
    for (split, n) in [("train", PER_CLASS), ("val", VAL_PER_CLASS)] {
        for c in 0..CLASSES {
            let dir = root.join(split).join(format!("n{:08}", 1000 + c));
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                let (w, h) = if (c + i) % 3 == 0 {
                    (333 + (i as u32 * 13) % 60, 500)
                } else {
                    (470 + (i as u32 * 17) % 70, 350 + (c as u32 * 7) % 50)
                };
                let px = rgb(c, i, w, h);
                let bytes = if (c * n + i) % 7 == 3 {
                    let grey: Vec<u8> = px
                        .chunks(3)
                        .map(|p| ((p[0] as u32 + p[1] as u32 + p[2] as u32) / 3) as u8)
                        .collect();
                    jpeg(&grey, w, h, jpeg_encoder::ColorType::Luma)
                } else if split == "train" && c == 3 && i == 5 {
                    jpeg(&to_cmyk(&px), w, h, jpeg_encoder::ColorType::Cmyk)
                } else if split == "train" && c == 4 && i == 6 {
                    let rgba: Vec<u8> =
                        px.chunks(3).flat_map(|p| [p[0], p[1], p[2], 128]).collect();
                    let mut out = Vec::new();
                    image::codecs::png::PngEncoder::new(&mut out)
                        .write_image(&rgba, w, h, image::ExtendedColorType::Rgba8)
                        .map(|_| ())
                        .unwrap();
                    out
                } else {
                    jpeg(&px, w, h, jpeg_encoder::ColorType::Rgb)
                };
                std::fs::write(dir.join(format!("n{:08}_{i:05}.JPEG", 1000 + c)), bytes).unwrap();
            }
        }
    }
    let train = root.join("train");
    let class = |c: usize| train.join(format!("n{:08}", 1000 + c));
    // Corrupt files, sorting last in their classes.
    let full = std::fs::read(class(0).join("n00001000_00001.JPEG")).unwrap();
    let trunc = class(0).join("n00001000_zz_truncated.JPEG");
    std::fs::write(&trunc, &full[..full.len() / 2]).unwrap();
    let empty = class(1).join("n00001001_zz_empty.JPEG");
    std::fs::write(&empty, b"").unwrap();
    let text = class(2).join("n00001002_zz_text.JPEG");
    std::fs::write(&text, b"<html>not an image</html>").unwrap();
    for p in [trunc, empty, text] {
        bad_train.push(p.display().to_string());
    }
    Tree {
        bad_train,
        grey: class(0)
            .join(format!("n{:08}_{:05}.JPEG", 1000, 3))
            .display()
            .to_string(),
        cmyk: (
            class(3).join("n00001003_00005.JPEG").display().to_string(),
            3,
        ),
        png_alpha: class(4).join("n00001004_00006.JPEG").display().to_string(),
    }
}

fn opts(transform: Transform) -> StreamOptions {
    StreamOptions {
        transform,
        workers: 2,
        prefetch: 2,
        device: Device::Cpu,
    }
}

fn eval_data(root: &Path) -> StreamData {
    StreamData::open(root, Split::Train, None, opts(Transform::imagenet_eval(64))).unwrap()
}

/// The decoded (evaluation-transform) image of the file `path`, `[64, 64, 3]` u8.
fn decoded(d: &StreamData, path: &str) -> Tensor {
    let i = d
        .files()
        .iter()
        .position(|(p, _)| p.display().to_string() == path)
        .unwrap();
    let (x, y) = d.host_batch(&[i], 0);
    assert_eq!(y.size(), [1], "{path} was skipped");
    x.get(0)
}

#[test]
fn odd_files_decode_to_rgb_or_are_skipped_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let tree = imagenet_tree(dir.path());
    let d = eval_data(dir.path());
    assert_eq!(d.classes().len(), CLASSES);
    assert_eq!(d.files().len(), CLASSES * PER_CLASS + 3);
    // Grey: three equal channels.
    let g = decoded(&d, &tree.grey).to_kind(Kind::Int64);
    assert_eq!(
        (g.select(2, 0) - g.select(2, 1))
            .abs()
            .max()
            .int64_value(&[]),
        0
    );
    // CMYK: the class colour, not its inverse or garbage.
    let (path, c) = &tree.cmyk;
    let m = decoded(&d, path)
        .to_kind(Kind::Float)
        .mean_dim(&[0i64, 1][..], false, Kind::Float);
    for (ch, want) in colour(*c).into_iter().enumerate() {
        let v = m.double_value(&[ch as i64]);
        // The stripes add 15 on average.
        assert!(
            (v - (want as f64 + 15.0)).abs() < 25.0,
            "CMYK channel {ch}: {v} vs {want}"
        );
    }
    // PNG with alpha: the colour with the alpha dropped.
    let m = decoded(&d, &tree.png_alpha).to_kind(Kind::Float).mean_dim(
        &[0i64, 1][..],
        false,
        Kind::Float,
    );
    for (ch, want) in colour(4).into_iter().enumerate() {
        let v = m.double_value(&[ch as i64]);
        assert!((v - (want as f64 + 15.0)).abs() < 25.0, "PNG {ch}: {v}");
    }
    // One epoch in stored order: the bad files are skipped and counted, the rest delivered.
    let mut seen = 0;
    for (x, y) in d.epoch(64, false, 0) {
        assert_eq!(x.size()[1..], [64, 64, 3]);
        seen += y.size()[0];
    }
    assert_eq!(seen as usize, CLASSES * PER_CLASS);
    assert_eq!(d.skipped(), 3);
}

#[test]
fn order_is_deterministic_sharded_and_augmentation_depends_on_the_seed() {
    let dir = tempfile::tempdir().unwrap();
    imagenet_tree(dir.path());
    let one = StreamData::open(
        dir.path(),
        Split::Train,
        Some(3),
        opts(Transform::imagenet_train(48)),
    )
    .unwrap();
    let epoch = |d: &StreamData, seed| -> (Tensor, Tensor) {
        let (xs, ys): (Vec<Tensor>, Vec<Tensor>) = d.epoch(8, true, seed).unzip();
        (Tensor::cat(&xs, 0), Tensor::cat(&ys, 0))
    };
    let (a, la) = epoch(&one, 5);
    let (b, lb) = epoch(&one, 5);
    assert!(a.equal(&b) && la.equal(&lb), "same seed, same epoch");
    let (c, _) = epoch(&one, 6);
    assert!(!a.equal(&c), "another seed, another epoch");
    // Batches decode concurrently (`prefetch` at once) but arrive in order, and their images
    // do not depend on the pool's size or timing.
    for (workers, prefetch) in [(1, 1), (3, 5)] {
        let other = StreamData::open(
            dir.path(),
            Split::Train,
            Some(3),
            StreamOptions {
                workers,
                prefetch,
                ..opts(Transform::imagenet_train(48))
            },
        )
        .unwrap();
        let (o, lo) = epoch(&other, 5);
        assert!(
            o.equal(&a) && lo.equal(&la),
            "{workers} workers, prefetch {prefetch}"
        );
    }
    assert_eq!(la.size(), [(CLASSES * 3) as i64]);
    // Two ranks: disjoint, covering, and each rank's images are those of the single run.
    let rank = |r: usize| -> (Tensor, Tensor) {
        let (xs, ys): (Vec<Tensor>, Vec<Tensor>) = one
            .shard_epoch(8, true, 5, Shard { rank: r, world: 2 })
            .map(|(x, y, _)| (x, y))
            .unzip();
        (Tensor::cat(&xs, 0), Tensor::cat(&ys, 0))
    };
    let (x0, l0) = rank(0);
    let (x1, l1) = rank(1);
    assert_eq!(l0.size()[0] + l1.size()[0], la.size()[0]);
    let mut all: Vec<i64> = Vec::<i64>::try_from(&Tensor::cat(&[&l0, &l1], 0)).unwrap();
    let mut want: Vec<i64> = Vec::<i64>::try_from(&la).unwrap();
    all.sort_unstable();
    want.sort_unstable();
    assert_eq!(all, want);
    // Rank 0's first image is the single run's first, identically augmented.
    assert!(x0.get(0).equal(&a.get(0)));
    assert!(x1.get(0).equal(&a.get(1)));
}

#[test]
fn the_imagenet_recipe_parses_and_validates() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/imagenet-resnet18.toml");
    let c = slb_trainer::config::Config::from_file(&p).unwrap();
    c.algorithm().unwrap();
    assert_eq!(c.model, slb_trainer::nn::Arch::Resnet18Imagenet);
    assert_eq!(c.resize, Some(224));
    assert_eq!(c.normalization, slb_trainer::data::Normalization::Imagenet);
}

#[test]
fn auto_streams_mixed_sizes_and_always_refuses_what_cannot_stream() {
    let dir = tempfile::tempdir().unwrap();
    let tree_root = dir.path().join("imagenet");
    imagenet_tree(&tree_root);
    assert!(use_streaming(&tree_root, Streaming::Auto).unwrap());
    assert!(!use_streaming(&tree_root, Streaming::Never).unwrap());
    let small = dir.path().join("small");
    let ds = common::synthetic(20, 8, 2, 1);
    common::write_png_split(&ds, &small, "train");
    common::write_png_split(&ds, &small, "test");
    assert!(!use_streaming(&small, Streaming::Auto).unwrap());
    assert!(use_streaming(&small, Streaming::Always).unwrap());
    let archive = dir.path().join("x.tar");
    std::fs::write(&archive, b"").unwrap();
    let e = use_streaming(&archive, Streaming::Always).unwrap_err();
    assert!(e.to_string().contains("cannot be streamed"), "{e}");
}

/// `slb train` for one CPU epoch of a slim resnet18_imagenet on the tree `root`, streamed
/// (crops of `side`, `workers` decoding threads), with `extra` arguments; its output folder is
/// `dir/run`. Returns the exit code, stderr and the output folder.
fn train_streamed(
    dir: &Path,
    root: &Path,
    side: u32,
    workers: usize,
    extra: &[&str],
) -> (i32, String, std::path::PathBuf) {
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "model = \"resnet18_imagenet\"\nwidth = 4\nepochs = 1\nbatch_size = 32\n\
             resize = {side}\nnormalization = \"imagenet\"\nstreaming = \"always\"\n\
             data_workers = {workers}\nenable_act_quant = true\nquant_delay = 2\n\
             mixed_precision = false\nlog_every = 4\nlr = 0.05\nwarmup_epochs = 0.0\n"
        ),
    )
    .unwrap();
    let out = dir.join("run");
    let mut args = vec![
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--data",
        root.to_str().unwrap(),
        "--device",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (code, _, err) = common::slb(&args);
    (code, err, out)
}

#[test]
fn one_cpu_epoch_of_resnet18_imagenet_streams_trains_evaluates_and_exports() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("imagenet");
    let tree = imagenet_tree(&root);
    let (code, err, out) = train_streamed(dir.path(), &root, 224, 2, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("data: streaming 403 training, 80 test images"),
        "{err}"
    );
    for bad in &tree.bad_train {
        assert!(
            err.contains(&format!("warning: skipping image {bad}")),
            "{bad} not named: {err}"
        );
    }
    assert!(err.contains("(3 images skipped)"), "{err}");
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let m: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    assert_eq!(m["skipped_images"], 3);
    let top1 = m["test_top1"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&top1));
    assert!(out.join("model.slb").exists(), "{err}");
}

#[test]
fn two_ranks_stream_their_shards_and_skip_files_as_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("imagenet");
    let tree = imagenet_tree(&root);
    let (code, err, out) = train_streamed(
        dir.path(),
        &root,
        112,
        1,
        &["--nproc", "2", "--dist-timeout", "120"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("data-parallel: 2 ranks over gloo"), "{err}");
    // Each bad file is in one rank's shard: named once, and the epoch counts all three.
    for bad in &tree.bad_train {
        assert_eq!(
            err.matches(&format!("warning: skipping image {bad}"))
                .count(),
            1,
            "{bad}: {err}"
        );
    }
    assert!(err.contains("(3 images skipped)"), "{err}");
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 1);
    assert!(out.join("model.slb").exists(), "{err}");
}

#[test]
fn an_epoch_whose_every_file_is_skipped_stops_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("broken");
    for (split, class) in [("train", "a"), ("train", "b"), ("val", "a"), ("val", "b")] {
        let d = root.join(split).join(class);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..3 {
            std::fs::write(
                d.join(format!("{i}.jpg")),
                b"\xFF\xD8\xFF\xE0 not a jpeg at all",
            )
            .unwrap();
        }
    }
    let (code, err, out) = train_streamed(dir.path(), &root, 64, 1, &[]);
    let r = (code, String::new(), err);
    common::assert_clean_error(&r, &["epoch 1 trained on no image", "6 files", "skipped"]);
    assert!(!out.join("checkpoint.ot").exists());
}
