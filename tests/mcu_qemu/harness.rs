//! The harness of the Cortex-M tests: the host's runs, the embedded build, QEMU and the
//! parser of the board's output.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use slb::format::Model;
use slb::runtime::{run, CostModel, Engine, Plan, PlanChoice, PlanOptions};
use slb::synth::{self, Arch, Quant};

/// Pixels of one CIFAR image (HWC bytes).
pub(crate) const IMAGE: usize = 32 * 32 * 3;
/// SysTick ticks of the MPS2 core clock (25 MHz) per instruction at `-icount shift=0` (1 ns).
pub(crate) const INSNS_PER_TICK: u64 = 40;

pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub(crate) fn crate_dir() -> PathBuf {
    root().join("examples/cortex-m")
}

/// Scratch folder for generated models, images and outputs (ignored by git).
pub(crate) fn work_dir() -> PathBuf {
    let d = crate_dir().join("models");
    std::fs::create_dir_all(&d).expect("create examples/cortex-m/models");
    d
}

/// `n` deterministic 32x32 RGB test images: smooth colour gradients with a per-image pattern
/// and pseudo-random noise, so that every image exercises the whole code range.
pub(crate) fn test_images(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * IMAGE);
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for img in 0..n {
        for y in 0..32usize {
            for x in 0..32usize {
                for c in 0..3usize {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let noise = (state >> 58) as usize; // 0..63
                    let base = match (img + c) % 4 {
                        0 => x * 8,
                        1 => y * 8,
                        2 => (x + y) * 4,
                        _ => ((x / 4 + y / 4 + img) % 2) * 200,
                    };
                    out.push(((base + noise + 17 * img) % 256) as u8);
                }
            }
        }
    }
    out
}

/// One kernel choice's run on the board.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct PlanRun {
    pub(crate) choice: String,
    pub(crate) need: usize,
    pub(crate) have: usize,
    pub(crate) weights: usize,
    pub(crate) activations: usize,
    pub(crate) scratch: usize,
    pub(crate) kernels: Vec<(usize, String)>,
    pub(crate) prepare_ticks: u64,
    pub(crate) classes: Vec<usize>,
    pub(crate) ticks: Vec<u64>,
    pub(crate) logits: Vec<Vec<u32>>,
    /// Stack high-water marks of planning and of inference (`None`: not printed).
    pub(crate) stack_phases: Option<(u64, u64)>,
}

impl PlanRun {
    /// Millions of instructions of the first image's inference (under `-icount shift=0`).
    pub(crate) fn minsn(&self) -> f64 {
        (self.ticks[0] * INSNS_PER_TICK) as f64 / 1e6
    }
}

/// What the board printed, parsed.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct BoardRun {
    pub(crate) model_bytes: usize,
    pub(crate) images: usize,
    pub(crate) plans: Vec<PlanRun>,
    pub(crate) stack: Option<usize>,
    /// Rising and falling edges of the busy pin.
    pub(crate) pin: (u64, u64),
}

/// The value after `key` in a line's words.
pub(crate) fn field(line: &str, key: &str) -> Result<u64, String> {
    let w: Vec<&str> = line.split_whitespace().collect();
    w.iter()
        .rposition(|&t| t == key)
        .and_then(|i| w.get(i + 1))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no number after {key:?} in {line:?}"))
}

/// Parses the program's output (format documented in `examples/cortex-m/src/bin/infer.rs`).
pub(crate) fn parse_board(text: &str) -> Result<BoardRun, String> {
    let mut r = BoardRun::default();
    let mut done = false;
    for line in text.lines() {
        let mut w = line.split_whitespace();
        let head = w.next();
        if head == Some("error:") {
            return Err(format!("the board failed: {line}"));
        }
        if head == Some("model") {
            r.model_bytes = field(line, "bytes")? as usize;
            r.images = field(line, "images")? as usize;
            continue;
        }
        if head == Some("plan") {
            r.plans.push(PlanRun {
                choice: w.next().unwrap_or("").to_string(),
                need: field(line, "need")? as usize,
                have: field(line, "have")? as usize,
                weights: field(line, "weights")? as usize,
                activations: field(line, "activations")? as usize,
                scratch: field(line, "scratch")? as usize,
                ..PlanRun::default()
            });
            continue;
        }
        if head == Some("busy-pin") {
            r.pin = (field(line, "rises")?, field(line, "falls")?);
            continue;
        }
        if head == Some("stack") {
            r.stack = w.next().and_then(|v| v.parse().ok());
            continue;
        }
        if head == Some("done") {
            done = true;
            continue;
        }
        let Some(p) = r.plans.last_mut() else {
            continue;
        };
        let bad = || format!("bad line {line:?}");
        match head {
            Some("kernel") => {
                let i = w.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
                p.kernels.push((i, w.collect::<Vec<_>>().join(" ")));
            }
            Some("prepare") => p.prepare_ticks = field(line, "ticks")?,
            Some("stack-phases") => {
                p.stack_phases = Some((field(line, "plan")?, field(line, "inference")?))
            }
            Some("image") => {
                let i: usize = w.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
                if i != p.classes.len() {
                    return Err(bad());
                }
                p.classes.push(field(line, "class")? as usize);
                p.ticks.push(field(line, "ticks")?);
            }
            Some("logits") => {
                let i: usize = w.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
                if i != p.logits.len() {
                    return Err(bad());
                }
                let bits = w
                    .map(|h| u32::from_str_radix(h, 16).map_err(|_| bad()))
                    .collect::<Result<Vec<_>, _>>()?;
                p.logits.push(bits);
            }
            _ => {}
        }
    }
    if !done {
        return Err(format!("the program did not finish; output:\n{text}"));
    }
    Ok(r)
}

/// The host runtime's arena size, classes and logit bit patterns for each image, with the
/// kernel choice `choice` (the board program's names; `fit` plans for an arena of at most
/// `max_arena` bytes).
pub(crate) fn host_run(
    model_bytes: &[u8],
    images: &[u8],
    choice: &str,
    max_arena: usize,
) -> HostRun {
    let model = Model::parse(model_bytes).expect("model parses");
    let plan = Plan::with_choice(
        &model,
        Engine::Packed,
        plan_choice(choice),
        options("default"),
        max_arena,
    )
    .expect("plan");
    let mut arena = vec![0u8; plan.arena_bytes()];
    let mut classes = Vec::new();
    let mut all = Vec::new();
    for image in images.chunks_exact(plan.input_len()) {
        let mut logits = vec![0f32; plan.output_len()];
        run(&model, &plan, &mut arena, image, &mut logits).expect("host run");
        let mut best = 0;
        for (i, &x) in logits.iter().enumerate() {
            if x > logits[best] {
                best = i;
            }
        }
        classes.push(best);
        all.push(logits.iter().map(|x| x.to_bits()).collect());
    }
    (plan.arena_bytes(), classes, all)
}

/// The kernel choice the board program names `choice` (`SLB_ALGOS`).
pub(crate) fn plan_choice(choice: &str) -> PlanChoice {
    PlanChoice::from_name(choice).unwrap_or_else(|| panic!("unknown kernel choice {choice}"))
}

/// Plan options for a kernel choice of the board program (`SLB_ALGOS`).
pub(crate) fn options(choice: &str) -> PlanOptions {
    let force = plan_choice(choice).force();
    // The board has no SIMD kernels and ranks kernels by the Cortex-M4 costs; plan the host
    // like it.
    PlanOptions {
        force,
        ..PlanOptions::for_board(CostModel::CortexM4)
    }
}

/// A command for Debian's cargo and rustc, clean of the outer cargo's environment.
pub(crate) fn embedded_cargo() -> Command {
    let mut c = Command::new("/usr/bin/cargo");
    c.current_dir(crate_dir())
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTC", "/usr/bin/rustc")
        .env("CARGO_TARGET_DIR", crate_dir().join("target"));
    for v in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTUP_TOOLCHAIN",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
    ] {
        c.env_remove(v);
    }
    c
}

/// Builds `bin` of the embedded crate with a model and images; returns the ELF's path.
pub(crate) fn build(
    target: &str,
    bin: &str,
    model: &Path,
    images: &Path,
    arena: usize,
    extra: &[(&str, &str)],
) -> PathBuf {
    let mut c = embedded_cargo();
    c.args(["build", "--release", "--target", target, "--bin", bin])
        .env("SLB_MODEL", model)
        .env("SLB_IMAGES", images)
        .env("SLB_ARENA_BYTES", arena.to_string());
    for (k, v) in extra {
        c.env(k, v);
    }
    let status = c
        .status()
        .expect("run /usr/bin/cargo (install cargo-web: scripts/setup.sh --mcu)");
    assert!(status.success(), "embedded build failed for {target}");
    crate_dir()
        .join("target")
        .join(target)
        .join("release")
        .join(bin)
}

/// Runs an ELF on QEMU's mps2-an386 with a wall-clock timeout; returns its standard output.
pub(crate) fn qemu(elf: &Path, icount: bool, timeout: Duration) -> String {
    let mut c = Command::new("qemu-system-arm");
    c.args(["-cpu", "cortex-m4", "-machine", "mps2-an386", "-nographic"])
        .args(["-semihosting-config", "enable=on,target=native"]);
    if icount {
        c.args(["-icount", "shift=0"]);
    }
    c.arg("-kernel").arg(elf);
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run qemu-system-arm (install it: scripts/setup.sh --mcu)");
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for qemu") {
            let out = child.wait_with_output().expect("qemu output");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                status.success(),
                "qemu exited with {status}; output:\n{text}"
            );
            return text;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let out = child.wait_with_output().expect("qemu output");
            panic!(
                "qemu ran past {timeout:?}; output so far:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The Cortex-M4 program built with `model`, `images`, a static arena of `arena` bytes and the
/// kernel `choices`, run once under QEMU (`icount`: one instruction per virtual nanosecond, for
/// instruction counts), its output kept as `log` in the work folder. Returns the ELF's
/// `(text, data, bss)`, the output and the parsed run (a parse failure panics, naming `log`).
pub(crate) fn board_run(
    model: &Path,
    images: &Path,
    arena: usize,
    choices: &[&str],
    icount: bool,
    log: &str,
) -> ((u64, u64, u64), String, BoardRun) {
    let elf = build(
        "thumbv7em-none-eabihf",
        "infer",
        model,
        images,
        arena,
        &[("SLB_ALGOS", &choices.join(","))],
    );
    let out = qemu(&elf, icount, Duration::from_secs(600));
    std::fs::write(work_dir().join(log), &out).expect("write the board's output");
    let board = parse_board(&out).unwrap_or_else(|e| panic!("{log}: {e}"));
    (size(&elf), out, board)
}

/// `(text, data, bss)` of an ELF from `arm-none-eabi-size`.
pub(crate) fn size(elf: &Path) -> (u64, u64, u64) {
    let out = Command::new("arm-none-eabi-size")
        .arg(elf)
        .output()
        .expect("arm-none-eabi-size");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().nth(1).expect("size output");
    let v: Vec<u64> = line
        .split_whitespace()
        .take(3)
        .map(|x| x.parse().expect("size number"))
        .collect();
    (v[0], v[1], v[2])
}

#[test]
pub(crate) fn board_output_parser_reads_every_record_and_rejects_failures() {
    let text = "model resnet20 bytes 1234 layers 22 classes 2 images 1\n\
                plan default need 100 have 128 weights 10 activations 20 scratch 30\n\
                kernel 0 bitserial-popcnt/portable\nprepare ticks 7\n\
                image 0 class 1 dog ticks 99\nlogits 0 3f800000 bf800000\n\
                stack-phases plan 300 inference 200\n\
                busy-pin rises 1 falls 1\nstack 2048\ndone\n";
    let r = parse_board(text).unwrap();
    assert_eq!(
        (r.model_bytes, r.images, r.stack, r.pin),
        (1234, 1, Some(2048), (1, 1))
    );
    let p = &r.plans[0];
    assert_eq!((p.choice.as_str(), p.need, p.have), ("default", 100, 128));
    assert_eq!(
        (p.weights, p.activations, p.scratch, p.prepare_ticks),
        (10, 20, 30, 7)
    );
    assert_eq!(
        p.kernels,
        vec![(0, "bitserial-popcnt/portable".to_string())]
    );
    assert_eq!((p.classes.clone(), p.ticks.clone()), (vec![1], vec![99]));
    assert_eq!(p.logits, vec![vec![1.0f32.to_bits(), (-1.0f32).to_bits()]]);
    assert_eq!(p.stack_phases, Some((300, 200)));
    assert!(
        parse_board("model x bytes 1 layers 1 classes 1 images 0\n").is_err(),
        "no done"
    );
    assert!(parse_board("error: runtime: bad\ndone\n").is_err());
    let out_of_order = "plan default need 1 have 1 weights 0 activations 0 scratch 0\n\
                        logits 1 00000000\ndone\n";
    assert!(parse_board(out_of_order).is_err());
}

#[test]
pub(crate) fn test_images_are_deterministic_and_span_the_byte_range() {
    let a = test_images(3);
    assert_eq!(a, test_images(3));
    assert_eq!(a.len(), 3 * IMAGE);
    assert_ne!(a[..IMAGE], a[IMAGE..2 * IMAGE]);
    assert!(a.iter().any(|&v| v < 16) && a.iter().any(|&v| v > 240));
}

/// A random-weight model file from `slb::synth` (`arch`: "resnet20" or "resnet18").
pub(crate) fn synth_model(arch: &str, wbits: u8, abits: u8) -> Vec<u8> {
    let a = Arch::from_name(arch).unwrap_or_else(|| panic!("unknown architecture {arch}"));
    synth::build(a, Quant::new(wbits, abits, 1)).expect("synthetic model")
}

/// The trained ResNet20 W1A8 model shipped with the example.
pub(crate) fn trained_model() -> PathBuf {
    crate_dir().join("trained/resnet20-w1a8.slb")
}

/// The model under test: `SLB_MCU_MODEL` if set (`synth` for a generated ResNet20 W1A8), else
/// the trained model shipped with the example.
pub(crate) fn model_under_test() -> (PathBuf, Vec<u8>) {
    let p = match std::env::var_os("SLB_MCU_MODEL") {
        Some(p) if p == "synth" => {
            let bytes = synth_model("resnet20", 1, 8);
            let p = work_dir().join("resnet20-w1a8-synth.slb");
            std::fs::write(&p, &bytes).expect("write model");
            return (p, bytes);
        }
        Some(p) => PathBuf::from(p),
        None => trained_model(),
    };
    let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    (p, bytes)
}

/// The host's arena size, classes and logit bit patterns (one vector per image) for a choice.
type HostRun = (usize, Vec<usize>, Vec<Vec<u32>>);

/// Builds the program with `choices` (static arena: `arena` bytes, or the first host plan's need
/// when 0), runs it under QEMU and requires the board's arena sizes, classes, logits and busy-pin
/// edges to equal the host's. Returns `(text, data, bss, stack)`.
pub(crate) fn run_and_compare(
    model_path: &Path,
    images_path: &Path,
    n: usize,
    choices: &[&str],
    host: &[HostRun],
    arena: usize,
) -> (u64, u64, u64, Option<usize>) {
    let arena = if arena == 0 { host[0].0 } else { arena };
    let ((text, data, bss), out, board) = board_run(
        model_path,
        images_path,
        arena,
        choices,
        false,
        "qemu-output.txt",
    );
    print!("{out}");
    assert_eq!(
        board.model_bytes,
        std::fs::metadata(model_path).expect("model").len() as usize
    );
    assert_eq!(board.images, n);
    assert_eq!(board.plans.len(), choices.len());
    for (p, (c, (need, classes, logits))) in board.plans.iter().zip(choices.iter().zip(host)) {
        assert_eq!(p.choice, *c);
        assert_eq!(
            p.need, *need,
            "{c}: the board's plan needs another arena size than the host's"
        );
        assert_eq!(
            &p.classes, classes,
            "{c}: predicted classes differ from the host's"
        );
        assert_eq!(p.logits.len(), n);
        for (i, (b, h)) in p.logits.iter().zip(logits).enumerate() {
            assert_eq!(
                b,
                h,
                "{c}, image {i}: board logits {:?} != host {:?}",
                floats(b),
                floats(h)
            );
        }
    }
    let runs = (n * choices.len()) as u64;
    assert_eq!(
        board.pin,
        (runs, runs),
        "the busy pin must rise and fall once per inference"
    );
    (text, data, bss, board.stack)
}

/// Bit patterns as readable floats, for failure messages.
pub(crate) fn floats(bits: &[u32]) -> Vec<f32> {
    bits.iter().map(|&b| f32::from_bits(b)).collect()
}
