//! A disk that fills up during a run, for real: `--out` on a small tmpfs (mounted in a private
//! user and mount namespace by `unshare -rm`, so no root is needed and nothing leaks out), filled
//! to the last byte once the first checkpoint is written. The run must stop with a one-line error
//! that names the disk, exit code 2, and leave the last checkpoint loadable and no temporary
//! files behind.
mod common;

use std::path::Path;
use std::process::Command;

use slb_trainer::train::Checkpoint;

#[test]
fn a_disk_that_fills_during_a_run_stops_it_cleanly_and_keeps_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::cifar_bin_dir(dir.path(), 64, 16, 1);
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, common::tiny_config().to_toml()).unwrap();
    let mnt = dir.path().join("mnt");
    let keep = dir.path().join("keep");
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::create_dir_all(&keep).unwrap();
    // Inside the namespace: a 4 MiB tmpfs as the output's file system; the run trains for many
    // epochs; once its first checkpoint is there, a filler takes every free byte. Afterwards the
    // exit code, stderr, the folder's listing and the checkpoint are copied out.
    let script = r#"
set -u
mount -t tmpfs -o size=4m tmpfs "$MNT" || { echo "mount failed" > "$KEEP/code"; exit 1; }
"$SLB" train --config "$CFG" --data "$DATA" --device cpu --epochs 60 --out "$MNT/run" \
  2> "$KEEP/stderr" &
pid=$!
for i in $(seq 600); do [ -e "$MNT/run/checkpoint.ot" ] && break; sleep 0.1; done
dd if=/dev/zero of="$MNT/fill" bs=4k 2>/dev/null
wait $pid
echo $? > "$KEEP/code"
ls -a "$MNT/run" > "$KEEP/listing"
cp "$MNT/run/checkpoint.ot" "$KEEP/checkpoint.ot"
"#;
    let status = Command::new("unshare")
        .args(["-rm", "sh", "-c", script])
        .env("MNT", &mnt)
        .env("KEEP", &keep)
        .env("SLB", env!("CARGO_BIN_EXE_slb"))
        .env("CFG", &cfg)
        .env("DATA", &data)
        .env("OMP_NUM_THREADS", "1")
        .status()
        .expect("unshare (util-linux) runs");
    let read = |name: &str| std::fs::read_to_string(keep.join(name)).unwrap_or_default();
    assert!(
        status.success(),
        "namespace script: {} {}",
        read("code"),
        read("stderr")
    );
    let (code, err) = (read("code"), read("stderr"));
    assert_eq!(code.trim(), "2", "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        errors[0].contains("not enough free space") || errors[0].contains("disk"),
        "{}",
        errors[0]
    );
    assert!(
        !err.contains("panicked") && !err.contains("frame #"),
        "{err}"
    );
    // The checkpoint from before the disk filled is whole, and no temporary file is left.
    let ck = Checkpoint::load(Path::new(&keep.join("checkpoint.ot"))).unwrap();
    assert!(ck.meta.epoch >= 1);
    let listing = read("listing");
    assert!(!listing.contains(".tmp"), "{listing}");
}
