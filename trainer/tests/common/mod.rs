//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use slb_trainer::config::Config;
use slb_trainer::data::Dataset;

/// A small learnable dataset: each class has its own colour and stripe direction, plus noise.
pub fn synthetic(n: usize, size: usize, classes: usize, seed: u64) -> Dataset {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut rnd = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    let mut images = Vec::with_capacity(n * size * size * 3);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % classes;
        labels.push(c as i64);
        for y in 0..size {
            for x in 0..size {
                let stripe = if c.is_multiple_of(2) {
                    (x / 2) % 2
                } else {
                    (y / 2) % 2
                };
                for ch in 0..3 {
                    let base = 40 + 60 * ((c + ch) % 3) + 50 * stripe;
                    let v = base as i32 + (rnd() % 60) as i32 - 30;
                    images.push(v.clamp(0, 255) as u8);
                }
            }
        }
    }
    Dataset {
        images,
        labels,
        height: size,
        width: size,
        classes: (0..classes).map(|c| format!("class{c}")).collect(),
    }
}

/// A tiny recipe: slim ResNet20, a few steps per epoch.
pub fn tiny_config() -> Config {
    Config {
        model: slb_trainer::nn::Arch::Resnet20,
        width: Some(4),
        epochs: 2,
        batch_size: 16,
        lr: 0.05,
        warmup_lr: 0.01,
        warmup_epochs: 0.5,
        enable_act_quant: true,
        quant_delay: 3,
        t_start_time: 0.0,
        t_end_time: 1.0,
        label_smoothing: 0.1,
        mixed_precision: false,
        log_every: 2,
        calibration_batches: 2,
        ..Config::default()
    }
}

/// Writes a dataset as a CIFAR-10 binary batch file (`label, R plane, G plane, B plane`).
pub fn write_cifar_bin(ds: &Dataset, path: &Path) {
    let (h, w) = (ds.height, ds.width);
    let mut out = Vec::new();
    for i in 0..ds.len() {
        out.push(ds.labels[i] as u8);
        let img = ds.image(i);
        for c in 0..3 {
            for p in 0..h * w {
                out.push(img[p * 3 + c]);
            }
        }
    }
    std::fs::write(path, out).unwrap();
}

/// A CIFAR-10 binary folder `dir/data` of synthetic 32x32 images of 4 classes: `train` training
/// and `test` test images (seeds `seed` and `seed + 1`). Returns the folder.
pub fn cifar_bin_dir(dir: &Path, train: usize, test: usize, seed: u64) -> PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    write_cifar_bin(
        &synthetic(train, 32, 4, seed),
        &data.join("data_batch_1.bin"),
    );
    write_cifar_bin(
        &synthetic(test, 32, 4, seed + 1),
        &data.join("test_batch.bin"),
    );
    data
}

/// The shared CIFAR-10 archive (SLB_DATA overrides the location).
pub fn shared_archive() -> PathBuf {
    if let Ok(p) = std::env::var("SLB_DATA") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/cifar10-jpeg.tar.xz")
}

/// Writes `ds` as an image-folder split `root/<split>/<class>/<i>.png` (one folder per class
/// name of `ds`, in its label order).
pub fn write_png_split(ds: &Dataset, root: &Path, split: &str) {
    for (c, name) in ds.classes.iter().enumerate() {
        std::fs::create_dir_all(root.join(split).join(name)).unwrap();
        let _ = c;
    }
    for i in 0..ds.len() {
        let class = &ds.classes[ds.labels[i] as usize];
        let img =
            image::RgbImage::from_raw(ds.width as u32, ds.height as u32, ds.image(i).to_vec())
                .unwrap();
        img.save(root.join(split).join(class).join(format!("{i:04}.png")))
            .unwrap();
    }
}

/// Runs the `slb` binary: (exit code, stdout, stderr).
pub fn slb(args: &[&str]) -> (i32, String, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_slb"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

/// Asserts that `slb` failed cleanly: exit code 2 (not a panic's 101 or an abort's 134), one
/// `error:` line on stderr containing every one of `wanted`, no C++ backtrace.
pub fn assert_clean_error(r: &(i32, String, String), wanted: &[&str]) {
    let (code, _, err) = r;
    assert_eq!(*code, 2, "exit code {code}: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(!lines[0].contains("frame #"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for w in wanted {
        assert!(lines[0].contains(w), "{w:?} not in {:?}", lines[0]);
    }
}
