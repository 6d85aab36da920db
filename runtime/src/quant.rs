//! The integer requantization arithmetic of the format (`RawQuant`, `ChannelAffine`,
//! `AddParams`), shared by every conv kernel and the non-conv layers.

use slb_format::{AddParams, ChannelAffine, DType, RawQuant};

/// `(v + 2^(s-1)) >> s` on 64 bits (round half up); `s` is 1..=62 in a parsed model.
#[inline]
pub(crate) fn round_shift(v: i64, s: u8) -> i64 {
    let s = u32::from(s.clamp(1, 62));
    v.wrapping_add(1i64 << (s - 1)) >> s
}

/// Parameters of a quantized tensor, flattened.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct QParams {
    pub scale: f32,
    pub zp: i32,
    pub bits: u8,
}

impl QParams {
    /// `None` for F32 tensors.
    pub fn of(d: &DType) -> Option<QParams> {
        match *d {
            DType::Quant {
                scale,
                zero_point,
                bits,
            } => Some(QParams {
                scale,
                zp: zero_point,
                bits,
            }),
            DType::F32 => None,
        }
    }

    /// Largest code.
    pub fn qmax(&self) -> i32 {
        (1i32 << self.bits.min(8)) - 1
    }

    /// The centred integer a code stands for: `q - zp`, or `2q - 1` for a 1-bit sign.
    #[inline]
    pub fn centred(&self, q: u8) -> i32 {
        if self.bits == 1 {
            2 * i32::from(q) - 1
        } else {
            i32::from(q) - self.zp
        }
    }

    /// Real value of a code.
    #[inline]
    pub fn real(&self, q: u8) -> f32 {
        self.scale * self.centred(q) as f32
    }

    /// Code of `zp + r` (`r` already rounded) clamped to `lo..=qmax`; for a 1-bit tensor the
    /// sign of `r` (1 for `r >= 0`).
    #[inline]
    pub fn clamp_code(&self, r: i64, relu: bool) -> u8 {
        if self.bits == 1 {
            return u8::from(r >= 0);
        }
        let lo = if relu { self.zp } else { 0 };
        let v = r.saturating_add(i64::from(self.zp));
        v.clamp(i64::from(lo), i64::from(self.qmax())) as u8
    }

    /// Quantizes a real value (float engine): `zp + round_half_up(x / scale)` clamped, or the
    /// sign for 1 bit. NaN maps to the zero point.
    #[inline]
    pub fn quantize(&self, x: f32, relu: bool) -> u8 {
        let r = libm_floor(x / self.scale + 0.5);
        let r = if r.is_nan() {
            0
        } else {
            r.clamp(-1e9, 1e9) as i64
        };
        self.clamp_code(r, relu)
    }
}

/// `floor` without `std` (f32 has no inherent floor in `core` before 1.85's `core::f32::math`).
#[inline]
pub(crate) fn libm_floor(x: f32) -> f32 {
    if !x.is_finite() || x.abs() >= 8_388_608.0 {
        return x;
    }
    let t = x as i32 as f32;
    if t > x {
        t - 1.0
    } else {
        t
    }
}

/// Stage 1: the raw code of an exact accumulator (reference; the driver runs [`requant`]).
#[cfg(test)]
#[inline]
pub(crate) fn stage1(acc: i32, raw: &RawQuant) -> i32 {
    let r = round_shift(i64::from(acc) * i64::from(raw.mult), raw.shift);
    let qmax = (1i64 << raw.bits.min(8)) - 1;
    r.saturating_add(i64::from(raw.zero_point)).clamp(0, qmax) as i32
}

/// Per-channel stage-2 parameters, read once per layer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Affine {
    pub mult: i32,
    pub bias: i32,
}

/// The affine of channel `c` (zeros if absent: a parsed model always has them).
#[inline]
pub(crate) fn affine_at(a: &ChannelAffine<'_>, c: usize) -> Affine {
    Affine {
        mult: a.mult.get(c).unwrap_or(0),
        bias: a.bias.get(c).unwrap_or(0),
    }
}

/// Stage 2 on one raw code: output code (reference; the driver runs [`requant`]).
#[cfg(test)]
#[inline]
pub(crate) fn stage2(
    q_raw: i32,
    zp_raw: i32,
    p: Affine,
    shift: u8,
    relu: bool,
    out: &QParams,
) -> u8 {
    let v = i64::from(q_raw - zp_raw) * i64::from(p.mult) + i64::from(p.bias);
    out.clamp_code(round_shift(v, shift), relu)
}

/// The residual add of two HWC code tensors with `c` channels into `out`: [`add_code`] on
/// every element, bit-identical to that element-wise loop (`add_rows_matches_add_code`), but
/// with the per-channel parameters decoded once per block of channels, no division for the
/// channel index, and the arithmetic folded into `v = qa * A[c] + qb * B[c] + C[c]` (the
/// centring `q - zp` or `2q - 1` moved into the constants; every term stays below 2^42, so
/// nothing wraps) and branch-free clamps, so that LLVM vectorises it (compiled once more with
/// AVX2 by `kernels::x86` where the CPU has it: the planner picks the variant, `kernels::RowOps`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn add_rows(
    a: &[u8],
    b: &[u8],
    qa: &QParams,
    qb: &QParams,
    p: &AddParams<'_>,
    qo: &QParams,
    c: usize,
    out: &mut [u8],
) {
    if cfg!(target_arch = "arm") && add_rows_m4(a, b, qa, qb, p, qo, c, out) {
        return;
    }
    let n = out.len().min(a.len()).min(b.len());
    if c == 0 {
        return;
    }
    // centred(q) = s * q + o.
    let lin = |q: &QParams| -> (i64, i64) {
        if q.bits == 1 {
            (2, -1)
        } else {
            (1, -i64::from(q.zp))
        }
    };
    let ((sa, oa), (sb, ob)) = (lin(qa), lin(qb));
    let shift = u32::from(p.shift.clamp(1, 62));
    let half = 1i64 << (shift - 1);
    let sign = qo.bits == 1;
    let zp = i64::from(qo.zp);
    let lo = if p.relu { zp } else { 0 };
    let hi = i64::from(qo.qmax());
    let mut ka = [0i64; RQ_BLOCK];
    let mut kb = [0i64; RQ_BLOCK];
    let mut kc = [0i64; RQ_BLOCK];
    let mut c0 = 0;
    while c0 < c {
        let nb = (c - c0).min(RQ_BLOCK);
        for j in 0..nb {
            let ma = i64::from(p.mult_a.get(c0 + j).unwrap_or(0));
            let mb = i64::from(p.mult_b.get(c0 + j).unwrap_or(0));
            ka[j] = sa * ma;
            kb[j] = sb * mb;
            kc[j] = oa * ma + ob * mb + i64::from(p.bias.get(c0 + j).unwrap_or(0)) + half;
        }
        let (ka, kb, kc) = (&ka[..nb], &kb[..nb], &kc[..nb]);
        let mut px = c0;
        while px + nb <= n {
            let (ra, rb) = (&a[px..px + nb], &b[px..px + nb]);
            let o = &mut out[px..px + nb];
            if sign {
                for j in 0..nb {
                    let v = i64::from(ra[j]) * ka[j] + i64::from(rb[j]) * kb[j] + kc[j];
                    o[j] = u8::from(v >> shift >= 0);
                }
            } else {
                for j in 0..nb {
                    let v = i64::from(ra[j]) * ka[j] + i64::from(rb[j]) * kb[j] + kc[j];
                    o[j] = ((v >> shift) + zp).clamp(lo, hi) as u8;
                }
            }
            px += c;
        }
        c0 += nb;
    }
}

/// [`add_rows`] in 32-bit arithmetic where that is exact, when the per-channel factors fit
/// i32 (the Cortex-M4, where [`add_rows`] calls it): the sum `qa * A[c] + qb * B[c] + C[c]` is
/// two multiply-accumulates into an i64 holding `C[c]`, shifted by [`shr_sat`] with the
/// shift's range known per call. Returns `false`, writing nothing, when a factor does not fit;
/// `true` when it wrote the same codes as [`add_rows`] (proptest `add_rows_matches_add_code`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn add_rows_m4(
    a: &[u8],
    b: &[u8],
    qa: &QParams,
    qb: &QParams,
    p: &AddParams<'_>,
    qo: &QParams,
    c: usize,
    out: &mut [u8],
) -> bool {
    let fits = |m: Option<i32>| i32::try_from(2 * i64::from(m.unwrap_or(0))).is_ok();
    if !(0..c).all(|j| fits(p.mult_a.get(j)) && fits(p.mult_b.get(j))) {
        return false;
    }
    if p.shift.clamp(1, 62) >= 32 {
        add_rows32::<true>(a, b, qa, qb, p, qo, c, out);
    } else {
        add_rows32::<false>(a, b, qa, qb, p, qo, c, out);
    }
    true
}

/// [`add_rows_m4`] with the shift's range fixed (`BIG`: `>= 32`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn add_rows32<const BIG: bool>(
    a: &[u8],
    b: &[u8],
    qa: &QParams,
    qb: &QParams,
    p: &AddParams<'_>,
    qo: &QParams,
    c: usize,
    out: &mut [u8],
) {
    let lin = |q: &QParams| -> (i64, i64) {
        if q.bits == 1 {
            (2, -1)
        } else {
            (1, -i64::from(q.zp))
        }
    };
    let ((sa, oa), (sb, ob)) = (lin(qa), lin(qb));
    let n = out.len().min(a.len()).min(b.len());
    let shift = u32::from(p.shift.clamp(1, 62));
    let half = 1i64 << (shift - 1);
    let sign = qo.bits == 1;
    let zp = qo.zp;
    let lo = if p.relu { zp } else { 0 };
    let hi = qo.qmax();
    let mut ka = [0i32; RQ_BLOCK];
    let mut kb = [0i32; RQ_BLOCK];
    let mut kc = [0i64; RQ_BLOCK];
    let mut c0 = 0;
    while c0 < c {
        let nb = (c - c0).min(RQ_BLOCK);
        for j in 0..nb {
            let ma = i64::from(p.mult_a.get(c0 + j).unwrap_or(0));
            let mb = i64::from(p.mult_b.get(c0 + j).unwrap_or(0));
            // |2 * m| fits i32 (checked by the caller).
            ka[j] = (sa * ma) as i32;
            kb[j] = (sb * mb) as i32;
            kc[j] = oa * ma + ob * mb + i64::from(p.bias.get(c0 + j).unwrap_or(0)) + half;
        }
        let (ka, kb, kc) = (&ka[..nb], &kb[..nb], &kc[..nb]);
        let sum = |qa: u8, qb: u8, j: usize| -> i64 {
            i64::from(i32::from(qa)) * i64::from(ka[j])
                + i64::from(i32::from(qb)) * i64::from(kb[j])
                + kc[j]
        };
        let mut px = c0;
        while px + nb <= n {
            let (ra, rb) = (&a[px..px + nb], &b[px..px + nb]);
            let o = &mut out[px..px + nb];
            if sign {
                // The sign of `v >> shift` is the sign of `v`.
                for j in 0..nb {
                    o[j] = u8::from(sum(ra[j], rb[j], j) >= 0);
                }
            } else {
                for j in 0..nb {
                    o[j] = shr_sat::<BIG>(sum(ra[j], rb[j], j), shift)
                        .saturating_add(zp)
                        .max(lo)
                        .min(hi) as u8;
                }
            }
            px += c;
        }
        c0 += nb;
    }
}

/// The residual add of one element of channel `c`, on centred inputs (the reference twin of
/// [`add_rows`]).
#[cfg_attr(not(test), allow(dead_code))]
#[inline]
pub(crate) fn add_code(ca: i32, cb: i32, p: &AddParams<'_>, c: usize, out: &QParams) -> u8 {
    let ma = i64::from(p.mult_a.get(c).unwrap_or(0));
    let mb = i64::from(p.mult_b.get(c).unwrap_or(0));
    let b = i64::from(p.bias.get(c).unwrap_or(0));
    let v = i64::from(ca) * ma + i64::from(cb) * mb + b;
    out.clamp_code(round_shift(v, p.shift), p.relu)
}

/// Stage 1 (and stage 2 when `aff` is set) over `acc` (HWC, `cout` channels per pixel) into
/// `dst`: the reference, one element at a time through [`stage1`] and [`stage2`]. The driver
/// runs [`requant`]; this is its twin for tests.
#[cfg(test)]
pub(crate) fn requant_ref(
    raw: &RawQuant,
    aff: Option<&ChannelAffine<'_>>,
    outq: &QParams,
    cout: usize,
    acc: &[i32],
    dst: &mut [u8],
) {
    match aff {
        None => {
            for (d, &a) in dst.iter_mut().zip(acc) {
                *d = stage1(a, raw) as u8;
            }
        }
        Some(aff) => {
            for (dpx, apx) in dst.chunks_exact_mut(cout).zip(acc.chunks_exact(cout)) {
                for (o, (d, &a)) in dpx.iter_mut().zip(apx).enumerate() {
                    let q = stage1(a, raw);
                    let p = affine_at(aff, o);
                    *d = stage2(q, raw.zero_point, p, aff.shift, aff.relu, outq);
                }
            }
        }
    }
}

/// Channels per block of hoisted stage-2 parameters in [`requant`].
const RQ_BLOCK: usize = 64;

/// [`requant_ref`] with the same result for every input, written so LLVM vectorises it: the
/// per-layer constants and a block of per-channel `mult`/`bias` are hoisted out of the element
/// loop, the clamps are branch-free and the sign / no-affine cases are separate loops. Value
/// ranges: `acc * mult` and `(q - zp) * mult[c] + bias[c]` are below `2^62 + 2^31` in
/// magnitude, so adding `2^(shift-1) <= 2^61` never wraps and the later `+ zp` never
/// saturates (the reference's `saturating_add` is a plain add here).
///
/// Compiled once more with AVX2 by `kernels::x86` where the CPU has it (the planner picks the
/// variant, `kernels::RowOps`).
#[inline(always)]
pub(crate) fn requant(
    raw: &RawQuant,
    aff: Option<&ChannelAffine<'_>>,
    outq: &QParams,
    cout: usize,
    acc: &[i32],
    dst: &mut [u8],
) {
    if cfg!(target_arch = "arm") {
        return requant_m4(raw, aff, outq, cout, acc, dst);
    }
    if lanes32_fit(raw, aff) {
        return requant_lanes32(raw, aff, outq, cout, acc, dst);
    }
    let s1 = u32::from(raw.shift.clamp(1, 62));
    let r1 = 1i64 << (s1 - 1);
    let m1 = i64::from(raw.mult);
    let zp1 = i64::from(raw.zero_point);
    let qmax1 = (1i64 << raw.bits.min(8)) - 1;
    let st1 = move |a: i32| -> i64 {
        ((i64::from(a) * m1).wrapping_add(r1) >> s1)
            .wrapping_add(zp1)
            .max(0)
            .min(qmax1)
    };
    let Some(aff) = aff else {
        for (d, &a) in dst.iter_mut().zip(acc) {
            *d = st1(a) as u8;
        }
        return;
    };
    if cout == 0 {
        return;
    }
    let zp_raw = raw.zero_point;
    let s2 = u32::from(aff.shift.clamp(1, 62));
    let r2 = 1i64 << (s2 - 1);
    let sign = outq.bits == 1;
    let zp2 = i64::from(outq.zp);
    let lo2 = if aff.relu { zp2 } else { 0 };
    let hi2 = i64::from(outq.qmax());
    let npx = (dst.len() / cout).min(acc.len() / cout);
    let mut mult = [0i32; RQ_BLOCK];
    let mut bias = [0i64; RQ_BLOCK];
    let mut c0 = 0;
    while c0 < cout {
        let n = (cout - c0).min(RQ_BLOCK);
        let (mult, bias) = (&mut mult[..n], &mut bias[..n]);
        for (i, (m, b)) in mult.iter_mut().zip(bias.iter_mut()).enumerate() {
            let p = affine_at(aff, c0 + i);
            *m = p.mult;
            *b = i64::from(p.bias);
        }
        let (mult, bias): (&[i32], &[i64]) = (mult, bias);
        let v = move |a: i32, m: i32, b: i64| -> i64 {
            let d = (st1(a) as i32).wrapping_sub(zp_raw);
            (i64::from(d) * i64::from(m) + b).wrapping_add(r2) >> s2
        };
        for px in 0..npx {
            let o = px * cout + c0;
            let (a, d) = (&acc[o..o + n], &mut dst[o..o + n]);
            if sign {
                for (((d, &a), &m), &b) in d.iter_mut().zip(a).zip(mult).zip(bias) {
                    *d = u8::from(v(a, m, b) >= 0);
                }
            } else {
                for (((d, &a), &m), &b) in d.iter_mut().zip(a).zip(mult).zip(bias) {
                    *d = (v(a, m, b) + zp2).max(lo2).min(hi2) as u8;
                }
            }
        }
        c0 += n;
    }
}

/// Whether [`requant_lanes32`] is exact for these parameters: stage 1 shifts by at least 33
/// (the trained models' 34-37) and its zero point is within `2^30`; stage 2, if any, shifts by
/// 16 to 47 (the trained models' 24-25) and its input zero point is a code of stage 1 (so the
/// centred code is within 255). The output zero point is a code, as [`QParams`] has it
/// everywhere.
#[inline(always)]
fn lanes32_fit(raw: &RawQuant, aff: Option<&ChannelAffine<'_>>) -> bool {
    let qmax1 = (1i32 << raw.bits.min(8)) - 1;
    raw.shift.clamp(1, 62) >= 33
        && raw.zero_point.unsigned_abs() <= 1 << 30
        && aff.is_none_or(|a| (16..=47).contains(&a.shift) && (0..=qmax1).contains(&raw.zero_point))
}

/// [`requant`] in 32-bit lanes, for SIMD units whose 64-bit multiplies are half as wide (or
/// slower): the same result wherever [`lanes32_fit`] holds. Stage 1 takes the high word of the
/// product, `h = (acc * mult) >> 32`, and `(acc * mult + 2^(s1-1)) >> s1 == (h + 2^(s1-33)) >>
/// (s1 - 32)` for `s1 >= 33` (the low word cannot carry into a shift of 2 or more). Stage 2
/// splits the multiplier and the rounded bias into 16-bit halves, `m = mh 2^16 + ml` and `b +
/// 2^(s2-1) = bh 2^16 + bl` (`ml`, `bl` in `0..2^16`), so that with `d` the centred code
/// (`|d| <= 255`) `y = d ml + bl` and `x = d mh + bh + (y >> 16)` stay inside i32 and
/// `(d m + b + 2^(s2-1)) >> s2 == x >> (s2 - 16)`; the sign of `x` is the sign of the sum.
/// Checked against [`requant_ref`] by the proptest `requant_matches_reference` and the bounds
/// by `requant_lanes32_at_its_bounds`.
#[inline(always)]
fn requant_lanes32(
    raw: &RawQuant,
    aff: Option<&ChannelAffine<'_>>,
    outq: &QParams,
    cout: usize,
    acc: &[i32],
    dst: &mut [u8],
) {
    let sh1 = u32::from(raw.shift.clamp(1, 62)) - 32;
    let c1 = 1i32 << (sh1 - 1);
    let m1 = i64::from(raw.mult);
    let zp1 = raw.zero_point;
    let qmax1 = (1i32 << raw.bits.min(8)) - 1;
    let st1 = move |a: i32| -> i32 {
        let h = ((i64::from(a) * m1) >> 32) as i32;
        ((h + c1) >> sh1) + zp1
    };
    let Some(aff) = aff else {
        for (d, &a) in dst.iter_mut().zip(acc) {
            *d = st1(a).max(0).min(qmax1) as u8;
        }
        return;
    };
    if cout == 0 {
        return;
    }
    let zp_raw = raw.zero_point;
    let sh2 = u32::from(aff.shift) - 16;
    let r2 = 1i64 << (aff.shift - 1);
    let sign = outq.bits == 1;
    let zp2 = outq.zp;
    let lo2 = if aff.relu { zp2 } else { 0 };
    let hi2 = outq.qmax();
    let npx = (dst.len() / cout).min(acc.len() / cout);
    let (mut mh, mut ml) = ([0i32; RQ_BLOCK], [0i32; RQ_BLOCK]);
    let (mut bh, mut bl) = ([0i32; RQ_BLOCK], [0i32; RQ_BLOCK]);
    let mut c0 = 0;
    while c0 < cout {
        let n = (cout - c0).min(RQ_BLOCK);
        for i in 0..n {
            let p = affine_at(aff, c0 + i);
            let b = i64::from(p.bias) + r2;
            (mh[i], ml[i]) = (p.mult >> 16, p.mult & 0xffff);
            (bh[i], bl[i]) = ((b >> 16) as i32, (b & 0xffff) as i32);
        }
        let (mh, ml, bh, bl) = (&mh[..n], &ml[..n], &bh[..n], &bl[..n]);
        // `x` of the doc comment for channel `c0 + j`.
        let x = move |a: i32, j: usize| -> i32 {
            let d = st1(a).max(0).min(qmax1) - zp_raw;
            let y = d * ml[j] + bl[j];
            d * mh[j] + bh[j] + (y >> 16)
        };
        for px in 0..npx {
            let o = px * cout + c0;
            let (a, d) = (&acc[o..o + n], &mut dst[o..o + n]);
            if sign {
                for j in 0..n {
                    d[j] = u8::from(x(a[j], j) >= 0);
                }
            } else {
                for j in 0..n {
                    d[j] = ((x(a[j], j) >> sh2) + zp2).max(lo2).min(hi2) as u8;
                }
            }
        }
        c0 += n;
    }
}

/// `v >> s` (`s` in `1..=62`) saturated to the i32 range, for [`requant_m4`] and
/// [`add_rows_m4`]: with `BIG` (`s >= 32`) the high word of `v` shifted by `s - 32`
/// (`v >> s == (v >> 32) >> (s - 32)`; one register, no 64-bit shift), else a 64-bit shift by
/// less than 32 (no branch on the amount) and a saturation. The callers clamp the result to
/// code bounds inside the i32 range, where saturating first changes nothing.
#[inline(always)]
fn shr_sat<const BIG: bool>(v: i64, s: u32) -> i32 {
    let h = (v >> 32) as i32;
    if BIG {
        h >> (s - 32)
    } else {
        // The two words of `v >> s` (`s` in 1..=31), then saturated.
        let s = s & 31;
        let lo = ((v as u32) >> s | (h as u32) << ((32 - s) & 31)) as i32;
        if h >> s == lo >> 31 {
            lo
        } else if h < 0 {
            i32::MIN
        } else {
            i32::MAX
        }
    }
}

/// [`requant`] in 32-bit arithmetic where that is exact, for cores without 64-bit shifts (the
/// Cortex-M4, where [`requant`] calls it): each stage's 64-bit multiply-accumulate (an
/// `SMLAL` whose accumulator holds the rounding term), [`shr_sat`] with the shift's range
/// known per call (`s >= 32` or not, so no branch on it per element), and 32-bit clamps (`+ zp`
/// saturating in i32: a sum past the i32 range clamps to the same bound as the exact one).
/// Equal to [`requant_ref`] for every input (proptest `requant_matches_reference`).
pub(crate) fn requant_m4(
    raw: &RawQuant,
    aff: Option<&ChannelAffine<'_>>,
    outq: &QParams,
    cout: usize,
    acc: &[i32],
    dst: &mut [u8],
) {
    let s1 = u32::from(raw.shift.clamp(1, 62));
    let s2 = aff.map_or(32, |a| u32::from(a.shift.clamp(1, 62)));
    match (s1 >= 32, s2 >= 32) {
        (true, true) => requant32::<true, true>(raw, aff, outq, cout, acc, dst),
        (true, false) => requant32::<true, false>(raw, aff, outq, cout, acc, dst),
        (false, true) => requant32::<false, true>(raw, aff, outq, cout, acc, dst),
        (false, false) => requant32::<false, false>(raw, aff, outq, cout, acc, dst),
    }
}

/// [`requant_m4`] with the ranges of both shifts fixed (`B1`: stage 1's `>= 32`, `B2`: stage
/// 2's).
#[inline(always)]
fn requant32<const B1: bool, const B2: bool>(
    raw: &RawQuant,
    aff: Option<&ChannelAffine<'_>>,
    outq: &QParams,
    cout: usize,
    acc: &[i32],
    dst: &mut [u8],
) {
    let s1 = u32::from(raw.shift.clamp(1, 62));
    let r1 = 1i64 << (s1 - 1);
    let m1 = i64::from(raw.mult);
    let zp1 = raw.zero_point;
    let qmax1 = (1i32 << raw.bits.min(8)) - 1;
    let st1 = move |a: i32| -> i32 {
        shr_sat::<B1>((i64::from(a) * m1).wrapping_add(r1), s1)
            .saturating_add(zp1)
            .max(0)
            .min(qmax1)
    };
    let Some(aff) = aff else {
        for (d, &a) in dst.iter_mut().zip(acc) {
            *d = st1(a) as u8;
        }
        return;
    };
    if cout == 0 {
        return;
    }
    let zp_raw = raw.zero_point;
    let s2 = u32::from(aff.shift.clamp(1, 62));
    let r2 = 1i64 << (s2 - 1);
    let sign = outq.bits == 1;
    let zp2 = outq.zp;
    let lo2 = if aff.relu { zp2 } else { 0 };
    let hi2 = outq.qmax();
    let npx = (dst.len() / cout).min(acc.len() / cout);
    let mut mult = [0i32; RQ_BLOCK];
    // `bias + 2^(s2 - 1)`: `(d * m + bias) + r2` as one wrapping sum (the same modulo 2^64).
    let mut bias = [0i64; RQ_BLOCK];
    let mut c0 = 0;
    while c0 < cout {
        let n = (cout - c0).min(RQ_BLOCK);
        let (mult, bias) = (&mut mult[..n], &mut bias[..n]);
        for (i, (m, b)) in mult.iter_mut().zip(bias.iter_mut()).enumerate() {
            let p = affine_at(aff, c0 + i);
            *m = p.mult;
            *b = i64::from(p.bias).wrapping_add(r2);
        }
        let (mult, bias): (&[i32], &[i64]) = (mult, bias);
        let sum = move |a: i32, m: i32, b: i64| -> i64 {
            let d = st1(a).wrapping_sub(zp_raw);
            (i64::from(d) * i64::from(m)).wrapping_add(b)
        };
        for px in 0..npx {
            let o = px * cout + c0;
            let (a, d) = (&acc[o..o + n], &mut dst[o..o + n]);
            if sign {
                // The sign of `v >> s2` is the sign of `v`.
                for (((d, &a), &m), &b) in d.iter_mut().zip(a).zip(mult).zip(bias) {
                    *d = u8::from(sum(a, m, b) >= 0);
                }
            } else {
                for (((d, &a), &m), &b) in d.iter_mut().zip(a).zip(mult).zip(bias) {
                    *d = shr_sat::<B2>(sum(a, m, b), s2)
                        .saturating_add(zp2)
                        .max(lo2)
                        .min(hi2) as u8;
                }
            }
        }
        c0 += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::RowOps;
    use proptest::prelude::*;
    use slb_format::{i32_bytes, I32s};

    fn i32_wide() -> impl Strategy<Value = i32> {
        prop_oneof![
            Just(i32::MIN),
            Just(i32::MAX),
            Just(0),
            Just(-1),
            -70_000i32..70_000,
            any::<i32>(),
        ]
    }

    fn shift() -> impl Strategy<Value = u8> {
        prop_oneof![Just(1u8), Just(62), Just(31), Just(32), 1u8..=62]
    }

    fn bits() -> impl Strategy<Value = u8> {
        prop_oneof![Just(1u8), Just(2), Just(4), Just(8)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// The driver's requantization (AVX2 where the CPU has it, and the portable body)
        /// against the element-wise reference, bit for bit.
        #[test]
        fn requant_matches_reference(
            cout in prop_oneof![1usize..=9, 60usize..=70, 127usize..=130],
            npx in 1usize..=5,
            seed in prop::collection::vec(i32_wide(), 3 * 130 * 5 + 2),
            raw_mult in i32_wide(),
            (s1, s2) in (shift(), shift()),
            (raw_bits, out_bits) in (prop_oneof![Just(2u8), Just(4), Just(8)], bits()),
            (zr, zo) in (0u32..256, 0u32..256),
            (relu, affine) in (any::<bool>(), prop_oneof![1 => Just(false), 4 => Just(true)]),
        ) {
            let n = npx * cout;
            let acc = &seed[..n];
            let mult = i32_bytes(&seed[n..n + cout]);
            let bias = i32_bytes(&seed[n + cout..n + 2 * cout]);
            let raw = RawQuant {
                mult: raw_mult,
                shift: s1,
                zero_point: (zr % (1 << raw_bits)) as i32,
                bits: raw_bits,
                scale: 1.0,
            };
            let aff = ChannelAffine { shift: s2, mult: I32s(&mult), bias: I32s(&bias), relu };
            let aff = affine.then_some(&aff);
            let outq = QParams {
                scale: 1.0,
                zp: (zo % (1 << out_bits)) as i32,
                bits: if affine { out_bits } else { raw_bits },
            };
            let mut want = vec![7u8; n];
            requant_ref(&raw, aff, &outq, cout, acc, &mut want);
            let mut got = vec![7u8; n];
            requant(&raw, aff, &outq, cout, acc, &mut got);
            prop_assert_eq!(&got, &want);
            let mut got = vec![7u8; n];
            (RowOps::native().requant)(&raw, aff, &outq, cout, acc, &mut got);
            prop_assert_eq!(&got, &want);
            // The Cortex-M4's 32-bit variant.
            let mut got = vec![7u8; n];
            requant_m4(&raw, aff, &outq, cout, acc, &mut got);
            prop_assert_eq!(&got, &want);
        }
    }

    /// The 32-bit lanes of [`requant`] (`requant_lanes32`) take exactly the parameters where
    /// they are exact: at each bound of [`lanes32_fit`], just inside and just outside it and at
    /// the extremes (raw zero points of `i32::MIN` / `i32::MAX`, shifts of 32, 15 and 48, which
    /// overflow the lanes), the driver's requantization equals the reference on accumulators
    /// and per-channel parameters across the i32 range. (Output zero points are codes, as
    /// everywhere: the reference's clamp needs them inside the code range.)
    #[test]
    fn requant_lanes32_at_its_bounds() {
        let mut rng = crate::testutil::Rng(41);
        let wide = |rng: &mut crate::testutil::Rng| -> i32 {
            match rng.below(4) {
                0 => [i32::MIN, i32::MAX, 0, -1][rng.below(4) as usize],
                1 => rng.next() as i32 >> rng.below(31),
                _ => rng.next() as i32,
            }
        };
        let big = 1i32 << 30;
        // (raw shift, raw zero point, affine shift, output zero point, output bits)
        let mut cases = vec![];
        for s1 in [32u8, 33, 34, 62] {
            cases.push((s1, 3, 24, 5, 8u8));
        }
        for zp1 in [big, -big, big + 1, -big - 1, i32::MAX, i32::MIN] {
            cases.push((36, zp1, 0, 0, 8));
        }
        for s2 in [15u8, 16, 17, 46, 47, 48, 62] {
            cases.push((36, 7, s2, 3, 8));
            cases.push((36, 7, s2, 0, 1));
        }
        for zp_raw in [-1, 0, 255, 256, -70_000, 70_000] {
            cases.push((35, zp_raw, 25, 9, 8));
        }
        for zp2 in [0, 255] {
            cases.push((35, 4, 25, zp2, 8));
        }
        let cout = 67;
        for (s1, zp1, s2, zp2, out_bits) in cases {
            for round in 0..20 {
                let acc: Vec<i32> = (0..3 * cout).map(|_| wide(&mut rng)).collect();
                let mult: Vec<i32> = (0..cout).map(|_| wide(&mut rng)).collect();
                let bias: Vec<i32> = (0..cout).map(|_| wide(&mut rng)).collect();
                let (mult, bias) = (i32_bytes(&mult), i32_bytes(&bias));
                let raw = RawQuant {
                    mult: wide(&mut rng),
                    shift: s1,
                    zero_point: zp1,
                    bits: 8,
                    scale: 1.0,
                };
                let aff = ChannelAffine {
                    shift: s2,
                    mult: I32s(&mult),
                    bias: I32s(&bias),
                    relu: round % 2 == 0,
                };
                let aff = (s2 != 0).then_some(&aff);
                let outq = QParams {
                    scale: 1.0,
                    zp: zp2,
                    bits: out_bits,
                };
                let mut want = vec![7u8; acc.len()];
                requant_ref(&raw, aff, &outq, cout, &acc, &mut want);
                let mut got = vec![7u8; acc.len()];
                requant(&raw, aff, &outq, cout, &acc, &mut got);
                assert_eq!(
                    got, want,
                    "s1 {s1} zp1 {zp1} s2 {s2} zp2 {zp2} bits {out_bits}"
                );
                let mut got = vec![7u8; acc.len()];
                (RowOps::native().requant)(&raw, aff, &outq, cout, &acc, &mut got);
                assert_eq!(got, want, "native: s1 {s1} zp1 {zp1} s2 {s2} zp2 {zp2}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]
        /// The blocked residual add against the element-wise one, bit for bit.
        #[test]
        fn add_rows_matches_add_code(
            c in prop_oneof![1usize..=9, 60usize..=70, 127usize..=130],
            npx in 1usize..=4,
            seed in prop::collection::vec(i32_wide(), 3 * 130 + 2),
            codes in prop::collection::vec(any::<u8>(), 2 * 130 * 4),
            shift in shift(),
            (bits_a, bits_b, bits_o) in (bits(), bits(), bits()),
            (za, zb, zo) in (0u32..256, 0u32..256, 0u32..256),
            relu in any::<bool>(),
        ) {
            let n = npx * c;
            let q = |bits: u8, z: u32| QParams {
                scale: 1.0,
                zp: if bits == 1 { 0 } else { (z % (1 << bits)) as i32 },
                bits,
            };
            let (qa, qb, qo) = (q(bits_a, za), q(bits_b, zb), q(bits_o, zo));
            let mask = |bits: u8, v: u8| if bits == 8 { v } else { v & ((1 << bits) - 1) };
            let a: Vec<u8> = codes[..n].iter().map(|&v| mask(bits_a, v)).collect();
            let b: Vec<u8> = codes[n..2 * n].iter().map(|&v| mask(bits_b, v)).collect();
            // Multipliers small enough for the format's i64 arithmetic never to overflow.
            let small: Vec<i32> = seed[..3 * c].iter().map(|v| v >> 8).collect();
            let (ma, mb, bias) = (
                i32_bytes(&small[..c]),
                i32_bytes(&small[c..2 * c]),
                i32_bytes(&small[2 * c..3 * c]),
            );
            let p = AddParams {
                shift,
                mult_a: I32s(&ma),
                mult_b: I32s(&mb),
                bias: I32s(&bias),
                relu: relu && bits_o != 1,
            };
            let want: Vec<u8> = (0..n)
                .map(|k| add_code(qa.centred(a[k]), qb.centred(b[k]), &p, k % c, &qo))
                .collect();
            let mut got = vec![0u8; n];
            add_rows(&a, &b, &qa, &qb, &p, &qo, c, &mut got);
            prop_assert_eq!(&got, &want);
            let mut got = vec![0u8; n];
            (RowOps::native().add_rows)(&a, &b, &qa, &qb, &p, &qo, c, &mut got);
            prop_assert_eq!(&got, &want);
            // The Cortex-M4's 32-bit variant (the test's factors fit i32).
            let mut got = vec![9u8; n];
            prop_assert!(add_rows_m4(&a, &b, &qa, &qb, &p, &qo, c, &mut got));
            prop_assert_eq!(&got, &want);
        }
    }

    /// The Cortex-M4's 32-bit residual add takes a channel only when twice both its
    /// multipliers fit `i32` (`|m| <= 2^30`, `-2^30` included); otherwise it refuses the rows
    /// (returns false, output untouched) and the caller runs the 64-bit add.
    #[test]
    fn add_rows_m4_refuses_multipliers_whose_double_leaves_i32() {
        let q = QParams {
            scale: 1.0,
            zp: 0,
            bits: 8,
        };
        let (a, b) = ([3u8, 200], [7u8, 100]);
        for (ma, mb, takes) in [
            ([1, 1 << 20], [2, -(1 << 30)], true),
            ([1, (1 << 30) - 1], [2, 3], true),
            ([1, 1 << 30], [2, 3], false),
            ([1, 2], [1 << 30, 3], false),
            ([i32::MIN, 2], [1, 3], false),
            ([1, 2], [3, i32::MAX], false),
        ] {
            let (mab, mbb, bias) = (i32_bytes(&ma), i32_bytes(&mb), i32_bytes(&[0, 0]));
            let p = AddParams {
                shift: 40,
                mult_a: I32s(&mab),
                mult_b: I32s(&mbb),
                bias: I32s(&bias),
                relu: false,
            };
            let mut got = [9u8; 2];
            assert_eq!(
                add_rows_m4(&a, &b, &q, &q, &p, &q, 2, &mut got),
                takes,
                "{ma:?} {mb:?}"
            );
            if takes {
                let want: Vec<u8> = (0..2)
                    .map(|k| add_code(q.centred(a[k]), q.centred(b[k]), &p, k, &q))
                    .collect();
                assert_eq!(got.to_vec(), want);
            } else {
                assert_eq!(got, [9; 2], "refused rows are left as they were");
            }
        }
    }

    /// Accumulator and multiplier extremes with shifts 1 and 62, every output width.
    #[test]
    fn requant_extremes() {
        let vals = [i32::MIN, i32::MIN + 1, -1, 0, 1, i32::MAX - 1, i32::MAX];
        let acc: Vec<i32> = vals.iter().flat_map(|&a| vals.map(|_| a)).collect();
        let cout = vals.len();
        for &rm in &vals {
            for (s1, s2) in [(1u8, 1u8), (1, 62), (62, 1), (62, 62), (31, 33)] {
                for out_bits in [1u8, 2, 4, 8] {
                    for relu in [false, true] {
                        for rb in [2u8, 8] {
                            let raw = RawQuant {
                                mult: rm,
                                shift: s1,
                                zero_point: (1 << (rb - 1)) - 1,
                                bits: rb,
                                scale: 1.0,
                            };
                            let mult = i32_bytes(&vals);
                            let bias = i32_bytes(&vals.map(|v| v.wrapping_neg()));
                            let aff = ChannelAffine {
                                shift: s2,
                                mult: I32s(&mult),
                                bias: I32s(&bias),
                                relu,
                            };
                            let outq = QParams {
                                scale: 1.0,
                                zp: (1 << out_bits) / 2,
                                bits: out_bits,
                            };
                            for a in [None, Some(&aff)] {
                                let mut want = vec![0u8; acc.len()];
                                requant_ref(&raw, a, &outq, cout, &acc, &mut want);
                                let mut got = vec![0u8; acc.len()];
                                requant(&raw, a, &outq, cout, &acc, &mut got);
                                assert_eq!(got, want);
                                (RowOps::native().requant)(&raw, a, &outq, cout, &acc, &mut got);
                                assert_eq!(got, want);
                                requant_m4(&raw, a, &outq, cout, &acc, &mut got);
                                assert_eq!(got, want);
                            }
                        }
                    }
                }
            }
        }
    }

    /// The trained models' requantization parameters (stage 1 shifts of 34-37, stage 2 shifts
    /// of 24-25, zero points of 8-bit codes) take the 32-bit lanes, and the lanes refuse what
    /// their doc comment excludes: a stage-1 shift below 33, a stage-2 shift outside 16-47, a
    /// stage-1 zero point past `2^30`, and with stage 2 a raw zero point outside the codes.
    #[test]
    fn requant_lanes32_takes_the_trained_models_parameters() {
        let raw = |shift: u8, zero_point: i32, bits: u8| RawQuant {
            mult: 1_500_000_000,
            shift,
            zero_point,
            bits,
            scale: 1.0,
        };
        let aff = |shift: u8| ChannelAffine {
            shift,
            mult: I32s(&[]),
            bias: I32s(&[]),
            relu: true,
        };
        for shift in 34..=37 {
            assert!(lanes32_fit(&raw(shift, 130, 8), None));
            for s2 in [24, 25] {
                assert!(lanes32_fit(&raw(shift, 130, 8), Some(&aff(s2))));
            }
        }
        assert!(lanes32_fit(&raw(33, 1 << 30, 8), None));
        assert!(lanes32_fit(&raw(33, -(1 << 30), 8), None));
        assert!(lanes32_fit(&raw(62, 255, 8), Some(&aff(16))));
        assert!(lanes32_fit(&raw(62, 0, 8), Some(&aff(47))));
        assert!(lanes32_fit(&raw(40, 15, 4), Some(&aff(20))));
        assert!(!lanes32_fit(&raw(32, 0, 8), None));
        assert!(!lanes32_fit(&raw(33, (1 << 30) + 1, 8), None));
        assert!(!lanes32_fit(&raw(33, -(1 << 30) - 1, 8), None));
        assert!(!lanes32_fit(&raw(36, 130, 8), Some(&aff(15))));
        assert!(!lanes32_fit(&raw(36, 130, 8), Some(&aff(48))));
        assert!(!lanes32_fit(&raw(36, 256, 8), Some(&aff(24))));
        assert!(!lanes32_fit(&raw(36, -1, 8), Some(&aff(24))));
        assert!(!lanes32_fit(&raw(36, 16, 4), Some(&aff(24))));
    }

    /// `acc` and `dst` of different lengths: the whole pixels both hold are written, as by
    /// the element-wise reference (which stops at the shorter one), the rest is untouched and
    /// nothing panics.
    #[test]
    fn requant_stops_at_the_shorter_buffer() {
        // The 64-bit path (shifts 16 and 4) and the 32-bit lanes (shifts 35 and 20).
        for (s1, m1, s2) in [(16, 12345, 4), (35, 1_500_000_000, 20)] {
            requant_stops_at_the_shorter_buffer_with(s1, m1, s2);
        }
    }

    fn requant_stops_at_the_shorter_buffer_with(s1: u8, m1: i32, s2: u8) {
        assert_eq!(
            lanes32_fit(
                &RawQuant {
                    shift: s1,
                    zero_point: 8,
                    bits: 4,
                    mult: 0,
                    scale: 1.0
                },
                None
            ),
            s1 >= 33
        );
        let cout = 3;
        let acc: Vec<i32> = (0..4 * cout as i32).map(|i| i * 1000 - 5000).collect();
        let (mult, bias) = (i32_bytes(&[100, -200, 300]), i32_bytes(&[5, 0, -5]));
        let raw = RawQuant {
            mult: m1,
            shift: s1,
            zero_point: 8,
            bits: 4,
            scale: 1.0,
        };
        let aff = ChannelAffine {
            shift: s2,
            mult: I32s(&mult),
            bias: I32s(&bias),
            relu: false,
        };
        let outq = QParams {
            scale: 1.0,
            zp: 2,
            bits: 4,
        };
        // (pixels of acc, pixels of dst)
        for (na, nd) in [(4, 2), (2, 4)] {
            let acc = &acc[..na * cout];
            let mut want = vec![99u8; nd * cout];
            requant_ref(&raw, Some(&aff), &outq, cout, acc, &mut want);
            assert_eq!(
                want.iter().filter(|&&v| v == 99).count(),
                (nd - na.min(nd)) * cout
            );
            let mut got = vec![99u8; nd * cout];
            requant(&raw, Some(&aff), &outq, cout, acc, &mut got);
            assert_eq!(got, want, "{na} {nd}");
            // And the variant the CPU's plans use (SIMD where there is one).
            let mut got = vec![99u8; nd * cout];
            (RowOps::native().requant)(&raw, Some(&aff), &outq, cout, acc, &mut got);
            assert_eq!(got, want, "native {na} {nd}");
            // And the Cortex-M4's 32-bit variant.
            let mut got = vec![99u8; nd * cout];
            requant_m4(&raw, Some(&aff), &outq, cout, acc, &mut got);
            assert_eq!(got, want, "m4 {na} {nd}");
        }
    }

    #[test]
    fn round_shift_is_half_up() {
        assert_eq!(round_shift(5, 1), 3); // 2.5 -> 3
        assert_eq!(round_shift(-5, 1), -2); // -2.5 -> -2 (half up)
        assert_eq!(round_shift(-6, 2), -1); // -1.5 -> -1
        assert_eq!(round_shift(7, 2), 2); // 1.75 -> 2
    }

    #[test]
    fn floor_matches_std() {
        // Past 2^23 every f32 is an integer; past 2^31 it does not fit the i32 the small
        // values go through.
        for x in [
            -2.5f32,
            -2.0,
            -0.1,
            0.0,
            0.4,
            0.5,
            1.0,
            1e7,
            -1e7,
            123.999,
            8_388_607.5,
            -8_388_607.5,
            3e9,
            -3e9,
            1e30,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ] {
            assert_eq!(libm_floor(x), x.floor(), "{x}");
        }
        assert!(libm_floor(f32::NAN).is_nan());
    }

    /// The real value of a code is `scale * centred` (section 4 of docs/FORMAT.md): `q - zp`,
    /// or `2q - 1` for a sign.
    #[test]
    fn real_is_scale_times_centred_code() {
        let q4 = QParams {
            scale: 0.5,
            zp: 3,
            bits: 4,
        };
        for (code, real) in [(0u8, -1.5f32), (2, -0.5), (3, 0.0), (4, 0.5), (15, 6.0)] {
            assert_eq!(q4.real(code), real, "code {code}");
        }
        let q1 = QParams {
            scale: 0.25,
            zp: 0,
            bits: 1,
        };
        assert_eq!((q1.real(0), q1.real(1)), (-0.25, 0.25));
        let q8 = QParams {
            scale: 1.0 / 64.0,
            zp: 128,
            bits: 8,
        };
        assert_eq!(
            (q8.real(0), q8.real(128), q8.real(255)),
            (-2.0, 0.0, 127.0 / 64.0)
        );
    }

    /// The float engine's quantizer: `zp + round_half_up(x / scale)` clamped to the codes
    /// (at the zero point with ReLU), the sign for 1 bit, NaN to the zero point.
    #[test]
    fn quantize_rounds_half_up_and_clamps() {
        let q4 = QParams {
            scale: 0.5,
            zp: 3,
            bits: 4,
        };
        let cases = [
            (0.0f32, 3u8),
            (0.2499, 3),
            (0.25, 4), // half a step: up
            (-0.25, 3),
            (-0.2501, 2),
            (1.0, 5),
            (-1.5, 0),
            (-1.76, 0), // below the lowest code
            (5.9, 15),
            (6.0, 15),
            (1e30, 15),
            (-1e30, 0),
            (f32::INFINITY, 15),
            (f32::NEG_INFINITY, 0),
            (f32::NAN, 3),
        ];
        for (x, code) in cases {
            assert_eq!(q4.quantize(x, false), code, "{x}");
        }
        // With ReLU nothing goes below the zero point.
        assert_eq!(q4.quantize(-1.0, true), 3);
        assert_eq!(q4.quantize(1.0, true), 5);
        let q1 = QParams {
            scale: 0.25,
            zp: 0,
            bits: 1,
        };
        for (x, code) in [(0.0f32, 1u8), (3.0, 1), (-0.1, 1), (-0.13, 0), (-3.0, 0)] {
            assert_eq!(q1.quantize(x, false), code, "sign of {x}");
        }
    }

    /// `quantize(real(q)) == q` for every code of every width: the float engine's
    /// fake-quantization leaves values on the grid where they are.
    #[test]
    fn quantize_inverts_real_for_every_code() {
        for (bits, zp, scale) in [
            (1u8, 0, 0.3f32),
            (2, 1, 0.7),
            (4, 8, 0.05),
            (8, 128, 1.0 / 64.0),
        ] {
            let q = QParams { scale, zp, bits };
            for code in 0..=q.qmax() as u8 {
                assert_eq!(
                    q.quantize(q.real(code), false),
                    code,
                    "{bits} bits, code {code}"
                );
            }
        }
    }

    #[test]
    fn sign_and_clamp() {
        let q1 = QParams {
            scale: 1.0,
            zp: 0,
            bits: 1,
        };
        assert_eq!(q1.clamp_code(0, false), 1);
        assert_eq!(q1.clamp_code(-1, false), 0);
        let q4 = QParams {
            scale: 1.0,
            zp: 3,
            bits: 4,
        };
        assert_eq!(q4.clamp_code(-5, true), 3);
        assert_eq!(q4.clamp_code(-5, false), 0);
        assert_eq!(q4.clamp_code(100, false), 15);
        assert_eq!(q4.centred(5), 2);
        assert_eq!(q1.centred(0), -1);
    }
}
