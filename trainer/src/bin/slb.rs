//! `slb`: SLB quantization-aware training, export of packed models.

use clap::{Parser, Subcommand};
use slb_trainer::{cli, tools};

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
    /// Draw a run's per-epoch curves (accuracy, loss, temperature, learning rate) as a PNG.
    Plot(cli::plot::PlotArgs),
    /// Time the streaming loader's decode and augmentation at 224 px on an image-folder tree.
    DataBench(cli::data_bench::DataBenchArgs),
    /// Evaluate a packed model file on a dataset's test split with the host runtime.
    Eval(EvalArgs),
    /// Print a per-layer summary of a model file: bits, bytes, MACs, kernels, board fit.
    Inspect {
        /// The model file.
        model: std::path::PathBuf,
    },
    /// Time the packed runtime against float (in-house executor and libtorch CPU), one thread.
    Bench {
        /// The model file.
        #[arg(long)]
        model: std::path::PathBuf,
        /// Seconds to measure each engine (more than 0, at most 3600).
        #[arg(long, default_value_t = 3.0, value_parser = cli::parse_seconds)]
        seconds: f64,
        /// Time only the packed runtime (for scripts that time other engines themselves, such
        /// as scripts/peer-bench.sh).
        #[arg(long)]
        packed_only: bool,
        /// Time on this image (JPEG or PNG, resized and centre-cropped to the model's input
        /// side) instead of a synthetic one: the table-lookup kernels' speed depends on the
        /// activations.
        #[arg(long)]
        image: Option<std::path::PathBuf>,
    },
}

#[derive(clap::Args)]
struct EvalArgs {
    /// The model file.
    #[arg(long)]
    model: std::path::PathBuf,
    /// Dataset: a CIFAR-10 binary folder, an image-folder tree or a .tar/.tar.xz of one.
    #[arg(long)]
    data: std::path::PathBuf,
    /// Engine: the packed kernels or the float executor of the same graph.
    #[arg(long, value_enum, default_value_t = EngineArg::Packed)]
    engine: EngineArg,
    /// Print one JSON object (top1, top5, images, images_per_s, ...).
    #[arg(long)]
    json: bool,
    /// Evaluate only the first N test images of each class.
    #[arg(long)]
    per_class: Option<usize>,
    /// Accept test data whose class names differ from those stored in the model: labels are
    /// matched by name and images of classes the model lacks are left out (without it, any
    /// difference is an error).
    #[arg(long)]
    allow_class_mismatch: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum EngineArg {
    Packed,
    Float,
}

fn main() {
    let args = Cli::parse();
    let r = match &args.cmd {
        Cmd::Train(a) => cli::train::main(a),
        Cmd::Export(a) => cli::export::main(a),
        Cmd::Plot(a) => cli::plot::main(a),
        Cmd::DataBench(a) => cli::data_bench::main(a),
        Cmd::Eval(a) => tools::eval::command(
            &a.model,
            &a.data,
            match a.engine {
                EngineArg::Packed => slb_runtime::Engine::Packed,
                EngineArg::Float => slb_runtime::Engine::Float,
            },
            a.json,
            a.per_class,
            a.allow_class_mismatch,
        ),
        Cmd::Inspect { model } => tools::inspect::command(model),
        Cmd::Bench {
            model,
            seconds,
            packed_only,
            image,
        } => tools::bench::command(model, *seconds, *packed_only, image.as_deref()),
    };
    if let Err(e) = r {
        eprintln!("error: {}", cli::one_line(&e));
        std::process::exit(2);
    }
}
