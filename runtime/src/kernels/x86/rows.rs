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
// AVX-512 F/BW/DQ/VL: 8 lanes (the requantization where `requant_lanes32_avx512` does not
// apply).
row_ops_with!(
    "avx2,avx512f,avx512bw,avx512dq,avx512vl",
    requant_avx512_auto,
    add_rows_avx512,
    step_rows_avx512
);

/// The driver's requantization with AVX-512: [`requant_lanes32_avx512`] where 32-bit lanes are
/// exact (`quant::lanes32_fit`, every trained model's layers), else `quant::requant` compiled
/// for AVX-512; the same result as `quant::requant` either way.
pub(super) fn requant_avx512(
    raw: &RawQuant,
    aff: Option<&ChannelAffine<'_>>,
    outq: &QParams,
    cout: usize,
    acc: &[i32],
    dst: &mut [u8],
) {
    if !quant::lanes32_fit(raw, aff) {
        return requant_avx512_auto(raw, aff, outq, cout, acc, dst);
    }
    let l = quant::Lanes32::of(raw, aff, outq);
    // SAFETY: `row_ops` hands this function out only where AVX-512 F/BW/DQ/VL is present.
    unsafe { requant_lanes32_avx512(&l, aff, cout, acc, dst) }
}

/// `quant::requant_lanes32` written out in AVX-512 (LLVM's vectorisation of it widens the
/// products to 64 bits and narrows each vector with a `vpmovdb` store): the high word of
/// `acc * m1` from two `vpmuldq` and a blend, stage 2 in 16-bit halves as there, and 64
/// channels packed to bytes by `vpackssdw`, `vpackuswb` and one `vpermd` (the codes are
/// clamped to `0..=255` first, so the saturating packs are exact). Stage 2's channels in blocks
/// of `quant::RQ_BLOCK` (64) per pixel; channels past a multiple of 16 masked.
///
/// # Safety
/// AVX-512 F/BW present; `l` from parameters where `quant::lanes32_fit` holds.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn requant_lanes32_avx512(
    l: &quant::Lanes32,
    aff: Option<&ChannelAffine<'_>>,
    cout: usize,
    acc: &[i32],
    dst: &mut [u8],
) {
    let rq = Rq512::new(l);
    let Some(aff) = aff else {
        let n = dst.len().min(acc.len());
        let none = [[_mm512_setzero_si512(); 4]; 4];
        for i in (0..n).step_by(64) {
            // SAFETY: AVX-512 F/BW present; elements `i .. i + 64` (or to `n`) of both slices.
            unsafe {
                rq.codes::<STAGE1>(
                    &none,
                    acc.as_ptr().add(i),
                    dst.as_mut_ptr().add(i),
                    (n - i).min(64),
                )
            };
        }
        return;
    };
    if cout == 0 {
        return;
    }
    let npx = (dst.len() / cout).min(acc.len() / cout);
    let mut blk = quant::Lanes32Block::default();
    let mut c0 = 0;
    while c0 < cout {
        let n = blk.load(aff, c0, cout);
        let mut par = [[_mm512_setzero_si512(); 4]; 4];
        for k in 0..4 {
            for (p, v) in par[k].iter_mut().zip([&blk.mh, &blk.ml, &blk.bh, &blk.bl]) {
                // SAFETY: `k < 4`: 16 i32s inside the block's array.
                *p = unsafe { _mm512_loadu_si512(v.as_ptr().add(16 * k) as *const _) };
            }
        }
        for px in 0..npx {
            let o = px * cout + c0;
            // SAFETY: AVX-512 F/BW present; `o + n <= npx * cout`, inside both slices.
            unsafe {
                let (a, d) = (acc.as_ptr().add(o), dst.as_mut_ptr().add(o));
                if l.sign {
                    rq.codes::<SIGN>(&par, a, d, n)
                } else {
                    rq.codes::<STAGE2>(&par, a, d, n)
                }
            }
        }
        c0 += n;
    }
}

/// [`Rq512::codes`]: stage 1 only (no affine).
const STAGE1: u8 = 0;
/// [`Rq512::codes`]: both stages, codes out.
const STAGE2: u8 = 1;
/// [`Rq512::codes`]: both stages, the sign out (1-bit outputs).
const SIGN: u8 = 2;

/// The constants of [`requant_lanes32_avx512`] in vectors.
struct Rq512 {
    m1: __m512i,
    c1: __m512i,
    sh1: __m128i,
    zp1: __m512i,
    qmax1: __m512i,
    sh2: __m128i,
    zp2: __m512i,
    lo2: __m512i,
    hi2: __m512i,
}

impl Rq512 {
    /// # Safety
    /// AVX-512 F present.
    #[inline(always)]
    unsafe fn new(l: &quant::Lanes32) -> Rq512 {
        // SAFETY: AVX-512 F present (caller).
        unsafe {
            Rq512 {
                m1: _mm512_set1_epi32(l.m1),
                c1: _mm512_set1_epi32(l.c1),
                sh1: _mm_cvtsi32_si128(l.sh1 as i32),
                zp1: _mm512_set1_epi32(l.zp1),
                qmax1: _mm512_set1_epi32(l.qmax1),
                sh2: _mm_cvtsi32_si128(l.sh2 as i32),
                zp2: _mm512_set1_epi32(l.zp2),
                lo2: _mm512_set1_epi32(l.lo2),
                hi2: _mm512_set1_epi32(l.hi2),
            }
        }
    }

    /// The codes of 16 accumulators: stage 1 (the raw codes, clamped), then with `MODE`
    /// [`STAGE2`] or [`SIGN`] stage 2 with channel parameters `[mh, ml, bh, bl]`.
    ///
    /// # Safety
    /// AVX-512 F present.
    #[inline(always)]
    unsafe fn code<const MODE: u8>(&self, a: __m512i, [mh, ml, bh, bl]: [__m512i; 4]) -> __m512i {
        // SAFETY: AVX-512 F present (caller).
        unsafe {
            let zero = _mm512_setzero_si512();
            let even = _mm512_srli_epi64::<32>(_mm512_mul_epi32(a, self.m1));
            let odd = _mm512_mul_epi32(_mm512_srli_epi64::<32>(a), self.m1);
            let h = _mm512_mask_blend_epi32(0xaaaa, even, odd);
            let q = _mm512_add_epi32(
                _mm512_sra_epi32(_mm512_add_epi32(h, self.c1), self.sh1),
                self.zp1,
            );
            let q = _mm512_min_epi32(_mm512_max_epi32(q, zero), self.qmax1);
            if MODE == STAGE1 {
                return q;
            }
            let d = _mm512_sub_epi32(q, self.zp1);
            let y = _mm512_add_epi32(_mm512_mullo_epi32(d, ml), bl);
            let x = _mm512_add_epi32(
                _mm512_add_epi32(_mm512_mullo_epi32(d, mh), bh),
                _mm512_srai_epi32::<16>(y),
            );
            if MODE == SIGN {
                return _mm512_maskz_mov_epi32(
                    _mm512_cmpge_epi32_mask(x, zero),
                    _mm512_set1_epi32(1),
                );
            }
            let q = _mm512_add_epi32(_mm512_sra_epi32(x, self.sh2), self.zp2);
            _mm512_min_epi32(_mm512_max_epi32(q, self.lo2), self.hi2)
        }
    }

    /// The codes of the `n <= 64` accumulators at `a` to `d` ([`Rq512::code`], vector `k` of
    /// 16 with `par[k]`): 64 through two saturating packs and a `vpermd` (dword `4 k + L` of
    /// the packed bytes is vector `k`'s lane `L`), fewer by masked `vpmovdb` stores.
    ///
    /// # Safety
    /// AVX-512 F/BW present; `n` i32s readable at `a`, `n` bytes writable at `d`.
    #[inline(always)]
    unsafe fn codes<const MODE: u8>(
        &self,
        par: &[[__m512i; 4]; 4],
        a: *const i32,
        d: *mut u8,
        n: usize,
    ) {
        // SAFETY: AVX-512 F/BW present; the (masked) loads and stores touch only the `n`
        // elements (caller).
        unsafe {
            if n == 64 {
                let mut v = [_mm512_setzero_si512(); 4];
                for k in 0..4 {
                    v[k] = self.code::<MODE>(_mm512_loadu_si512(a.add(16 * k) as *const _), par[k]);
                }
                let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
                let lo = _mm512_packs_epi32(v[0], v[1]);
                let hi = _mm512_packs_epi32(v[2], v[3]);
                let bytes = _mm512_permutexvar_epi32(order, _mm512_packus_epi16(lo, hi));
                _mm512_storeu_si512(d as *mut _, bytes);
            } else {
                for k in 0..n.div_ceil(16) {
                    let m = lane_mask(n - 16 * k);
                    let v = self.code::<MODE>(
                        _mm512_maskz_loadu_epi32(m, a.add(16 * k) as *const _),
                        par[k],
                    );
                    _mm512_mask_cvtepi32_storeu_epi8(d.add(16 * k) as *mut _, m, v);
                }
            }
        }
    }
}
