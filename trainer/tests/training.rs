//! Training-loop behaviour on the CPU: resume equivalence, the NaN stop, export round trip.

mod common;

use slb_format::{CodeReader, DType, Layer, Model};
use slb_trainer::data::DeviceData;
use slb_trainer::export::export_checkpoint;
use slb_trainer::train::{checkpoint_path, run, Checkpoint, RunOptions};
use slb_trainer::Error;
use tch::Device;

/// torch's random generator is global to the process: the tests that train take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn opts(out: &std::path::Path, resume: bool, stop_after: Option<i64>) -> RunOptions {
    RunOptions {
        out: out.to_path_buf(),
        device: Device::Cpu,
        resume,
        stop_after,
        progress: false,
        profile_steps: 0,
        trace: None,
        dist: None,
    }
}

fn tensors(path: &std::path::Path) -> Vec<(String, Vec<f64>)> {
    let ck = Checkpoint::load(path).unwrap();
    let mut v: Vec<(String, Vec<f64>)> = ck
        .tensors
        .iter()
        .map(|(n, t)| {
            let f = t.to_kind(tch::Kind::Double).flatten(0, -1);
            (n.clone(), Vec::<f64>::try_from(f).unwrap())
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn two_epochs_equal_one_plus_resume_one() {
    let _guard = serial();
    // One intra-op thread: libtorch's parallel reductions are not bit-reproducible otherwise.
    tch::set_num_threads(1);
    let train = common::synthetic(48, 16, 4, 1);
    let test = common::synthetic(16, 16, 4, 2);
    let mut cfg = common::tiny_config();
    cfg.enable_bn_calibration = true;
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let full = run(&cfg, &train, &test, &opts(a.path(), false, None)).unwrap();
    assert_eq!(full.epochs.len(), 2);
    let first = run(&cfg, &train, &test, &opts(b.path(), false, Some(1))).unwrap();
    assert_eq!(first.epochs.len(), 1);
    assert_eq!(
        Checkpoint::load(&checkpoint_path(b.path()))
            .unwrap()
            .meta
            .epoch,
        1
    );
    let second = run(&cfg, &train, &test, &opts(b.path(), true, None)).unwrap();
    assert_eq!(second.epochs.len(), 1);
    assert_eq!(second.epochs[0].epoch, 2);
    let ta = tensors(&checkpoint_path(a.path()));
    let tb = tensors(&checkpoint_path(b.path()));
    assert_eq!(ta.len(), tb.len());
    // Training changed the weights (the comparison below is not vacuous).
    let init = run(
        &cfg,
        &train,
        &test,
        &opts(&a.path().join("x"), false, Some(1)),
    )
    .unwrap();
    assert_eq!(init.epochs.len(), 1);
    let t1 = tensors(&checkpoint_path(&a.path().join("x")));
    assert!(ta.iter().zip(&t1).any(|(x, y)| x.1 != y.1));
    for ((na, va), (nb, vb)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb);
        let diff = va
            .iter()
            .zip(vb)
            .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
        assert!(diff == 0.0, "{na}: max difference {diff}");
    }
    let ma = Checkpoint::load(&checkpoint_path(a.path())).unwrap().meta;
    let mb = Checkpoint::load(&checkpoint_path(b.path())).unwrap().meta;
    assert_eq!((ma.epoch, ma.step, ma.hard), (mb.epoch, mb.step, mb.hard));
    assert_eq!(ma.temperature, mb.temperature);
    // metrics.jsonl holds one line per epoch across both runs.
    let lines = std::fs::read_to_string(b.path().join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 2);
}

#[test]
fn nan_loss_stops_and_keeps_the_last_checkpoint() {
    let _guard = serial();
    let train = common::synthetic(32, 16, 4, 3);
    let test = common::synthetic(8, 16, 4, 4);
    let mut cfg = common::tiny_config();
    cfg.epochs = 3;
    let d = tempfile::tempdir().unwrap();
    run(&cfg, &train, &test, &opts(d.path(), false, Some(1))).unwrap();
    let ck = checkpoint_path(d.path());
    let before = std::fs::read(&ck).unwrap();
    cfg.lr = 1e300;
    cfg.warmup_epochs = 0.0;
    let err = run(&cfg, &train, &test, &opts(d.path(), true, None)).unwrap_err();
    assert!(
        matches!(err, Error::NonFiniteLoss { epoch: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("last good checkpoint"), "{err}");
    assert_eq!(std::fs::read(&ck).unwrap(), before);
    assert_eq!(Checkpoint::load(&ck).unwrap().meta.epoch, 1);
}

fn check_export(act_quant: bool) {
    let _guard = serial();
    let train = common::synthetic(32, 16, 4, 5);
    let test = common::synthetic(8, 16, 4, 6);
    let mut cfg = common::tiny_config();
    cfg.enable_act_quant = act_quant;
    cfg.epochs = 1;
    let d = tempfile::tempdir().unwrap();
    run(&cfg, &train, &test, &opts(d.path(), false, None)).unwrap();
    let ck = Checkpoint::load(&checkpoint_path(d.path())).unwrap();
    if !act_quant {
        assert!(
            export_checkpoint(&ck, None).is_err(),
            "ranges must be calibrated"
        );
    }
    let calib = DeviceData::new(&train, Device::Cpu);
    let ex = export_checkpoint(&ck, Some(&calib)).unwrap();
    assert_eq!(ex.calibrated, !act_quant);
    let m = Model::parse(&ex.bytes).unwrap();
    assert_eq!(m.input.num_classes(), 4);
    assert_eq!(m.input.lut.len(), 3 * 256);
    let (_vs, net) = slb_trainer::export::load_net(&ck).unwrap();
    let convs: Vec<_> = m
        .layers
        .iter()
        .filter_map(|l| match l {
            Layer::Conv(c) => Some(c),
            _ => None,
        })
        .collect();
    let ours = net.convs();
    assert_eq!(convs.len(), ours.len());
    assert_eq!(convs.len(), 21);
    for (c, q) in convs.iter().zip(&ours) {
        assert_eq!(c.out_channels as i64, q.conv.out_channels);
        assert_eq!(c.in_channels as i64, q.conv.in_channels);
        assert_eq!(c.kernel[0] as i64, q.conv.kernel);
        assert_eq!(c.stride[0] as i64, q.conv.stride);
        assert_eq!(c.weight_bits, 1);
        let codes = q.conv.logits.argmax(-1, false);
        let r = CodeReader::new(c);
        let (o, i, k, _) = (codes.size()[0], codes.size()[1], codes.size()[2], 0);
        for oo in 0..o {
            for ii in 0..i {
                for ky in 0..k {
                    for kx in 0..k {
                        let want = codes.int64_value(&[oo, ii, ky, kx]) as u8;
                        assert_eq!(
                            r.code(oo as usize, ky as usize, kx as usize, ii as usize),
                            want
                        );
                    }
                }
            }
        }
    }
    // The input tensor is 8-bit and its look-up table is monotone in the pixel value.
    let t0 = m.tensor(m.input.tensor).unwrap();
    assert!(matches!(t0.dtype, DType::Quant { bits: 8, .. }));
    for c in 0..3 {
        let lut = &m.input.lut[c * 256..(c + 1) * 256];
        assert!(lut.windows(2).all(|w| w[0] <= w[1]));
        assert!(lut[255] > lut[0]);
    }
    // Logits tensor: F32, one per class.
    let out = m.tensor(m.output).unwrap();
    assert_eq!(out.dtype, DType::F32);
    assert_eq!(out.shape.c, 4);
}

#[test]
fn export_round_trip_with_trained_ranges() {
    check_export(true);
}

#[test]
fn export_round_trip_with_calibrated_ranges() {
    check_export(false);
}

#[test]
fn profiled_steps_report_every_phase_and_change_nothing() {
    let _guard = serial();
    tch::set_num_threads(1);
    // 96 images at batch 16: 6 steps per epoch, 3 warm-up steps, so 3 profiled of the 5 asked.
    let train = common::synthetic(96, 16, 4, 1);
    let test = common::synthetic(16, 16, 4, 2);
    let cfg = common::tiny_config();
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let plain = run(&cfg, &train, &test, &opts(a.path(), false, Some(1))).unwrap();
    assert!(plain.epochs[0].profile.is_none());
    let mut o = opts(b.path(), false, Some(1));
    o.profile_steps = 5;
    let profiled = run(&cfg, &train, &test, &o).unwrap();
    let p = profiled.epochs[0].profile.as_ref().expect("a profile");
    assert_eq!(p.steps, 3);
    let names: Vec<&str> = p.phases.iter().map(|ph| ph.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "augment",
            "forward",
            "backward",
            "all-reduce",
            "optimizer",
            "metrics"
        ]
    );
    for ph in &p.phases {
        assert!(ph.total_ms > 0.0 && ph.host_ms <= ph.total_ms, "{ph:?}");
    }
    // Forward and backward dominate a CPU step.
    let ms = |n: &str| p.phases.iter().find(|ph| ph.name == n).unwrap().total_ms;
    assert!(ms("forward") + ms("backward") > ms("metrics"));
    // The profile is in metrics.jsonl too.
    let jsonl = std::fs::read_to_string(b.path().join("metrics.jsonl")).unwrap();
    assert!(jsonl.contains("\"profile\""), "{jsonl}");
    // Profiling only synchronises and reads clocks: the weights are the same.
    assert_eq!(
        tensors(&checkpoint_path(a.path())),
        tensors(&checkpoint_path(b.path()))
    );
}

/// Every BatchNorm's (running mean, running variance) as f64 vectors.
fn bn_values(net: &slb_trainer::nn::Net) -> Vec<Vec<f64>> {
    slb_trainer::train::bn_stats(net)
        .iter()
        .map(|t| Vec::<f64>::try_from(t.to_kind(tch::Kind::Double)).unwrap())
        .collect()
}

#[test]
fn bn_calibration_averages_the_batch_statistics_of_the_argmax_weights() {
    use slb_trainer::data::Augment;
    use slb_trainer::nn::net::Ctx;
    use slb_trainer::nn::QuantMode;
    use slb_trainer::train::{bn_calibrate, build, net_config};
    let _guard = serial();
    tch::manual_seed(3);
    let cfg = common::tiny_config();
    let algo = cfg.algorithm().unwrap();
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let net = build(&algo, &vs, net_config(&cfg, 4, 16), false);
    let data = DeviceData::new(&common::synthetic(40, 16, 4, 5), Device::Cpu);
    let aug = Augment::cifar();
    // Statistics before the pass must not matter: start from nonsense.
    for t in slb_trainer::train::bn_stats(&net) {
        let _ = t.shallow_clone().fill_(123.0);
    }
    // 40 images in batches of 16: 16, 16, 8; at most 2 of them. The augmentation draws from
    // torch's generator: both passes start from the same state.
    tch::manual_seed(42);
    let k = bn_calibrate(&net, &data, &aug, 16, false, false, 9, Some(2));
    assert_eq!(k, 2);
    let got = bn_values(&net);
    // By hand: each batch's statistics from a fresh (zeroed) pass with momentum 1 per batch.
    let ctx = Ctx {
        train: true,
        t: 1.0,
        hard: true,
        q: QuantMode {
            observe: false,
            quantize: false,
            ema: false,
            fused: false,
        },
        amp: false,
    };
    let mut sums = vec![vec![0.0f64; 0]; got.len()];
    tch::manual_seed(42);
    for (x, _) in data.batches(16, true, 9 ^ 0x5eed).take(2) {
        for t in slb_trainer::train::bn_stats(&net) {
            let _ = t.shallow_clone().zero_();
        }
        let _ = tch::no_grad(|| net.forward(&aug.train(&x), &ctx));
        for (s, v) in sums.iter_mut().zip(bn_values(&net)) {
            let v: Vec<f64> = v.iter().map(|x| x / 0.1).collect();
            if s.is_empty() {
                *s = v;
            } else {
                s.iter_mut().zip(&v).for_each(|(a, b)| *a += b);
            }
        }
    }
    for (i, (g, s)) in got.iter().zip(&sums).enumerate() {
        for (a, b) in g.iter().zip(s) {
            assert!(
                (a - b / 2.0).abs() <= 1e-4 * (1.0 + b.abs()),
                "statistic {i}: {a} vs {}",
                b / 2.0
            );
        }
    }
    // Variances are averages of positive batch variances, not the 123 of before.
    assert!(got[1].iter().all(|v| *v > 0.0 && *v != 123.0));
}

#[test]
fn evaluation_only_bn_calibration_leaves_the_training_bit_for_bit() {
    let _guard = serial();
    tch::set_num_threads(1);
    let train = common::synthetic(48, 16, 4, 11);
    let test = common::synthetic(16, 16, 4, 12);
    let mut cfg = common::tiny_config();
    // The temperature starts after the run: Golden Stick would not calibrate in place, so
    // the calibration is for the evaluation alone.
    cfg.epochs = 3;
    cfg.t_start_time = 1.0;
    cfg.t_end_time = 1.0;
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let plain = run(&cfg, &train, &test, &opts(a.path(), false, Some(2))).unwrap();
    cfg.enable_bn_calibration = true;
    let calibrated = run(&cfg, &train, &test, &opts(b.path(), false, Some(2))).unwrap();
    assert!(plain
        .epochs
        .iter()
        .all(|m| !m.eval_bn_calibrated && !m.bn_calibrated));
    assert!(calibrated
        .epochs
        .iter()
        .all(|m| m.eval_bn_calibrated && !m.bn_calibrated));
    // Training went on bit for bit as without the calibration: its statistics were put back
    // (the checkpoint holds the running statistics too).
    let ta = tensors(&checkpoint_path(a.path()));
    let tb = tensors(&checkpoint_path(b.path()));
    assert!(ta.iter().any(|(n, _)| n.ends_with("running_var")));
    assert_eq!(ta, tb);
    let losses = |s: &slb_trainer::train::RunSummary| {
        s.epochs.iter().map(|m| m.train_loss).collect::<Vec<_>>()
    };
    assert_eq!(losses(&plain), losses(&calibrated));
}
