//! The table lookup for 1-bit weights and 2-bit codes with AVX2 (`vpshufb`), for CPUs without
//! AVX-512: per padded pixel and group of 4 input channels a table of the code sums over the
//! 16 subsets (at most 4 x 3, a byte), 16 bytes each; the 4-bit patterns of 32 output channels
//! index it with one `vpshufb` (the table in both 128-bit lanes), 128 multiply-adds. Byte sums
//! are widened into `u16` sums every [`byte_run`] steps and into the `i32` accumulators at the
//! end of a run, where `2 S - sum q` is folded into the last store.
//!
//! The tables lie where the AVX-512 byte tables of the shape would ([`ConvShape::lut_input_len`]
//! `u16`s, a padded pixel's tables from the same place, the code sums after them): 16 bytes for
//! 4 channels take less room than 64 for 6.

#![allow(clippy::needless_range_loop)]

use super::*;

/// Channels per AVX2 table (16 entries).
const K: usize = 4;

/// Channel groups of 4 per group: `ceil(cin_g / 4)`.
fn groups4(s: &ConvShape) -> usize {
    s.cin_g.div_ceil(K)
}

/// Bytes of one block of 32 output channels: an index byte per channel, tap and group of 4.
fn block_bytes(s: &ConvShape) -> usize {
    s.kh * s.kw * groups4(s) * 32
}

pub(in super::super) fn lut_avx2_prepared_len(s: &ConvShape) -> usize {
    s.groups * s.cout_g.div_ceil(32) * block_bytes(s)
}

/// The weights as table indices, `u8 [g][O/32][kh][kw][ceil(cin_g/4)][32]`: bit `i` of the
/// index of channel `o` at a tap and channel group `G` is set when the weight of input channel
/// `4 G + i` is `+1` (zero past `cin_g` and `cout_g`).
pub(in super::super) fn lut_avx2_prepare(conv: &Conv<'_>, s: &ConvShape, out: &mut [u8]) {
    let len = lut_avx2_prepared_len(s);
    let Some(dst) = out.get_mut(..len) else {
        return;
    };
    dst.fill(0);
    let codes = CodeReader::new(conv);
    let (gn, nblk, bb) = (groups4(s), s.cout_g.div_ceil(32), block_bytes(s));
    for o in 0..s.cout {
        let (g, oc) = (o / s.cout_g, o % s.cout_g);
        let blk = (g * nblk + oc / 32) * bb;
        for ky in 0..s.kh {
            for kx in 0..s.kw {
                for i in 0..s.cin_g {
                    if codes.numerator(o, ky, kx, i) > 0 {
                        let at = blk + ((ky * s.kw + kx) * gn + i / K) * 32 + oc % 32;
                        dst[at] |= 1 << (i % K);
                    }
                }
            }
        }
    }
}

/// `u16`s from one padded pixel's tables to the next (the AVX-512 byte tables' stride).
fn pixel_stride(s: &ConvShape) -> usize {
    s.groups * s.lut_groups() * 32
}

/// Per channel `i < 2` of a half: the `vpshufb` indices that put, in bytes `8 k` to `8 k + 7`
/// of lane `L`, the half tables of table `T = L + 2 k` of a 16-channel chunk: code `4 T + i`
/// in bytes 0-3 (the half over channels 0-1), code `4 T + 2 + i` in bytes 4-7 (2-3).
const fn half_index() -> [[u8; 32]; 2] {
    let mut v = [[0u8; 32]; 2];
    let mut i = 0;
    while i < 2 {
        let mut b = 0;
        while b < 32 {
            let (l, k) = (b / 16, b % 16);
            let t = l + 2 * (k / 8);
            v[i][b] = (K * t + i + if k % 8 >= 4 { 2 } else { 0 }) as u8;
            b += 1;
        }
        i += 1;
    }
    v
}

/// The indices of [`half_index`].
static HALF: [[u8; 32]; 2] = half_index();

/// Per channel `i < 2` of a half: `0xff` in the half-table bytes whose entry (`byte mod 4`)
/// has bit `i` set.
const fn half_bits() -> [[u8; 32]; 2] {
    let mut v = [[0u8; 32]; 2];
    let mut i = 0;
    while i < 2 {
        let mut b = 0;
        while b < 32 {
            v[i][b] = if (b % 4) >> i & 1 == 1 { 0xff } else { 0 };
            b += 1;
        }
        i += 1;
    }
    v
}

/// The masks of [`half_bits`].
static HALF_BITS: [[u8; 32]; 2] = half_bits();

/// Per pair `k` of a chunk's tables (`k`: tables 0 and 1, one per lane; 1: tables 2 and 3)
/// and half `h`: the `vpshufb` indices of entry `m`'s half-table entries, `8 k + (m mod 4)`
/// (channels 0-1) and `8 k + 4 + m / 4` (channels 2-3).
const fn join_index() -> [[[u8; 32]; 2]; 2] {
    let mut v = [[[0u8; 32]; 2]; 2];
    let mut k = 0;
    while k < 2 {
        let mut b = 0;
        while b < 32 {
            let m = b % 16;
            v[k][0][b] = (8 * k + m % 4) as u8;
            v[k][1][b] = (8 * k + 4 + m / 4) as u8;
            b += 1;
        }
        k += 1;
    }
    v
}

/// The indices of [`join_index`].
static JOIN: [[[u8; 32]; 2]; 2] = join_index();

/// The table builder of [`KernelKind::Int8LutAvx2`]: for every padded input pixel, group and
/// channel group of 4, the sums of the codes over every subset of the 4 channels (unpadded HWC
/// input `x`, pad pixels holding `pad`; channels past `cin_g` count 0), then the sum of all
/// codes of each padded pixel and group as the AVX-512 tables have it.
pub(in super::super) fn lut_avx2_tables(s: &ConvShape, x: &[u8], pad: u8, out: &mut [u16]) {
    #[target_feature(enable = "avx2")]
    fn body(s: &ConvShape, x: &[u8], pad: u8, out: &mut [u16]) {
        let (h, w, c, cin, gn) = (s.h(), s.w(), s.c, s.cin_g, groups4(s));
        let px = pixel_stride(s);
        let sums = s.lut_tables_len();
        assert!(
            out.len() >= s.lut_input_len()
                && x.len() >= h * w * c
                && s.groups * gn * 8 <= px
                && (s.hp * s.wp - 1) * px + s.groups * gn * 8 <= sums
        );
        let o = out.as_mut_ptr();
        for y in 0..s.hp {
            for xx in 0..s.wp {
                let inside = y >= s.ph && y < s.ph + h && xx >= s.pw && xx < s.pw + w;
                let pix = if inside {
                    ((y - s.ph) * w + (xx - s.pw)) * c
                } else {
                    0
                };
                for g in 0..s.groups {
                    let mut sum = 0u32;
                    // Chunks of 16 channels: 4 tables.
                    for ch in (0..cin).step_by(16) {
                        let len = (cin - ch).min(16);
                        let mut codes = [0u8; 16];
                        if inside {
                            codes[..len].copy_from_slice(&x[pix + g * cin + ch..][..len]);
                        } else {
                            codes[..len].fill(pad);
                        }
                        sum += codes.iter().map(|&v| u32::from(v)).sum::<u32>();
                        let tables = len.div_ceil(K);
                        let at = (y * s.wp + xx) * px + (g * gn + ch / K) * 8;
                        // SAFETY: AVX2 present (`by_kind` hands this builder out only then);
                        // the chunk's `tables` tables of 8 `u16` lie inside the pixel's tables
                        // (asserted above); the constants are 32 bytes each.
                        unsafe {
                            let ld = |p: &[u8; 32]| _mm256_loadu_si256(p.as_ptr() as *const _);
                            let v = _mm256_broadcastsi128_si256(_mm_loadu_si128(
                                codes.as_ptr() as *const _
                            ));
                            // The half tables of the chunk's 4 tables, then each pair.
                            let mut halves = _mm256_setzero_si256();
                            for i in 0..2 {
                                let b = _mm256_shuffle_epi8(v, ld(&HALF[i]));
                                halves =
                                    _mm256_add_epi8(halves, _mm256_and_si256(b, ld(&HALF_BITS[i])));
                            }
                            for k in 0..tables.div_ceil(2) {
                                let tab = _mm256_add_epi8(
                                    _mm256_shuffle_epi8(halves, ld(&JOIN[k][0])),
                                    _mm256_shuffle_epi8(halves, ld(&JOIN[k][1])),
                                );
                                let t = o.add(at + 16 * k);
                                _mm_storeu_si128(t as *mut _, _mm256_castsi256_si128(tab));
                                if 2 * k + 1 < tables {
                                    _mm_storeu_si128(
                                        t.add(8) as *mut _,
                                        _mm256_extracti128_si256::<1>(tab),
                                    );
                                }
                            }
                        }
                    }
                    let at = sums + ((y * s.wp + xx) * s.groups + g) * 2;
                    out[at] = sum as u16;
                    out[at + 1] = (sum >> 16) as u16;
                }
            }
        }
    }
    // SAFETY: `by_kind` hands this builder out only where AVX2 is present.
    unsafe { body(s, x, pad, out) }
}

/// Steps the byte sums may hold before they are widened into the `u16` sums.
fn byte_run(s: &ConvShape) -> usize {
    (u8::MAX as usize / (K * ((1usize << s.abits) - 1))).max(1)
}

/// Steps a run of `u16` sums may hold.
fn run(s: &ConvShape) -> usize {
    (u16::MAX as usize / (K * ((1usize << s.abits) - 1))).max(1)
}

/// Widens byte sums into `u16` sums (channels 0-15 of a block into `wide[0]`, 16-31 into
/// `wide[1]`) and clears them.
///
/// # Safety
/// AVX2 present.
#[inline(always)]
unsafe fn widen<const NB: usize, const P: usize>(
    part: &mut [[__m256i; NB]; P],
    wide: &mut [[[__m256i; 2]; NB]; P],
) {
    // SAFETY: AVX2 present (caller).
    unsafe {
        for j in 0..P {
            for b in 0..NB {
                let v = part[j][b];
                let lo = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(v));
                let hi = _mm256_cvtepu8_epi16(_mm256_extracti128_si256::<1>(v));
                wide[j][b][0] = _mm256_add_epi16(wide[j][b][0], lo);
                wide[j][b][1] = _mm256_add_epi16(wide[j][b][1], hi);
                part[j][b] = _mm256_setzero_si256();
            }
        }
    }
}

/// Adds the 16 `u16` sums in `v` to the `i32` sums at `dst` (written instead on the `first`
/// run); on the last run (`qsum` given) stores `2 S - qsum` instead of the whole sum `S`.
/// Fewer than 16 lanes go through a stack copy (AMD's masked stores are slow).
///
/// # Safety
/// AVX2 present.
#[inline(always)]
unsafe fn store16(v: __m256i, dst: &mut [i32], first: bool, qsum: Option<i32>) {
    // SAFETY: AVX2 present (caller); the full-width path reads and writes 16 `i32` of `dst`
    // (its length checked), the other a stack copy.
    unsafe {
        let halves = [
            _mm256_cvtepu16_epi32(_mm256_castsi256_si128(v)),
            _mm256_cvtepu16_epi32(_mm256_extracti128_si256::<1>(v)),
        ];
        let mut tmp = [0i32; 16];
        let full = dst.len() >= 16;
        let p = if full {
            dst.as_mut_ptr()
        } else {
            tmp[..dst.len()].copy_from_slice(dst);
            tmp.as_mut_ptr()
        };
        for (h, w) in halves.into_iter().enumerate() {
            let p = p.add(8 * h) as *mut __m256i;
            let r = if first {
                w
            } else {
                _mm256_add_epi32(_mm256_loadu_si256(p), w)
            };
            let r = match qsum {
                Some(q) => _mm256_sub_epi32(_mm256_add_epi32(r, r), _mm256_set1_epi32(q)),
                None => r,
            };
            _mm256_storeu_si256(p, r);
        }
        if !full {
            let n = dst.len();
            dst.copy_from_slice(&tmp[..n]);
        }
    }
}

impl LutCall<'_> {
    /// Adds table steps `t0 .. t1` (step `t`: tap `t / gn`, channel group `t % gn` of 4) of
    /// `NB` blocks of 32 output channels from block `b0` of group `g` for the `P` output pixels
    /// from `p0` to their `i32` sums in `acc`; `first`: written instead; `last`: `2 S - sum q`.
    ///
    /// # Safety
    /// AVX2 present; the call passed [`ConvShape::assert_call`]; blocks `b0 .. b0 + NB` exist
    /// in the group, pixels `p0 .. p0 + P` lie in the call's rows, `t1 <= kh * kw * gn`.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn steps_avx2<const NB: usize, const P: usize>(
        &self,
        acc: &mut [i32],
        g: usize,
        b0: usize,
        p0: usize,
        t0: usize,
        t1: usize,
        (first, last): (bool, bool),
    ) {
        let s = self.s;
        let (gn, px, bb) = (groups4(s), pixel_stride(s), block_bytes(s));
        let mut base = [0usize; P];
        for j in 0..P {
            base[j] = window_origin(s, p0 + j) * px + g * gn * 8;
        }
        let x = self.x.as_ptr();
        // SAFETY: block `b0` of group `g` lies inside the prepared weights (caller).
        let w = unsafe { self.w.as_ptr().add((g * s.cout_g.div_ceil(32) + b0) * bb) };
        // SAFETY: AVX2 present (caller).
        let zero = unsafe { _mm256_setzero_si256() };
        let mut part = [[zero; NB]; P];
        let mut wide = [[[zero; 2]; NB]; P];
        let byte_run = byte_run(s);
        let mut pending = 0;
        // Per tap, one pointer per pixel and one for the weights, each advanced a table (16
        // bytes) and 32 index bytes a step.
        let mut t = t0;
        while t < t1 {
            let (tap, gi) = (t / gn, t % gn);
            let n = (gn - gi).min(t1 - t);
            let toff = ((tap / s.kw) * s.wp + tap % s.kw) * px + gi * 8;
            // SAFETY: the tap's tables and weights lie inside the buffers (caller: the window
            // of every pixel of the tile is inside the padded input, `t1 <= kh * kw * gn`).
            unsafe {
                let tp: [*const u16; P] = core::array::from_fn(|j| x.add(base[j] + toff));
                let wt = w.add(t * 32);
                for i in 0..n {
                    let mut wv = [zero; NB];
                    for b in 0..NB {
                        wv[b] = _mm256_loadu_si256(wt.add(32 * i + b * bb) as *const _);
                    }
                    for j in 0..P {
                        let tv = _mm256_broadcastsi128_si256(_mm_loadu_si128(
                            tp[j].add(8 * i) as *const _
                        ));
                        for b in 0..NB {
                            let v = _mm256_shuffle_epi8(tv, wv[b]);
                            part[j][b] = _mm256_add_epi8(part[j][b], v);
                        }
                    }
                    pending += 1;
                    if pending == byte_run {
                        widen(&mut part, &mut wide);
                        pending = 0;
                    }
                }
            }
            t += n;
        }
        // SAFETY: AVX2 present (caller).
        unsafe { widen(&mut part, &mut wide) };
        for j in 0..P {
            let q = last.then(|| self.qsum(p0 + j, g));
            let row = (p0 + j - self.first) * s.cout + g * s.cout_g;
            for b in 0..NB {
                for h in 0..2 {
                    let c0 = (b0 + b) * 32 + 16 * h;
                    let lanes = s.cout_g.saturating_sub(c0).min(16);
                    if lanes > 0 {
                        let dst = &mut acc[row + c0..row + c0 + lanes];
                        // SAFETY: AVX2 present (caller).
                        unsafe { store16(wide[j][b][h], dst, first, q) };
                    }
                }
            }
        }
    }

    /// Runs rows `y0..y1`: per group, tiles of 2 blocks of 32 output channels by `P` pixels
    /// (the last block alone, the last pixels one by one), in runs of [`run`] steps.
    ///
    /// # Safety
    /// AVX2 present; the call passed [`ConvShape::assert_call`].
    #[inline(always)]
    unsafe fn run_avx2<const NBMAX: usize, const P: usize>(
        &self,
        y0: usize,
        y1: usize,
        acc: &mut [i32],
    ) {
        let s = self.s;
        let (steps, run) = (s.kh * s.kw * groups4(s), run(s));
        let nblk = s.cout_g.div_ceil(32);
        let (first, end) = (y0 * s.ow, y1 * s.ow);
        for g in 0..s.groups {
            let mut b0 = 0;
            while b0 < nblk {
                let nb = (nblk - b0).min(NBMAX);
                let mut p = first;
                while p < end {
                    let full = end - p >= P;
                    let mut t0 = 0;
                    while t0 < steps {
                        let t1 = (t0 + run).min(steps);
                        let f = (t0 == 0, t1 == steps);
                        // SAFETY: blocks `b0 .. b0 + nb` exist, the tile's pixels lie before
                        // `end`, `t1 <= steps`; the rest is the caller's.
                        unsafe {
                            match (nb, full) {
                                (4, true) => self.steps_avx2::<4, P>(acc, g, b0, p, t0, t1, f),
                                (3, true) => self.steps_avx2::<3, P>(acc, g, b0, p, t0, t1, f),
                                (2, true) => self.steps_avx2::<2, P>(acc, g, b0, p, t0, t1, f),
                                (_, true) => self.steps_avx2::<1, P>(acc, g, b0, p, t0, t1, f),
                                (4, false) => self.steps_avx2::<4, 1>(acc, g, b0, p, t0, t1, f),
                                (3, false) => self.steps_avx2::<3, 1>(acc, g, b0, p, t0, t1, f),
                                (2, false) => self.steps_avx2::<2, 1>(acc, g, b0, p, t0, t1, f),
                                (_, false) => self.steps_avx2::<1, 1>(acc, g, b0, p, t0, t1, f),
                            }
                        }
                        t0 = t1;
                    }
                    p += if full { P } else { 1 };
                }
                b0 += nb;
            }
        }
    }
}

/// [`KernelKind::Int8LutAvx2`].
pub(in super::super) fn lut_avx2(
    s: &ConvShape,
    x: &[u16],
    w: &[u8],
    y0: usize,
    y1: usize,
    acc: &mut [i32],
) {
    s.assert_call(
        x.len(),
        s.lut_input_len(),
        w.len(),
        lut_avx2_prepared_len(s),
        y0,
        y1,
        acc.len(),
    );
    assert!(
        crate::kernels::lut_avx2_fits(s),
        "AVX2 table lookup: 1-bit weights, 2-bit codes"
    );
    /// [`LutCall::run_avx2`], compiled for AVX2.
    ///
    /// # Safety
    /// As [`LutCall::run_avx2`].
    #[target_feature(enable = "avx2")]
    unsafe fn rows(call: &LutCall<'_>, y0: usize, y1: usize, acc: &mut [i32]) {
        // SAFETY: forwarded preconditions.
        unsafe { call.run_avx2::<2, 2>(y0, y1, acc) }
    }
    // SAFETY: `by_kind` hands this kernel out only where AVX2 is present, and the call matches
    // the contract (just checked).
    unsafe { rows(&LutCall::new(s, x, w, y0), y0, y1, acc) }
}
