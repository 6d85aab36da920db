//! A training process killed with SIGKILL at random moments (mid-epoch, mid-checkpoint) always
//! leaves a complete checkpoint, and `--resume` continues from it.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use slb_trainer::train::{checkpoint_path, Checkpoint};

fn spawn(cfg: &Path, data: &Path, out: &Path, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_slb"))
        .args([
            "train",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--no-export",
            "--resume",
        ])
        .arg("--config")
        .arg(cfg)
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn slb")
}

fn epoch_of(out: &Path) -> Option<i64> {
    let p = checkpoint_path(out);
    if !p.exists() {
        return None;
    }
    // Whenever the file exists it must be complete and readable.
    Some(
        Checkpoint::load(&p)
            .expect("checkpoint readable")
            .meta
            .epoch,
    )
}

fn wait_for_epoch(out: &Path, at_least: i64, child: &mut Child) {
    let t0 = Instant::now();
    loop {
        if epoch_of(out).is_some_and(|e| e >= at_least) {
            return;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("trainer exited early: {st}");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "no checkpoint after 300 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigkill_mid_epoch_then_resume() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::cifar_bin_dir(dir.path(), 96, 16, 7);
    let cfg = dir.path().join("tiny.toml");
    std::fs::write(
        &cfg,
        "model = \"resnet20\"\nwidth = 4\nepochs = 500\nbatch_size = 16\nlr = 0.05\n\
         enable_act_quant = true\nquant_delay = 3\nlog_every = 1\nmixed_precision = false\n",
    )
    .unwrap();
    let out = dir.path().join("run");
    let mut child = spawn(&cfg, &data, &out, &[]);
    wait_for_epoch(&out, 1, &mut child);
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut last = 0;
    for round in 0..4 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(100 + seed % 900));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let e = epoch_of(&out).expect("a checkpoint survives the kill");
        assert!(
            e >= last,
            "round {round}: epoch went back from {last} to {e}"
        );
        last = e;
        // The metrics never run ahead of the checkpoint a resume starts from (an epoch's line
        // is appended after its checkpoint is in place).
        let logged = std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["epoch"].as_i64())
            .max();
        assert!(
            logged.is_none_or(|m| m <= e),
            "round {round}: metrics.jsonl reaches epoch {logged:?}, the checkpoint {e}"
        );
        // Only complete files under their final names (a killed write leaves at most a hidden
        // temporary file, which the next run removes) and the `--out` lock file, whose lock
        // died with the process: the next run takes it.
        for f in std::fs::read_dir(&out).unwrap().flatten() {
            let n = f.file_name().to_string_lossy().to_string();
            assert!(
                [
                    "checkpoint.ot",
                    "metrics.jsonl",
                    "config.toml",
                    slb_trainer::lock::LOCK_FILE,
                ]
                .contains(&n.as_str())
                    || n.starts_with(".checkpoint.ot.tmp"),
                "unexpected file {n}"
            );
        }
        child = spawn(&cfg, &data, &out, &[]);
        wait_for_epoch(&out, last + 1, &mut child);
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = epoch_of(&out).unwrap();
    let st = spawn(&cfg, &data, &out, &["--stop-after", "1"])
        .wait()
        .unwrap();
    assert!(st.success());
    assert_eq!(epoch_of(&out), Some(before + 1));
    for f in std::fs::read_dir(&out).unwrap().flatten() {
        assert!(!f.file_name().to_string_lossy().starts_with(".checkpoint"));
    }
}
