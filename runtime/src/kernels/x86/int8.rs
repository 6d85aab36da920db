//! The int8 dot: its weight layout, the `Dot` primitive (AVX2 `vpmaddubsw`, AVX-512 VNNI `vpdpbusd`) and its tile driver.

#![allow(clippy::needless_range_loop)]

use super::*;

// ---------------------------------------------------------------------------------------------
// int8 dot: layout, the primitive, the driver

/// Channel chunks of 4 per kernel tap in the int8 layout.
fn int8_chunks(s: &ConvShape) -> usize {
    s.cin_g.div_ceil(4)
}

/// Bytes of one block of 16 output channels in the int8 layout.
fn int8_block_bytes(s: &ConvShape) -> usize {
    s.kh * s.kw * int8_chunks(s) * 64
}

/// Bytes of the int8 weights, before `wsum`.
pub(super) fn int8_weight_bytes(s: &ConvShape) -> usize {
    s.groups * s.cout_g.div_ceil(16) * int8_block_bytes(s)
}

pub(super) fn int8_prepared_len(s: &ConvShape) -> usize {
    int8_weight_bytes(s) + 4 * s.cout
}

/// Expands the format's codes into `i8 [g][O/16][kh][kw][ceil(cin_g/4)][16][4]`, then `wsum`.
pub(super) fn int8_prepare(conv: &Conv<'_>, s: &ConvShape, out: &mut [u8]) {
    let len = int8_weight_bytes(s);
    let Some(dst) = out.get_mut(..len) else {
        return;
    };
    dst.fill(0);
    let codes = CodeReader::new(conv);
    let (c4n, nblk, bb) = (int8_chunks(s), s.cout_g.div_ceil(16), int8_block_bytes(s));
    for o in 0..s.cout {
        let (g, oc) = (o / s.cout_g, o % s.cout_g);
        let blk = (g * nblk + oc / 16) * bb;
        for ky in 0..s.kh {
            for kx in 0..s.kw {
                let tap = (ky * s.kw + kx) * c4n;
                for i in 0..s.cin_g {
                    let num = codes.numerator(o, ky, kx, i);
                    dst[blk + (tap + i / 4) * 64 + (oc % 16) * 4 + i % 4] = num as i8 as u8;
                }
            }
        }
    }
    super::super::write_wsum(conv, s, out.get_mut(len..).unwrap_or(&mut []));
}

/// An int8 dot-product primitive: 4 activation codes (one `i32`, broadcast) against the 16 x 4
/// weights of one chunk of a 16-channel block, summed into 16 `i32` lanes. Partial sums of a
/// run of chunks may be kept narrower ([`Dot::Part`]) and widened at the end of the run.
pub(super) trait Dot {
    /// One chunk of a block's weights.
    type W: Copy;
    /// A broadcast group of 4 activation codes.
    type X: Copy;
    /// 16 `i32` sums.
    type Acc: Copy;
    /// The partial sums of a run.
    type Part: Copy;
    /// Chunks one run may hold for weights of `wbits` bits (exact: no lane saturates).
    fn run_len(wbits: u8) -> usize;
    /// # Safety
    /// The ISA is present (so for every method of this trait).
    unsafe fn zero() -> Self::Acc;
    /// # Safety
    /// 64 readable bytes at `w`.
    unsafe fn load_w(w: *const u8) -> Self::W;
    /// # Safety
    /// The ISA is present.
    unsafe fn splat(x: i32) -> Self::X;
    /// Starts a run on top of `acc`.
    ///
    /// # Safety
    /// The ISA is present.
    unsafe fn begin(acc: Self::Acc) -> Self::Part;
    /// `part += x . w` lane-wise over the 4 codes.
    ///
    /// # Safety
    /// The ISA is present.
    unsafe fn dot(part: Self::Part, x: Self::X, w: Self::W) -> Self::Part;
    /// Ends a run started on `acc`.
    ///
    /// # Safety
    /// The ISA is present.
    unsafe fn end(acc: Self::Acc, part: Self::Part) -> Self::Acc;
    /// Writes the first `n <= 16` lanes to `out`.
    ///
    /// # Safety
    /// The ISA is present; `n` `i32`s writable at `out`.
    unsafe fn store(acc: Self::Acc, out: *mut i32, n: usize);
}

/// AVX2: `vpmaddubsw` (pairs summed in saturating `i16`) over runs short enough never to
/// saturate, widened with `vpmaddwd`; a block is two `__m256i` halves of 8 channels.
struct Avx2Dot;

impl Dot for Avx2Dot {
    type W = Pair;
    type X = __m256i;
    type Acc = Pair;
    type Part = Pair;
    fn run_len(wbits: u8) -> usize {
        // One `vpmaddubsw` lane is at most `2 * 255 * (2^wb - 1)` in magnitude; this many of
        // them still fit an i16: 64 (W1), 21 (W2), 4 (W4).
        (i16::MAX as usize / (2 * 255 * ((1usize << wbits) - 1))).max(1)
    }
    #[inline(always)]
    unsafe fn zero() -> Self::Acc {
        // SAFETY: AVX2 present (caller).
        unsafe { pair_zero() }
    }
    #[inline(always)]
    unsafe fn load_w(w: *const u8) -> Self::W {
        // SAFETY: 64 readable bytes at `w` (caller).
        unsafe { pair_load(w) }
    }
    #[inline(always)]
    unsafe fn splat(x: i32) -> Self::X {
        // SAFETY: AVX2 present (caller).
        unsafe { _mm256_set1_epi32(x) }
    }
    #[inline(always)]
    unsafe fn begin(_acc: Self::Acc) -> Self::Part {
        // SAFETY: AVX2 present (caller).
        unsafe { pair_zero() }
    }
    #[inline(always)]
    unsafe fn dot(part: Self::Part, x: Self::X, w: Self::W) -> Self::Part {
        // SAFETY: AVX2 present (caller).
        unsafe {
            [
                _mm256_add_epi16(part[0], _mm256_maddubs_epi16(x, w[0])),
                _mm256_add_epi16(part[1], _mm256_maddubs_epi16(x, w[1])),
            ]
        }
    }
    #[inline(always)]
    unsafe fn end(acc: Self::Acc, part: Self::Part) -> Self::Acc {
        // SAFETY: AVX2 present (caller).
        unsafe {
            let ones = _mm256_set1_epi16(1);
            [
                _mm256_add_epi32(acc[0], _mm256_madd_epi16(part[0], ones)),
                _mm256_add_epi32(acc[1], _mm256_madd_epi16(part[1], ones)),
            ]
        }
    }
    #[inline(always)]
    unsafe fn store(acc: Self::Acc, out: *mut i32, n: usize) {
        // SAFETY: `n <= 16` writable i32s at `out` (caller): all 16 stored at once, or through
        // `t` (16 i32, 64 bytes) for fewer.
        unsafe {
            if n == 16 {
                pair_store(acc, out as *mut u8);
            } else {
                let mut t = [0i32; 16];
                pair_store(acc, t.as_mut_ptr() as *mut u8);
                core::ptr::copy_nonoverlapping(t.as_ptr(), out, n);
            }
        }
    }
}

/// AVX-512 VNNI: `vpdpbusd` straight into `i32` lanes (runs are the whole tap).
struct VnniDot;

impl Dot for VnniDot {
    type W = __m512i;
    type X = __m512i;
    type Acc = __m512i;
    type Part = __m512i;
    fn run_len(_wbits: u8) -> usize {
        usize::MAX
    }
    #[inline(always)]
    unsafe fn zero() -> Self::Acc {
        // SAFETY: AVX-512 F present (caller).
        unsafe { _mm512_setzero_si512() }
    }
    #[inline(always)]
    unsafe fn load_w(w: *const u8) -> Self::W {
        // SAFETY: 64 readable bytes at `w` (caller).
        unsafe { _mm512_loadu_si512(w as *const _) }
    }
    #[inline(always)]
    unsafe fn splat(x: i32) -> Self::X {
        // SAFETY: AVX-512 F present (caller).
        unsafe { _mm512_set1_epi32(x) }
    }
    #[inline(always)]
    unsafe fn begin(acc: Self::Acc) -> Self::Part {
        acc
    }
    #[inline(always)]
    unsafe fn dot(part: Self::Part, x: Self::X, w: Self::W) -> Self::Part {
        // SAFETY: AVX-512 VNNI present (caller).
        unsafe { _mm512_dpbusd_epi32(part, x, w) }
    }
    #[inline(always)]
    unsafe fn end(_acc: Self::Acc, part: Self::Part) -> Self::Acc {
        part
    }
    #[inline(always)]
    unsafe fn store(acc: Self::Acc, out: *mut i32, n: usize) {
        let mask: __mmask16 = if n >= 16 { 0xffff } else { (1u16 << n) - 1 };
        // SAFETY: AVX-512 F present; `n` i32s writable at `out` (caller); masked lanes are not
        // touched.
        unsafe { _mm512_mask_storeu_epi32(out as *mut _, mask, acc) }
    }
}

/// Reads four activation bytes at `p`, only the first `n` of them (the rest zero).
///
/// # Safety
/// `p .. p + n` must be readable.
#[inline(always)]
unsafe fn load4(p: *const u8, n: usize) -> i32 {
    let mut v = 0u32;
    for i in 0..n.min(4) {
        // SAFETY: the caller guarantees `n` readable bytes at `p`.
        v |= (unsafe { p.add(i).read() } as u32) << (8 * i);
    }
    v as i32
}

/// Ends a run: widens its partial sums into `a` and starts the next one.
///
/// # Safety
/// `D`'s ISA is present.
#[inline(always)]
unsafe fn end_run<D: Dot, const NB: usize, const P: usize>(
    a: &mut [[D::Acc; NB]; P],
    part: &mut [[D::Part; NB]; P],
) {
    for j in 0..P {
        for b in 0..NB {
            // SAFETY: the ISA is present (caller).
            unsafe {
                a[j][b] = D::end(a[j][b], part[j][b]);
                part[j][b] = D::begin(a[j][b]);
            }
        }
    }
}

/// An int8 kernel call over the dot-product primitive `D`.
type Int8Call<'a, D> = Call<'a, u8, D>;

impl<D: Dot> Int8Call<'_, D> {
    /// Adds chunks `q0 .. q0 + n` of a tap to the partial sums `part` of a run: per chunk
    /// `NB` weight loads from `wt`, one broadcast of 4 activation codes per pixel (only the
    /// first `rem` codes for the `PARTIAL` chunk past the full ones).
    ///
    /// # Safety
    /// `D`'s ISA is present; chunks `q0 .. q0 + n` of blocks `0 .. NB` lie inside the weights
    /// at `wt` and inside the input pixels at `xp` (4 bytes each, `rem` for `PARTIAL`).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn run_chunks<const NB: usize, const P: usize, const PARTIAL: bool>(
        &self,
        part: &mut [[D::Part; NB]; P],
        wt: *const u8,
        xp: &[*const u8; P],
        q0: usize,
        n: usize,
        rem: usize,
    ) {
        let bb = int8_block_bytes(self.s);
        // SAFETY: the ISA is present and every load in bounds (caller).
        unsafe {
            for q in q0..q0 + n {
                let mut wv = [D::load_w(wt.add(q * 64)); NB];
                for b in 1..NB {
                    wv[b] = D::load_w(wt.add(b * bb + q * 64));
                }
                for j in 0..P {
                    let xv = D::splat(if PARTIAL {
                        load4(xp[j].add(4 * q), rem)
                    } else {
                        (xp[j].add(4 * q) as *const i32).read_unaligned()
                    });
                    for b in 0..NB {
                        part[j][b] = D::dot(part[j][b], xv, wv[b]);
                    }
                }
            }
        }
    }
}

impl<D: Dot> Tile for Int8Call<'_, D> {
    #[inline(always)]
    unsafe fn tile<const NB: usize, const P: usize>(
        &self,
        acc: &mut [i32],
        g: usize,
        b0: usize,
        p0: usize,
    ) {
        let s = self.s;
        let (cin, c4n, bb) = (s.cin_g, int8_chunks(s), int8_block_bytes(s));
        let (full, rem) = (cin / 4, cin % 4);
        let run = D::run_len(s.wbits);
        let mut base = [0usize; P];
        for j in 0..P {
            base[j] = window_origin(s, p0 + j) * s.c + g * cin;
        }
        let x = self.x.as_ptr();
        // The partial chunk reads all 4 bytes when the last pixel's last tap has 4 bytes left
        // in the input (the bytes past `rem` meet zero weights, so the sums are the same):
        // everywhere but the image's last pixels, and on the first conv (3 channels) the
        // partial chunk is every chunk.
        let last_tap = ((s.kh - 1) * s.wp + s.kw - 1) * s.c + 4 * full;
        let whole = base[P - 1] + last_tap + 4 <= self.x.len();
        // SAFETY: block `b0` of group `g` lies inside the prepared weights (caller).
        let w = unsafe { self.w.as_ptr().add((g * s.cout_g.div_ceil(16) + b0) * bb) };
        // SAFETY: the ISA is present (caller), for every primitive below.
        let mut a = [[unsafe { D::zero() }; NB]; P];
        // A run's partial sums, across taps: `held` chunks so far.
        let mut part = [[unsafe { D::begin(a[0][0]) }; NB]; P];
        let mut held = 0;
        for ky in 0..s.kh {
            for kx in 0..s.kw {
                let aoff = (ky * s.wp + kx) * s.c;
                // SAFETY: tap offsets stay inside the block (`kh * kw * c4n * 64` bytes).
                let wt = unsafe { w.add((ky * s.kw + kx) * c4n * 64) };
                let mut xp = [x; P];
                for j in 0..P {
                    // SAFETY: the tap's pixel lies inside the padded input.
                    xp[j] = unsafe { x.add(base[j] + aoff) };
                }
                // The full chunks in runs, then the partial chunk `rem`.
                let mut q = 0;
                while q < full {
                    if held == run {
                        // SAFETY: as above.
                        unsafe { end_run::<D, NB, P>(&mut a, &mut part) };
                        held = 0;
                    }
                    let n = (full - q).min(run - held);
                    held += n;
                    // SAFETY: chunks `q .. q + n < full` are inside the block and the pixels.
                    unsafe { self.run_chunks::<NB, P, false>(&mut part, wt, &xp, q, n, rem) };
                    q += n;
                }
                if rem != 0 && held == run {
                    // SAFETY: as above.
                    unsafe { end_run::<D, NB, P>(&mut a, &mut part) };
                    held = 0;
                }
                held += usize::from(rem != 0);
                if rem != 0 && whole {
                    // SAFETY: chunk `full < c4n` is inside the block, and its 4 bytes inside
                    // the input for every pixel of the tile (`whole`, with the pixels in
                    // increasing order and this tap at most the last).
                    unsafe { self.run_chunks::<NB, P, false>(&mut part, wt, &xp, full, 1, rem) };
                } else if rem != 0 {
                    // SAFETY: chunk `full < c4n` is inside the block, its first `rem` codes
                    // inside the pixels.
                    unsafe { self.run_chunks::<NB, P, true>(&mut part, wt, &xp, full, 1, rem) };
                }
            }
        }
        for j in 0..P {
            for b in 0..NB {
                // SAFETY: as above.
                a[j][b] = unsafe { D::end(a[j][b], part[j][b]) };
            }
        }
        for j in 0..P {
            let row = (p0 + j - self.first) * s.cout + g * s.cout_g;
            for b in 0..NB {
                let o0 = (b0 + b) * 16;
                let n = (s.cout_g - o0).min(16);
                // SAFETY: `row + o0 + n <= acc.len()` (the call's accumulator length).
                unsafe { D::store(a[j][b], acc.as_mut_ptr().add(row + o0), n) };
            }
        }
    }
}

/// An int8 kernel's driver for one ISA.
pub(super) type Int8Impl = unsafe fn(&ConvShape, &[u8], &[u8], usize, usize, &mut [i32]);

/// Checks a call of a kernel over padded bytes whose prepared weights are `weights` bytes
/// and then `wsum` (the int8 dots; the AMX dot), runs the ISA's driver `imp`, then the sign
/// fix for 1-bit inputs.
///
/// # Safety
/// The instructions `imp` needs are present.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn int8_call(
    s: &ConvShape,
    x: &[u8],
    w: &[u8],
    y0: usize,
    y1: usize,
    acc: &mut [i32],
    imp: Int8Impl,
    weights: usize,
) {
    s.assert_call(
        x.len(),
        s.byte_input_len(),
        w.len(),
        weights + 4 * s.cout,
        y0,
        y1,
        acc.len(),
    );
    // SAFETY: the ISA is present (caller) and the call matches the contract (just checked).
    unsafe { imp(s, x, w, y0, y1, acc) };
    if s.abits == 1 {
        sign_fix(s, &w[weights..], acc);
    }
}

/// [`KernelKind::Int8DotAvx2`].
pub(super) fn int8_avx2(s: &ConvShape, x: &[u8], w: &[u8], y0: usize, y1: usize, acc: &mut [i32]) {
    // SAFETY: `by_kind` hands this kernel out only where AVX2 is present.
    unsafe { int8_call(s, x, w, y0, y1, acc, int8_avx2_impl, int8_weight_bytes(s)) }
}

/// [`KernelKind::Int8DotVnni`].
pub(super) fn int8_vnni(s: &ConvShape, x: &[u8], w: &[u8], y0: usize, y1: usize, acc: &mut [i32]) {
    // SAFETY: `by_kind` hands this kernel out only where AVX-512 F/BW/VNNI is present.
    unsafe { int8_call(s, x, w, y0, y1, acc, int8_vnni_impl, int8_weight_bytes(s)) }
}

/// # Safety
/// AVX2 present; the call passed [`ConvShape::assert_call`].
#[target_feature(enable = "avx2")]
unsafe fn int8_avx2_impl(s: &ConvShape, x: &[u8], w: &[u8], y0: usize, y1: usize, acc: &mut [i32]) {
    // SAFETY: forwarded preconditions. Tiles of 1 block x 6 pixels (12 partial sums, 2 weight
    // and 1 activation registers): on a Zen 3 EPYC the W1A8 network 1-2 % faster than with 4
    // pixels; 2 blocks x 2 pixels, 5 pixels and 3 pixels measured level or slower.
    unsafe { Int8Call::<Avx2Dot>::new(s, x, w, y0).run::<1, 6, 4>(16, y0, y1, acc) }
}

/// # Safety
/// AVX-512 F/BW/VNNI present; the call passed [`ConvShape::assert_call`].
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn int8_vnni_impl(s: &ConvShape, x: &[u8], w: &[u8], y0: usize, y1: usize, acc: &mut [i32]) {
    // SAFETY: forwarded preconditions.
    unsafe { Int8Call::<VnniDot>::new(s, x, w, y0).run::<4, 6, 4>(16, y0, y1, acc) }
}
