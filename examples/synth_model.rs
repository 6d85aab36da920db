//! Writes a synthetic model file (random packed weights, see `slb::synth`) of the given
//! architecture and bit widths, for `slb bench` and `scripts/peer-bench.sh`:
//!
//! ```text
//! cargo run --release --example synth_model -- resnet18 W1A1 out.slb [seed]
//! ```
//!
//! Architectures: `resnet18` (CIFAR stem), `resnet20`, `vgg-small`. Bits: `W<w>A<a>` with weight
//! bits 1, 2 or 4 and activation bits 1, 2, 4 or 8. The same arguments give the same bytes.

use std::process::ExitCode;

use slb::synth::{build, Arch, Quant};

fn parse_bits(s: &str) -> Option<(u8, u8)> {
    let s = s.to_ascii_uppercase();
    let (w, a) = s.strip_prefix('W')?.split_once('A')?;
    Some((w.parse().ok()?, a.parse().ok()?))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage =
        "usage: synth_model ARCH W<w>A<a> OUT.slb [SEED]   (ARCH: resnet18, resnet20, vgg-small)";
    if !(3..=4).contains(&args.len()) {
        eprintln!("{usage}");
        return ExitCode::from(2);
    }
    let Some(arch) = Arch::from_name(&args[0]) else {
        eprintln!("unknown architecture {:?}\n{usage}", args[0]);
        return ExitCode::from(2);
    };
    let Some((wb, ab)) = parse_bits(&args[1]) else {
        eprintln!("bad bit widths {:?} (want e.g. W1A8)\n{usage}", args[1]);
        return ExitCode::from(2);
    };
    let seed = match args.get(3).map(|s| s.parse::<u64>()) {
        None => 11,
        Some(Ok(s)) => s,
        Some(Err(_)) => {
            eprintln!("bad seed {:?}\n{usage}", args[3]);
            return ExitCode::from(2);
        }
    };
    let bytes = match build(arch, Quant::new(wb, ab, seed)) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("cannot build {} {}: {e:?}", arch.name(), args[1]);
            return ExitCode::from(1);
        }
    };
    if let Err(e) = std::fs::write(&args[2], &bytes) {
        eprintln!("cannot write {}: {e}", args[2]);
        return ExitCode::from(1);
    }
    println!(
        "{}: {} {} seed {seed}, {} bytes",
        args[2],
        arch.name(),
        args[1].to_ascii_uppercase(),
        bytes.len()
    );
    ExitCode::SUCCESS
}
