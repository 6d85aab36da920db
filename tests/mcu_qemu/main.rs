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
//!
//! The harness (host runs, the embedded build, QEMU, the board output's parser) is in
//! `harness.rs`.

mod harness;

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use slb::format::Model;
use slb::runtime::{Engine, Plan};
use slb::synth::{self, ConvGeom, Quant};

use harness::*;

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
