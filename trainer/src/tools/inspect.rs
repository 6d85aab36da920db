//! `slb inspect`: a per-layer summary of a model file (the view `larq.models.summary` gives).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use slb_format::{DType, DenseWeights, Layer, Model, Shape};
use slb_runtime::{CostModel, Engine, Plan, PlanOptions};

/// A board to budget for: name, flash bytes, SRAM bytes.
pub const BOARDS: [(&str, usize, usize); 3] = [
    ("nRF52840", 1 << 20, 256 << 10),
    ("STM32F746", 1 << 20, 320 << 10),
    ("STM32H743", 2 << 20, 1 << 20),
];

fn shape(s: Shape) -> String {
    format!("{}x{}x{}", s.c, s.h, s.w)
}

fn bits(d: DType) -> String {
    match d {
        DType::Quant { bits, .. } => format!("A{bits}"),
        DType::F32 => "f32".into(),
    }
}

/// Totals of a summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Model file size in bytes.
    pub file_bytes: usize,
    /// Bytes of the same weights in fp32.
    pub fp32_bytes: usize,
    /// Bytes of packed weight codes.
    pub packed_bytes: usize,
    /// Multiply-accumulates per inference.
    pub macs: u64,
    /// Peak of live activation tensors.
    pub activation_peak: usize,
    /// Whole arena the host runtime asks for (activations, scratch, prepared weights).
    pub arena_bytes: usize,
}

/// Renders the summary table and returns it with the totals.
pub fn summary(bytes: &[u8]) -> Result<(String, Totals)> {
    let model = Model::parse(bytes)?;
    let plan = Plan::new(&model, Engine::Packed).context("cannot plan the model")?;
    let mut out = String::new();
    let mut t = Totals {
        file_bytes: bytes.len(),
        activation_peak: plan.activation_peak_bytes(),
        arena_bytes: plan.arena_bytes(),
        ..Totals::default()
    };
    writeln!(out, "model: {} (format v{})", model.name, model.version)?;
    writeln!(
        out,
        "{:>3}  {:<14} {:<12} {:<12} {:>3} {:>4} {:>10} {:>12}  kernel",
        "#", "op", "input", "output", "W", "A", "bytes", "MACs"
    )?;
    for (i, layer) in model.layers.iter().enumerate() {
        let tin = model
            .tensor(layer.inputs()[0].unwrap_or(0))
            .context("tensor")?;
        let tout = model.tensor(layer.output()).context("tensor")?;
        let (wb, bytes_, macs) = layer_weights(&layer, tin.shape, tout.shape, &mut t);
        t.macs += macs;
        writeln!(
            out,
            "{:>3}  {:<14} {:<12} {:<12} {:>3} {:>4} {:>10} {:>12}  {}",
            i,
            layer.op_name(),
            shape(tin.shape),
            shape(tout.shape),
            wb,
            bits(tin.dtype),
            bytes_,
            macs,
            plan.kernel(i).map_or("-", |k| k.name())
        )?;
    }
    writeln!(out)?;
    writeln!(out, "file size           {:>12} bytes", t.file_bytes)?;
    writeln!(
        out,
        "same network, fp32  {:>12} bytes  ({:.1}x larger)",
        t.fp32_bytes,
        t.fp32_bytes as f64 / t.file_bytes.max(1) as f64
    )?;
    writeln!(out, "packed weight codes {:>12} bytes", t.packed_bytes)?;
    writeln!(out, "MACs per inference  {:>12}", t.macs)?;
    writeln!(out, "activation peak     {:>12} bytes", t.activation_peak)?;
    writeln!(
        out,
        "host arena          {:>12} bytes (activations, scratch, prepared weights)",
        t.arena_bytes
    )?;
    boards(&model, t.file_bytes, &mut out)?;
    Ok((out, t))
}

/// One layer's weight bits, stored parameter bytes and MACs, its fp32 and packed weight bytes
/// added to `t`.
fn layer_weights(
    layer: &Layer<'_>,
    tin: Shape,
    tout: Shape,
    t: &mut Totals,
) -> (String, usize, u64) {
    match layer {
        Layer::Conv(c) => {
            let params = c.out_channels as usize
                * c.in_per_group() as usize
                * c.kernel[0] as usize
                * c.kernel[1] as usize;
            t.fp32_bytes += params * 4 + c.out_channels as usize * 8;
            t.packed_bytes += c.codes.len();
            let macs = c.macs(tout);
            (
                format!("{}", c.weight_bits),
                c.codes.len()
                    + c.requant
                        .affine
                        .map_or(0, |a| a.mult.0.len() + a.bias.0.len()),
                macs,
            )
        }
        Layer::Dense(d) => {
            let outf = tout.c as u64;
            let inf = tin.elements().unwrap_or(0) as u64;
            t.fp32_bytes += ((outf * inf + outf) * 4) as usize;
            let (w, b) = match d.weights {
                DenseWeights::F32(w) => ("32".to_string(), w.0.len()),
                DenseWeights::Int8 { values, scale } => {
                    ("8".to_string(), values.len() + scale.0.len())
                }
            };
            (w, b + d.bias.0.len(), outf * inf)
        }
        Layer::Add(a) => ("-".into(), a.params.mult_a.0.len() * 3, 0),
        _ => ("-".into(), 0, 0),
    }
}

/// The smallest arena and the boards' verdicts, from the plans a Cortex-M build makes.
fn boards(model: &Model<'_>, file_bytes: usize, out: &mut String) -> Result<()> {
    // What a Cortex-M build plans: portable kernels ranked by the Cortex-M4 costs.
    let portable = PlanOptions::for_board(CostModel::CortexM4);
    // The smallest arena any plan of `Plan::fit` needs (every conv it can move in place).
    let smallest = match Plan::fit(model, Engine::Packed, portable, 0) {
        Err(slb_runtime::Error::ArenaTooSmall { needed, .. }) => Some(needed),
        _ => None,
    };
    if let Some(n) = smallest {
        writeln!(
            out,
            "smallest arena      {:>12} bytes (Plan::fit: convs reading their codes in place)",
            n
        )?;
    }
    writeln!(
        out,
        "boards (flash: the model file; SRAM: the arena of the portable-kernel plan `Plan::fit` \
         finds for the board, as the Cortex-M build runs it: its default kernels where they fit, \
         else more convs reading their codes in place from flash; code and stack (docs/MCU.md) not counted):"
    )?;
    for (name, flash, sram) in BOARDS {
        let arena = Plan::fit(model, Engine::Packed, portable, sram).map(|p| p.arena_bytes());
        let verdict = match (&arena, file_bytes <= flash) {
            (Ok(a), true) => format!("fits (arena {} KB)", a.div_ceil(1024)),
            (Ok(_), false) => "does not fit (flash)".to_string(),
            (Err(_), true) => "does not fit (SRAM)".to_string(),
            (Err(_), false) => "does not fit (flash, SRAM)".to_string(),
        };
        writeln!(
            out,
            "  {:<10} {:>5} KB flash {:>5} KB SRAM  {}",
            name,
            flash >> 10,
            sram >> 10,
            verdict
        )?;
    }
    Ok(())
}

/// The `slb inspect` command.
pub fn command(path: &Path) -> Result<()> {
    let bytes = super::read_model_file(path)?;
    let (text, _) = summary(&bytes)?;
    print!("{text}");
    Ok(())
}
