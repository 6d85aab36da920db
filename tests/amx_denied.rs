//! The runtime under `scripts/peer_bench/noamx.py` (what `scripts/peer-bench.sh --no-amx` runs
//! every engine under): with the OS refusing AMX's state, the planner gives no conv to the AMX
//! dot, the network runs (a tile instruction without that state would kill the process) and
//! its logits are those of the run with AMX allowed. Where CPUID reports AMX-INT8, the run
//! with AMX allowed must plan the AMX dot, so the wrapper is what made the difference.
//! (x86-64 Linux only: AMX and the wrapper's seccomp filter exist nowhere else.)
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

use std::process::Command;

use slb::synth::{self, Quant};
use slb_format::Model;
use slb_runtime::{run, Engine, Plan};

/// Set in the child processes, which print their plan and logits instead of testing.
const CHILD: &str = "SLB_AMX_DENIED_CHILD";

/// The kernels of the synthetic W1A8 ResNet18-CIFAR's convs, and its logits' bits, on one line.
fn plan_and_logits() -> String {
    let bytes = synth::resnet18_cifar(Quant::new(1, 8, 11)).expect("synthetic model");
    let model = Model::parse(&bytes).expect("model parses");
    let plan = Plan::new(&model, Engine::Packed).expect("plan");
    let kernels: Vec<&str> = (0..plan.layers())
        .filter_map(|l| plan.kernel(l).map(|k| k.name()))
        .collect();
    let mut arena = vec![0u8; plan.arena_bytes()];
    let image: Vec<u8> = (0..plan.input_len()).map(|i| (i * 7 % 251) as u8).collect();
    let mut logits = vec![0f32; plan.output_len()];
    run(&model, &plan, &mut arena, &image, &mut logits).expect("inference");
    let bits: Vec<String> = logits
        .iter()
        .map(|v| format!("{:08x}", v.to_bits()))
        .collect();
    format!("{} {}", kernels.join(","), bits.join(","))
}

/// Runs this test in a child process, through `noamx.py` if `denied`; its `(kernels, logits)`.
fn child(denied: bool) -> (String, String) {
    let exe = std::env::current_exe().expect("test binary");
    let root = env!("CARGO_MANIFEST_DIR");
    let mut cmd = if denied {
        let mut c = Command::new("python3");
        c.arg(format!("{root}/scripts/peer_bench/noamx.py"))
            .arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    let out = cmd
        .args([
            "--exact",
            "amx_denied_plans_vnni_with_the_same_logits",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .output()
        .expect("the child starts (python3 on PATH for noamx.py)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child (denied: {denied}) failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("@@ ").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("child (denied: {denied}) printed no plan:\n{stdout}"));
    let (k, l) = line.split_once(' ').expect("kernels and logits");
    (k.to_string(), l.to_string())
}

/// Whether CPUID reports AMX-TILE and AMX-INT8 (leaf 7, EDX bits 24 and 25).
fn cpu_has_amx() -> bool {
    let max = std::arch::x86_64::__cpuid(0).eax;
    max >= 7 && std::arch::x86_64::__cpuid_count(7, 0).edx >> 24 & 3 == 3
}

#[test]
fn amx_denied_plans_vnni_with_the_same_logits() {
    if std::env::var_os(CHILD).is_some() {
        println!("@@ {}", plan_and_logits());
        return;
    }
    let (denied, denied_logits) = child(true);
    let (allowed, allowed_logits) = child(false);
    eprintln!("AMX denied: {denied}\nAMX allowed: {allowed}");
    assert!(!denied.is_empty());
    assert!(
        !denied.split(',').any(|k| k == "int8-dot/amx"),
        "AMX planned although denied: {denied}"
    );
    if cpu_has_amx() {
        assert!(
            allowed.split(',').any(|k| k == "int8-dot/amx"),
            "CPUID has AMX-INT8 but the run with AMX allowed planned no AMX conv: {allowed}"
        );
    }
    assert_eq!(denied_logits, allowed_logits);
}
