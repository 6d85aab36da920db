//! The layers other than convolutions, shared by the packed and the float engine: dense,
//! max / average / global average pooling, flatten and elementwise maps over `f32` tensors.

use slb_format::{DenseWeights, Pool};

use crate::arena::TensorSlot;
use crate::quant::QParams;
use crate::Result;

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
