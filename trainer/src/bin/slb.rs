//! `slb`: SLB quantization-aware training, export of packed models.

use clap::{Parser, Subcommand};
use slb_trainer::cli;

#[derive(Parser)]
#[command(
    name = "slb",
    version,
    about = "SLB low-bit training and bit-packed model export"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train an SLB network from a TOML configuration (exports OUT/model.slb at the end).
    Train(cli::train::TrainArgs),
    /// Export a checkpoint to a packed model file.
    Export(cli::export::ExportArgs),
    // `eval`, `inspect` and `bench` (packed models) are added beside these.
}

fn main() {
    let args = Cli::parse();
    let r = match &args.cmd {
        Cmd::Train(a) => cli::train::main(a),
        Cmd::Export(a) => cli::export::main(a),
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}
