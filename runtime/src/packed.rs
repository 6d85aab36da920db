//! The packed engine: integer codes between layers. The conv driver (padding or bit packing,
//! the kernel over row ranges, zero-point and border corrections, requantization) and the
//! layer loop; the other layers are `layers`' and the kernels `kernels`'.

use slb_format::{Conv, Layer, Model, Site};

use crate::arena::{layer_io, range, LayerIo, TensorSlot, ALIGN};
use crate::kernels::{self, portable, reference, ConvShape, KernelKind, RowOps, Run};
use crate::layers::{dense, f32_map, flatten, gap, pool};
use crate::plan::{conv_shape, staged_input_bytes, LayerPlan, Plan};
use crate::quant::{self, QParams, Steps};
use crate::{Error, LayerEvent, Result};

/// The driver's tables: `zp * wsum[o]` (abits >= 2, `zp` the input's zero point) or, for
/// the border correction of 1-bit activations, `B[r][c][o]`: per border class (row class
/// `r`, column class `c`, [`ConvShape::border_classes`]) the sum of the numerators of the
/// window's taps in the padding, so that a border pixel's correction is one run over the
/// channels; then, where the plan made room for it (a step requantization into `outq`,
/// `quant::step_count`), the thresholds of `quant::step_thresholds` laid out as
/// [`quant::Steps`] ([`steps`]). Empty `aux` (float/reference) is left alone.
pub(crate) fn prepare_aux(
    conv: &Conv<'_>,
    s: &ConvShape,
    zp: i32,
    outq: Option<&QParams>,
    aux: &mut [u8],
) {
    let Some(corr) = s.correction_len().filter(|_| !aux.is_empty()) else {
        return;
    };
    if let (Some(q), Some(t)) = (outq, aux.get_mut(corr..)) {
        prepare_steps(conv, s, q, t);
    }
    let reader = slb_format::CodeReader::new(conv);
    let per_tap = s.abits == 1;
    if per_tap {
        if let Some(b) = aux.get_mut(..corr) {
            b.fill(0);
        }
    }
    let (_, cols) = s.border_classes();
    for o in 0..s.cout {
        let mut total = 0i32;
        for ky in 0..s.kh {
            for kx in 0..s.kw {
                let mut t = 0i32;
                for i in 0..s.cin_g {
                    t += reader.numerator(o, ky, kx, i);
                }
                if per_tap {
                    // Into every class whose windows have this tap in the padding.
                    for (r, (pt, pb)) in classes(s.row_runs()) {
                        let row_pad = ky < pt || ky + pb >= s.kh;
                        for (c, (qt, qb)) in classes(s.col_runs()) {
                            if row_pad || kx < qt || kx + qb >= s.kw {
                                let at = ((r * cols + c) * s.cout + o) * 4;
                                if let Some(d) = aux.get_mut(at..at + 4) {
                                    let v = i32_at(d, 0).wrapping_add(t);
                                    d.copy_from_slice(&v.to_le_bytes());
                                }
                            }
                        }
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

/// The step requantization's tables ([`quant::Steps`]) at the start of `aux`, if `outq` takes
/// one (`quant::step_count`).
fn prepare_steps(conv: &Conv<'_>, s: &ConvShape, outq: &QParams, aux: &mut [u8]) {
    let aff = conv.requant.affine.as_ref();
    let (Some(aff), Some(n)) = (aff, quant::step_count(aff, outq)) else {
        return;
    };
    let Some(t) = aux.get_mut(..s.cout * quant::step_bytes(n)) else {
        return;
    };
    let (thr, bd) = t.split_at_mut(s.cout * 4 * n);
    let (add, flip) = bd.split_at_mut(s.cout);
    let mut ts = [0i32; quant::MAX_STEPS];
    let ts = &mut ts[..n.min(quant::MAX_STEPS)];
    for (o, (a, f)) in add.iter_mut().zip(flip.iter_mut()).enumerate() {
        (*a, *f) = quant::step_thresholds(&conv.requant.raw, aff, outq, o, ts);
        for (j, v) in ts.iter().enumerate() {
            let at = (j * s.cout + o) * 4;
            if let Some(t) = thr.get_mut(at..at + 4) {
                t.copy_from_slice(&v.to_le_bytes());
            }
        }
    }
}

/// The distinct classes of a [`kernels::BorderRuns`] axis, each once: `(class, (before,
/// after))`.
fn classes(runs: kernels::BorderRuns) -> impl Iterator<Item = (usize, (usize, usize))> {
    let mut last = None;
    runs.filter_map(move |(_, c, pair)| {
        let new = last != Some(c);
        last = Some(c);
        new.then_some((c, pair))
    })
}

#[inline]
fn i32_at(b: &[u8], i: usize) -> i32 {
    match b.get(i * 4..i * 4 + 4) {
        Some(v) => i32::from_le_bytes([v[0], v[1], v[2], v[3]]),
        None => 0,
    }
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

pub(crate) fn run_packed(
    model: &Model<'_>,
    plan: &Plan,
    weights: &[u8],
    acts: &mut [u8],
    scratch: &mut [u8],
    image: &[u8],
    observer: &mut dyn FnMut(LayerEvent),
) -> Result<()> {
    let input = &plan.tensors[model.input.tensor as usize];
    let dst = acts
        .get_mut(range(input))
        .ok_or(Error::PlanMismatch { layer: Site::Model })?;
    load_input(model, input, dst, image);
    for (i, (layer, lp)) in model.layers.iter().zip(plan.layers.iter()).enumerate() {
        let li = i as u16;
        observer(LayerEvent::Start(li));
        let LayerIo {
            ta,
            tb,
            to,
            out,
            a,
            b,
        } = layer_io(&plan.tensors, &layer, acts)?;
        match &layer {
            Layer::Conv(conv) => {
                let s = conv_shape(conv, &plan.tensors).ok_or(Error::PlanMismatch {
                    layer: Site::Layer(li),
                })?;
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
                            layer: Site::Layer(li),
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
        observer(LayerEvent::End(li));
    }
    Ok(())
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
    let bad = Error::PlanMismatch {
        layer: Site::Layer(li),
    };
    let (inq, outq) = match (ta.q, to.q) {
        (Some(a), Some(b)) => (a, b),
        _ => return Err(bad),
    };
    let kind = lp.kernel.ok_or(bad)?;
    let aux = weights.get(lp.aux()).ok_or(bad)?;
    let w = weights.get(lp.w()).ok_or(bad)?;
    let scratch = scratch.get_mut(..lp.scratch as usize).ok_or(bad)?;
    let row = s.ow * s.cout;
    let sg = steps(s, &outq, conv, aux);
    if kind == KernelKind::Reference {
        return reference_layer(ops, conv, s, (&inq, &outq), x, scratch, out).ok_or(bad);
    }
    let k = kernels::by_kind(kind).ok_or(Error::KernelUnavailable {
        layer: li,
        kernel: kind.name(),
    })?;
    // In-place kernels read the packed codes where the model lies (flash), not the arena.
    let w = if k.reads_codes { conv.codes } else { w };
    let pad = if s.abits == 1 { 0 } else { inq.zp as u8 };
    let xin_len = staged_input_bytes(&k.run, s)?;
    let (xbuf, accbuf) = scratch
        .split_at_mut_checked(xin_len.div_ceil(ALIGN) * ALIGN)
        .ok_or(bad)?;
    let rows = (lp.rows as usize).max(1);
    let acc_all: &mut [i32] =
        bytemuck::try_cast_slice_mut(accbuf.get_mut(..rows * row * 4).ok_or(bad)?)
            .map_err(|_| bad)?;
    // Each chunk of rows corrected and requantized while its accumulators are in cache.
    let finish = |acc: &mut [i32], y0: usize, y1: usize| {
        correct(s, &inq, aux, acc, y0, y1);
        requant_rows(ops, conv, s, &outq, sg, acc, y0, y1, out);
    };
    match k.run {
        Run::Bytes(f) => {
            let xin: &[u8] = if xin_len == 0 {
                x
            } else {
                portable::pad_bytes(s, x, pad, &mut xbuf[..xin_len]);
                &xbuf[..xin_len]
            };
            by_rows(
                s.oh,
                rows,
                row,
                acc_all,
                |y0, y1, acc| f(s, xin, w, y0, y1, acc),
                finish,
            );
        }
        Run::Bits(f) => {
            let words: &mut [u64] =
                bytemuck::try_cast_slice_mut(&mut xbuf[..xin_len]).map_err(|_| bad)?;
            (ops.pack_bits)(s, x, pad, words);
            let words: &[u64] = words;
            by_rows(
                s.oh,
                rows,
                row,
                acc_all,
                |y0, y1, acc| f(s, words, w, y0, y1, acc),
                finish,
            );
        }
        Run::Tables(t) => {
            let tables: &mut [u16] =
                bytemuck::try_cast_slice_mut(&mut xbuf[..xin_len]).map_err(|_| bad)?;
            (t.build)(s, x, pad, tables);
            let tables: &[u16] = tables;
            by_rows(
                s.oh,
                rows,
                row,
                acc_all,
                |y0, y1, acc| (t.run)(s, tables, w, y0, y1, acc),
                finish,
            );
        }
    }
    Ok(())
}

/// A conv by the reference kernel: every row's accumulators at once in `scratch`, then
/// requantized (`None`: the scratch is too small or misaligned for them).
fn reference_layer(
    ops: &RowOps,
    conv: &Conv<'_>,
    s: &ConvShape,
    (inq, outq): (&QParams, &QParams),
    x: &[u8],
    scratch: &mut [u8],
    out: &mut [u8],
) -> Option<()> {
    let acc = scratch
        .get_mut(..s.oh * s.ow * s.cout * 4)
        .and_then(|b| bytemuck::try_cast_slice_mut(b).ok())?;
    reference::conv_acc(conv, s, inq, x, acc);
    requant_rows(ops, conv, s, outq, None, acc, 0, s.oh, out);
    Some(())
}

/// Runs `kernel` over the `oh` output rows in chunks of `rows` (`row` accumulators each, in
/// `acc_all`), handing each chunk's accumulators to `finish` before the next.
fn by_rows(
    oh: usize,
    rows: usize,
    row: usize,
    acc_all: &mut [i32],
    mut kernel: impl FnMut(usize, usize, &mut [i32]),
    mut finish: impl FnMut(&mut [i32], usize, usize),
) {
    let mut y0 = 0;
    while y0 < oh {
        let y1 = (y0 + rows).min(oh);
        let acc = &mut acc_all[..(y1 - y0) * row];
        kernel(y0, y1, acc);
        finish(acc, y0, y1);
        y0 = y1;
    }
}

/// Turns a kernel's raw sums (CONTRACT.md) into exact accumulators: removes the zero point's
/// contribution (abits >= 2) or adds back the numerators of padded taps (abits 1, whose pad
/// code 0 stands for -1 instead of 0), one table row per border pixel (its class's).
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
    // `B[r][c][..]` as `i32`s (the arena keeps `aux` aligned), else read byte-wise.
    let cols = s.col_classes();
    let table = aux
        .get(..aux.len() / 4 * 4)
        .and_then(|b| bytemuck::try_cast_slice::<u8, i32>(b).ok());
    for (oy, r, (pt, pb)) in s.row_runs().skip(y0).take(y1.saturating_sub(y0)) {
        let row_pad = pt + pb > 0;
        for (ox, c, (qt, qb)) in s.col_runs() {
            if !row_pad && qt + qb == 0 {
                continue;
            }
            let base = ((oy - y0) * s.ow + ox) * s.cout;
            let Some(px) = acc.get_mut(base..base + s.cout) else {
                return;
            };
            let at = (r * cols + c) * s.cout;
            match table.and_then(|t| t.get(at..at + s.cout)) {
                Some(t) => {
                    for (a, &v) in px.iter_mut().zip(t) {
                        *a = a.wrapping_add(v);
                    }
                }
                None => {
                    for (o, a) in px.iter_mut().enumerate() {
                        *a = a.wrapping_add(i32_at(aux, at + o));
                    }
                }
            }
        }
    }
}

/// The step requantization in `aux` ([`prepare_aux`]), if the plan made room for it (and the
/// arena keeps it aligned, as it does).
fn steps<'a>(s: &ConvShape, outq: &QParams, conv: &Conv<'_>, aux: &'a [u8]) -> Option<Steps<'a>> {
    let n = quant::step_count(conv.requant.affine.as_ref(), outq)?;
    let at = s.correction_len()?;
    let t = aux.get(at..at + s.cout * quant::step_bytes(n))?;
    let (thr, bd) = t.split_at(s.cout * 4 * n);
    let (add, flip) = bd.split_at(s.cout);
    Some(Steps {
        n,
        thr: bytemuck::try_cast_slice(thr).ok()?,
        add,
        flip,
    })
}

/// Stage 1 and stage 2 on exact accumulators of rows `y0..y1`, into the output codes: by the
/// thresholds `steps` where the plan prepared them, else through `ops.requant`.
#[allow(clippy::too_many_arguments)]
fn requant_rows(
    ops: &RowOps,
    conv: &Conv<'_>,
    s: &ConvShape,
    outq: &QParams,
    steps: Option<Steps<'_>>,
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
    match steps {
        Some(st) => (ops.step_rows)(&st, acc, dst),
        None => (ops.requant)(&rq.raw, rq.affine.as_ref(), outq, s.cout, acc, dst),
    }
}
