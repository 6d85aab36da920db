//! Bit planes: the `Popcount` primitive (AVX2 nibble table, AVX-512 `vpopcntq`) and the XNOR / bit-serial tile driver.

#![allow(clippy::needless_range_loop)]

use super::*;

// ---------------------------------------------------------------------------------------------
// bit planes: the popcount primitive and the XNOR / bit-serial driver

/// A popcount primitive: one activation word (broadcast) XOR or AND the 8 weight words of a
/// block, counted per lane. Counts of a run of words may be kept in narrow lanes
/// ([`Popcount::Cnt`]) and widened into `u64` lanes ([`Popcount::Sum`]) every [`Popcount::RUN`]
/// words.
trait Popcount {
    /// A block's 8 weight words.
    type W: Copy;
    /// A broadcast activation word.
    type X: Copy;
    /// Counts of a run.
    type Cnt: Copy;
    /// 8 `u64` lanes.
    type Sum: Copy;
    /// Words a run may hold (`usize::MAX`: no limit, the counts are already wide).
    const RUN: usize;
    /// # Safety
    /// The ISA is present (so for every method of this trait).
    unsafe fn zero() -> Self::Sum;
    /// # Safety
    /// 8 readable `u64`s at `w` (any alignment).
    unsafe fn load_w(w: *const u64) -> Self::W;
    /// # Safety
    /// The ISA is present.
    unsafe fn splat(x: u64) -> Self::X;
    /// Starts a run on top of `sum`.
    ///
    /// # Safety
    /// The ISA is present.
    unsafe fn begin(sum: Self::Sum) -> Self::Cnt;
    /// `cnt += popcount(x ^ w)` (`XNOR`) or `popcount(x & w)` per lane.
    ///
    /// # Safety
    /// The ISA is present.
    unsafe fn count<const XNOR: bool>(cnt: Self::Cnt, x: Self::X, w: Self::W) -> Self::Cnt;
    /// Ends a run started on `sum`.
    ///
    /// # Safety
    /// The ISA is present.
    unsafe fn end(sum: Self::Sum, cnt: Self::Cnt) -> Self::Sum;
    /// `tot + (sum << sh)` per lane.
    ///
    /// # Safety
    /// The ISA is present.
    unsafe fn shift_add(tot: Self::Sum, sum: Self::Sum, sh: usize) -> Self::Sum;
    /// Writes `k - 2 * lane` (`neg`) or `k + 2 * lane` of the first `dst.len()` (at most 8)
    /// lanes of `sum` into `dst`, truncated to `i32` (`as i32`), with vector stores: a sum
    /// stored to memory and read back lane by lane costs as much as a short tile's popcounts.
    ///
    /// # Safety
    /// The ISA is present.
    unsafe fn store(sum: Self::Sum, k: i64, neg: bool, dst: &mut [i32]);
}

/// AVX2: byte-wise `vpshufb` nibble-table counts summed in `u8` lanes for up to 31 words, then
/// widened with `vpsadbw`; a block is two `u64x4` halves.
struct Avx2Popcount;

impl Avx2Popcount {
    /// Byte-wise popcount of `v`, each byte `0..=8`.
    ///
    /// # Safety
    /// AVX2 present.
    #[inline(always)]
    unsafe fn popcnt8(v: __m256i) -> __m256i {
        // SAFETY: AVX2 present (caller).
        unsafe {
            let lut = _mm256_setr_epi8(
                0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3,
                2, 3, 3, 4,
            );
            let low = _mm256_set1_epi8(0x0f);
            let lo = _mm256_and_si256(v, low);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), low);
            _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi))
        }
    }
}

impl Popcount for Avx2Popcount {
    type W = Pair;
    type X = __m256i;
    type Cnt = Pair;
    type Sum = Pair;
    // Each byte count grows by at most 8 a word: 31 words stay below 256.
    const RUN: usize = 31;
    #[inline(always)]
    unsafe fn zero() -> Self::Sum {
        // SAFETY: AVX2 present (caller).
        unsafe { pair_zero() }
    }
    #[inline(always)]
    unsafe fn load_w(w: *const u64) -> Self::W {
        // SAFETY: 8 readable u64s at `w` (caller).
        unsafe { pair_load(w as *const u8) }
    }
    #[inline(always)]
    unsafe fn splat(x: u64) -> Self::X {
        // SAFETY: AVX2 present (caller).
        unsafe { _mm256_set1_epi64x(x as i64) }
    }
    #[inline(always)]
    unsafe fn begin(_sum: Self::Sum) -> Self::Cnt {
        // SAFETY: AVX2 present (caller).
        unsafe { pair_zero() }
    }
    #[inline(always)]
    unsafe fn count<const XNOR: bool>(cnt: Self::Cnt, x: Self::X, w: Self::W) -> Self::Cnt {
        let mut out = cnt;
        for h in 0..2 {
            // SAFETY: AVX2 present (caller).
            unsafe {
                let m = if XNOR {
                    _mm256_xor_si256(x, w[h])
                } else {
                    _mm256_and_si256(x, w[h])
                };
                out[h] = _mm256_add_epi8(cnt[h], Self::popcnt8(m));
            }
        }
        out
    }
    #[inline(always)]
    unsafe fn end(sum: Self::Sum, cnt: Self::Cnt) -> Self::Sum {
        // SAFETY: AVX2 present (caller).
        unsafe {
            let zero = _mm256_setzero_si256();
            [
                _mm256_add_epi64(sum[0], _mm256_sad_epu8(cnt[0], zero)),
                _mm256_add_epi64(sum[1], _mm256_sad_epu8(cnt[1], zero)),
            ]
        }
    }
    #[inline(always)]
    unsafe fn shift_add(tot: Self::Sum, sum: Self::Sum, sh: usize) -> Self::Sum {
        // SAFETY: AVX2 present (caller).
        unsafe {
            let sh = _mm_cvtsi64_si128(sh as i64);
            [
                _mm256_add_epi64(tot[0], _mm256_sll_epi64(sum[0], sh)),
                _mm256_add_epi64(tot[1], _mm256_sll_epi64(sum[1], sh)),
            ]
        }
    }
    /// The low words of the 8 lanes gathered into one vector (`vpermd`) and stored at once
    /// (through a stack copy for fewer than 8: AMD's masked stores are slow).
    #[inline(always)]
    unsafe fn store(sum: Self::Sum, k: i64, neg: bool, dst: &mut [i32]) {
        // SAFETY: AVX2 present (caller); the full store writes 8 lanes into a `dst` of 8.
        unsafe {
            let kv = _mm256_set1_epi64x(k);
            let (a, b) = (
                _mm256_slli_epi64::<1>(sum[0]),
                _mm256_slli_epi64::<1>(sum[1]),
            );
            let (a, b) = if neg {
                (_mm256_sub_epi64(kv, a), _mm256_sub_epi64(kv, b))
            } else {
                (_mm256_add_epi64(kv, a), _mm256_add_epi64(kv, b))
            };
            let low = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
            let v = _mm256_permute2x128_si256::<0x20>(
                _mm256_permutevar8x32_epi32(a, low),
                _mm256_permutevar8x32_epi32(b, low),
            );
            if dst.len() == 8 {
                _mm256_storeu_si256(dst.as_mut_ptr() as *mut _, v);
            } else {
                let mut t = [0i32; 8];
                _mm256_storeu_si256(t.as_mut_ptr() as *mut _, v);
                for (d, &x) in dst.iter_mut().zip(&t) {
                    *d = x;
                }
            }
        }
    }
}

/// AVX-512 VPOPCNTDQ: `vpopcntq` straight into `u64` lanes (one run per plane pair).
struct Avx512Popcount;

impl Popcount for Avx512Popcount {
    type W = __m512i;
    type X = __m512i;
    type Cnt = __m512i;
    type Sum = __m512i;
    const RUN: usize = usize::MAX;
    #[inline(always)]
    unsafe fn zero() -> Self::Sum {
        // SAFETY: AVX-512 F present (caller).
        unsafe { _mm512_setzero_si512() }
    }
    #[inline(always)]
    unsafe fn load_w(w: *const u64) -> Self::W {
        // SAFETY: 8 readable u64s at `w` (caller).
        unsafe { _mm512_loadu_si512(w as *const _) }
    }
    #[inline(always)]
    unsafe fn splat(x: u64) -> Self::X {
        // SAFETY: AVX-512 F present (caller).
        unsafe { _mm512_set1_epi64(x as i64) }
    }
    #[inline(always)]
    unsafe fn begin(sum: Self::Sum) -> Self::Cnt {
        sum
    }
    #[inline(always)]
    unsafe fn count<const XNOR: bool>(cnt: Self::Cnt, x: Self::X, w: Self::W) -> Self::Cnt {
        // SAFETY: AVX-512 F/VPOPCNTDQ present (caller).
        unsafe {
            let m = if XNOR {
                _mm512_xor_si512(x, w)
            } else {
                _mm512_and_si512(x, w)
            };
            _mm512_add_epi64(cnt, _mm512_popcnt_epi64(m))
        }
    }
    #[inline(always)]
    unsafe fn end(_sum: Self::Sum, cnt: Self::Cnt) -> Self::Sum {
        cnt
    }
    #[inline(always)]
    unsafe fn shift_add(tot: Self::Sum, sum: Self::Sum, sh: usize) -> Self::Sum {
        // SAFETY: AVX-512 F present (caller).
        unsafe {
            let sh = _mm_cvtsi64_si128(sh as i64);
            _mm512_add_epi64(tot, _mm512_sll_epi64(sum, sh))
        }
    }
    /// One `vpmovqd` with a mask.
    #[inline(always)]
    unsafe fn store(sum: Self::Sum, k: i64, neg: bool, dst: &mut [i32]) {
        let n = dst.len().min(8);
        let m: __mmask8 = if n == 8 { 0xff } else { (1u8 << n) - 1 };
        // SAFETY: AVX-512 F present (caller); the masked store writes the first `n` lanes,
        // inside `dst`.
        unsafe {
            let two = _mm512_slli_epi64::<1>(sum);
            let kv = _mm512_set1_epi64(k);
            let r = if neg {
                _mm512_sub_epi64(kv, two)
            } else {
                _mm512_add_epi64(kv, two)
            };
            _mm512_mask_cvtepi64_storeu_epi32(dst.as_mut_ptr() as *mut _, m, r);
        }
    }
}

/// The XNOR (`XNOR`) or bit-serial kernel over the popcount primitive `I`.
struct Bits<I, const XNOR: bool>(PhantomData<I>);

/// An XNOR or bit-serial kernel call.
type BitsCall<'a, I, const XNOR: bool> = Call<'a, u64, Bits<I, XNOR>>;

impl<I: Popcount, const XNOR: bool> BitsCall<'_, I, XNOR> {
    /// `sum q` over the window at `base` (the valid channels of group planes).
    fn act_sum(&self, base: usize) -> i64 {
        let s = self.s;
        let (nw, px) = (s.cw, portable::bit_pixel_words(s));
        let mut q = 0i64;
        for ky in 0..s.kh {
            for kx in 0..s.kw {
                let at = base + (ky * s.wp + kx) * px;
                for (i, v) in self.x[at..at + s.abits as usize * nw].iter().enumerate() {
                    q += i64::from(v.count_ones()) << (i / nw);
                }
            }
        }
        q
    }

    /// A tile's sums `tot` (pixels `p0..p0 + P` whose windows start at `base`, blocks
    /// `b0..b0 + NB` of group `g`) into the accumulators: XNOR `taps - 2t`; bit-serial
    /// `2t - (2^wb - 1) * sum q`.
    ///
    /// # Safety
    /// The ISA is present.
    #[inline(always)]
    unsafe fn store_tile<const NB: usize, const P: usize>(
        &self,
        acc: &mut [i32],
        tot: &[[I::Sum; NB]; P],
        base: &[usize; P],
        g: usize,
        b0: usize,
        p0: usize,
    ) {
        let s = self.s;
        let taps = (s.kh * s.kw * s.cin_g) as i64;
        let wmax = (1i64 << s.wbits) - 1;
        for j in 0..P {
            let asum = if XNOR { 0 } else { self.act_sum(base[j]) };
            let row = (p0 + j - self.first) * s.cout + g * s.cout_g;
            for b in 0..NB {
                let o0 = (b0 + b) * lanes8::LANES;
                let n = (s.cout_g - o0).min(lanes8::LANES);
                let (k, neg) = if XNOR {
                    (taps, true)
                } else {
                    (-wmax * asum, false)
                };
                // SAFETY: the ISA is present (caller).
                unsafe { I::store(tot[j][b], k, neg, &mut acc[row + o0..row + o0 + n]) };
            }
        }
    }
}

impl<I: Popcount, const XNOR: bool> Tile for BitsCall<'_, I, XNOR> {
    #[inline(always)]
    unsafe fn tile<const NB: usize, const P: usize>(
        &self,
        acc: &mut [i32],
        g: usize,
        b0: usize,
        p0: usize,
    ) {
        let s = self.s;
        let (nw, wb, ab) = (s.cw, s.wbits as usize, s.abits as usize);
        let px = portable::bit_pixel_words(s);
        let bw = lanes8::block_words(s);
        let mut base = [0usize; P];
        for j in 0..P {
            base[j] = window_origin(s, p0 + j) * px + g * ab * nw;
        }
        let x = self.x.as_ptr();
        // SAFETY: block `b0` of group `g` lies inside the prepared weights (caller).
        let wp = unsafe {
            (self.w.as_ptr() as *const u64).add((g * s.cout_g.div_ceil(lanes8::LANES) + b0) * bw)
        };
        // SAFETY: the ISA is present (caller).
        let mut tot = [[unsafe { I::zero() }; NB]; P];
        let pairs = if XNOR { 1 } else { wb * ab };
        for pr in 0..pairs {
            let (p, r) = (pr / ab, pr % ab);
            // SAFETY: the ISA is present (caller).
            let (mut sum, mut cnt) =
                unsafe { ([[I::zero(); NB]; P], [[I::begin(I::zero()); NB]; P]) };
            let mut pending = 0;
            for ky in 0..s.kh {
                for kx in 0..s.kw {
                    let tap = (ky * s.wp + kx) * px + r * nw;
                    let mut xp = [x; P];
                    for j in 0..P {
                        // SAFETY: plane `r` of the tap's input pixel lies inside the planes.
                        xp[j] = unsafe { x.add(base[j] + tap) };
                    }
                    // SAFETY: plane `p` of the tap inside block `b0` of the weights.
                    let wt = unsafe { wp.add(((ky * s.kw + kx) * nw * wb + p) * lanes8::LANES) };
                    for wd in 0..nw {
                        // SAFETY: word `wd` of plane `p` of the tap in blocks `b0 .. b0 + NB`
                        // lies inside the weights; word `wd` of the pixels' planes inside the
                        // planes.
                        unsafe {
                            let at = wd * wb * lanes8::LANES;
                            let mut wv = [I::load_w(wt.add(at)); NB];
                            for b in 1..NB {
                                wv[b] = I::load_w(wt.add(b * bw + at));
                            }
                            for j in 0..P {
                                let xv = I::splat(xp[j].add(wd).read());
                                for b in 0..NB {
                                    cnt[j][b] = I::count::<XNOR>(cnt[j][b], xv, wv[b]);
                                }
                            }
                        }
                        pending += 1;
                        if I::RUN != usize::MAX && pending == I::RUN {
                            for j in 0..P {
                                for b in 0..NB {
                                    // SAFETY: the ISA is present (caller).
                                    unsafe {
                                        sum[j][b] = I::end(sum[j][b], cnt[j][b]);
                                        cnt[j][b] = I::begin(sum[j][b]);
                                    }
                                }
                            }
                            pending = 0;
                        }
                    }
                }
            }
            for j in 0..P {
                for b in 0..NB {
                    // SAFETY: the ISA is present (caller).
                    unsafe {
                        sum[j][b] = I::end(sum[j][b], cnt[j][b]);
                        tot[j][b] = I::shift_add(tot[j][b], sum[j][b], p + r);
                    }
                }
            }
        }
        // SAFETY: the ISA is present (caller).
        unsafe { self.store_tile(acc, &tot, &base, g, b0, p0) };
    }
}

/// A bit kernel's driver for one ISA (XNOR or bit-serial).
type BitsImpl = unsafe fn(&ConvShape, &[u64], &[u8], usize, usize, &mut [i32]);

/// Checks a bit-plane call, runs XNOR (W1A1) or bit-serial, then the sign fix for 1-bit
/// inputs of wider weights.
///
/// # Safety
/// The instructions the drivers need are present.
unsafe fn bits_call(
    s: &ConvShape,
    x: &[u64],
    w: &[u8],
    y0: usize,
    y1: usize,
    acc: &mut [i32],
    (xnor, bitserial): (BitsImpl, BitsImpl),
) {
    s.assert_call(
        x.len(),
        s.bit_input_len(),
        w.len(),
        lanes8::prepared_len(s),
        y0,
        y1,
        acc.len(),
    );
    let imp = if s.wbits == 1 && s.abits == 1 {
        xnor
    } else {
        bitserial
    };
    // SAFETY: the ISA is present (caller) and the call matches the contract (just checked).
    unsafe { imp(s, x, w, y0, y1, acc) };
    if s.abits == 1 && s.wbits != 1 {
        sign_fix(s, &w[lanes8::weight_bytes(s)..], acc);
    }
}

/// [`KernelKind::XnorAvx2`] and [`KernelKind::BitSerialAvx2`].
pub(super) fn bits_avx2(s: &ConvShape, x: &[u64], w: &[u8], y0: usize, y1: usize, acc: &mut [i32]) {
    let imp = (
        bits_avx2_impl::<true> as BitsImpl,
        bits_avx2_impl::<false> as BitsImpl,
    );
    // SAFETY: `by_kind` hands this kernel out only where AVX2 is present.
    unsafe { bits_call(s, x, w, y0, y1, acc, imp) }
}

/// [`KernelKind::XnorAvx512`] and [`KernelKind::BitSerialAvx512`].
pub(super) fn bits_avx512(
    s: &ConvShape,
    x: &[u64],
    w: &[u8],
    y0: usize,
    y1: usize,
    acc: &mut [i32],
) {
    let imp = (
        bits_avx512_impl::<true> as BitsImpl,
        bits_avx512_impl::<false> as BitsImpl,
    );
    // SAFETY: `by_kind` hands this kernel out only where AVX-512 F/BW/VPOPCNTDQ is present.
    unsafe { bits_call(s, x, w, y0, y1, acc, imp) }
}

/// # Safety
/// AVX2 present; the call passed [`ConvShape::assert_call`].
#[target_feature(enable = "avx2")]
unsafe fn bits_avx2_impl<const XNOR: bool>(
    s: &ConvShape,
    x: &[u64],
    w: &[u8],
    y0: usize,
    y1: usize,
    acc: &mut [i32],
) {
    // SAFETY: forwarded preconditions.
    unsafe {
        BitsCall::<Avx2Popcount, XNOR>::new(s, x, w, y0).run::<1, 4, 2>(lanes8::LANES, y0, y1, acc)
    }
}

/// # Safety
/// AVX-512 F/BW/VPOPCNTDQ present; the call passed [`ConvShape::assert_call`].
#[target_feature(enable = "avx512f,avx512bw,avx512vpopcntdq")]
unsafe fn bits_avx512_impl<const XNOR: bool>(
    s: &ConvShape,
    x: &[u64],
    w: &[u8],
    y0: usize,
    y1: usize,
    acc: &mut [i32],
) {
    // SAFETY: forwarded preconditions.
    unsafe {
        BitsCall::<Avx512Popcount, XNOR>::new(s, x, w, y0).run::<4, 6, 4>(
            lanes8::LANES,
            y0,
            y1,
            acc,
        )
    }
}
