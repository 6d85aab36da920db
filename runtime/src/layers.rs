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

/// Max / average pooling on codes (`q` given) or f32 values (`q == None`). Average pooling
/// counts the padding's taps (as the zero point's code, or 0.0); max pooling only the image's.
pub(crate) fn pool(
    p: &Pool,
    ta: &TensorSlot,
    to: &TensorSlot,
    q: Option<QParams>,
    a: &[u8],
    out: &mut [u8],
    max: bool,
) {
    let win = Windows::new(p, ta);
    let c = win.c;
    let (oh, ow) = (to.shape.h as usize, to.shape.w as usize);
    for oy in 0..oh {
        for ox in 0..ow {
            for ch in 0..c {
                let taps = win.taps(oy, ox, ch);
                let o = (oy * ow + ox) * c + ch;
                match q {
                    Some(q) => {
                        if let Some(d) = out.get_mut(o) {
                            *d = pool_code(taps, a, q.zp as u8, win.n, max);
                        }
                    }
                    None => {
                        if let Some(d) = out.get_mut(4 * o..4 * o + 4) {
                            d.copy_from_slice(&pool_f32(taps, a, win.n, max).to_le_bytes());
                        }
                    }
                }
            }
        }
    }
}

/// A pooling layer's windows over its HWC input.
struct Windows {
    c: usize,
    h: usize,
    w: usize,
    k: [usize; 2],
    stride: [usize; 2],
    pad: [isize; 2],
    /// Taps per window.
    n: i64,
}

impl Windows {
    fn new(p: &Pool, ta: &TensorSlot) -> Windows {
        let (kh, kw) = (p.kernel[0] as usize, p.kernel[1] as usize);
        Windows {
            c: ta.shape.c as usize,
            h: ta.shape.h as usize,
            w: ta.shape.w as usize,
            k: [kh, kw],
            stride: [p.stride[0] as usize, p.stride[1] as usize],
            pad: [p.padding[0] as isize, p.padding[1] as isize],
            n: (kh * kw) as i64,
        }
    }

    /// The element index of each tap of output pixel `(oy, ox)`'s window at channel `ch`, row
    /// by row; `None` for a tap in the padding.
    fn taps(&self, oy: usize, ox: usize, ch: usize) -> impl Iterator<Item = Option<usize>> + '_ {
        (0..self.k[0]).flat_map(move |ky| {
            (0..self.k[1]).map(move |kx| {
                let iy = (oy * self.stride[0] + ky) as isize - self.pad[0];
                let ix = (ox * self.stride[1] + kx) as isize - self.pad[1];
                let inside = iy >= 0 && ix >= 0 && (iy as usize) < self.h && (ix as usize) < self.w;
                inside.then(|| (iy as usize * self.w + ix as usize) * self.c + ch)
            })
        })
    }
}

/// One window of codes: the largest code inside the image (the zero point's if none is), or
/// the mean of all `n` taps, padding as `zp`, rounded half up.
fn pool_code(taps: impl Iterator<Item = Option<usize>>, a: &[u8], zp: u8, n: i64, max: bool) -> u8 {
    let mut best: Option<u8> = None;
    let mut sum = 0i64;
    for t in taps {
        let v = match t {
            Some(i) => {
                let v = a.get(i).copied().unwrap_or(0);
                best = Some(best.map_or(v, |b| b.max(v)));
                v
            }
            None => zp,
        };
        sum += i64::from(v);
    }
    if max {
        best.unwrap_or(zp)
    } else {
        // Round half up: floor((2*sum + n) / 2n) for sum >= 0.
        ((2 * sum + n) / (2 * n)) as u8
    }
}

/// One window of f32 values: the largest inside the image by `>` (so a NaN first stays; 0.0
/// if none is inside), or the mean of all `n` taps, padding as 0.0.
fn pool_f32(taps: impl Iterator<Item = Option<usize>>, a: &[u8], n: i64, max: bool) -> f32 {
    let mut best: Option<f32> = None;
    let mut sum = 0f32;
    for t in taps {
        let v = match t {
            Some(i) => {
                let v = a
                    .get(4 * i..4 * i + 4)
                    .map_or(0.0, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                best = Some(best.map_or(v, |b| if v > b { v } else { b }));
                v
            }
            None => 0.0,
        };
        sum += v;
    }
    if max {
        best.unwrap_or(0.0)
    } else {
        sum / n as f32
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use slb_format::Shape;

    fn slot(shape: Shape, q: Option<QParams>) -> TensorSlot {
        TensorSlot {
            offset: 0,
            bytes: 0,
            first: 0,
            last: 0,
            shape,
            q,
        }
    }

    /// The definition, one output element at a time: the window's values collected first
    /// (padding as `pad`), then their maximum over the image's taps or their mean.
    fn window_twin(
        x: &[f32],
        (c, h, w): (usize, usize, usize),
        p: &Pool,
        (oy, ox, ch): (usize, usize, usize),
        pad: f32,
    ) -> (Vec<f32>, Vec<f32>) {
        let (mut inside, mut all) = (vec![], vec![]);
        for ky in 0..p.kernel[0] as i64 {
            for kx in 0..p.kernel[1] as i64 {
                let iy = oy as i64 * i64::from(p.stride[0]) + ky - i64::from(p.padding[0]);
                let ix = ox as i64 * i64::from(p.stride[1]) + kx - i64::from(p.padding[1]);
                if (0..h as i64).contains(&iy) && (0..w as i64).contains(&ix) {
                    let v = x[(iy as usize * w + ix as usize) * c + ch];
                    inside.push(v);
                    all.push(v);
                } else {
                    all.push(pad);
                }
            }
        }
        (inside, all)
    }

    proptest! {
        /// `pool` on codes and on f32 values, max and average, against the definition.
        #[test]
        fn pool_matches_its_definition(
            c in 1usize..4, h in 1usize..7, w in 1usize..7, k in 1u16..4, st in 1u16..3,
            pad in 0u16..2, zp in 0i32..256, seed in any::<u64>(),
        ) {
            let p = Pool { input: 0, output: 1, kernel: [k, k], stride: [st, st], padding: [pad, pad] };
            let shape = Shape::new(c as u32, h as u32, w as u32);
            let Some(os) = p.output_shape(shape) else { return Ok(()) };
            let (oh, ow) = (os.h as usize, os.w as usize);
            let mut r = seed;
            let codes: Vec<u8> = (0..c * h * w)
                .map(|_| { r = r.wrapping_mul(6364136223846793005).wrapping_add(1); (r >> 56) as u8 })
                .collect();
            let reals: Vec<f32> = codes.iter().map(|&v| f32::from(v) / 7.0 - 9.0).collect();
            let q = QParams { scale: 0.1, zp, bits: 8 };
            let n = f64::from(k) * f64::from(k);
            for max in [true, false] {
                let mut out = vec![0u8; c * oh * ow];
                pool(&p, &slot(shape, Some(q)), &slot(os, Some(q)), Some(q), &codes, &mut out, max);
                let xs: Vec<f32> = codes.iter().map(|&v| f32::from(v)).collect();
                let mut outf = vec![0u8; 4 * c * oh * ow];
                let bytes: Vec<u8> = reals.iter().flat_map(|v| v.to_le_bytes()).collect();
                pool(&p, &slot(shape, None), &slot(os, None), None, &bytes, &mut outf, max);
                for oy in 0..oh {
                    for ox in 0..ow {
                        for ch in 0..c {
                            let o = (oy * ow + ox) * c + ch;
                            let (inside, all) = window_twin(&xs, (c, h, w), &p, (oy, ox, ch), zp as u8 as f32);
                            let want = if max {
                                inside.iter().fold(None, |b: Option<f32>, &v| Some(b.map_or(v, |b| b.max(v)))).unwrap_or(zp as u8 as f32)
                            } else {
                                (all.iter().map(|&v| f64::from(v)).sum::<f64>() / n + 0.5).floor() as f32
                            };
                            prop_assert_eq!(f32::from(out[o]), want, "codes max {} at {:?}", max, (oy, ox, ch));
                            let (inside, all) = window_twin(&reals, (c, h, w), &p, (oy, ox, ch), 0.0);
                            let want = if max {
                                inside.iter().fold(None, |b: Option<f32>, &v| Some(b.map_or(v, |b| b.max(v)))).unwrap_or(0.0)
                            } else {
                                all.iter().sum::<f32>() / n as f32
                            };
                            let got = f32::from_le_bytes(outf[4 * o..4 * o + 4].try_into().unwrap());
                            prop_assert_eq!(got, want, "f32 max {} at {:?}", max, (oy, ox, ch));
                        }
                    }
                }
            }
        }
    }
}
