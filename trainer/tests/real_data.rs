//! A short CPU training on a few hundred real CIFAR-10 images from the shared archive beats
//! chance clearly on held-out images.

use std::path::Path;

use slb_trainer::config::Config;
use slb_trainer::data::{load_limited, Split};
use slb_trainer::nn::Arch;
use slb_trainer::train::{run, RunOptions};

#[test]
fn short_real_training_beats_chance() {
    let archive = std::env::var("SLB_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/cifar10-jpeg.tar.xz")
        });
    assert!(
        archive.exists(),
        "the CIFAR-10 archive is missing at {} (set SLB_DATA)",
        archive.display()
    );
    let t0 = std::time::Instant::now();
    let train = load_limited(&archive, Split::Train, Some(60)).unwrap();
    let test = load_limited(&archive, Split::Test, Some(40)).unwrap();
    eprintln!(
        "loaded {} + {} images in {:.1}s",
        train.len(),
        test.len(),
        t0.elapsed().as_secs_f64()
    );
    assert_eq!((train.len(), test.len()), (600, 400));
    tch::set_num_threads(1);
    let cfg = Config {
        model: Arch::Resnet20,
        width: Some(8),
        epochs: 8,
        batch_size: 32,
        lr: 0.1,
        warmup_lr: 0.02,
        warmup_epochs: 1.0,
        lr_schedule: slb_trainer::config::Schedule::Cosine,
        nesterov: true,
        weight_decay: 5e-5,
        label_smoothing: 0.0,
        enable_act_quant: true,
        quant_delay: 40,
        t_factor: 1.5,
        mixed_precision: false,
        log_every: 10,
        ..Config::default()
    };
    let out = tempfile::tempdir().unwrap();
    let opts = RunOptions {
        out: out.path().to_path_buf(),
        device: tch::Device::Cpu,
        resume: false,
        stop_after: None,
        progress: false,
        profile_steps: 0,
        trace: None,
        dist: None,
    };
    let s = run(&cfg, &train, &test, &opts).unwrap();
    let last = s.epochs.last().unwrap();
    // Chance is 10 %; with 400 test images its standard deviation is 1.5 points.
    assert!(last.test_top1 >= 0.2, "test top-1 {:.3}", last.test_top1);
    assert!(last.hard, "the last epochs train with hard weights");
}
