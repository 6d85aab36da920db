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

/// Stage 1: the raw code of an exact accumulator.
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

/// Stage 2 on one raw code: output code.
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

/// The residual add of one element of channel `c`, on centred inputs.
#[inline]
pub(crate) fn add_code(ca: i32, cb: i32, p: &AddParams<'_>, c: usize, out: &QParams) -> u8 {
    let ma = i64::from(p.mult_a.get(c).unwrap_or(0));
    let mb = i64::from(p.mult_b.get(c).unwrap_or(0));
    let b = i64::from(p.bias.get(c).unwrap_or(0));
    let v = i64::from(ca) * ma + i64::from(cb) * mb + b;
    out.clamp_code(round_shift(v, p.shift), p.relu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_shift_is_half_up() {
        assert_eq!(round_shift(5, 1), 3); // 2.5 -> 3
        assert_eq!(round_shift(-5, 1), -2); // -2.5 -> -2 (half up)
        assert_eq!(round_shift(-6, 2), -1); // -1.5 -> -1
        assert_eq!(round_shift(7, 2), 2); // 1.75 -> 2
    }

    #[test]
    fn floor_matches_std() {
        for x in [-2.5f32, -2.0, -0.1, 0.0, 0.4, 0.5, 1.0, 1e7, -1e7, 123.999] {
            assert_eq!(libm_floor(x), x.floor(), "{x}");
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
