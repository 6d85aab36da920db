//! Running a plan: the arena cut into its regions, the prepared-weights marker, `prepare` and
//! `run`, which hands the layers to the engine the plan chose (`packed` or `float`).

#[cfg(feature = "embedded-hal")]
use embedded_hal::digital::OutputPin;
use slb_format::{Layer, Model, Site};

use crate::arena::{ALIGN, HEADER};
use crate::kernels::{self, KernelKind};
use crate::plan::{conv_shape, Engine, Plan};
use crate::quant::QParams;
use crate::{float, packed, Error, Result};

const MAGIC: [u8; 8] = *b"SLBRTW01";

/// The arena cut into its regions.
pub(crate) struct Regions<'a> {
    pub header: &'a mut [u8],
    pub weights: &'a mut [u8],
    pub acts: &'a mut [u8],
    pub scratch: &'a mut [u8],
}

fn split<'a>(plan: &Plan, arena: &'a mut [u8]) -> Result<Regions<'a>> {
    let needed = plan.arena_bytes();
    if arena.len() < needed {
        return Err(Error::ArenaTooSmall {
            needed,
            got: arena.len(),
        });
    }
    let pad = arena.as_ptr().align_offset(ALIGN);
    if pad >= ALIGN {
        return Err(Error::Unsupported {
            layer: Site::Model,
            what: "arena alignment",
        });
    }
    let a = &mut arena[pad..];
    let (header, rest) = a.split_at_mut(HEADER);
    let (weights, rest) = rest.split_at_mut(plan.weights_bytes);
    let (acts, rest) = rest.split_at_mut(plan.act_bytes);
    let scratch = &mut rest[..plan.scratch_bytes];
    Ok(Regions {
        header,
        weights,
        acts,
        scratch,
    })
}

/// FNV-1a over what the prepared weights depend on.
fn fingerprint(model: &Model<'_>, plan: &Plan) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut eat = |v: u64| {
        for b in v.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(plan.engine as u64);
    eat(plan.weights_bytes as u64);
    for (layer, lp) in model.layers.iter().zip(plan.layers.iter()) {
        if let Layer::Conv(c) = layer {
            eat(c.codes.as_ptr() as usize as u64);
            eat(c.codes.len() as u64);
            eat(lp.w_off as u64);
            eat(lp.kernel.map_or(0, |k| k as u64 + 1));
        }
    }
    h
}

/// Checks that `plan` was made for `model` (same tensors, same layer shapes).
fn check_plan(model: &Model<'_>, plan: &Plan) -> Result<()> {
    let whole = Error::PlanMismatch { layer: Site::Model };
    if model.tensors.len() != plan.tensors.len() || model.layers.len() != plan.layers.len() {
        return Err(whole);
    }
    for (t, slot) in model.tensors.iter().zip(plan.tensors.iter()) {
        if t.shape != slot.shape || QParams::of(&t.dtype) != slot.q {
            return Err(whole);
        }
    }
    for (i, (layer, lp)) in model.layers.iter().zip(plan.layers.iter()).enumerate() {
        let differs = Error::PlanMismatch {
            layer: Site::Layer(i as u16),
        };
        if let Layer::Conv(c) = layer {
            let s = conv_shape(&c, &plan.tensors).ok_or(differs)?;
            // The prepared sizes must be the ones this conv needs.
            let w_len = match lp.kernel {
                Some(KernelKind::Float | KernelKind::FloatAvx2) => s.cout * s.taps() * 4,
                Some(KernelKind::Reference) => 0,
                Some(kind) => kernels::by_kind(kind).map_or(usize::MAX, |k| (k.prepared_len)(&s)),
                None => usize::MAX,
            };
            if !lp.conv || w_len != lp.w_len as usize {
                return Err(differs);
            }
        } else if lp.conv {
            return Err(differs);
        }
    }
    Ok(())
}

/// Prepares the weights of every conv into the arena (unpacked int8, u64 bit planes or f32,
/// per the plan's kernels) and marks the arena as prepared for this plan and model. [`run`]
/// calls it by itself when the marker is missing; call it again if the model's bytes changed
/// in place.
pub fn prepare(model: &Model<'_>, plan: &Plan, arena: &mut [u8]) -> Result<()> {
    check_plan(model, plan)?;
    let r = split(plan, arena)?;
    prepare_regions(model, plan, r.header, r.weights)
}

fn prepare_regions(
    model: &Model<'_>,
    plan: &Plan,
    header: &mut [u8],
    weights: &mut [u8],
) -> Result<()> {
    header[..8].fill(0);
    for (i, (layer, lp)) in model.layers.iter().zip(plan.layers.iter()).enumerate() {
        let Layer::Conv(conv) = layer else {
            continue;
        };
        let li = i as u16;
        let s = conv_shape(&conv, &plan.tensors).ok_or(Error::PlanMismatch {
            layer: Site::Layer(li),
        })?;
        let w = weights.get_mut(lp.w()).ok_or(Error::PlanMismatch {
            layer: Site::Layer(li),
        })?;
        w.fill(0);
        match lp.kernel {
            Some(KernelKind::Float | KernelKind::FloatAvx2) => float::prepare_conv(&conv, &s, w)?,
            Some(KernelKind::Reference) | None => {}
            Some(kind) => {
                let k = kernels::by_kind(kind).ok_or(Error::KernelUnavailable {
                    layer: li,
                    kernel: kind.name(),
                })?;
                (k.prepare)(&conv, &s, w);
            }
        }
        let aux = weights.get_mut(lp.aux()).ok_or(Error::PlanMismatch {
            layer: Site::Layer(li),
        })?;
        let zp = plan
            .tensors
            .get(conv.input as usize)
            .and_then(|t| t.q)
            .map_or(0, |q| q.zp);
        let outq = plan.tensors.get(conv.output as usize).and_then(|t| t.q);
        packed::prepare_aux(&conv, &s, zp, outq.as_ref(), aux);
    }
    header[8..16].copy_from_slice(&fingerprint(model, plan).to_le_bytes());
    header[..8].copy_from_slice(&MAGIC);
    Ok(())
}

/// Runs the model on one image (`H*W*C` bytes, HWC order) and writes the logits.
///
/// The arena must hold [`Plan::arena_bytes`] bytes; its prepared weights are reused between
/// calls (prepared on the first call, or by [`prepare`]).
pub fn run(
    model: &Model<'_>,
    plan: &Plan,
    arena: &mut [u8],
    image: &[u8],
    logits: &mut [f32],
) -> Result<()> {
    run_observed(model, plan, arena, image, logits, &mut |_| {})
}

/// A point of a run that [`run_observed`] reports: a layer (its index in the model) about to
/// run, or just run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerEvent {
    /// The layer is about to run (its input ready).
    Start(u16),
    /// The layer has run (its output written).
    End(u16),
}

/// [`run`], calling `observer` before and after each layer (not after a layer that fails),
/// e.g. to time the layers with the caller's clock (`examples/prof_model.rs`, `LAYERS=1`).
/// The input lookup before the first layer and the logits' copy after the last are outside
/// every layer. The runtime reads no clock itself (it has none without `std`).
pub fn run_observed(
    model: &Model<'_>,
    plan: &Plan,
    arena: &mut [u8],
    image: &[u8],
    logits: &mut [f32],
    observer: &mut dyn FnMut(LayerEvent),
) -> Result<()> {
    if image.len() != plan.input_len {
        return Err(Error::InputSize {
            expected: plan.input_len,
            got: image.len(),
        });
    }
    if logits.len() != plan.output_len {
        return Err(Error::OutputSize {
            expected: plan.output_len,
            got: logits.len(),
        });
    }
    check_plan(model, plan)?;
    let r = split(plan, arena)?;
    let fp = fingerprint(model, plan);
    if r.header[..8] != MAGIC || r.header[8..16] != fp.to_le_bytes() {
        prepare_regions(model, plan, r.header, r.weights)?;
    }
    let weights: &[u8] = r.weights;
    match plan.engine {
        Engine::Packed => {
            packed::run_packed(model, plan, weights, r.acts, r.scratch, image, observer)?
        }
        Engine::Float => float::run_float(model, plan, weights, r.acts, image, observer)?,
    }
    let out = &plan.tensors[model.output as usize];
    let bytes = r
        .acts
        .get(out.offset..out.offset + out.bytes)
        .ok_or(Error::PlanMismatch { layer: Site::Model })?;
    for (l, b) in logits.iter_mut().zip(bytes.chunks_exact(4)) {
        *l = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    Ok(())
}

/// [`run`], driving `pin` high while the model runs and low afterwards (also on error), e.g.
/// to measure inference time with a logic analyser.
#[cfg(feature = "embedded-hal")]
pub fn run_with_busy_pin<P: OutputPin>(
    model: &Model<'_>,
    plan: &Plan,
    arena: &mut [u8],
    image: &[u8],
    logits: &mut [f32],
    pin: &mut P,
) -> Result<()> {
    pin.set_high().map_err(|_| Error::Pin)?;
    let r = run(model, plan, arena, image, logits);
    let low = pin.set_low().map_err(|_| Error::Pin);
    r.and(low)
}
