//! The packed model on a Cortex-M4F under QEMU, bit-exact with the host runtime.
//!
//! `qemu_matches_host` takes the trained ResNet20 W1A8 model shipped in
//! `examples/cortex-m/trained/` (or `SLB_MCU_MODEL`: a file, or `synth` for a generated one) and
//! a few test images, computes the host runtime's logits, builds `examples/cortex-m` with both
//! embedded, runs it on QEMU's `mps2-an386` and requires every logit's bit pattern, every
//! predicted class and the arena size to agree. It needs Debian's `rustc-web`/`cargo-web`/
//! `rust-web-src`, `gcc-arm-none-eabi` and `qemu-system-arm`, so it is `#[ignore]`d in the plain
//! `cargo test`; `scripts/mcu-test.sh` installs them and runs it. `budget_table` (also ignored)
//! measures the table of `docs/MCU.md`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use slb::format::Model;
use slb::runtime::{run, CostModel, Engine, Plan, PlanChoice, PlanOptions};
use slb::synth::{self, Arch, ConvGeom, Quant};

/// Pixels of one CIFAR image (HWC bytes).
const IMAGE: usize = 32 * 32 * 3;
/// SysTick ticks of the MPS2 core clock (25 MHz) per instruction at `-icount shift=0` (1 ns).
const INSNS_PER_TICK: u64 = 40;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn crate_dir() -> PathBuf {
    root().join("examples/cortex-m")
}

/// Scratch folder for generated models, images and outputs (ignored by git).
fn work_dir() -> PathBuf {
    let d = crate_dir().join("models");
    std::fs::create_dir_all(&d).expect("create examples/cortex-m/models");
    d
}

/// `n` deterministic 32x32 RGB test images: smooth colour gradients with a per-image pattern
/// and pseudo-random noise, so that every image exercises the whole code range.
fn test_images(n: usize) -> Vec<u8> {
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
struct PlanRun {
    choice: String,
    need: usize,
    have: usize,
    weights: usize,
    activations: usize,
    scratch: usize,
    kernels: Vec<(usize, String)>,
    prepare_ticks: u64,
    classes: Vec<usize>,
    ticks: Vec<u64>,
    logits: Vec<Vec<u32>>,
    /// Stack high-water marks of planning and of inference (`None`: not printed).
    stack_phases: Option<(u64, u64)>,
}

impl PlanRun {
    /// Millions of instructions of the first image's inference (under `-icount shift=0`).
    fn minsn(&self) -> f64 {
        (self.ticks[0] * INSNS_PER_TICK) as f64 / 1e6
    }
}

/// What the board printed, parsed.
#[derive(Debug, Default, PartialEq)]
struct BoardRun {
    model_bytes: usize,
    images: usize,
    plans: Vec<PlanRun>,
    stack: Option<usize>,
    /// Rising and falling edges of the busy pin.
    pin: (u64, u64),
}

/// The value after `key` in a line's words.
fn field(line: &str, key: &str) -> Result<u64, String> {
    let w: Vec<&str> = line.split_whitespace().collect();
    w.iter()
        .rposition(|&t| t == key)
        .and_then(|i| w.get(i + 1))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no number after {key:?} in {line:?}"))
}

/// Parses the program's output (format documented in `examples/cortex-m/src/bin/infer.rs`).
fn parse_board(text: &str) -> Result<BoardRun, String> {
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
fn host_run(model_bytes: &[u8], images: &[u8], choice: &str, max_arena: usize) -> HostRun {
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
fn plan_choice(choice: &str) -> PlanChoice {
    PlanChoice::from_name(choice).unwrap_or_else(|| panic!("unknown kernel choice {choice}"))
}

/// Plan options for a kernel choice of the board program (`SLB_ALGOS`).
fn options(choice: &str) -> PlanOptions {
    let force = plan_choice(choice).force();
    // The board has no SIMD kernels and ranks kernels by the Cortex-M4 costs; plan the host
    // like it.
    PlanOptions {
        force,
        ..PlanOptions::for_board(CostModel::CortexM4)
    }
}

/// A command for Debian's cargo and rustc, clean of the outer cargo's environment.
fn embedded_cargo() -> Command {
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
fn build(
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
fn qemu(elf: &Path, icount: bool, timeout: Duration) -> String {
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
fn board_run(
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
fn size(elf: &Path) -> (u64, u64, u64) {
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
fn board_output_parser_reads_every_record_and_rejects_failures() {
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
fn test_images_are_deterministic_and_span_the_byte_range() {
    let a = test_images(3);
    assert_eq!(a, test_images(3));
    assert_eq!(a.len(), 3 * IMAGE);
    assert_ne!(a[..IMAGE], a[IMAGE..2 * IMAGE]);
    assert!(a.iter().any(|&v| v < 16) && a.iter().any(|&v| v > 240));
}

/// A random-weight model file from `slb::synth` (`arch`: "resnet20" or "resnet18").
fn synth_model(arch: &str, wbits: u8, abits: u8) -> Vec<u8> {
    let a = Arch::from_name(arch).unwrap_or_else(|| panic!("unknown architecture {arch}"));
    synth::build(a, Quant::new(wbits, abits, 1)).expect("synthetic model")
}

/// The trained ResNet20 W1A8 model shipped with the example.
fn trained_model() -> PathBuf {
    crate_dir().join("trained/resnet20-w1a8.slb")
}

/// The model under test: `SLB_MCU_MODEL` if set (`synth` for a generated ResNet20 W1A8), else
/// the trained model shipped with the example.
fn model_under_test() -> (PathBuf, Vec<u8>) {
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
fn run_and_compare(
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
fn floats(bits: &[u32]) -> Vec<f32> {
    bits.iter().map(|&b| f32::from_bits(b)).collect()
}

#[test]
#[ignore = "needs Debian's Cortex-M toolchain and QEMU; scripts/mcu-test.sh installs them and runs it"]
fn qemu_matches_host() {
    let (model_path, bytes) = model_under_test();
    let n: usize = std::env::var("SLB_MCU_IMAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let images = test_images(n);
    let images_path = work_dir().join("images.bin");
    std::fs::write(&images_path, &images).expect("write images");

    // The runtime's own choice and each kernel family, all bit-exact with the host.
    let choices = ["default", "bitserial", "int8dot"];
    let host: Vec<_> = choices
        .iter()
        .map(|c| host_run(&bytes, &images, c, usize::MAX))
        .collect();
    let arena = host.iter().map(|h| h.0).max().unwrap();
    let (text, data, bss, stack) =
        run_and_compare(&model_path, &images_path, n, &choices, &host, arena);
    println!(
        "mcu: {n} images x {} kernel choices bit-exact with the host; classes {:?}; \
         text {text} data {data} bss {bss}; stack {stack:?}",
        choices.len(),
        host[0].1
    );

    // A board whose arena is too small for the default plan: `Plan::fit` moves convs to the
    // in-place kernels (codes read from the model in flash). Plan for the smallest arena any
    // plan needs, so that every conv runs in place on the board.
    let floor = match Plan::fit(
        &Model::parse(&bytes).expect("model parses"),
        Engine::Packed,
        options("fit"),
        0,
    ) {
        Err(slb::runtime::Error::ArenaTooSmall { needed, .. }) => needed,
        other => panic!("an arena of 0 bytes cannot fit: {other:?}"),
    };
    let small = host_run(&bytes, &images, "fit", floor);
    // On a Cortex-M4 the default plan already reads the A8 and W1A1 convs' codes in place, so
    // the smallest plan may be the default one; it is always smaller than the prepared int8's.
    assert!(
        small.0 <= host[0].0 && small.0 < host[2].0,
        "Plan::fit must find a plan no larger than the default and smaller than the prepared \
         int8 plan: {} vs {} / {}",
        small.0,
        host[0].0,
        host[2].0
    );
    let small_arena = small.0;
    let (_, _, bss_small, _) = run_and_compare(&model_path, &images_path, n, &["fit"], &[small], 0);
    println!(
        "mcu: Plan::fit in the smallest arena ({} bytes) bit-exact with \
         the host; bss {bss_small}",
        small_arena
    );

    // Cortex-M0 (no DSP, no FPU): the same program must build and link.
    let m0 = build(
        "thumbv6m-none-eabi",
        "infer",
        &model_path,
        &images_path,
        host[0].0,
        &[],
    );
    let (t0, d0, b0) = size(&m0);
    println!("mcu: thumbv6m-none-eabi build: text {t0} data {d0} bss {b0}");
    let calls = soft_float_calls(&m0);
    let mut checked = 0;
    for (f, targets) in &calls {
        let integer = [
            "requant",
            "kernels::portable::",
            "exec::correct",
            "quant::stage",
            "quant::add_code",
        ];
        if integer.iter().any(|p| f.contains(p)) {
            checked += 1;
            assert!(
                targets.is_empty(),
                "{f} calls soft-float routines {targets:?} on Cortex-M0: requantization must be integer-only"
            );
        }
    }
    assert!(
        checked > 0,
        "no kernel or requantization function found in the Cortex-M0 binary"
    );
    let float_users: Vec<String> = calls
        .iter()
        .filter(|(_, t)| !t.is_empty())
        .map(|(f, _)| f.clone())
        .collect();
    println!("mcu: Cortex-M0: {checked} kernel/requantization functions call no soft-float routine; float is used by {float_users:?}");
}

/// For every function of an ELF (demangled names), the soft-float routines (`__aeabi_f*`, `__aeabi_d*`, int to
/// float conversions) it calls, from `arm-none-eabi-objdump -d`.
fn soft_float_calls(elf: &Path) -> std::collections::BTreeMap<String, Vec<String>> {
    let out = Command::new("arm-none-eabi-objdump")
        .arg("-dC")
        .arg(elf)
        .output()
        .expect("arm-none-eabi-objdump");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut map = std::collections::BTreeMap::<String, Vec<String>>::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(name) = line
            .strip_suffix(">:")
            .and_then(|l| l.split_once(" <"))
            .map(|(_, n)| n)
        {
            current = name.to_string();
            map.entry(current.clone()).or_default();
        } else if line.contains("\tbl\t") {
            if let Some(target) = line.rsplit_once('<').map(|(_, t)| t.trim_end_matches('>')) {
                let float = [
                    "__aeabi_f",
                    "__aeabi_d",
                    "__aeabi_i2f",
                    "__aeabi_ui2f",
                    "__aeabi_l2f",
                    "__aeabi_ul2f",
                    "__aeabi_i2d",
                    "__aeabi_ui2d",
                    "__aeabi_l2d",
                    "__aeabi_ul2d",
                ];
                if float.iter().any(|p| target.starts_with(p)) {
                    let v = map.entry(current.clone()).or_default();
                    if !v.iter().any(|t| t == target) {
                        v.push(target.to_string());
                    }
                }
            }
        }
    }
    map
}

/// A board to budget for: name, flash bytes, SRAM bytes.
const BOARDS: [(&str, u64, u64); 3] = [
    ("nRF52840", 1 << 20, 256 << 10),
    ("STM32F746", 1 << 20, 320 << 10),
    ("STM32H743", 2 << 20, 1 << 20),
];
/// What fits QEMU's mps2-an386 (4 MiB code memory, 4 MiB data memory), with room for the
/// program and its stack.
const QEMU_LIMIT: u64 = 4 << 20;

#[test]
#[ignore = "several minutes; scripts/mcu-test.sh budget runs it"]
fn budget_table() {
    let mut table = String::new();
    table.push_str(
        "| model | weights x act. | model bytes | flash (text+data) | static RAM (data+bss) | \
         arena: weights / activations / scratch | stack | Minsn/inference: default / bitserial / int8dot | \
         default kernel | fits | static RAM with bitserial | fits with bitserial | \
         in place (smallest `Plan::fit`): static RAM / stack / Minsn | fits in place |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let images = test_images(1);
    let images_path = work_dir().join("budget-image.bin");
    std::fs::write(&images_path, &images).expect("write image");
    let archs: Vec<String> = std::env::var("SLB_MCU_BUDGET_ARCHS")
        .unwrap_or_else(|_| "resnet20,resnet18".into())
        .split(',')
        .map(str::to_string)
        .collect();
    for arch in &archs {
        for (wbits, abits) in [(1u8, 8u8), (2, 8), (4, 8), (1, 1)] {
            let bytes = synth_model(arch, wbits, abits);
            let name = format!("{arch}-w{wbits}a{abits}");
            let model_path = work_dir().join(format!("{name}-synth.slb"));
            std::fs::write(&model_path, &bytes).expect("write model");
            let all = ["default", "bitserial", "int8dot"];
            // Kernel choices that can run this model and whose arena fits QEMU's data memory.
            let model = Model::parse(&bytes).expect("parse");
            let mut choices = Vec::new();
            let mut needs = Vec::new();
            for c in all {
                match Plan::with_options(&model, Engine::Packed, options(c)) {
                    Ok(p) if (p.arena_bytes() as u64) < QEMU_LIMIT - (256 << 10) => {
                        choices.push(c);
                        needs.push(p.arena_bytes());
                    }
                    Ok(p) => println!(
                        "{name} {c}: arena {} does not fit QEMU's RAM",
                        p.arena_bytes()
                    ),
                    Err(e) => println!("{name} {c}: {e}"),
                }
            }
            let default =
                Plan::with_options(&model, Engine::Packed, options("default")).expect("plan");
            let mut kinds: Vec<&str> = Vec::new();
            for k in (0..default.layers()).filter_map(|i| default.kernel(i)) {
                if !kinds.contains(&k.name()) {
                    kinds.push(k.name());
                }
            }
            let kernel = kinds.join(" + ");
            let row_head = format!("| {arch} | W{wbits}A{abits} | {} |", bytes.len());
            // Every conv reading its codes in place: the smallest arena any plan needs.
            let floor = match Plan::fit(&model, Engine::Packed, options("fit"), 0) {
                Err(slb::runtime::Error::ArenaTooSmall { needed, .. }) => needed,
                other => panic!("{name}: an arena of 0 bytes cannot fit: {other:?}"),
            };
            let in_place = if bytes.len() as u64 > QEMU_LIMIT - (128 << 10) {
                "not run | - |".to_string()
            } else {
                let ((text, data, bss), _, board) = board_run(
                    &model_path,
                    &images_path,
                    floor,
                    &["fit"],
                    true,
                    &format!("{name}-inplace-qemu.txt"),
                );
                let p = board.plans.first().expect("the fit plan ran");
                assert_eq!(p.need, floor, "{name}: the board plans as the host does");
                let stack = board.stack.unwrap_or(0) as u64;
                format!(
                    "{} / {stack} / {:.1} | {} |",
                    data + bss,
                    p.minsn(),
                    fits(text + data, data + bss + stack)
                )
            };
            if bytes.len() as u64 > QEMU_LIMIT - (128 << 10) || choices.is_empty() {
                let _ = writeln!(
                    table,
                    "{row_head} - | - | {} / {} / {} | - | not run (does not fit QEMU's 4 MiB) | {kernel} | {} | - | - | {in_place}",
                    default.weights_bytes(),
                    default.activation_peak_bytes(),
                    default.scratch_bytes(),
                    fits(bytes.len() as u64, default.arena_bytes() as u64),
                );
                continue;
            }
            let arena = *needs.iter().max().unwrap();
            let ((text, data, bss), _, board) = board_run(
                &model_path,
                &images_path,
                arena,
                &choices,
                true,
                &format!("{name}-qemu.txt"),
            );
            // The default choice's plan, measured on the board when it fits QEMU, else the
            // host's (identical: the test above checks that the board plans as the host does).
            let d = board.plans.iter().find(|p| p.choice == "default");
            let (need, w, a, sc) = match d {
                Some(d) => (d.need, d.weights, d.activations, d.scratch),
                None => (
                    default.arena_bytes(),
                    default.weights_bytes(),
                    default.activation_peak_bytes(),
                    default.scratch_bytes(),
                ),
            };
            // Static RAM with an arena sized for the default choice only.
            let ram = data + bss - arena as u64 + need as u64;
            let stack_bytes = board.stack.unwrap_or(0) as u64;
            let (ram_bs, fits_bs) = match board.plans.iter().find(|p| p.choice == "bitserial") {
                Some(p) => {
                    let r = data + bss - arena as u64 + p.need as u64;
                    (r.to_string(), fits(text + data, r + stack_bytes))
                }
                None => ("-".to_string(), "-".to_string()),
            };
            let phases = board
                .plans
                .iter()
                .find(|p| p.choice == "default")
                .or(board.plans.first())
                .and_then(|p| p.stack_phases)
                .map_or(String::new(), |(a, b)| {
                    format!(" (plan {a}, inference {b})")
                });
            let stack = board
                .stack
                .map_or("?".to_string(), |s| format!("{s}{phases}"));
            let minsn = |c: &str| {
                board
                    .plans
                    .iter()
                    .find(|p| p.choice == c)
                    .map_or("-".to_string(), |p| format!("{:.1}", p.minsn()))
            };
            let _ = writeln!(
                table,
                "{row_head} {} | {ram} | {} / {} / {} | {stack} | {} / {} / {} | {kernel} | {} | {ram_bs} | {fits_bs} | {in_place}",
                text + data,
                w,
                a,
                sc,
                minsn("default"),
                minsn("bitserial"),
                minsn("int8dot"),
                fits(text + data, ram + stack_bytes),
            );
            println!("{table}");
        }
    }
    std::fs::write(work_dir().join("budget.md"), &table).expect("write budget.md");
    println!("{table}");
}

/// The Cortex-M4 cost table's int8 row, one layer at a time: instructions of the prepared int8
/// dot against the in-place one (the table's default for A8) on single W1A8 3x3 convs shaped
/// like ResNet-18-CIFAR's stages (64 output channels: the board program prints at most 100
/// logits), so that the ratio measured on ResNet-20 is checked on wide layers too.
/// `scripts/mcu-test.sh costs` runs it and prints a table (docs/MCU.md).
#[test]
#[ignore = "needs Debian's Cortex-M toolchain and QEMU; scripts/mcu-test.sh costs runs it"]
fn layer_costs() {
    let mut table = String::from(
        "| conv (W1A8, 3x3) | MACs | Minsn: int8-dot/portable / int8-dot/in-place | in place / prepared |\n|---|---|---|---|\n",
    );
    for (cin, hw) in [(16u32, 32u32), (64, 32), (128, 16), (256, 8), (512, 4)] {
        let geom = ConvGeom {
            out_channels: 64,
            ..ConvGeom::square(cin, 64, hw, 3, 1)
        };
        let bytes = synth::single_conv(geom, Quant::new(1, 8, 1)).expect("synthetic conv");
        let name = format!("conv{cin}x{hw}-w1a8");
        let model_path = work_dir().join(format!("{name}.slb"));
        std::fs::write(&model_path, &bytes).expect("write model");
        let model = Model::parse(&bytes).expect("parse");
        let choices = ["int8dot", "default"];
        let plans: Vec<Plan> = choices
            .iter()
            .map(|c| Plan::with_options(&model, Engine::Packed, options(c)).expect("plan"))
            .collect();
        assert_eq!(
            plans[1].kernel(0),
            Some(slb::runtime::KernelKind::Int8DotInPlace),
            "{name}: the Cortex-M4 default"
        );
        let image: Vec<u8> = (0..plans[0].input_len())
            .map(|i| (i * 131 % 256) as u8)
            .collect();
        let images_path = work_dir().join(format!("{name}-image.bin"));
        std::fs::write(&images_path, &image).expect("write image");
        let arena = plans.iter().map(Plan::arena_bytes).max().unwrap();
        let (_, _, board) = board_run(
            &model_path,
            &images_path,
            arena,
            &choices,
            true,
            &format!("{name}-qemu.txt"),
        );
        let minsn: Vec<f64> = choices
            .iter()
            .map(|c| {
                let p = board.plans.iter().find(|p| p.choice == *c).expect("ran");
                p.minsn()
            })
            .collect();
        assert_eq!(
            board.plans[0].logits, board.plans[1].logits,
            "{name}: both kernels give the same logits"
        );
        let macs = u64::from(cin) * 64 * 9 * u64::from(hw * hw);
        let _ = writeln!(
            table,
            "| {cin} -> 64 channels, {hw}x{hw} | {macs} | {:.2} / {:.2} | {:.3} |",
            minsn[0],
            minsn[1],
            minsn[1] / minsn[0]
        );
        println!("{table}");
    }
    std::fs::write(work_dir().join("layer-costs.md"), &table).expect("write layer-costs.md");
    println!("{table}");
}

/// The boards whose flash and SRAM hold `flash` and `ram` bytes.
fn fits(flash: u64, ram: u64) -> String {
    let v: Vec<&str> = BOARDS
        .iter()
        .filter(|(_, f, r)| flash <= *f && ram <= *r)
        .map(|(n, _, _)| *n)
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}
