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
    let k = AddConsts::new(qa, qb, p);
    let shift = k.shift;
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
            (ka[j], kb[j], kc[j]) = k.at(p, c0 + j);
        }
        let (ka, kb, kc) = (&ka[..nb], &kb[..nb], &kc[..nb]);
        if !cfg!(target_arch = "arm")
            && add_block_lanes32(a, b, (ka, kb, kc), (&k, qo, p.relu), c, c0, out)
        {
            c0 += nb;
            continue;
        }
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

/// The per-channel constants of [`add_rows`]: `v = qa * A[c] + qb * B[c] + C[c]`, the
/// centring `q - zp` (or `2 q - 1` for 1-bit codes) and the rounding half folded in.
struct AddConsts {
    /// `centred(q) = s q + o` of each input.
    a: (i64, i64),
    b: (i64, i64),
    /// The shift (1..=62) and `2^(shift-1)`.
    shift: u32,
    half: i64,
}

impl AddConsts {
    #[inline(always)]
    fn new(qa: &QParams, qb: &QParams, p: &AddParams<'_>) -> AddConsts {
        let lin = |q: &QParams| -> (i64, i64) {
            if q.bits == 1 {
                (2, -1)
            } else {
                (1, -i64::from(q.zp))
            }
        };
        let shift = u32::from(p.shift.clamp(1, 62));
        AddConsts {
            a: lin(qa),
            b: lin(qb),
            shift,
            half: 1i64 << (shift - 1),
        }
    }

    /// `(A[c], B[c], C[c])` (every term below 2^42 in magnitude).
    #[inline(always)]
    fn at(&self, p: &AddParams<'_>, c: usize) -> (i64, i64, i64) {
        let ma = i64::from(p.mult_a.get(c).unwrap_or(0));
        let mb = i64::from(p.mult_b.get(c).unwrap_or(0));
        let bias = i64::from(p.bias.get(c).unwrap_or(0));
        (
            self.a.0 * ma,
            self.b.0 * mb,
            self.a.1 * ma + self.b.1 * mb + bias + self.half,
        )
    }
}

/// One block of channels (from `c0`, constants `(A, B, C)`) of [`add_rows`] in 32-bit lanes
/// where that is exact, for SIMD units (as [`requant_lanes32`]): each constant split into
/// 16-bit halves, `K = Kh 2^16 + Kl` (`Kl` in `0..2^16`), so that with codes `qa, qb <= 255`,
/// `y = qa Al + qb Bl + Cl` (below 2^25) and `x = qa Ah + qb Bh + Ch + (y >> 16)` give `v =
/// 2^16 x + (y mod 2^16)`, hence `v >> s == x >> (s - 16)` for `s >= 16` and the sign of `v` is
/// the sign of `x`. Exact where the shift is 16 to 47 and each channel keeps `x` inside i32
/// (`255 (|Ah| + |Bh|) + |Ch| + 2^9 < 2^31`, true of every i32 multiplier and bias at those
/// shifts); returns `false`, writing nothing, otherwise. Checked against [`add_code`] by the
/// proptest `add_rows_matches_add_code` and at the extremes by `add_rows_lanes32_at_its_bounds`.
#[inline(always)]
fn add_block_lanes32(
    a: &[u8],
    b: &[u8],
    (ka, kb, kc): (&[i64], &[i64], &[i64]),
    (k, qo, relu): (&AddConsts, &QParams, bool),
    c: usize,
    c0: usize,
    out: &mut [u8],
) -> bool {
    let nb = ka.len().min(kb.len()).min(kc.len()).min(RQ_BLOCK);
    if !(16..=47).contains(&k.shift) {
        return false;
    }
    let mut kh = [[0i32; RQ_BLOCK]; 3];
    let mut kl = [[0i32; RQ_BLOCK]; 3];
    let mut fits = true;
    for j in 0..nb {
        let (h, l) = (
            [ka[j] >> 16, kb[j] >> 16, kc[j] >> 16],
            [ka[j], kb[j], kc[j]],
        );
        fits &= 255 * (h[0].abs() + h[1].abs()) + h[2].abs() + 512 < 1 << 31;
        for i in 0..3 {
            (kh[i][j], kl[i][j]) = (h[i] as i32, (l[i] & 0xffff) as i32);
        }
    }
    if !fits {
        return false;
    }
    let n = out.len().min(a.len()).min(b.len());
    let sh = k.shift - 16;
    let sign = qo.bits == 1;
    let zp = qo.zp;
    let lo = if relu { zp } else { 0 };
    let hi = qo.qmax();
    let (ah, bh, ch) = (&kh[0][..nb], &kh[1][..nb], &kh[2][..nb]);
    let (al, bl, cl) = (&kl[0][..nb], &kl[1][..nb], &kl[2][..nb]);
    let x = |qa: u8, qb: u8, j: usize| -> i32 {
        let (qa, qb) = (i32::from(qa), i32::from(qb));
        let y = qa * al[j] + qb * bl[j] + cl[j];
        qa * ah[j] + qb * bh[j] + ch[j] + (y >> 16)
    };
    let mut px = c0;
    while px + nb <= n {
        let (ra, rb) = (&a[px..px + nb], &b[px..px + nb]);
        let o = &mut out[px..px + nb];
        if sign {
            for j in 0..nb {
                o[j] = u8::from(x(ra[j], rb[j], j) >= 0);
            }
        } else {
            for j in 0..nb {
                o[j] = ((x(ra[j], rb[j], j) >> sh) + zp).max(lo).min(hi) as u8;
            }
        }
        px += c;
    }
    true
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
    let k = AddConsts::new(qa, qb, p);
    let n = out.len().min(a.len()).min(b.len());
    let shift = k.shift;
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
            let (a, b, c) = k.at(p, c0 + j);
            // |2 * m| fits i32 (checked by the caller).
            (ka[j], kb[j], kc[j]) = (a as i32, b as i32, c);
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

/// The thresholds per channel of a step requantization into `outq`, which [`step_thresholds`]
/// finds once per layer and [`step_rows`] compares each accumulator with: one for a sign (1-bit
/// output), three for 2-bit codes; `None` for wider codes, where a comparison per code would
/// cost more than [`requant`]'s arithmetic, and without stage 2.
#[inline]
pub(crate) fn step_count(aff: Option<&ChannelAffine<'_>>, outq: &QParams) -> Option<usize> {
    match (aff, outq.bits) {
        (Some(_), 1) => Some(1),
        (Some(_), 2) => Some(3),
        _ => None,
    }
}

/// The most thresholds per channel [`step_count`] asks for.
pub(crate) const MAX_STEPS: usize = 3;

/// Bytes per channel of a step requantization with `n` thresholds ([`Steps`]).
pub(crate) const fn step_bytes(n: usize) -> usize {
    4 * n + 2
}

/// A step requantization of `c` channels ([`step_count`]): `n` thresholds per channel, step by
/// step (`thr[j * c + o]`), then per channel a byte to add and one to flip with (0 where the
/// code rises with the accumulator, 0xff where it falls). The code of accumulator `a` in
/// channel `o` is `(k ^ flip[o]) + add[o]` (wrapping `u8`: `add + k` rising, `add - 1 - k`
/// falling), `k` the number of `j` with `a >= thr[j * c + o]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Steps<'a> {
    /// Thresholds per channel.
    pub n: usize,
    /// The thresholds, `n * c`.
    pub thr: &'a [i32],
    /// The bytes to add, `c`.
    pub add: &'a [u8],
    /// The bytes to flip with, `c`.
    pub flip: &'a [u8],
}

/// The `thr.len()` thresholds ([`step_count`]), ascending, of channel `c` of a step
/// requantization, and its bytes to add and to flip with ([`Steps`]): they give the code [`stage1`]
/// and [`stage2`] give for every `i32` accumulator (so [`requant`]'s,
/// `requant_matches_reference`). That code is a monotone step function of the accumulator:
/// stage 1 is `a * mult` rounded, shifted and clamped (non-decreasing for `mult >= 0`,
/// non-increasing otherwise; no product of two `i32` overflows `i64`), stage 2 the same with the
/// channel's multiplier. So it goes from `code(i32::MIN)` to `code(i32::MAX)`, `k` codes apart
/// (at most `2^bits - 1`, the clamp's range, which is `thr.len()`), and a binary search over
/// the `i32` range finds the first accumulator `j` codes away from the first, for each `j` in
/// `1..=k`. The thresholds it does not need are `i32::MIN` (always counted), which the byte to
/// add makes up for.
pub(crate) fn step_thresholds(
    raw: &RawQuant,
    aff: &ChannelAffine<'_>,
    outq: &QParams,
    c: usize,
    thr: &mut [i32],
) -> (u8, u8) {
    let p = affine_at(aff, c);
    let code = |a: i32| {
        i32::from(stage2(
            stage1(a, raw),
            raw.zero_point,
            p,
            aff.shift,
            aff.relu,
            outq,
        ))
    };
    let (first, last) = (code(i32::MIN), code(i32::MAX));
    let pad = thr.len().saturating_sub(first.abs_diff(last) as usize);
    let (unused, used) = thr.split_at_mut(pad);
    unused.fill(i32::MIN);
    for (j, t) in (1..).zip(used.iter_mut()) {
        // `code(lo)` is fewer than `j` codes from `first`, `code(hi)` at least `j`.
        let (mut lo, mut hi) = (i64::from(i32::MIN), i64::from(i32::MAX));
        while hi - lo > 1 {
            let mid = (lo + hi) >> 1;
            if code(mid as i32).abs_diff(first) >= j {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        *t = hi as i32;
    }
    let pad = pad as i32;
    if last >= first {
        ((first - pad) as u8, 0)
    } else {
        ((first + pad + 1) as u8, 0xff)
    }
}

/// The code of a step requantization from its count of thresholds met ([`Steps`]).
#[inline(always)]
fn step_code(k: u8, add: u8, flip: u8) -> u8 {
    (k ^ flip).wrapping_add(add)
}

/// Step requantization of HWC accumulators ([`Steps`], `steps.add.len()` channels per pixel):
/// the same codes as [`requant`], one comparison per threshold.
#[inline(always)]
pub(crate) fn step_rows(steps: &Steps<'_>, acc: &[i32], dst: &mut [u8]) {
    let c = steps.add.len().min(steps.flip.len());
    let (Some(t), Some(add), Some(flip)) = (
        steps.thr.get(..steps.n * c),
        steps.add.get(..c),
        steps.flip.get(..c),
    ) else {
        return;
    };
    if c == 0 {
        return;
    }
    let px = dst.chunks_exact_mut(c).zip(acc.chunks_exact(c));
    match steps.n {
        1 => {
            for (d, a) in px {
                for (((d, &a), &t0), (&b, &r)) in
                    d.iter_mut().zip(a).zip(t).zip(add.iter().zip(flip))
                {
                    *d = step_code(u8::from(a >= t0), b, r);
                }
            }
        }
        3 => {
            let (t0, t12) = t.split_at(c);
            let (t1, t2) = t12.split_at(c);
            let ts = t0.iter().zip(t1).zip(t2);
            for (d, a) in px {
                for (((d, &a), ((&t0, &t1), &t2)), (&b, &r)) in d
                    .iter_mut()
                    .zip(a)
                    .zip(ts.clone())
                    .zip(add.iter().zip(flip))
                {
                    let k = u8::from(a >= t0) + u8::from(a >= t1) + u8::from(a >= t2);
                    *d = step_code(k, b, r);
                }
            }
        }
        _ => {}
    }
}

/// Channels per block of hoisted stage-2 parameters in [`requant`].
pub(crate) const RQ_BLOCK: usize = 64;

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
pub(crate) fn lanes32_fit(raw: &RawQuant, aff: Option<&ChannelAffine<'_>>) -> bool {
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
    let l = Lanes32::of(raw, aff, outq);
    let st1 = move |a: i32| -> i32 {
        let h = ((i64::from(a) * i64::from(l.m1)) >> 32) as i32;
        (((h + l.c1) >> l.sh1) + l.zp1).max(0).min(l.qmax1)
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
    let npx = (dst.len() / cout).min(acc.len() / cout);
    let mut blk = Lanes32Block::default();
    let mut c0 = 0;
    while c0 < cout {
        let n = blk.load(aff, c0, cout);
        let (mh, ml, bh, bl) = (&blk.mh[..n], &blk.ml[..n], &blk.bh[..n], &blk.bl[..n]);
        // `x` of the doc comment for channel `c0 + j`.
        let x = move |a: i32, j: usize| -> i32 {
            let d = st1(a) - l.zp1;
            let y = d * ml[j] + bl[j];
            d * mh[j] + bh[j] + (y >> 16)
        };
        for px in 0..npx {
            let o = px * cout + c0;
            let (a, d) = (&acc[o..o + n], &mut dst[o..o + n]);
            if l.sign {
                for j in 0..n {
                    d[j] = u8::from(x(a[j], j) >= 0);
                }
            } else {
                for j in 0..n {
                    d[j] = ((x(a[j], j) >> l.sh2) + l.zp2).max(l.lo2).min(l.hi2) as u8;
                }
            }
        }
        c0 += n;
    }
}

/// The layer constants of [`requant_lanes32`] (and of its AVX-512 twin in `kernels::x86`):
/// stage 1 `((h + c1) >> sh1) + zp1` clamped to `0..=qmax1` (`h = (acc * m1) >> 32`); stage
/// 2 centres by `zp1` (the raw codes' zero point), shifts by `sh2`, adds `zp2` and clamps to `lo2..=hi2`, or keeps the
/// sign (`sign`, 1-bit outputs). Only meaningful where [`lanes32_fit`] holds.
#[derive(Clone, Copy)]
pub(crate) struct Lanes32 {
    pub m1: i32,
    pub c1: i32,
    pub sh1: u32,
    pub zp1: i32,
    pub qmax1: i32,
    pub sh2: u32,
    pub sign: bool,
    pub zp2: i32,
    pub lo2: i32,
    pub hi2: i32,
}

impl Lanes32 {
    /// The constants for these parameters (stage 2's are zeros without `aff`).
    #[inline(always)]
    pub(crate) fn of(raw: &RawQuant, aff: Option<&ChannelAffine<'_>>, outq: &QParams) -> Lanes32 {
        let sh1 = u32::from(raw.shift.clamp(33, 62)) - 32;
        let zp2 = outq.zp;
        Lanes32 {
            m1: raw.mult,
            c1: 1i32 << (sh1 - 1),
            sh1,
            zp1: raw.zero_point,
            qmax1: (1i32 << raw.bits.min(8)) - 1,
            sh2: aff.map_or(0, |a| u32::from(a.shift.clamp(16, 47)) - 16),
            sign: outq.bits == 1,
            zp2,
            lo2: if aff.is_some_and(|a| a.relu) { zp2 } else { 0 },
            hi2: outq.qmax(),
        }
    }
}

/// A block of at most [`RQ_BLOCK`] channels' stage-2 parameters of [`requant_lanes32`], split
/// into 16-bit halves (its doc comment).
pub(crate) struct Lanes32Block {
    pub mh: [i32; RQ_BLOCK],
    pub ml: [i32; RQ_BLOCK],
    pub bh: [i32; RQ_BLOCK],
    pub bl: [i32; RQ_BLOCK],
}

impl Default for Lanes32Block {
    fn default() -> Self {
        Lanes32Block {
            mh: [0; RQ_BLOCK],
            ml: [0; RQ_BLOCK],
            bh: [0; RQ_BLOCK],
            bl: [0; RQ_BLOCK],
        }
    }
}

impl Lanes32Block {
    /// Loads the parameters of channels `c0 ..` (at most [`RQ_BLOCK`], not past `cout`) and
    /// returns how many.
    #[inline(always)]
    pub(crate) fn load(&mut self, aff: &ChannelAffine<'_>, c0: usize, cout: usize) -> usize {
        let n = cout.saturating_sub(c0).min(RQ_BLOCK);
        let r2 = 1i64 << (aff.shift.clamp(1, 62) - 1);
        for i in 0..n {
            let p = affine_at(aff, c0 + i);
            let b = i64::from(p.bias) + r2;
            (self.mh[i], self.ml[i]) = (p.mult >> 16, p.mult & 0xffff);
            (self.bh[i], self.bl[i]) = ((b >> 16) as i32, (b & 0xffff) as i32);
        }
        n
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
mod tests;
