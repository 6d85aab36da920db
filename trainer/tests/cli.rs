//! The `slb` binary: configuration errors exit non-zero with the validation message before any
//! data is read; `slb export` writes a model file that parses.

mod common;

use std::path::PathBuf;
use std::process::Command;

fn slb(args: &[&str]) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_slb"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

#[test]
fn bad_config_fails_before_reading_data() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "t_start_time = 1.5\n",
            "t_start_time must be a float in [0, 1]",
        ),
        (
            "t_end_time = 0.1\n",
            "t_end_time must be greater than or equal to t_start_time",
        ),
        ("t_factor = 0\n", "t_factor"),
        (
            "weight_quant_dtype = \"INT8\"\n",
            "weight_quant_dtype must be one of INT1, INT2, INT4",
        ),
        ("act_quant_dtype = \"INT2\"\n", "needs enable_act_quant"),
        ("epochs = 0\n", "epoch_size must be an int greater than 0"),
        (
            "has_trained_epoch = 100\n",
            "has_trained_epoch must be smaller than epoch_size",
        ),
        ("batch_size = -1\n", "batch_size"),
        ("weight_quant_dtype = \"INT3\"\n", "unknown variant"),
        ("no_such_key = 1\n", "no_such_key"),
    ];
    for (i, (toml, msg)) in cases.iter().enumerate() {
        let cfg = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&cfg, toml).unwrap();
        let (ok, err) = slb(&[
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--data",
            "/nonexistent/data",
            "--device",
            "cuda",
            "--out",
            dir.path().join("out").to_str().unwrap(),
        ]);
        assert!(!ok, "{toml}");
        assert!(err.contains(msg), "{toml}: {err}");
        assert!(!err.contains("nonexistent"), "data was touched: {err}");
        assert!(!dir.path().join("out").exists());
    }
    let (ok, err) = slb(&["train", "--config", "/nonexistent.toml", "--data", "x"]);
    assert!(!ok && err.contains("/nonexistent.toml"), "{err}");
}

/// A CIFAR-10 binary tree of synthetic images (32 training, 8 test) and a config file with
/// `toml` in `dir`: `(data, config)`.
fn tiny_run_inputs(dir: &std::path::Path, toml: &str, seed: u64) -> (PathBuf, PathBuf) {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    common::write_cifar_bin(
        &common::synthetic(32, 32, 4, seed),
        &data.join("data_batch_1.bin"),
    );
    common::write_cifar_bin(
        &common::synthetic(8, 32, 4, seed + 1),
        &data.join("test_batch.bin"),
    );
    let cfg = dir.join("c.toml");
    std::fs::write(&cfg, toml).unwrap();
    (data, cfg)
}

#[test]
fn train_then_export_command() {
    let dir = tempfile::tempdir().unwrap();
    let (data, cfg) = tiny_run_inputs(
        dir.path(),
        "model = \"vgg_small\"\nwidth = 4\nepochs = 1\nbatch_size = 16\nmixed_precision = false\n",
        21,
    );
    let out = dir.path().join("run");
    let (ok, err) = slb(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--device",
        "cpu",
        "--threads",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(
        err.contains("SlbQuantAwareTraining<weight_quant_dtype=INT1"),
        "{err}"
    );
    assert!(err.contains("calibrated on training images"), "{err}");
    let model = std::fs::read(out.join("model.slb")).unwrap();
    slb_format::Model::parse(&model).unwrap();
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let m: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    assert_eq!(m["epoch"], 1);
    assert!(m["test_top1"].as_f64().is_some() && m["test_top5"].as_f64().is_some());
    // Export again from the checkpoint: without data the uncalibrated ranges are refused.
    let again = dir.path().join("again.slb");
    let ck = out.join("checkpoint.ot");
    let (ok, err) = slb(&[
        "export",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("pass --data"), "{err}");
    let (ok, err) = slb(&[
        "export",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let m = std::fs::read(&again).unwrap();
    let parsed = slb_format::Model::parse(&m).unwrap();
    // A binary folder without batches.meta.txt carries CIFAR-10's ten class names.
    assert_eq!(parsed.input.num_classes(), 10);
    assert!(parsed
        .layers
        .iter()
        .any(|l| matches!(l, slb_format::Layer::MaxPool(_))));
    assert!(parsed
        .layers
        .iter()
        .any(|l| matches!(l, slb_format::Layer::Flatten(_))));
}

#[test]
fn shipped_configs_validate() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    for name in ["golden-stick.toml", "fast.toml", "cpu-demo.toml"] {
        let cfg = slb_trainer::config::Config::from_file(&dir.join(name)).unwrap();
        let algo = cfg.algorithm().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            algo.weight_quant_dtype(),
            slb_trainer::QuantDtype::Int1,
            "{name}"
        );
    }
    let gs = slb_trainer::config::Config::from_file(&dir.join("golden-stick.toml")).unwrap();
    assert_eq!(gs.model, slb_trainer::nn::Arch::Resnet18Imagenet);
    assert_eq!(
        (gs.epochs, gs.resize, gs.label_smoothing),
        (100, Some(224), 0.1)
    );
    assert!(gs.enable_bn_calibration && gs.enable_act_quant);
}

/// `--profile-steps N --trace FILE` writes a Chrome trace of those steps (libtorch's Kineto
/// profiler through the C++ shim, which CI's build has); `--trace` alone is refused.
#[test]
fn trace_records_the_profiled_steps() {
    let dir = tempfile::tempdir().unwrap();
    let (data, cfg) = tiny_run_inputs(
        dir.path(),
        "model = \"resnet20\"\nwidth = 4\nepochs = 1\nbatch_size = 4\nmixed_precision = false\nenable_act_quant = true\nquant_delay = 0\n",
        23,
    );
    let trace = dir.path().join("trace.json");
    let out = dir.path().join("run");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--device",
            "cpu",
            "--threads",
            "1",
            "--no-export",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        slb(&args)
    };
    let (ok, err) = run(&["--trace", trace.to_str().unwrap()]);
    assert!(!ok && err.contains("--profile-steps"), "{err}");
    assert!(!trace.exists());
    let (ok, err) = run(&["--profile-steps", "2", "--trace", trace.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(err.contains("trace of 2 steps"), "{err}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    let events = json["traceEvents"].as_array().expect("a Chrome trace");
    let ops: Vec<&str> = events
        .iter()
        .filter(|e| e["cat"] == "cpu_op")
        .filter_map(|e| e["name"].as_str())
        .collect();
    // The traced steps ran convolutions and the 8-bit nodes' fused fake quant.
    assert!(ops.iter().any(|n| n.contains("convolution")), "{ops:?}");
    assert!(ops.iter().any(|n| n.contains("fake_quantize")), "{ops:?}");
}

/// `SLB_NO_AVX512=1` (the runtime's `NO_AVX512_VAR`) plans the shipped W1A8 model as on a CPU
/// without AVX-512: `slb inspect` lists no AVX-512 or AMX kernel, and on an x86-64 CPU with
/// AVX2 the AVX2 int8 kernels instead; `0` and empty leave the detection as it is (the same
/// kernels as without the variable).
#[test]
fn no_avx512_variable_plans_as_an_avx2_cpu() {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/resnet18-cifar-w1a8.slb");
    let inspect = |value: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_slb"));
        c.args(["inspect", model.to_str().unwrap()]);
        c.env_remove(slb_runtime::NO_AVX512_VAR);
        if let Some(v) = value {
            c.env(slb_runtime::NO_AVX512_VAR, v);
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let denied = inspect(Some("1"));
    assert!(denied.contains("int8-"), "{denied}");
    assert!(
        !denied.contains("avx512") && !denied.contains("amx"),
        "{denied}"
    );
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        assert!(denied.contains("int8-dot/avx2"), "{denied}");
    }
    let plain = inspect(None);
    for v in ["0", ""] {
        assert_eq!(
            inspect(Some(v)),
            plain,
            "{}={v:?}",
            slb_runtime::NO_AVX512_VAR
        );
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512vnni") {
        assert!(plain.contains("avx512"), "{plain}");
    }
}
