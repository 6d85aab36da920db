//! `slb train` as a data-parallel run of CPU processes over Gloo: `--nproc 2` against one
//! process, torchrun, resume, a rank killed or hung mid-run, and bad launch settings. (The
//! weight-level equivalence without BatchNorm is `dist_equivalence.rs`.)
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use slb_trainer::train::{checkpoint_path, Checkpoint};

/// The tests of this file run one at a time: each starts several processes, and the fault
/// tests' timeouts should not compete with the others for the CPUs.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A CIFAR-10 binary folder of synthetic images (96 training, 32 test, 4 classes) and a
/// config (slim ResNet20 with BatchNorm, BN calibration on) in `dir`: `(data, config)`.
fn inputs(dir: &Path, epochs: i64) -> (PathBuf, PathBuf) {
    let data = common::cifar_bin_dir(dir, 96, 32, 5);
    let cfg = common::tiny_config();
    let toml = format!(
        "{}\nepochs = {epochs}\nbatch_size = 16\ncrop_pad = 0\nflip = false\n\
         enable_bn_calibration = true\nbn_calibration_batches = 2\n",
        cfg.to_toml()
            .lines()
            .filter(|l| ![
                "epochs",
                "batch_size",
                "crop_pad",
                "flip",
                "enable_bn_calibration",
                "bn_calibration_batches"
            ]
            .iter()
            .any(|k| l.starts_with(&format!("{k} "))))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let path = dir.join("c.toml");
    std::fs::write(&path, toml).unwrap();
    (data, path)
}

fn train_cmd(data: &Path, cfg: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_slb"));
    c.args(["train", "--device", "cpu", "--config"])
        .arg(cfg)
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(extra)
        .env("OMP_NUM_THREADS", "1");
    c
}

fn run(mut c: Command) -> (i32, String) {
    let o: Output = c.output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

/// The `train_loss` of each line of `out/metrics.jsonl`.
fn losses(out: &Path) -> Vec<(i64, f64, bool)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["epoch"].as_i64().unwrap(),
                v["train_loss"].as_f64().unwrap(),
                v["eval_bn_calibrated"].as_bool().unwrap() || v["bn_calibrated"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn two_ranks_train_like_one_process_and_only_rank_0_writes() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (data, cfg) = inputs(dir.path(), 3);
    let one = dir.path().join("one");
    let two = dir.path().join("two");
    let (code, err) = run(train_cmd(&data, &cfg, &one, &[]));
    assert_eq!(code, 0, "{err}");
    let (code, err) = run(train_cmd(
        &data,
        &cfg,
        &two,
        &["--nproc", "2", "--dist-timeout", "60"],
    ));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("data-parallel: 2 ranks over gloo, global batch 16 (8 per rank)"),
        "{err}"
    );
    // One epoch line per epoch: rank 1 printed none.
    assert_eq!(err.matches("epoch 3/3:").count(), 1, "{err}");
    let (a, b) = (losses(&one), losses(&two));
    assert_eq!(a.len(), 3);
    assert_eq!(
        b.len(),
        3,
        "metrics.jsonl has one line per epoch (rank 0's)"
    );
    for ((ea, la, ca), (eb, lb, cb)) in a.iter().zip(&b) {
        assert_eq!(ea, eb);
        assert_eq!(ca, cb, "BN calibration ran in both");
        // BatchNorm sees 8 images per rank instead of 16: close, not equal.
        assert!(
            (la - lb).abs() < 0.15 * la.abs(),
            "epoch {ea}: loss {la} vs {lb}"
        );
    }
    assert!(a.iter().any(|x| x.2), "BN calibration never ran: {a:?}");
    assert!(two.join("model.slb").exists() && two.join("config.toml").exists());
    let ck = Checkpoint::load(&checkpoint_path(&two)).unwrap();
    assert_eq!(ck.meta.epoch, 3);
    // The global step count: 96 / 16 = 6 steps per epoch, as with one process.
    let ck1 = Checkpoint::load(&checkpoint_path(&one)).unwrap();
    assert_eq!(ck.meta.step, ck1.meta.step);
}

#[test]
fn a_distributed_run_resumes() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (data, cfg) = inputs(dir.path(), 2);
    let out = dir.path().join("run");
    let args = ["--nproc", "2", "--dist-timeout", "60", "--no-export"];
    let (code, err) = run(train_cmd(
        &data,
        &cfg,
        &out,
        &[&args[..], &["--stop-after", "1"]].concat(),
    ));
    assert_eq!(code, 0, "{err}");
    assert_eq!(losses(&out).len(), 1);
    let (code, err) = run(train_cmd(
        &data,
        &cfg,
        &out,
        &[&args[..], &["--resume"]].concat(),
    ));
    assert_eq!(code, 0, "{err}");
    let l = losses(&out);
    assert_eq!(
        l.iter().map(|x| x.0).collect::<Vec<_>>(),
        vec![1, 2],
        "{err}"
    );
    assert_eq!(
        Checkpoint::load(&checkpoint_path(&out)).unwrap().meta.epoch,
        2
    );
}

#[test]
fn torchrun_launches_slb_ranks() {
    let _serial = serial();
    let torchrun = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/torchrun");
    assert!(
        torchrun.exists(),
        "{} missing: scripts/setup.sh installs torch into .venv",
        torchrun.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let (data, cfg) = inputs(dir.path(), 1);
    let out = dir.path().join("run");
    let port = free_port();
    let mut c = Command::new(&torchrun);
    c.args([
        "--nproc-per-node",
        "2",
        "--master-port",
        &port.to_string(),
        "--no-python",
    ])
    .arg(env!("CARGO_BIN_EXE_slb"))
    .args([
        "train",
        "--device",
        "cpu",
        "--no-export",
        "--dist-timeout",
        "60",
    ])
    .arg("--config")
    .arg(&cfg)
    .arg("--data")
    .arg(&data)
    .arg("--out")
    .arg(&out)
    .env("OMP_NUM_THREADS", "1");
    let (code, err) = run(c);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("data-parallel: 2 ranks over gloo"), "{err}");
    assert_eq!(losses(&out).len(), 1);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The pid of the child of `parent` whose environment has `RANK=rank`.
fn rank_pid(parent: u32, rank: usize) -> Option<i32> {
    let want = format!("RANK={rank}");
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Field 4 (after the parenthesised name) is the parent pid.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(parent) {
            continue;
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if env.split(|&b| b == 0).any(|v| v == want.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

/// Starts a 2-rank run of many epochs, waits for its first checkpoint, sends `signal` to rank
/// 1, and returns the launcher's exit code, stderr, the seconds it took to end after the
/// signal, and the output folder.
fn fault(signal: i32, timeout: &str) -> (i32, String, f64, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (data, cfg) = inputs(dir.path(), 200);
    let out = dir.path().join("run");
    let mut c = train_cmd(
        &data,
        &cfg,
        &out,
        &["--nproc", "2", "--dist-timeout", timeout, "--no-export"],
    );
    let child = c.stderr(Stdio::piped()).spawn().unwrap();
    let ck = checkpoint_path(&out);
    let start = Instant::now();
    while !ck.exists() {
        assert!(start.elapsed() < Duration::from_secs(120), "no checkpoint");
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = rank_pid(child.id(), 1).expect("rank 1's process");
    let t = Instant::now();
    let sig = format!("-{signal}");
    assert!(Command::new("kill")
        .args([sig.as_str(), &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let o = child.wait_with_output().unwrap();
    let secs = t.elapsed().as_secs_f64();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).to_string(),
        secs,
        out,
        dir,
    )
}

#[test]
fn a_killed_rank_ends_the_run_naming_it_and_the_checkpoint_stays() {
    let _serial = serial();
    let (code, err, secs, out, _dir) = fault(9, "30");
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("error: rank 1 of 2 failed first (killed by signal 9); the run was stopped"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(secs < 40.0, "took {secs} s");
    let ck = Checkpoint::load(&checkpoint_path(&out)).unwrap();
    assert!(ck.meta.epoch >= 1);
}

#[test]
fn a_hung_rank_is_named_after_the_timeout() {
    let _serial = serial();
    // SIGSTOP: rank 1 stops answering without dying.
    let (code, err, secs, out, _dir) = fault(19, "5");
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("error: rank 0: ")
            && err.contains("rank(s) 1 did not report it (died or hung)"),
        "{err}"
    );
    assert!(
        err.contains("rank 0 of 2 failed first (exit code 2)"),
        "{err}"
    );
    assert!(secs < 30.0, "took {secs} s");
    assert!(Checkpoint::load(&checkpoint_path(&out)).is_ok());
}

/// Environment variables of a launch.
type Env<'a> = Vec<(&'a str, &'a str)>;

#[test]
fn bad_launch_settings_get_one_line_errors() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (data, cfg) = inputs(dir.path(), 1);
    let out = dir.path().join("run");
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = held.local_addr().unwrap().port().to_string();
    let closed = free_port().to_string();
    let cases: Vec<(Env, Vec<&str>, &str)> = vec![
        (
            vec![("RANK", "0"), ("WORLD_SIZE", "0")],
            vec![],
            "WORLD_SIZE=0",
        ),
        (
            vec![("RANK", "2"), ("WORLD_SIZE", "2")],
            vec![],
            "ranks are 0 to 1",
        ),
        (
            vec![("RANK", "0"), ("WORLD_SIZE", "two")],
            vec![],
            "WORLD_SIZE=\"two\"",
        ),
        (
            vec![("RANK", "1"), ("WORLD_SIZE", "2"), ("MASTER_PORT", &closed)],
            vec!["--dist-timeout", "2"],
            "cannot reach the rendezvous store at 127.0.0.1:",
        ),
        (
            vec![("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", &busy)],
            vec!["--dist-timeout", "2"],
            "cannot start the rendezvous store at 127.0.0.1:",
        ),
        (vec![], vec!["--nproc", "0"], "--nproc 0: must be 1 to"),
        (
            vec![("RANK", "0"), ("WORLD_SIZE", "1")],
            vec!["--nproc", "2"],
            "leave it out under torchrun",
        ),
        (vec![], vec!["--dist-backend", "mpi"], "--dist-backend"),
        (
            vec![("RANK", "0"), ("WORLD_SIZE", "9")],
            vec![],
            "batch_size 16 is the global batch",
        ),
    ];
    for (env, args, wanted) in cases {
        let mut c = train_cmd(&data, &cfg, &out, &args);
        for (k, v) in &env {
            c.env(k, v);
        }
        let t = Instant::now();
        let (code, err) = run(c);
        let r = (code, String::new(), err.clone());
        common::assert_clean_error(&r, &[wanted]);
        assert!(t.elapsed() < Duration::from_secs(30), "{env:?}: slow");
        assert!(!out.join("metrics.jsonl").exists(), "{env:?}: {err}");
    }
    drop(held);
}
