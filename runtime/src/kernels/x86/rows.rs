//! The drivers' row operations (bit packing, requantization, residual add) compiled for AVX2 and AVX-512.

#![allow(clippy::needless_range_loop)]

use super::*;

// ---------------------------------------------------------------------------------------------
// row operations of the drivers, compiled with AVX2 (handed out by `row_ops` only)

/// The channels of word `wd` of a group of `cin` channels, as a mask of its 64 bits.
#[inline(always)]
fn word_mask(cin: usize, wd: usize) -> u64 {
    match cin - wd * 64 {
        n if n >= 64 => u64::MAX,
        n => (1u64 << n) - 1,
    }
}

/// The driver's bit packer with AVX2 (`vpmovmskb`: 32 channels per instruction and plane):
/// the same result as `portable::pack_bits` (unpadded HWC input, `pad` codes around it, planes
/// as in CONTRACT.md).
pub(super) fn pack_bits_avx2(s: &ConvShape, x: &[u8], pad: u8, out: &mut [u64]) {
    let (h, w, c, cin, cw, ab) = (s.h(), s.w(), s.c, s.cin_g, s.cw, s.abits as usize);
    let px = portable::bit_pixel_words(s);
    // The words of a pad pixel: plane `p` is all ones over the valid channels when bit `p` of
    // `pad` is set.
    let mut chunk = [0u8; 64];
    let mut planes = [0u64; 8];
    for y in 0..s.hp {
        for xx in 0..s.wp {
            let dst = &mut out[(y * s.wp + xx) * px..(y * s.wp + xx + 1) * px];
            let inside = y >= s.ph && y < s.ph + h && xx >= s.pw && xx < s.pw + w;
            if !inside {
                for g in 0..s.groups {
                    for p in 0..ab {
                        for wd in 0..cw {
                            dst[(g * ab + p) * cw + wd] = if pad >> p & 1 == 1 {
                                word_mask(cin, wd)
                            } else {
                                0
                            };
                        }
                    }
                }
                continue;
            }
            let src = &x[((y - s.ph) * w + (xx - s.pw)) * c..][..c];
            for g in 0..s.groups {
                for wd in 0..cw {
                    let part = &src[g * cin + wd * 64..g * cin + (wd * 64 + 64).min(cin)];
                    chunk[..part.len()].copy_from_slice(part);
                    chunk[part.len()..].fill(0);
                    // SAFETY: `row_ops` hands this packer out only where AVX2 is present.
                    unsafe { planes_of_chunk_avx2(&chunk, ab, &mut planes) };
                    for p in 0..ab {
                        dst[(g * ab + p) * cw + wd] = planes[p];
                    }
                }
            }
        }
    }
}

/// The driver's bit packer with AVX-512 BW (`vptestmb`: 64 channels per instruction and
/// plane, a masked load per 64 codes instead of a copy): the same result as
/// `portable::pack_bits`.
pub(super) fn pack_bits_avx512(s: &ConvShape, x: &[u8], pad: u8, out: &mut [u64]) {
    #[target_feature(enable = "avx512f,avx512bw")]
    fn body(s: &ConvShape, x: &[u8], pad: u8, out: &mut [u64]) {
        let (h, w, c, cin, cw) = (s.h(), s.w(), s.c, s.cin_g, s.cw);
        let ab = usize::from(s.abits).min(8);
        let px = portable::bit_pixel_words(s);
        assert!(x.len() >= h * w * c && out.len() >= s.hp * s.wp * px && s.groups * cin <= c);
        // The words of one pixel at `d` from its codes at `src` (`None`: a pad pixel).
        let pixel = |src: Option<*const u8>, d: &mut [u64]| {
            for g in 0..s.groups {
                for wd in 0..cw {
                    let mask = word_mask(cin, wd);
                    // SAFETY: AVX-512 F/BW present (`row_ops` hands this packer out only then);
                    // the masked load reads the `mask.count_ones()` codes from channel
                    // `g * cin + 64 wd` of the pixel at `src`, inside `x` (asserted above).
                    let v = unsafe {
                        match src {
                            Some(p) => {
                                _mm512_maskz_loadu_epi8(mask, p.add(g * cin + wd * 64) as *const _)
                            }
                            None => _mm512_maskz_set1_epi8(mask, pad as i8),
                        }
                    };
                    for (p, word) in d[g * ab * cw + wd..]
                        .iter_mut()
                        .step_by(cw)
                        .take(ab)
                        .enumerate()
                    {
                        *word = _mm512_test_epi8_mask(v, _mm512_set1_epi8((1u8 << p) as i8));
                    }
                }
            }
        };
        for (y, row) in out.chunks_exact_mut(s.wp * px).take(s.hp).enumerate() {
            let inside = y >= s.ph && y < s.ph + h;
            for (xx, d) in row.chunks_exact_mut(px).enumerate() {
                let src = (inside && xx >= s.pw && xx < s.pw + w)
                    // SAFETY: the pixel's codes start inside `x` (asserted above).
                    .then(|| unsafe { x.as_ptr().add(((y - s.ph) * w + xx - s.pw) * c) });
                pixel(src, d);
            }
        }
    }
    // SAFETY: `row_ops` hands this packer out only where AVX-512 F/BW is present.
    unsafe { body(s, x, pad, out) }
}

/// `w[r]` = bit `r` of each of the 64 codes, for the planes `r < ab` (the others untouched).
///
/// # Safety
/// The CPU supports AVX2.
#[target_feature(enable = "avx2")]
unsafe fn planes_of_chunk_avx2(chunk: &[u8; 64], ab: usize, w: &mut [u64; 8]) {
    // SAFETY: `chunk` holds 64 bytes: two 32-byte loads.
    let (lo, hi) = unsafe {
        (
            _mm256_loadu_si256(chunk.as_ptr() as *const _),
            _mm256_loadu_si256(chunk.as_ptr().add(32) as *const _),
        )
    };
    macro_rules! plane {
        ($r:literal) => {{
            if $r >= ab {
                return;
            }
            let l = _mm256_movemask_epi8(_mm256_slli_epi16::<{ 7 - $r }>(lo)) as u32 as u64;
            let h = _mm256_movemask_epi8(_mm256_slli_epi16::<{ 7 - $r }>(hi)) as u32 as u64;
            w[$r] = l | h << 32;
        }};
    }
    plane!(0);
    plane!(1);
    plane!(2);
    plane!(3);
    plane!(4);
    plane!(5);
    plane!(6);
    plane!(7);
}

/// `quant::requant`, `quant::add_rows` and `quant::step_rows` (same results) compiled with the
/// target features `$features`, so that LLVM vectorises their arithmetic as wide as the CPU
/// allows: three plain functions (`$requant`, `$add_rows`, `$step_rows`) for [`RowOps`],
/// which `row_ops` hands out only where those features are present.
macro_rules! row_ops_with {
    ($features:literal, $requant:ident, $add_rows:ident, $step_rows:ident) => {
        pub(super) fn $step_rows(steps: &Steps<'_>, acc: &[i32], dst: &mut [u8]) {
            #[target_feature(enable = $features)]
            fn body(steps: &Steps<'_>, acc: &[i32], dst: &mut [u8]) {
                quant::step_rows(steps, acc, dst);
            }
            // SAFETY: `row_ops` hands this function out only where `$features` are present.
            unsafe { body(steps, acc, dst) }
        }

        pub(super) fn $requant(
            raw: &RawQuant,
            aff: Option<&ChannelAffine<'_>>,
            outq: &QParams,
            cout: usize,
            acc: &[i32],
            dst: &mut [u8],
        ) {
            #[target_feature(enable = $features)]
            fn body(
                raw: &RawQuant,
                aff: Option<&ChannelAffine<'_>>,
                outq: &QParams,
                cout: usize,
                acc: &[i32],
                dst: &mut [u8],
            ) {
                quant::requant(raw, aff, outq, cout, acc, dst);
            }
            // SAFETY: `row_ops` hands this function out only where `$features` are present.
            unsafe { body(raw, aff, outq, cout, acc, dst) }
        }

        #[allow(clippy::too_many_arguments)]
        pub(super) fn $add_rows(
            a: &[u8],
            b: &[u8],
            qa: &QParams,
            qb: &QParams,
            p: &AddParams<'_>,
            qo: &QParams,
            c: usize,
            out: &mut [u8],
        ) {
            #[allow(clippy::too_many_arguments)]
            #[target_feature(enable = $features)]
            fn body(
                a: &[u8],
                b: &[u8],
                qa: &QParams,
                qb: &QParams,
                p: &AddParams<'_>,
                qo: &QParams,
                c: usize,
                out: &mut [u8],
            ) {
                quant::add_rows(a, b, qa, qb, p, qo, c, out);
            }
            // SAFETY: as above.
            unsafe { body(a, b, qa, qb, p, qo, c, out) }
        }
    };
}

// AVX2: `vpmuldq`, `vpcmpgtq`, 4 lanes.
row_ops_with!("avx2", requant_avx2, add_rows_avx2, step_rows_avx2);
// AVX-512 F/BW/DQ/VL: 8 lanes.
row_ops_with!(
    "avx2,avx512f,avx512bw,avx512dq,avx512vl",
    requant_avx512,
    add_rows_avx512,
    step_rows_avx512
);
