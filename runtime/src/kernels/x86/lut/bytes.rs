//! The table lookup over byte tables, for codes of up to 2 bits: 6 channels a table (a sum of
//! six 2-bit codes fits a byte), 64 output channels a `vpermb`, byte sums widened into `u16`
//! sums every few steps ([`lut8_byte_run`]). The layout, the `u16` tables and the kernel's
//! entry are in the parent module.

#![allow(clippy::needless_range_loop)]

use super::*;

/// Channel groups of one 64-byte load of codes in the byte-table builder (60 codes).
pub(super) const LUT8_CHUNK: usize = 10;

/// Per quarter `q` of a chunk (its groups `4q .. 4q + 4`, one per 128-bit lane `L`) and
/// channel `i < 3`: the `vpermb` indices that put, in lane `L`, code `i` of group `4q + L` in
/// bytes 0-7 and its code `3 + i` in bytes 8-15 (bytes past 60 are zero codes; indices past
/// 63 wrap onto the groups of the next chunk, whose half tables are never read).
const fn lut8_half_index() -> [[[u8; 64]; 3]; 3] {
    let mut v = [[[0u8; 64]; 3]; 3];
    let mut q = 0;
    while q < 3 {
        let mut i = 0;
        while i < 3 {
            let mut b = 0;
            while b < 64 {
                let g = 4 * q + b / 16;
                let c = LUT_K8 * g + i + if b % 16 >= 8 { 3 } else { 0 };
                v[q][i][b] = (c % 64) as u8;
                b += 1;
            }
            i += 1;
        }
        q += 1;
    }
    v
}

/// The indices of [`lut8_half_index`].
static LUT8_HALF: [[[u8; 64]; 3]; 3] = lut8_half_index();

/// The bytes of a lane of half tables that count channel `i < 3` of their half: byte `j` of
/// every 128-bit lane when bit `i` of `j mod 8` is set.
const LUT8_HALF_BITS: [u64; 3] = [
    0xAAAA_AAAA_AAAA_AAAA,
    0xCCCC_CCCC_CCCC_CCCC,
    0xF0F0_F0F0_F0F0_F0F0,
];

/// Per lane `L`: the `vpermb` indices of entry `m`'s two half-table entries, `16 L + (m mod
/// 8)` (channels 0-2) and `16 L + 8 + m / 8` (channels 3-5).
const fn lut8_join_index() -> [[[u8; 64]; 2]; 4] {
    let mut v = [[[0u8; 64]; 2]; 4];
    let mut l = 0;
    while l < 4 {
        let mut m = 0;
        while m < 64 {
            v[l][0][m] = (16 * l + m % 8) as u8;
            v[l][1][m] = (16 * l + 8 + m / 8) as u8;
            m += 1;
        }
        l += 1;
    }
    v
}

/// The indices of [`lut8_join_index`].
static LUT8_JOIN: [[[u8; 64]; 2]; 4] = lut8_join_index();

/// Writes the byte tables of channel groups `0 .. n` (`n <= LUT8_CHUNK`) of the codes in `v`
/// (channel `6 gi + i` of group `gi` at byte `6 gi + i`, bytes from 60 on zero) at `t`, 64
/// bytes per group: entry `m` is the sum of the codes of the group whose bit is set in `m`
/// (at most 6 x 3 for 2-bit codes). Four groups at a time, one per 128-bit lane, first get
/// their two half tables of 8 entries (channels 0-2 and 3-5: 3 `vpermb` and 3 masked adds for
/// the four); then each table is the sum of two `vpermb` of its lane's halves.
///
/// # Safety
/// AVX-512 F/BW/VBMI present; `32 * n` writable `u16` at `t`.
#[inline(always)]
pub(super) unsafe fn lut8_tables_of(v: __m512i, n: usize, t: *mut u16) {
    // SAFETY: AVX-512 F/BW/VBMI present and `64 * n` writable bytes at `t` (caller); the
    // constants are 64 bytes each.
    unsafe {
        let ld = |p: &[u8; 64]| _mm512_loadu_si512(p.as_ptr() as *const _);
        let n = n.min(LUT8_CHUNK);
        for q in 0..n.div_ceil(4) {
            let mut halves = _mm512_setzero_si512();
            for (i, &lanes) in LUT8_HALF_BITS.iter().enumerate() {
                let c = _mm512_permutexvar_epi8(ld(&LUT8_HALF[q][i]), v);
                halves = _mm512_mask_add_epi8(halves, lanes, halves, c);
            }
            for l in 0..(n - 4 * q).min(4) {
                let lo = _mm512_permutexvar_epi8(ld(&LUT8_JOIN[l][0]), halves);
                let hi = _mm512_permutexvar_epi8(ld(&LUT8_JOIN[l][1]), halves);
                let tab = _mm512_add_epi8(lo, hi);
                _mm512_storeu_si512(t.add(LUT_N * (4 * q + l)) as *mut _, tab);
            }
        }
    }
}

/// Byte-table steps the byte sums may hold before they are widened into the `u16` sums.
fn lut8_byte_run(s: &ConvShape) -> usize {
    (u8::MAX as usize / (LUT_K8 * ((1usize << s.abits) - 1))).max(1)
}

impl LutCall<'_> {
    /// [`LutCall::steps`] over byte tables: `NB` blocks of 64 output channels, one `vpermb`
    /// and one byte add per pixel and block a step, the byte sums widened into `u16` sums
    /// every [`lut8_byte_run`] steps.
    ///
    /// # Safety
    /// As [`LutCall::steps`], with blocks of 64 channels.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn steps8<const NB: usize, const P: usize>(
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
        let gn = s.lut_groups();
        let px = s.groups * gn * LUT_N;
        let bw = lut_block_bytes(s);
        let mut base = [0usize; P];
        for j in 0..P {
            base[j] = window_origin(s, p0 + j) * px + g * gn * LUT_N;
        }
        let x = self.x.as_ptr();
        // SAFETY: block `b0` of group `g` lies inside the prepared weights (caller).
        let w = unsafe { self.w.as_ptr().add((g * s.cout_g.div_ceil(64) + b0) * bw) };
        // Per pixel, block and half of 32 channels: where its sums go and how many lanes.
        let mut out = [[[acc.as_mut_ptr(); 2]; NB]; P];
        let mut lanes = [[0usize; 2]; NB];
        for b in 0..NB {
            for h in 0..2 {
                lanes[b][h] = (s.cout_g.saturating_sub((b0 + b) * 64 + 32 * h)).min(32);
            }
        }
        for j in 0..P {
            for b in 0..NB {
                for h in 0..2 {
                    if lanes[b][h] > 0 {
                        let at = (p0 + j - self.first) * s.cout + g * s.cout_g + (b0 + b) * 64;
                        // SAFETY: `at + 32 h + lanes[b][h] <= acc.len()` (the call's rows).
                        out[j][b][h] = unsafe { acc.as_mut_ptr().add(at + 32 * h) };
                    }
                }
            }
        }
        // SAFETY: AVX-512 F/BW present (caller).
        let zero = unsafe { _mm512_setzero_si512() };
        let mut part = [[zero; NB]; P];
        let mut wide = [[[zero; 2]; NB]; P];
        let byte_run = lut8_byte_run(s);
        let mut pending = 0;
        // Per tap, one pointer per pixel and one for the weights, each advanced 64 bytes a
        // step (a tap's channel groups lie side by side in both). On this loop that ran the
        // W1A2 network 10 % faster than `steps`' single walk over all steps; on `steps` it
        // ran the W1A8 network 4 % slower.
        let mut t = t0;
        while t < t1 {
            let (tap, gi) = (t / gn, t % gn);
            let n = (gn - gi).min(t1 - t);
            let toff = ((tap / s.kw) * s.wp + tap % s.kw) * px + gi * LUT_N;
            // SAFETY: the tap's tables and weights lie inside the buffers (caller: the window
            // of every pixel of the tile is inside the padded input, `t1 <= kh * kw * gn`).
            unsafe {
                let tp: [*const u16; P] = core::array::from_fn(|j| x.add(base[j] + toff));
                let wt = w.add(t * 64);
                for i in 0..n {
                    let mut wv = [zero; NB];
                    for b in 0..NB {
                        wv[b] = _mm512_loadu_si512(wt.add(64 * i + b * bw) as *const _);
                    }
                    for j in 0..P {
                        let tv = _mm512_loadu_si512(tp[j].add(LUT_N * i) as *const _);
                        for b in 0..NB {
                            let v = _mm512_permutexvar_epi8(wv[b], tv);
                            part[j][b] = _mm512_add_epi8(part[j][b], v);
                        }
                    }
                    pending += 1;
                    if pending == byte_run {
                        lut8_widen(&mut part, &mut wide);
                        pending = 0;
                    }
                }
            }
            t += n;
        }
        // SAFETY: AVX-512 F/BW present (caller); `out` as above (a half without lanes is
        // not touched).
        unsafe {
            lut8_widen(&mut part, &mut wide);
            for j in 0..P {
                let q = last.then(|| self.qsum(p0 + j, g));
                for b in 0..NB {
                    for h in 0..2 {
                        widen_store(wide[j][b][h], out[j][b][h], lanes[b][h], first, q);
                    }
                }
            }
        }
    }

    /// [`LutCall::run_lut`] over byte tables: tiles of 2 blocks of 64 output channels by `P`
    /// pixels, or of 1 block by `P1` pixels (the last pixels one by one).
    ///
    /// # Safety
    /// AVX-512 F/BW/VBMI present; the call passed [`ConvShape::assert_call`].
    #[inline(always)]
    unsafe fn run_lut8<const P: usize, const P1: usize>(
        &self,
        y0: usize,
        y1: usize,
        acc: &mut [i32],
    ) {
        let s = self.s;
        let gn = s.lut_groups();
        let (steps, run) = (s.kh * s.kw * gn, lut_run(s));
        let nblk = s.cout_g.div_ceil(64);
        let (first, end) = (y0 * s.ow, y1 * s.ow);
        for g in 0..s.groups {
            let mut b0 = 0;
            while b0 < nblk {
                let nb = (nblk - b0).min(2);
                let tp = if nb == 2 { P } else { P1 };
                let mut p = first;
                while p < end {
                    let full = end - p >= tp;
                    let mut t0 = 0;
                    while t0 < steps {
                        let t1 = (t0 + run).min(steps);
                        let f = (t0 == 0, t1 == steps);
                        // SAFETY: blocks `b0 .. b0 + nb` exist, the tile's pixels lie before
                        // `end`, `t1 <= steps`; the rest is the caller's.
                        unsafe {
                            match (nb, full) {
                                (2, true) => self.steps8::<2, P>(acc, g, b0, p, t0, t1, f),
                                (_, true) => self.steps8::<1, P1>(acc, g, b0, p, t0, t1, f),
                                (2, false) => self.steps8::<2, 1>(acc, g, b0, p, t0, t1, f),
                                (_, false) => self.steps8::<1, 1>(acc, g, b0, p, t0, t1, f),
                            }
                        }
                        t0 = t1;
                    }
                    p += if full { tp } else { 1 };
                }
                b0 += nb;
            }
        }
    }
}

/// Widens byte sums into `u16` sums (channels 0-31 of a block into `wide[0]`, 32-63 into
/// `wide[1]`) and clears them.
///
/// # Safety
/// AVX-512 F/BW present.
#[inline(always)]
unsafe fn lut8_widen<const NB: usize, const P: usize>(
    part: &mut [[__m512i; NB]; P],
    wide: &mut [[[__m512i; 2]; NB]; P],
) {
    // SAFETY: AVX-512 F/BW present (caller).
    unsafe {
        for j in 0..P {
            for b in 0..NB {
                let v = part[j][b];
                let lo = _mm512_cvtepu8_epi16(_mm512_castsi512_si256(v));
                let hi = _mm512_cvtepu8_epi16(_mm512_extracti64x4_epi64::<1>(v));
                wide[j][b][0] = _mm512_add_epi16(wide[j][b][0], lo);
                wide[j][b][1] = _mm512_add_epi16(wide[j][b][1], hi);
                part[j][b] = _mm512_setzero_si512();
            }
        }
    }
}

/// [`LutCall::run_lut8`], compiled for AVX-512 F/BW/VBMI.
///
/// # Safety
/// As [`LutCall::run_lut8`].
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
pub(super) unsafe fn lut8_rows(call: &LutCall<'_>, y0: usize, y1: usize, acc: &mut [i32]) {
    // SAFETY: forwarded preconditions.
    unsafe { call.run_lut8::<4, 6>(y0, y1, acc) }
}
