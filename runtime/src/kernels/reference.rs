//! Reference twins: plain loop nests written straight from the format's semantics
//! (`slb_format::Conv`, `CodeReader::numerator`), never optimized and never deleted.

use slb_format::{CodeReader, Conv};

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
