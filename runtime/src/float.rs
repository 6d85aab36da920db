//! The float engine: the same graph with `f32` tensors and dequantized `f32` weights. Tensors
//! the model quantizes are fake-quantized (each value replaced by the real value of its code),
//! so the float engine is the in-house comparison point for both speed and fidelity.

use slb_format::{Conv, Layer, Model, Site};

use crate::arena::{layer_io, range, LayerIo, TensorSlot};
use crate::kernels::{ConvShape, KernelKind};
use crate::layers::{dense, f32_map, flatten, gap, pool};
use crate::plan::{LayerPlan, Plan};
use crate::quant::{self, libm_floor, QParams};
use crate::{Error, LayerEvent, Result};

/// Dequantized weights, layout `w[g][ky][kx][i][o_in_group]` (output channel innermost so the
/// direct convolution is a row of axpys), `w = (2k - (2^b - 1)) / (2^b - 1)`.
pub(crate) fn prepare_conv(conv: &Conv<'_>, s: &ConvShape, out: &mut [u8]) -> Result<()> {
    let w: &mut [f32] = bytemuck::try_cast_slice_mut(out).map_err(|_| Error::Unsupported {
        layer: Site::Model,
        what: "arena alignment",
    })?;
    let reader = slb_format::CodeReader::new(conv);
    let den = ((1i32 << s.wbits) - 1) as f32;
    for o in 0..s.cout {
        let (g, og) = (o / s.cout_g, o % s.cout_g);
        for ky in 0..s.kh {
            for kx in 0..s.kw {
                for i in 0..s.cin_g {
                    let at = ((((g * s.kh + ky) * s.kw + kx) * s.cin_g + i) * s.cout_g) + og;
                    if let Some(d) = w.get_mut(at) {
                        *d = reader.numerator(o, ky, kx, i) as f32 / den;
                    }
                }
            }
        }
    }
    Ok(())
}

fn f32s(b: &[u8]) -> Result<&[f32]> {
    bytemuck::try_cast_slice(b).map_err(|_| Error::Unsupported {
        layer: Site::Model,
        what: "arena alignment",
    })
}

fn f32s_mut(b: &mut [u8]) -> Result<&mut [f32]> {
    bytemuck::try_cast_slice_mut(b).map_err(|_| Error::Unsupported {
        layer: Site::Model,
        what: "arena alignment",
    })
}

/// Runs the float conv with the kernel `kind` (falls back to portable if it is unavailable).
pub(crate) fn conv_f32_with(
    kind: KernelKind,
    s: &ConvShape,
    x: &[f32],
    w: &[f32],
    out: &mut [f32],
) {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    if kind == KernelKind::FloatAvx2 && std::is_x86_feature_detected!("avx2") {
        // SAFETY: `conv_f32_avx2` only requires the CPU to support AVX2, checked just above;
        // its body is the safe portable loop nest.
        unsafe { conv_f32_avx2(s, x, w, out) };
        return;
    }
    let _ = kind;
    conv_f32(s, x, w, out)
}

/// [`conv_f32`] compiled with AVX2 enabled (LLVM vectorizes the same loops 8 wide).
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
#[target_feature(enable = "avx2")]
unsafe fn conv_f32_avx2(s: &ConvShape, x: &[f32], w: &[f32], out: &mut [f32]) {
    debug_assert!(std::is_x86_feature_detected!("avx2"));
    conv_f32_body(s, x, w, out)
}

/// Direct f32 convolution with prepared weights: `out[(oy*ow+ox)*cout + o] = sum w * x`,
/// padded taps skipped (they hold real 0).
pub(crate) fn conv_f32(s: &ConvShape, x: &[f32], w: &[f32], out: &mut [f32]) {
    conv_f32_body(s, x, w, out)
}

#[inline(always)]
fn conv_f32_body(s: &ConvShape, x: &[f32], w: &[f32], out: &mut [f32]) {
    let (h, wd) = (s.h(), s.w());
    for oy in 0..s.oh {
        for ox in 0..s.ow {
            let base = (oy * s.ow + ox) * s.cout;
            let Some(px) = out.get_mut(base..base + s.cout) else {
                return;
            };
            px.fill(0.0);
            for g in 0..s.groups {
                let acc = &mut px[g * s.cout_g..(g + 1) * s.cout_g];
                for ky in 0..s.kh {
                    let iy = (oy * s.sh + ky) as isize - s.ph as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    for kx in 0..s.kw {
                        let ix = (ox * s.sw + kx) as isize - s.pw as isize;
                        if ix < 0 || ix >= wd as isize {
                            continue;
                        }
                        let xo = (iy as usize * wd + ix as usize) * s.c + g * s.cin_g;
                        let wt = ((g * s.kh + ky) * s.kw + kx) * s.cin_g * s.cout_g;
                        // Four input channels per pass over the accumulators.
                        let n = s.cout_g;
                        let mut i = 0;
                        while i + 4 <= s.cin_g {
                            let (x0, x1, x2, x3) =
                                (x[xo + i], x[xo + i + 1], x[xo + i + 2], x[xo + i + 3]);
                            let wb = &w[wt + i * n..wt + (i + 4) * n];
                            let (w0, rest) = wb.split_at(n);
                            let (w1, rest) = rest.split_at(n);
                            let (w2, w3) = rest.split_at(n);
                            for ((((a, &a0), &a1), &a2), &a3) in
                                acc.iter_mut().zip(w0).zip(w1).zip(w2).zip(w3)
                            {
                                *a += a0 * x0 + a1 * x1 + a2 * x2 + a3 * x3;
                            }
                            i += 4;
                        }
                        while i < s.cin_g {
                            let xv = x[xo + i];
                            let wrow = &w[wt + i * n..wt + (i + 1) * n];
                            for (a, &wv) in acc.iter_mut().zip(wrow) {
                                *a += wv * xv;
                            }
                            i += 1;
                        }
                    }
                }
            }
        }
    }
}

/// Fake-quantizes f32 values in place to `q`'s grid (`relu` clamps at the zero point).
fn fake_quant(v: &mut [f32], q: &QParams) {
    for x in v {
        *x = q.real(q.quantize(*x, false));
    }
}

pub(crate) fn run_float(
    model: &Model<'_>,
    plan: &Plan,
    weights: &[u8],
    acts: &mut [u8],
    image: &[u8],
    observer: &mut dyn FnMut(LayerEvent),
) -> Result<()> {
    let bad = Error::PlanMismatch { layer: Site::Model };
    let input = &plan.tensors[model.input.tensor as usize];
    {
        let dst = f32s_mut(acts.get_mut(range(input)).ok_or(bad)?)?;
        let c = model.input.shape.c as usize;
        for (i, (d, &v)) in dst.iter_mut().zip(image).enumerate() {
            let ch = i % c;
            *d = match input.q {
                Some(q) => q.real(
                    model
                        .input
                        .lut
                        .get(ch * 256 + v as usize)
                        .copied()
                        .unwrap_or(0),
                ),
                None => {
                    let m = model.input.mean.get(ch).unwrap_or(0.0);
                    let sd = model.input.std.get(ch).unwrap_or(1.0);
                    (v as f32 / 255.0 - m) / sd
                }
            };
        }
    }
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
            Layer::Conv(conv) => conv_layer(
                li,
                conv,
                plan,
                lp,
                &ta,
                &to,
                f32s(a)?,
                f32s_mut(out)?,
                weights,
            )?,
            Layer::Dense(d) => dense(&d.weights, d.bias, &ta, a, out, true)?,
            Layer::MaxPool(p) => pool(p, &ta, &to, None, a, out, true),
            Layer::AvgPool(p) => {
                pool(p, &ta, &to, None, a, out, false);
                if let Some(q) = to.q {
                    fake_quant(f32s_mut(out)?, &q);
                }
            }
            Layer::GlobalAvgPool(_) => {
                gap(&ta, None, None, a, out);
                if let Some(q) = to.q {
                    fake_quant(f32s_mut(out)?, &q);
                }
            }
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
                let (fa, fb, fo) = (f32s(a)?, f32s(b)?, f32s_mut(out)?);
                let c = ta.shape.c as usize;
                let p = &add.params;
                let scale = 1.0 / (1u64 << p.shift.clamp(1, 62)) as f64;
                for (k, o) in fo.iter_mut().enumerate() {
                    let ch = k % c;
                    let ma = f64::from(p.mult_a.get(ch).unwrap_or(0));
                    let mb = f64::from(p.mult_b.get(ch).unwrap_or(0));
                    let bias = f64::from(p.bias.get(ch).unwrap_or(0));
                    let v = (f64::from(fa[k] / qa.scale) * ma
                        + f64::from(fb[k] / qb.scale) * mb
                        + bias)
                        * scale;
                    *o = qo.real(round_code(v, &qo, p.relu));
                }
            }
            Layer::Relu(_) => f32_map(a, out, |x| if x > 0.0 { x } else { 0.0 }),
            Layer::Flatten(_) => flatten(&ta, a, out),
        }
        observer(LayerEvent::End(li));
    }
    Ok(())
}

/// `zp + round_half_up(v)` clamped (sign for 1 bit), `v` in code units relative to the zero
/// point.
fn round_code(v: f64, q: &QParams, relu: bool) -> u8 {
    let r = libm_floor((v + 0.5) as f32);
    let r = if r.is_nan() {
        0
    } else {
        r.clamp(-1e9, 1e9) as i64
    };
    q.clamp_code(r, relu)
}

#[allow(clippy::too_many_arguments)]
fn conv_layer(
    li: u16,
    conv: &Conv<'_>,
    plan: &Plan,
    lp: &LayerPlan,
    ta: &TensorSlot,
    to: &TensorSlot,
    x: &[f32],
    out: &mut [f32],
    weights: &[u8],
) -> Result<()> {
    let bad = Error::PlanMismatch {
        layer: Site::Layer(li),
    };
    let s = crate::plan::conv_shape(conv, &plan.tensors).ok_or(bad)?;
    let outq = to.q.ok_or(bad)?;
    let _ = ta;
    let w = f32s(weights.get(lp.w()).ok_or(bad)?)?;
    conv_f32_with(lp.kernel.unwrap_or(KernelKind::Float), &s, x, w, out);
    // Stage 1: the raw fake-quant; stage 2: BatchNorm/ReLU/next quantizer, in float.
    let raw = &conv.requant.raw;
    let rq = QParams {
        scale: raw.scale,
        zp: raw.zero_point,
        bits: raw.bits,
    };
    match &conv.requant.affine {
        None => fake_quant(out, &rq),
        Some(aff) => {
            let scale = 1.0 / (1u64 << aff.shift.clamp(1, 62)) as f64;
            for px in out.chunks_exact_mut(s.cout) {
                for (o, v) in px.iter_mut().enumerate() {
                    let qr = rq.quantize(*v, false);
                    let p = quant::affine_at(aff, o);
                    let y =
                        (f64::from(rq.centred(qr)) * f64::from(p.mult) + f64::from(p.bias)) * scale;
                    *v = outq.real(round_code(y, &outq, aff.relu));
                }
            }
        }
    }
    Ok(())
}
