//! The fixed-point folding of export, pure arithmetic on `f64` (no libtorch, tested on its
//! own): BatchNorm's eval affine ([`bn_fold`]), stage 1 of a conv (accumulator to `raw`
//! codes, [`raw_requant`]), stage 2 (BatchNorm, ReLU and the next node's scale folded into one
//! per-channel affine, [`conv_affine`]) and a residual add ([`add_fold`]), each brought to
//! 32-bit fixed point with one shift ([`pick_shift`], [`fixed`]). The arithmetic is
//! docs/DESIGN.md's; the order of every floating-point operation is part of the file format's
//! bit-exactness.

use slb_format::RawQuant;

use crate::error::{Error, Result};

/// BatchNorm epsilon (tch's default, used by every BatchNorm of the networks).
pub const BN_EPS: f64 = 1e-5;

/// Largest shift in 1..=62 with every `|v| * 2^shift` below 2^31.
pub fn pick_shift(values: &[f64]) -> Result<u8> {
    let m = values.iter().fold(0.0f64, |a, v| a.max(v.abs()));
    if !m.is_finite() {
        return Err(Error::Export("non-finite requantization parameter".into()));
    }
    let mut s = 62u8;
    while s > 1 && (m * 2f64.powi(s as i32)).round() >= 2147483647.0 {
        s -= 1;
    }
    if (m * 2f64.powi(s as i32)).round() >= 2147483647.0 {
        return Err(Error::Export(format!(
            "requantization multiplier {m} too large for 32-bit fixed point"
        )));
    }
    Ok(s)
}

/// For a 1-bit (sign) output the stored affine only needs the right sign, but the format takes
/// the sign of the *rounded* value, so values in `[-0.5, 0)` output codes would read as
/// non-negative. Scaling the whole affine by a large power of two (the largest that still
/// fits 32-bit fixed point, at most 2^20) shrinks that band to nothing. 1 for other outputs.
pub fn sign_gain(values: &[f64], out_bits: u8) -> f64 {
    if out_bits != 1 {
        return 1.0;
    }
    let m = values.iter().fold(0.0f64, |a, v| a.max(v.abs()));
    let mut k = 20;
    while k > 0 && m * 2f64.powi(k) >= 2f64.powi(29) {
        k -= 1;
    }
    2f64.powi(k)
}

/// `values` in fixed point with `shift` fractional bits (rounded half away from zero).
pub fn fixed(values: &[f64], shift: u8) -> Vec<i32> {
    let f = 2f64.powi(shift as i32);
    values.iter().map(|v| (v * f).round() as i32).collect()
}

/// BatchNorm's eval affine `a = gamma / sqrt(var + eps)` (in f32, as libtorch computes it),
/// `b = beta - mean * a`, per channel.
pub fn bn_fold(gamma: &[f64], beta: &[f64], mean: &[f64], var: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let a: Vec<f64> = gamma
        .iter()
        .zip(var)
        .map(|(g, v)| (*g as f32 / ((*v as f32 + BN_EPS as f32).sqrt())) as f64)
        .collect();
    let b = beta
        .iter()
        .zip(mean)
        .zip(&a)
        .map(|((b, m), a)| b - m * a)
        .collect();
    (a, b)
}

/// Stage 1 of a conv with `weight_bits`-bit weights reading an input of scale `s_in`: the
/// accumulator to 8-bit `raw` codes of scale `raw_scale` and zero point `raw_zero_point`.
pub fn raw_requant(
    s_in: f64,
    weight_bits: u8,
    raw_scale: f32,
    raw_zero_point: i32,
) -> Result<RawQuant> {
    let s_raw = raw_scale as f64;
    let m1 = s_in / ((((1u32 << weight_bits) - 1) as f64) * s_raw);
    let shift = pick_shift(&[m1])?;
    Ok(RawQuant {
        mult: fixed(&[m1], shift)[0],
        shift,
        zero_point: raw_zero_point,
        bits: 8,
        scale: raw_scale,
    })
}

/// A per-channel affine in fixed point: `shift` fractional bits, one multiplier and one bias
/// per channel.
#[derive(Clone, Debug, PartialEq)]
pub struct Fixed {
    /// Fractional bits.
    pub shift: u8,
    /// Multipliers.
    pub mult: Vec<i32>,
    /// Biases.
    pub bias: Vec<i32>,
}

/// Stage 2 of a conv: its BatchNorm affine `(a, b)` (of [`bn_fold`]) on `raw` codes of scale
/// `s_raw`, into codes of the next node (scale `s_out`, `out_bits` bits).
pub fn conv_affine(a: &[f64], b: &[f64], s_raw: f64, s_out: f64, out_bits: u8) -> Result<Fixed> {
    let mut mult: Vec<f64> = a.iter().map(|a| a * s_raw / s_out).collect();
    let mut bias: Vec<f64> = b.iter().map(|b| b / s_out).collect();
    let all: Vec<f64> = mult.iter().chain(&bias).copied().collect();
    let g = sign_gain(&all, out_bits);
    mult.iter_mut().chain(bias.iter_mut()).for_each(|v| *v *= g);
    let all: Vec<f64> = mult.iter().chain(&bias).copied().collect();
    let shift = pick_shift(&all)?;
    Ok(Fixed {
        shift,
        mult: fixed(&mult, shift),
        bias: fixed(&bias, shift),
    })
}

/// The second input of a residual add.
#[derive(Clone, Copy, Debug)]
pub enum Skip<'a> {
    /// A downsample conv's `raw` codes (scale `s`) with its BatchNorm affine `(a, b)`.
    Down {
        /// BatchNorm multipliers.
        a: &'a [f64],
        /// BatchNorm biases.
        b: &'a [f64],
        /// Scale of the `raw` codes.
        s: f64,
    },
    /// The block's input itself, of scale `s` per centred code (`q - zp`, or `2q - 1` for a
    /// sign tensor).
    Identity {
        /// Scale of the block's input.
        s: f64,
    },
}

/// The fixed-point parameters of a residual add: `mult_a` per channel on the second conv's
/// `raw` codes, `mult_b` on the skip, one bias.
#[derive(Clone, Debug, PartialEq)]
pub struct AddFixed {
    /// Fractional bits.
    pub shift: u8,
    /// Multipliers of the main path.
    pub mult_a: Vec<i32>,
    /// Multipliers of the skip.
    pub mult_b: Vec<i32>,
    /// Biases.
    pub bias: Vec<i32>,
}

/// A residual add: the block's second conv (BatchNorm affine `(a2, b2)` on `raw` codes of
/// scale `s_r2`) plus `skip`, into codes of the block's output node (scale `s_out`,
/// `out_bits` bits).
pub fn add_fold(
    a2: &[f64],
    b2: &[f64],
    s_r2: f64,
    skip: Skip<'_>,
    s_out: f64,
    out_bits: u8,
) -> Result<AddFixed> {
    let mut ma: Vec<f64> = a2.iter().map(|a| a * s_r2 / s_out).collect();
    let mut bias: Vec<f64> = b2.iter().map(|b| b / s_out).collect();
    let mut mb: Vec<f64> = match skip {
        Skip::Down { a, b, s } => {
            for (acc, v) in bias.iter_mut().zip(b) {
                *acc += v / s_out;
            }
            a.iter().map(|a| a * s / s_out).collect()
        }
        Skip::Identity { s } => vec![s / s_out; ma.len()],
    };
    let all: Vec<f64> = ma.iter().chain(&mb).chain(&bias).copied().collect();
    let g = sign_gain(&all, out_bits);
    for v in ma.iter_mut().chain(mb.iter_mut()).chain(bias.iter_mut()) {
        *v *= g;
    }
    let all: Vec<f64> = ma.iter().chain(&mb).chain(&bias).copied().collect();
    let shift = pick_shift(&all)?;
    Ok(AddFixed {
        shift,
        mult_a: fixed(&ma, shift),
        mult_b: fixed(&mb, shift),
        bias: fixed(&bias, shift),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shift_is_the_largest_that_fits_32_bits() {
        assert_eq!(pick_shift(&[0.0]).unwrap(), 62);
        assert_eq!(pick_shift(&[1.0]).unwrap(), 30);
        // 0.75 * 2^31 fits; 2^31 itself does not.
        assert_eq!(pick_shift(&[0.75, -0.1]).unwrap(), 31);
        assert_eq!(pick_shift(&[-1.0]).unwrap(), 30);
        // A NaN is not refused: `f64::max` skips it (kept as export has always done it; the
        // NaN then becomes 0 in `fixed`).
        assert_eq!(pick_shift(&[f64::NAN, 1.0]).unwrap(), 30);
        assert!(pick_shift(&[f64::INFINITY]).is_err());
        assert!(pick_shift(&[2f64.powi(31)]).is_err());
        for s in [1e-3, 0.3, 7.0, 1e5] {
            let sh = pick_shift(&[s]).unwrap();
            let v = fixed(&[s], sh)[0] as f64;
            assert!(v < 2147483647.0 && v * 2.0 >= 2147483647.0 - 2.0, "{s}");
        }
    }

    #[test]
    fn fixed_rounds_half_away_from_zero() {
        assert_eq!(fixed(&[0.5, -0.5, 1.25, -1.75], 1), vec![1, -1, 3, -4]);
        assert_eq!(fixed(&[0.375], 3), vec![3]);
    }

    #[test]
    fn the_sign_gain_is_a_power_of_two_for_1_bit_outputs_only() {
        assert_eq!(sign_gain(&[1e-3, -2.0], 8), 1.0);
        assert_eq!(sign_gain(&[1e-3, -2.0], 2), 1.0);
        assert_eq!(sign_gain(&[0.5], 1), 2f64.powi(20));
        // The largest k with 1000 * 2^k below 2^29 is 19.
        assert_eq!(sign_gain(&[-1000.0], 1), 2f64.powi(19));
        assert_eq!(sign_gain(&[1e12], 1), 1.0);
    }

    #[test]
    fn batchnorm_folds_in_f32() {
        let (a, b) = bn_fold(&[2.0, 1.0], &[0.5, 0.0], &[1.0, -3.0], &[4.0, 1.0]);
        let a0 = (2.0f32 / (4.0f32 + 1e-5).sqrt()) as f64;
        let a1 = (1.0f32 / (1.0f32 + 1e-5).sqrt()) as f64;
        assert_eq!(a, vec![a0, a1]);
        assert_eq!(b, vec![0.5 - a0, 3.0 * a1]);
    }

    #[test]
    fn stage_1_maps_the_accumulator_to_raw_codes() {
        // 1-bit weights (2^1 - 1 = 1), s_in = 0.5, s_raw = 0.25: m1 = 0.5 / (1 * 0.25) = 2.
        let r = raw_requant(0.5, 1, 0.25, 7).unwrap();
        assert_eq!((r.shift, r.zero_point, r.bits, r.scale), (29, 7, 8, 0.25));
        assert_eq!(r.mult as i64, 2i64 << 29);
        // 2-bit weights divide by 3.
        let r = raw_requant(0.5, 2, 0.25, 0).unwrap();
        let m1 = 0.5 / (3.0 * 0.25);
        assert_eq!(r.mult, fixed(&[m1], r.shift)[0]);
    }

    #[test]
    fn stage_2_folds_batchnorm_into_the_next_scale() {
        let f = conv_affine(&[1.0, -0.5], &[0.25, 2.0], 0.5, 0.125, 8).unwrap();
        // mult = a * 0.5 / 0.125 = [4, -2], bias = b / 0.125 = [2, 16].
        let sh = pick_shift(&[4.0, -2.0, 2.0, 16.0]).unwrap();
        assert_eq!(f.shift, sh);
        assert_eq!(f.mult, fixed(&[4.0, -2.0], sh));
        assert_eq!(f.bias, fixed(&[2.0, 16.0], sh));
        // A sign output scales the whole affine up (the signs kept).
        let s = conv_affine(&[1e-3], &[-1e-4], 1.0, 1.0, 1).unwrap();
        let g = 2f64.powi(20);
        assert_eq!(s.mult, fixed(&[1e-3 * g], s.shift));
        assert_eq!(s.bias, fixed(&[-1e-4 * g], s.shift));
        assert!(s.bias[0] < 0);
    }

    #[test]
    fn a_residual_add_sums_both_biases_and_scales_the_skip() {
        let id = add_fold(&[1.0], &[0.5], 0.5, Skip::Identity { s: 0.25 }, 0.5, 8).unwrap();
        // ma = 1 * 0.5 / 0.5 = 1, mb = 0.25 / 0.5, bias = 0.5 / 0.5.
        let sh = pick_shift(&[1.0, 0.5, 1.0]).unwrap();
        assert_eq!(id.shift, sh);
        assert_eq!(
            (id.mult_a, id.mult_b, id.bias),
            (fixed(&[1.0], sh), fixed(&[0.5], sh), fixed(&[1.0], sh))
        );
        let down = Skip::Down {
            a: &[2.0, 4.0],
            b: &[1.0, -1.0],
            s: 0.25,
        };
        let d = add_fold(&[1.0, 1.0], &[0.0, 0.5], 1.0, down, 1.0, 8).unwrap();
        assert_eq!(d.mult_b, fixed(&[0.5, 1.0], d.shift));
        assert_eq!(d.bias, fixed(&[1.0, -0.5], d.shift));
    }
}
