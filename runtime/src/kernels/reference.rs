//! Reference twins: plain loop nests written straight from the format's semantics
//! (`slb_format::Conv`, `CodeReader::numerator`), never optimized and never deleted.

use slb_format::{CodeReader, Conv};

#[cfg(test)]
use super::portable::bit_pixel_words;
use super::ConvShape;
use crate::quant::QParams;

/// The exact accumulator of a conv for every output: `acc[(oy*ow + ox)*cout + o] =
/// sum num[o][ky][kx][i] * centred(q)` over taps inside the (unpadded) input; padded taps hold
/// real 0 and contribute nothing. `x` is the HWC input (`s.h() x s.w() x s.c` codes).
pub(crate) fn conv_acc(conv: &Conv<'_>, s: &ConvShape, inq: &QParams, x: &[u8], acc: &mut [i32]) {
    let codes = CodeReader::new(conv);
    let (h, w) = (s.h(), s.w());
    for oy in 0..s.oh {
        for ox in 0..s.ow {
            for o in 0..s.cout {
                let g = o / s.cout_g;
                let mut sum = 0i32;
                for ky in 0..s.kh {
                    for kx in 0..s.kw {
                        // Position in the unpadded input (may be outside: a padded tap).
                        let iy = (oy * s.sh + ky) as isize - s.ph as isize;
                        let ix = (ox * s.sw + kx) as isize - s.pw as isize;
                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                            continue;
                        }
                        for i in 0..s.cin_g {
                            let c = g * s.cin_g + i;
                            let q = x[(iy as usize * w + ix as usize) * s.c + c];
                            sum += codes.numerator(o, ky, kx, i) * inq.centred(q);
                        }
                    }
                }
                acc[(oy * s.ow + ox) * s.cout + o] = sum;
            }
        }
    }
}

/// Reference float convolution (the float engine's twin, used by its tests): `out[(oy*ow+ox)*cout + o] =
/// sum w_real * x` over taps inside the input, `w_real = num / (2^b - 1)`.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn conv_f32(conv: &Conv<'_>, s: &ConvShape, x: &[f32], out: &mut [f32]) {
    let codes = CodeReader::new(conv);
    let den = ((1i32 << s.wbits) - 1) as f32;
    let (h, w) = (s.h(), s.w());
    for oy in 0..s.oh {
        for ox in 0..s.ow {
            for o in 0..s.cout {
                let g = o / s.cout_g;
                let mut sum = 0f32;
                for ky in 0..s.kh {
                    for kx in 0..s.kw {
                        let iy = (oy * s.sh + ky) as isize - s.ph as isize;
                        let ix = (ox * s.sw + kx) as isize - s.pw as isize;
                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                            continue;
                        }
                        for i in 0..s.cin_g {
                            let c = g * s.cin_g + i;
                            let v = x[(iy as usize * w + ix as usize) * s.c + c];
                            sum += codes.numerator(o, ky, kx, i) as f32 / den * v;
                        }
                    }
                }
                out[(oy * s.ow + ox) * s.cout + o] = sum;
            }
        }
    }
}

#[cfg(test)]
/// Packs an HWC u8 tensor into padded bit planes (CONTRACT.md), pad pixels holding `pad`: one
/// bit at a time (the twin of `portable::pack_bits`).
pub(crate) fn pack_bits_ref(s: &ConvShape, x: &[u8], pad: u8, out: &mut [u64]) {
    let (h, w, c) = (s.h(), s.w(), s.c);
    let ab = s.abits as usize;
    let cw = s.cw;
    let px = bit_pixel_words(s);
    // The words of a pad pixel, built once per group/plane.
    for y in 0..s.hp {
        for xx in 0..s.wp {
            let Some(dst) = out.get_mut((y * s.wp + xx) * px..(y * s.wp + xx + 1) * px) else {
                return;
            };
            dst.fill(0);
            let inside = y >= s.ph && y < s.ph + h && xx >= s.pw && xx < s.pw + w;
            let src = if inside {
                let p = ((y - s.ph) * w + (xx - s.pw)) * c;
                x.get(p..p + c)
            } else {
                None
            };
            for g in 0..s.groups {
                for i in 0..s.cin_g {
                    let q = match src {
                        Some(sv) => sv[g * s.cin_g + i],
                        None => pad,
                    };
                    if q == 0 {
                        continue;
                    }
                    let bit = 1u64 << (i % 64);
                    for p in 0..ab {
                        if (q >> p) & 1 == 1 {
                            dst[(g * ab + p) * cw + i / 64] |= bit;
                        }
                    }
                }
            }
        }
    }
}
