//! The executor: arena split, weight preparation, the conv driver and the non-conv layers of the
//! packed engine.

use core::ops::Range;

#[cfg(feature = "embedded-hal")]
use embedded_hal::digital::OutputPin;
use slb_format::{Conv, DenseWeights, Layer, Model, Pool};

use crate::float;
use crate::kernels::{self, portable, reference, ConvShape, KernelKind, RowOps, Run};
use crate::plan::{conv_shape, Engine, LayerPlan, Plan, TensorSlot, ALIGN, HEADER};
use crate::quant::QParams;
use crate::{Error, Result};

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
            layer: u16::MAX,
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
    let whole = Error::PlanMismatch { layer: u16::MAX };
    if model.tensors.len() != plan.tensors.len() || model.layers.len() != plan.layers.len() {
        return Err(whole);
    }
    for (t, slot) in model.tensors.iter().zip(plan.tensors.iter()) {
        if t.shape != slot.shape || QParams::of(&t.dtype) != slot.q {
            return Err(whole);
        }
    }
    for (i, (layer, lp)) in model.layers.iter().zip(plan.layers.iter()).enumerate() {
        let differs = Error::PlanMismatch { layer: i as u16 };
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
        let s = conv_shape(&conv, &plan.tensors).ok_or(Error::PlanMismatch { layer: li })?;
        let w = weights
            .get_mut(lp.w())
            .ok_or(Error::PlanMismatch { layer: li })?;
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
        let aux = weights
            .get_mut(lp.aux())
            .ok_or(Error::PlanMismatch { layer: li })?;
        let zp = plan
            .tensors
            .get(conv.input as usize)
            .and_then(|t| t.q)
            .map_or(0, |q| q.zp);
        prepare_aux(&conv, &s, zp, aux);
    }
    header[8..16].copy_from_slice(&fingerprint(model, plan).to_le_bytes());
    header[..8].copy_from_slice(&MAGIC);
    Ok(())
}

/// The driver's tables: `zp * wsum[o]` (abits >= 2, `zp` the input's zero point) or
/// `S[o][ky][kx]`, the numerator sum of one tap
/// (abits 1, for the border correction). Empty `aux` (float/reference) is left alone.
pub(crate) fn prepare_aux(conv: &Conv<'_>, s: &ConvShape, zp: i32, aux: &mut [u8]) {
    if aux.is_empty() {
        return;
    }
    let reader = slb_format::CodeReader::new(conv);
    let per_tap = s.abits == 1;
    for o in 0..s.cout {
        let mut total = 0i32;
        for ky in 0..s.kh {
            for kx in 0..s.kw {
                let mut t = 0i32;
                for i in 0..s.cin_g {
                    t += reader.numerator(o, ky, kx, i);
                }
                if per_tap {
                    let at = ((o * s.kh + ky) * s.kw + kx) * 4;
                    if let Some(d) = aux.get_mut(at..at + 4) {
                        d.copy_from_slice(&t.to_le_bytes());
                    }
                }
                total += t;
            }
        }
        if !per_tap {
            // Stored premultiplied by the input's zero point: the correction is one subtraction.
            if let Some(d) = aux.get_mut(o * 4..o * 4 + 4) {
                d.copy_from_slice(&zp.wrapping_mul(total).to_le_bytes());
            }
        }
    }
}

#[inline]
fn i32_at(b: &[u8], i: usize) -> i32 {
    match b.get(i * 4..i * 4 + 4) {
        Some(v) => i32::from_le_bytes([v[0], v[1], v[2], v[3]]),
        None => 0,
    }
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
        Engine::Packed => run_packed(model, plan, weights, r.acts, r.scratch, image)?,
        Engine::Float => float::run_float(model, plan, weights, r.acts, image)?,
    }
    let out = &plan.tensors[model.output as usize];
    let bytes = r
        .acts
        .get(out.offset..out.offset + out.bytes)
        .ok_or(Error::PlanMismatch { layer: u16::MAX })?;
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

/// One output range and up to two input ranges of the activation region, borrowed at once.
pub(crate) fn io<'a>(
    acts: &'a mut [u8],
    out: Range<usize>,
    a: Range<usize>,
    b: Range<usize>,
) -> Result<(&'a mut [u8], &'a [u8], &'a [u8])> {
    let bad = Error::PlanMismatch { layer: u16::MAX };
    if out.end > acts.len() || out.start > out.end {
        return Err(bad);
    }
    let (before, rest) = acts.split_at_mut(out.start);
    let (o, after) = rest.split_at_mut(out.end - out.start);
    let (before, after): (&'a [u8], &'a [u8]) = (before, after);
    let pick = |r: Range<usize>| -> Result<&'a [u8]> {
        if r.is_empty() {
            return Ok(&[]);
        }
        if r.end <= out.start {
            before.get(r).ok_or(bad)
        } else if r.start >= out.end {
            after.get(r.start - out.end..r.end - out.end).ok_or(bad)
        } else {
            Err(bad)
        }
    };
    Ok((o, pick(a)?, pick(b)?))
}

/// What one layer reads and writes: its tensors' slots and their bytes in the activation
/// region (shared by the packed and the float executor).
pub(crate) struct LayerIo<'a> {
    pub ta: TensorSlot,
    pub tb: Option<TensorSlot>,
    pub to: TensorSlot,
    pub out: &'a mut [u8],
    pub a: &'a [u8],
    pub b: &'a [u8],
}

/// The [`LayerIo`] of `layer` under `plan`.
pub(crate) fn layer_io<'a>(
    plan: &Plan,
    layer: &Layer<'_>,
    acts: &'a mut [u8],
) -> Result<LayerIo<'a>> {
    let ins = layer.inputs();
    let ta = plan.tensors[ins[0].unwrap_or(0) as usize];
    let tb = ins[1].map(|t| plan.tensors[t as usize]);
    let to = plan.tensors[layer.output() as usize];
    let (out, a, b) = io(
        acts,
        range(&to),
        range(&ta),
        tb.as_ref().map_or(0..0, range),
    )?;
    Ok(LayerIo {
        ta,
        tb,
        to,
        out,
        a,
        b,
    })
}

pub(crate) fn range(t: &TensorSlot) -> Range<usize> {
    t.offset..t.offset + t.bytes
}

/// Writes the input tensor from the image: codes through the LUT, or normalised f32.
fn load_input(model: &Model<'_>, slot: &TensorSlot, dst: &mut [u8], image: &[u8]) {
    let c = model.input.shape.c as usize;
    match slot.q {
        Some(_) => {
            // Pixel by pixel, so that the channel is a loop index, not a division.
            let lut = model.input.lut;
            for (dp, ip) in dst
                .chunks_exact_mut(c.max(1))
                .zip(image.chunks_exact(c.max(1)))
            {
                for (ch, (d, &v)) in dp.iter_mut().zip(ip).enumerate() {
                    *d = lut.get(ch * 256 + v as usize).copied().unwrap_or(0);
                }
            }
        }
        None => {
            for (i, (d, &v)) in dst.chunks_exact_mut(4).zip(image).enumerate() {
                let ch = i % c;
                let m = model.input.mean.get(ch).unwrap_or(0.0);
                let s = model.input.std.get(ch).unwrap_or(1.0);
                d.copy_from_slice(&((v as f32 / 255.0 - m) / s).to_le_bytes());
            }
        }
    }
}

fn run_packed(
    model: &Model<'_>,
    plan: &Plan,
    weights: &[u8],
    acts: &mut [u8],
    scratch: &mut [u8],
    image: &[u8],
) -> Result<()> {
    let input = &plan.tensors[model.input.tensor as usize];
    let dst = acts
        .get_mut(range(input))
        .ok_or(Error::PlanMismatch { layer: u16::MAX })?;
    load_input(model, input, dst, image);
    for (i, (layer, lp)) in model.layers.iter().zip(plan.layers.iter()).enumerate() {
        let li = i as u16;
        let LayerIo {
            ta,
            tb,
            to,
            out,
            a,
            b,
        } = layer_io(plan, &layer, acts)?;
        match &layer {
            Layer::Conv(conv) => {
                let s = conv_shape(conv, &plan.tensors).ok_or(Error::PlanMismatch { layer: li })?;
                conv_layer(
                    li, conv, &s, lp, &plan.ops, &ta, &to, a, out, weights, scratch,
                )?
            }
            Layer::Dense(d) => dense(&d.weights, d.bias, &ta, a, out, ta.q.is_none())?,
            Layer::MaxPool(p) => pool(p, &ta, &to, ta.q, a, out, true),
            Layer::AvgPool(p) => pool(p, &ta, &to, ta.q, a, out, false),
            Layer::GlobalAvgPool(_) => gap(&ta, ta.q, to.q, a, out),
            Layer::Add(add) => {
                let (qa, qb, qo) = match (ta.q, tb.and_then(|t| t.q), to.q) {
                    (Some(x), Some(y), Some(z)) => (x, y, z),
                    _ => {
                        return Err(Error::Unsupported {
                            layer: li,
                            what: "add of f32 tensors",
                        })
                    }
                };
                (plan.ops.add_rows)(a, b, &qa, &qb, &add.params, &qo, ta.shape.c as usize, out);
            }
            Layer::Relu(_) => match ta.q {
                Some(q) => out
                    .iter_mut()
                    .zip(a)
                    .for_each(|(o, &v)| *o = (v as i32).max(q.zp) as u8),
                None => f32_map(a, out, |x| if x > 0.0 { x } else { 0.0 }),
            },
            Layer::Flatten(_) => flatten(&ta, a, out),
        }
    }
    Ok(())
}

pub(crate) fn f32_map(a: &[u8], out: &mut [u8], f: impl Fn(f32) -> f32) {
    for (o, i) in out.chunks_exact_mut(4).zip(a.chunks_exact(4)) {
        let x = f32::from_le_bytes([i[0], i[1], i[2], i[3]]);
        o.copy_from_slice(&f(x).to_le_bytes());
    }
}

/// `[C,H,W]` stored HWC becomes `[C*H*W,1,1]` in CHW element order.
pub(crate) fn flatten(ta: &TensorSlot, a: &[u8], out: &mut [u8]) {
    let (c, hw) = (ta.shape.c as usize, (ta.shape.h * ta.shape.w) as usize);
    let e = a.len().checked_div(hw * c).unwrap_or(1);
    for p in 0..hw {
        for ch in 0..c {
            let src = (p * c + ch) * e;
            let dst = (ch * hw + p) * e;
            if let (Some(d), Some(s)) = (out.get_mut(dst..dst + e), a.get(src..src + e)) {
                d.copy_from_slice(s);
            }
        }
    }
}

/// Dense layer over codes (`f32_in == false`) or f32 values, in CHW flattened order.
pub(crate) fn dense(
    w: &DenseWeights<'_>,
    bias: slb_format::F32s<'_>,
    ta: &TensorSlot,
    a: &[u8],
    out: &mut [u8],
    f32_in: bool,
) -> Result<()> {
    let c = ta.shape.c as usize;
    let hw = (ta.shape.h * ta.shape.w) as usize;
    let n = c * hw;
    for (o, dst) in out.chunks_exact_mut(4).enumerate() {
        let mut sum = 0f32;
        let mut isum = 0i64;
        for p in 0..hw {
            for ch in 0..c {
                let s = p * c + ch;
                let i = ch * hw + p;
                let x = if f32_in {
                    match a.get(4 * s..4 * s + 4) {
                        Some(b) => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                        None => 0.0,
                    }
                } else {
                    0.0
                };
                match w {
                    DenseWeights::F32(wf) => {
                        let wv = wf.get(o * n + i).unwrap_or(0.0);
                        if f32_in {
                            sum += wv * x;
                        } else if let Some(q) = ta.q {
                            sum += wv * q.centred(a[s]) as f32;
                        }
                    }
                    DenseWeights::Int8 { values, .. } => {
                        let wv = values.get(o * n + i).map_or(0, |&v| v as i8);
                        if f32_in {
                            sum += f32::from(wv) * x;
                        } else if let Some(q) = ta.q {
                            isum += i64::from(wv) * i64::from(q.centred(a[s]));
                        }
                    }
                }
            }
        }
        let in_scale = if f32_in {
            1.0
        } else {
            ta.q.map_or(1.0, |q| q.scale)
        };
        let v = match w {
            DenseWeights::F32(_) => sum * in_scale,
            DenseWeights::Int8 { scale, .. } => {
                let s = scale.get(o).unwrap_or(0.0);
                if f32_in {
                    sum * s
                } else {
                    isum as f32 * s * in_scale
                }
            }
        };
        let v = v + bias.get(o).unwrap_or(0.0);
        dst.copy_from_slice(&v.to_le_bytes());
    }
    Ok(())
}

/// Max / average pooling on codes (`q` given) or f32 values (`q == None`).
pub(crate) fn pool(
    p: &Pool,
    ta: &TensorSlot,
    to: &TensorSlot,
    q: Option<QParams>,
    a: &[u8],
    out: &mut [u8],
    max: bool,
) {
    let (c, h, w) = (
        ta.shape.c as usize,
        ta.shape.h as usize,
        ta.shape.w as usize,
    );
    let (oh, ow) = (to.shape.h as usize, to.shape.w as usize);
    let (kh, kw) = (p.kernel[0] as usize, p.kernel[1] as usize);
    let (sh, sw) = (p.stride[0] as usize, p.stride[1] as usize);
    let (ph, pw) = (p.padding[0] as isize, p.padding[1] as isize);
    let n = (kh * kw) as i64;
    for oy in 0..oh {
        for ox in 0..ow {
            for ch in 0..c {
                let mut best_q = 0u8;
                let mut best_f = f32::NEG_INFINITY;
                let mut sum_q = 0i64;
                let mut sum_f = 0f32;
                let mut any = false;
                for ky in 0..kh {
                    for kx in 0..kw {
                        let iy = (oy * sh + ky) as isize - ph;
                        let ix = (ox * sw + kx) as isize - pw;
                        let inside = iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w;
                        let idx = if inside {
                            (iy as usize * w + ix as usize) * c + ch
                        } else {
                            0
                        };
                        match q {
                            Some(q) => {
                                let v = if inside {
                                    a.get(idx).copied().unwrap_or(0)
                                } else {
                                    q.zp as u8
                                };
                                if inside && (!any || v > best_q) {
                                    best_q = v;
                                }
                                sum_q += i64::from(v);
                            }
                            None => {
                                let v = if inside {
                                    a.get(4 * idx..4 * idx + 4).map_or(0.0, |b| {
                                        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
                                    })
                                } else {
                                    0.0
                                };
                                if inside && (!any || v > best_f) {
                                    best_f = v;
                                }
                                sum_f += v;
                            }
                        }
                        any |= inside;
                    }
                }
                let o = (oy * ow + ox) * c + ch;
                match q {
                    Some(q) => {
                        let v = if max {
                            if any {
                                best_q
                            } else {
                                q.zp as u8
                            }
                        } else {
                            // Round half up: floor((2*sum + n) / 2n) for sum >= 0.
                            ((2 * sum_q + n) / (2 * n)) as u8
                        };
                        if let Some(d) = out.get_mut(o) {
                            *d = v;
                        }
                    }
                    None => {
                        let v = if max {
                            if any {
                                best_f
                            } else {
                                0.0
                            }
                        } else {
                            sum_f / n as f32
                        };
                        if let Some(d) = out.get_mut(4 * o..4 * o + 4) {
                            d.copy_from_slice(&v.to_le_bytes());
                        }
                    }
                }
            }
        }
    }
}

/// Global average pooling (codes: mean code rounded half up; to f32: exact mean of reals;
/// `qin == None`: f32 input).
pub(crate) fn gap(
    ta: &TensorSlot,
    qin: Option<QParams>,
    qout: Option<QParams>,
    a: &[u8],
    out: &mut [u8],
) {
    let c = ta.shape.c as usize;
    let hw = (ta.shape.h * ta.shape.w) as usize;
    let n = hw as i64;
    for ch in 0..c {
        match qin {
            Some(q) => {
                let sum: i64 = (0..hw)
                    .map(|p| i64::from(a.get(p * c + ch).copied().unwrap_or(0)))
                    .sum();
                match qout {
                    Some(_) => {
                        if let Some(d) = out.get_mut(ch) {
                            *d = ((2 * sum + n) / (2 * n)) as u8;
                        }
                    }
                    None => {
                        let centred = if q.bits == 1 {
                            2 * sum - n
                        } else {
                            sum - n * i64::from(q.zp)
                        };
                        let v = q.scale * (centred as f64 / n as f64) as f32;
                        if let Some(d) = out.get_mut(4 * ch..4 * ch + 4) {
                            d.copy_from_slice(&v.to_le_bytes());
                        }
                    }
                }
            }
            None => {
                let mut sum = 0f32;
                for p in 0..hw {
                    let i = 4 * (p * c + ch);
                    if let Some(b) = a.get(i..i + 4) {
                        sum += f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    }
                }
                if let Some(d) = out.get_mut(4 * ch..4 * ch + 4) {
                    d.copy_from_slice(&(sum / n as f32).to_le_bytes());
                }
            }
        }
    }
}

/// The conv driver of the packed engine.
#[allow(clippy::too_many_arguments)]
fn conv_layer(
    li: u16,
    conv: &Conv<'_>,
    s: &ConvShape,
    lp: &LayerPlan,
    ops: &RowOps,
    ta: &TensorSlot,
    to: &TensorSlot,
    x: &[u8],
    out: &mut [u8],
    weights: &[u8],
    scratch: &mut [u8],
) -> Result<()> {
    let bad = Error::PlanMismatch { layer: li };
    let (inq, outq) = match (ta.q, to.q) {
        (Some(a), Some(b)) => (a, b),
        _ => return Err(bad),
    };
    let kind = lp.kernel.ok_or(bad)?;
    let aux = weights.get(lp.aux()).ok_or(bad)?;
    let w = weights.get(lp.w()).ok_or(bad)?;
    let scratch = scratch.get_mut(..lp.scratch as usize).ok_or(bad)?;
    let row = s.ow * s.cout;
    if kind == KernelKind::Reference {
        let acc: &mut [i32] =
            bytemuck::try_cast_slice_mut(&mut scratch[..s.oh * row * 4]).map_err(|_| bad)?;
        reference::conv_acc(conv, s, &inq, x, acc);
        requant_rows(ops, conv, s, &outq, acc, 0, s.oh, out);
        return Ok(());
    }
    let k = kernels::by_kind(kind).ok_or(Error::KernelUnavailable {
        layer: li,
        kernel: kind.name(),
    })?;
    // In-place kernels read the packed codes where the model lies (flash), not the arena.
    let w = if k.reads_codes { conv.codes } else { w };
    let pad = if s.abits == 1 { 0 } else { inq.zp as u8 };
    let (xin_len, xbuf, accbuf) = match k.run {
        Run::Bytes(_) if s.ph == 0 && s.pw == 0 => (0, &mut [][..], &mut scratch[..]),
        Run::Bytes(_) => {
            let n = s.hp * s.wp * s.c;
            let (xb, rest) = scratch.split_at_mut(n.div_ceil(ALIGN) * ALIGN);
            (n, xb, rest)
        }
        Run::Bits(_) => {
            let n = s.hp * s.wp * portable::bit_pixel_words(s) * 8;
            let (xb, rest) = scratch.split_at_mut(n.div_ceil(ALIGN) * ALIGN);
            (n, xb, rest)
        }
    };
    let rows = (lp.rows as usize).max(1);
    let acc_all: &mut [i32] =
        bytemuck::try_cast_slice_mut(accbuf.get_mut(..rows * row * 4).ok_or(bad)?)
            .map_err(|_| bad)?;
    match k.run {
        Run::Bytes(f) => {
            let xin: &[u8] = if xin_len == 0 {
                x
            } else {
                portable::pad_bytes(s, x, pad, &mut xbuf[..xin_len]);
                &xbuf[..xin_len]
            };
            let mut y0 = 0;
            while y0 < s.oh {
                let y1 = (y0 + rows).min(s.oh);
                let acc = &mut acc_all[..(y1 - y0) * row];
                f(s, xin, w, y0, y1, acc);
                correct(s, &inq, aux, acc, y0, y1);
                requant_rows(ops, conv, s, &outq, acc, y0, y1, out);
                y0 = y1;
            }
        }
        Run::Bits(f) => {
            let words: &mut [u64] =
                bytemuck::try_cast_slice_mut(&mut xbuf[..xin_len]).map_err(|_| bad)?;
            (ops.pack_bits)(s, x, pad, words);
            let words: &[u64] = words;
            let mut y0 = 0;
            while y0 < s.oh {
                let y1 = (y0 + rows).min(s.oh);
                let acc = &mut acc_all[..(y1 - y0) * row];
                f(s, words, w, y0, y1, acc);
                correct(s, &inq, aux, acc, y0, y1);
                requant_rows(ops, conv, s, &outq, acc, y0, y1, out);
                y0 = y1;
            }
        }
    }
    Ok(())
}

/// Turns a kernel's raw sums (CONTRACT.md) into exact accumulators: removes the zero point's
/// contribution (abits >= 2) or adds back the numerators of padded taps (abits 1, whose pad
/// code 0 stands for -1 instead of 0).
pub(crate) fn correct(
    s: &ConvShape,
    inq: &QParams,
    aux: &[u8],
    acc: &mut [i32],
    y0: usize,
    y1: usize,
) {
    if s.abits != 1 {
        if inq.zp == 0 {
            return;
        }
        // `aux` holds `zp * wsum[o]`; the arena keeps it aligned, so this is a vector loop.
        match aux
            .get(..s.cout * 4)
            .map(bytemuck::try_cast_slice::<u8, i32>)
        {
            Some(Ok(zw)) => {
                for px in acc.chunks_exact_mut(s.cout) {
                    for (a, &z) in px.iter_mut().zip(zw) {
                        *a = a.wrapping_sub(z);
                    }
                }
            }
            _ => {
                for px in acc.chunks_exact_mut(s.cout) {
                    for (o, a) in px.iter_mut().enumerate() {
                        *a = a.wrapping_sub(i32_at(aux, o));
                    }
                }
            }
        }
        return;
    }
    let (h, w) = (s.h(), s.w());
    for oy in y0..y1 {
        let ty = oy * s.sh;
        let row_inside = ty >= s.ph && ty + s.kh <= s.ph + h;
        for ox in 0..s.ow {
            let tx = ox * s.sw;
            if row_inside && tx >= s.pw && tx + s.kw <= s.pw + w {
                continue;
            }
            let base = ((oy - y0) * s.ow + ox) * s.cout;
            let Some(px) = acc.get_mut(base..base + s.cout) else {
                return;
            };
            for ky in 0..s.kh {
                let iy = ty + ky;
                let ypad = iy < s.ph || iy >= s.ph + h;
                for kx in 0..s.kw {
                    let ix = tx + kx;
                    if ypad || ix < s.pw || ix >= s.pw + w {
                        for (o, a) in px.iter_mut().enumerate() {
                            *a = a.wrapping_add(i32_at(aux, (o * s.kh + ky) * s.kw + kx));
                        }
                    }
                }
            }
        }
    }
}

/// Stage 1 and stage 2 on exact accumulators of rows `y0..y1`, into the output codes.
#[allow(clippy::too_many_arguments)]
fn requant_rows(
    ops: &RowOps,
    conv: &Conv<'_>,
    s: &ConvShape,
    outq: &QParams,
    acc: &[i32],
    y0: usize,
    y1: usize,
    out: &mut [u8],
) {
    let row = s.ow * s.cout;
    let Some(dst) = out.get_mut(y0 * row..y1 * row) else {
        return;
    };
    let rq = &conv.requant;
    (ops.requant)(&rq.raw, rq.affine.as_ref(), outq, s.cout, acc, dst);
}
