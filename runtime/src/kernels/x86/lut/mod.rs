//! The table-lookup kernel for 1-bit weights with 2- to 8-bit activations (AVX-512 BW/VBMI):
//! `u16` tables of 5 channels looked up with `vpermw` for codes of 3 to 8 bits (here), byte
//! tables of 6 channels looked up with `vpermb` for codes of 2 bits ([`bytes`]); which one is
//! [`ConvShape::lut_k`]. Both share the weight layout (a table index per output channel, tap
//! and channel group), the tables' place (64 bytes per padded pixel and channel group, then
//! the code sums) and the kernel's entry. [`avx2`] is the same lookup for CPUs without
//! AVX-512 (`vpshufb`, byte tables of 4 channels, 2-bit codes), its own kind.

#![allow(clippy::needless_range_loop)]

use super::*;

mod avx2;
mod bytes;

pub(super) use avx2::{lut_avx2, lut_avx2_prepare, lut_avx2_prepared_len, lut_avx2_tables};
use bytes::*;

// ---------------------------------------------------------------------------------------------
// table lookup (1-bit weights, 2- to 8-bit activations, AVX-512 BW/VBMI): `vpermw`

/// Output channels per block of the table-lookup layout: 32 `u16` indices (`vpermw`), or 64
/// byte indices (`vpermb`) for byte tables.
fn lut_lanes(s: &ConvShape) -> usize {
    if s.lut_k() == LUT_K8 {
        64
    } else {
        32
    }
}

/// Bytes of one block of output channels in the table-lookup layout (64 a step either way).
fn lut_block_bytes(s: &ConvShape) -> usize {
    s.kh * s.kw * s.lut_groups() * 64
}

pub(super) fn lut_prepared_len(s: &ConvShape) -> usize {
    s.groups * s.cout_g.div_ceil(lut_lanes(s)) * lut_block_bytes(s)
}

/// The weights as table indices, `u16 [g][O/32][kh][kw][ceil(cin_g/5)][32]` (`u8
/// [g][O/64][kh][kw][ceil(cin_g/6)][64]` for byte tables, [`ConvShape::lut_k`] channels a
/// group): bit `i` of the index of channel `o` at a tap and channel group `G` is set when the
/// weight of input channel `k G + i` is `+1` (zero past `cin_g` and `cout_g`).
pub(super) fn lut_prepare(conv: &Conv<'_>, s: &ConvShape, out: &mut [u8]) {
    let len = lut_prepared_len(s);
    let Some(dst) = out.get_mut(..len) else {
        return;
    };
    dst.fill(0);
    let codes = CodeReader::new(conv);
    let (k, lanes) = (s.lut_k(), lut_lanes(s));
    // Bytes per index: 2 (`u16`, the pattern in the low byte) or 1.
    let el = 64 / lanes;
    let (gn, nblk, bb) = (s.lut_groups(), s.cout_g.div_ceil(lanes), lut_block_bytes(s));
    for o in 0..s.cout {
        let (g, oc) = (o / s.cout_g, o % s.cout_g);
        let blk = (g * nblk + oc / lanes) * bb;
        for ky in 0..s.kh {
            for kx in 0..s.kw {
                for i in 0..s.cin_g {
                    if codes.numerator(o, ky, kx, i) > 0 {
                        let at = blk + (((ky * s.kw + kx) * gn + i / k) * lanes + oc % lanes) * el;
                        dst[at] |= 1 << (i % k);
                    }
                }
            }
        }
    }
}

/// `u16`s of one table: `2^LUT_K` entries of `u16`, or `2^LUT_K8` bytes; one `__m512i`.
const LUT_N: usize = 1 << LUT_K;

/// Channel groups of one 64-byte load of codes in the table builder (60 codes).
const LUT_CHUNK: usize = 12;

/// Per input channel pair `(2k, 2k + 1)` of a table: the signed bytes `(bit 2k of m, bit
/// 2k+1 of m)` of word lane `m`, for `vpmaddubsw` (bit 5 is never set: `m < 32`).
const fn lut_pair_bits(pair: u32) -> [u8; 64] {
    let mut v = [0u8; 64];
    let mut m = 0;
    while m < LUT_N {
        v[2 * m] = (m >> (2 * pair) & 1) as u8;
        v[2 * m + 1] = (m >> (2 * pair + 1) & 1) as u8;
        m += 1;
    }
    v
}

/// The `vpmaddubsw` constants of [`lut_pair_bits`] for the pairs 0, 1 and 2.
const LUT_BITS: [[u8; 64]; 3] = [lut_pair_bits(0), lut_pair_bits(1), lut_pair_bits(2)];

/// `vpermb` indices broadcasting the code pair `(5 gi + 2k, 5 gi + 2k + 1)` of channel group
/// `gi` of a chunk to every word, for `k` = 0, 1, 2 (the second code of pair 2 is byte 63,
/// always zero in a chunk of at most 60 codes).
const fn lut_pair_index() -> [[[u8; 64]; 3]; LUT_CHUNK] {
    let mut v = [[[0u8; 64]; 3]; LUT_CHUNK];
    let mut gi = 0;
    while gi < LUT_CHUNK {
        let mut k = 0;
        while k < 3 {
            let c = (LUT_K * gi + 2 * k) as u8;
            let mut m = 0;
            while m < 32 {
                v[gi][k][2 * m] = c;
                v[gi][k][2 * m + 1] = if k == 2 { 63 } else { c + 1 };
                m += 1;
            }
            k += 1;
        }
        gi += 1;
    }
    v
}

/// The indices of [`lut_pair_index`].
static LUT_PAIRS: [[[u8; 64]; 3]; LUT_CHUNK] = lut_pair_index();

/// Writes the tables of channel groups `0 .. n` (`n <= LUT_CHUNK`) of the codes in `v` (64
/// bytes, channel `5 gi + i` of group `gi` at byte `5 gi + i`, bytes from 60 on zero) at `t`,
/// 32 `u16` per group: entry `m` of a table is the sum of the codes of the group whose bit is
/// set in `m`.
///
/// # Safety
/// AVX-512 F/BW/VBMI present; `32 * n` writable `u16` at `t`.
#[inline(always)]
unsafe fn lut_tables_of(v: __m512i, n: usize, t: *mut u16) {
    // SAFETY: AVX-512 F/BW/VBMI present and `64 * n` writable bytes at `t` (caller); the
    // constants are 64 bytes each.
    unsafe {
        let ld = |p: &[u8; 64]| _mm512_loadu_si512(p.as_ptr() as *const _);
        let (b0, b1, b2) = (ld(&LUT_BITS[0]), ld(&LUT_BITS[1]), ld(&LUT_BITS[2]));
        for gi in 0..n.min(LUT_CHUNK) {
            let pair = |k: usize| _mm512_permutexvar_epi8(ld(&LUT_PAIRS[gi][k]), v);
            let tab = _mm512_add_epi16(
                _mm512_add_epi16(
                    _mm512_maddubs_epi16(pair(0), b0),
                    _mm512_maddubs_epi16(pair(1), b1),
                ),
                _mm512_maddubs_epi16(pair(2), b2),
            );
            _mm512_storeu_si512(t.add(LUT_N * gi) as *mut _, tab);
        }
    }
}

/// The table builder of [`KernelKind::Int8LutAvx512`]: for every padded input pixel, group
/// and channel group of [`ConvShape::lut_k`] ([`ConvShape::lut_input_len`] `u16`s in all),
/// the sums of the codes over every subset of the group's channels (unpadded HWC input `x`,
/// pad pixels holding `pad`; channels past `cin_g` count 0).
pub(super) fn lut_tables(s: &ConvShape, x: &[u8], pad: u8, out: &mut [u16]) {
    // `BYTES`: byte tables of `LUT_K8` channels, else `u16` tables of `LUT_K`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    fn body<const BYTES: bool>(s: &ConvShape, x: &[u8], pad: u8, out: &mut [u16]) {
        let (h, w, c, cin, gn) = (s.h(), s.w(), s.c, s.cin_g, s.lut_groups());
        let (k, chunk) = if BYTES {
            (LUT_K8, LUT8_CHUNK)
        } else {
            (LUT_K, LUT_CHUNK)
        };
        let px = s.groups * gn * LUT_N;
        let sums = s.lut_tables_len();
        assert!(out.len() >= s.lut_input_len() && x.len() >= h * w * c);
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
                    // Chunks of `chunk` channel groups (60 codes) per 64-byte load.
                    let mut gi = 0;
                    let mut sum = 0u64;
                    while gi < gn {
                        let n = (gn - gi).min(chunk);
                        let ch = gi * k;
                        let len = (cin - ch).min(chunk * k);
                        let mask: __mmask64 = (1u64 << len) - 1;
                        // SAFETY: AVX-512 F/BW/VBMI present (`by_kind` hands this builder out
                        // only then); the masked load reads `len` codes of the pixel's group
                        // (inside `x`, asserted above); the tables of groups `gi .. gi + n`
                        // lie inside the pixel's `px` u16 of `out` (asserted above).
                        unsafe {
                            let v = if inside {
                                _mm512_maskz_loadu_epi8(
                                    mask,
                                    x.as_ptr().add(pix + g * cin + ch) as *const _,
                                )
                            } else {
                                _mm512_maskz_set1_epi8(mask, pad as i8)
                            };
                            let t = o.add((y * s.wp + xx) * px + (g * gn + gi) * LUT_N);
                            if BYTES {
                                lut8_tables_of(v, n, t);
                            } else {
                                lut_tables_of(v, n, t);
                            }
                            sum +=
                                _mm512_reduce_add_epi64(_mm512_sad_epu8(v, _mm512_setzero_si512()))
                                    as u64;
                        }
                        gi += n;
                    }
                    let at = sums + ((y * s.wp + xx) * s.groups + g) * 2;
                    out[at] = sum as u16;
                    out[at + 1] = (sum >> 16) as u16;
                }
            }
        }
    }
    // SAFETY: `by_kind` hands this builder out only where AVX-512 F/BW/VBMI is present.
    unsafe {
        if s.lut_k() == LUT_K8 {
            body::<true>(s, x, pad, out)
        } else {
            body::<false>(s, x, pad, out)
        }
    }
}

/// A table-lookup kernel call (over the tables of [`lut_tables`]).
struct Lut;

/// A table-lookup kernel call.
type LutCall<'a> = Call<'a, u16, Lut>;

// `Call::new` wants a `Tile`; the table-lookup kernel runs its own loop (`run_lut`).
impl Tile for LutCall<'_> {
    unsafe fn tile<const NB: usize, const P: usize>(
        &self,
        _: &mut [i32],
        _: usize,
        _: usize,
        _: usize,
    ) {
        unreachable!("the table-lookup kernel runs `run_lut`")
    }
}

/// Table steps a run of `u16` sums may hold: each adds at most `lut_k * (2^abits - 1)`.
fn lut_run(s: &ConvShape) -> usize {
    (u16::MAX as usize / (s.lut_k() * ((1usize << s.abits) - 1))).max(1)
}

impl LutCall<'_> {
    /// Adds table steps `t0 .. t1` (step `t`: tap `t / gn`, channel group `t % gn`) of `NB`
    /// blocks of 32 output channels from block `b0` of group `g` for the `P` output pixels
    /// from `p0` to their `i32` sums in `acc` (written instead when `first`). At most
    /// [`lut_run`] steps: the sums of the run are `u16`.
    ///
    /// # Safety
    /// AVX-512 F/BW present; the call passed [`ConvShape::assert_call`]; blocks `b0 .. b0 +
    /// NB` exist in the group, pixels `p0 .. p0 + P` lie in the call's rows, `t1 <= kh * kw *
    /// gn`.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn steps<const NB: usize, const P: usize>(
        &self,
        acc: &mut [i32],
        g: usize,
        b0: usize,
        p0: usize,
        t0: usize,
        t1: usize,
        first: bool,
    ) {
        let s = self.s;
        let gn = s.lut_groups();
        let px = s.groups * gn * LUT_N;
        let bw = lut_block_bytes(s) / 2;
        let mut base = [0usize; P];
        for j in 0..P {
            base[j] = window_origin(s, p0 + j) * px + g * gn * LUT_N;
        }
        let x = self.x.as_ptr();
        // SAFETY: block `b0` of group `g` lies inside the prepared weights (caller).
        let w =
            unsafe { (self.w.as_ptr() as *const u16).add((g * s.cout_g.div_ceil(32) + b0) * bw) };
        let mut out = [[acc.as_mut_ptr(); NB]; P];
        let mut lanes = [0usize; NB];
        for b in 0..NB {
            lanes[b] = (s.cout_g - (b0 + b) * 32).min(32);
        }
        for j in 0..P {
            for b in 0..NB {
                let at = (p0 + j - self.first) * s.cout + g * s.cout_g + (b0 + b) * 32;
                // SAFETY: `at + lanes[b] <= acc.len()` (the call's accumulator length).
                out[j][b] = unsafe { acc.as_mut_ptr().add(at) };
            }
        }
        // SAFETY: AVX-512 F/BW present (caller).
        let zero = unsafe { _mm512_setzero_si512() };
        let mut part = [[zero; NB]; P];
        let (tap, mut gi) = (t0 / gn, t0 % gn);
        let (mut ky, mut kx) = (tap / s.kw, tap % s.kw);
        // Table and weight offsets of the step (no division in the loop).
        let mut toff = (ky * s.wp + kx) * px + gi * LUT_N;
        let mut woff = t0 * 32;
        for _ in t0..t1 {
            // SAFETY: the step's tables and weights lie inside the buffers (caller: the window
            // of every pixel of the tile is inside the padded input, `t < kh * kw * gn`).
            unsafe {
                let wt = w.add(woff);
                let mut wv = [zero; NB];
                for b in 0..NB {
                    wv[b] = _mm512_loadu_si512(wt.add(b * bw) as *const _);
                }
                for j in 0..P {
                    let t = _mm512_loadu_si512(x.add(base[j] + toff) as *const _);
                    for b in 0..NB {
                        let v = _mm512_permutexvar_epi16(wv[b], t);
                        part[j][b] = _mm512_add_epi16(part[j][b], v);
                    }
                }
            }
            gi += 1;
            woff += 32;
            toff += LUT_N;
            if gi == gn {
                gi = 0;
                kx += 1;
                if kx == s.kw {
                    (kx, ky) = (0, ky + 1);
                }
                toff = (ky * s.wp + kx) * px;
            }
        }
        // SAFETY: AVX-512 F/BW present (caller); `out` as above.
        unsafe { lut_widen(part, &out, &lanes, first) };
    }

    /// Runs rows `y0..y1`: per group and tile of up to 4 blocks of 32 output channels, runs
    /// of [`lut_run`] steps over every pixel tile of `P` pixels (`P2` for tiles of up to 2
    /// blocks; the last ones one by one); then `2 S - sum q` per pixel.
    ///
    /// Each table kind keeps a loop of this shape (`run_lut8`, `run_avx2`): one walk shared
    /// through a closure ran the kernels 40x slower, the closure's intrinsics no longer
    /// inlined under the caller's target features.
    ///
    /// # Safety
    /// AVX-512 F/BW present; the call passed [`ConvShape::assert_call`].
    #[inline(always)]
    unsafe fn run_lut<const P: usize, const P2: usize>(
        &self,
        y0: usize,
        y1: usize,
        acc: &mut [i32],
    ) {
        let s = self.s;
        let gn = s.lut_groups();
        let (steps, run) = (s.kh * s.kw * gn, lut_run(s));
        let nblk = s.cout_g.div_ceil(32);
        let (first, end) = (y0 * s.ow, y1 * s.ow);
        for g in 0..s.groups {
            let mut b0 = 0;
            while b0 < nblk {
                let nb = (nblk - b0).min(4);
                // Narrow tiles (up to 2 blocks) take `P2` pixels.
                let tp = if nb <= 2 { P2 } else { P };
                let mut p = first;
                while p < end {
                    let full = end - p >= tp;
                    let mut t0 = 0;
                    while t0 < steps {
                        let t1 = (t0 + run).min(steps);
                        let f = t0 == 0;
                        // SAFETY: blocks `b0 .. b0 + nb` exist, the tile's pixels lie before
                        // `end`, `t1 <= steps`; the rest is the caller's.
                        unsafe {
                            match (nb, full) {
                                (4, true) => self.steps::<4, P>(acc, g, b0, p, t0, t1, f),
                                (3, true) => self.steps::<3, P>(acc, g, b0, p, t0, t1, f),
                                (2, true) => self.steps::<2, P2>(acc, g, b0, p, t0, t1, f),
                                (_, true) => self.steps::<1, P2>(acc, g, b0, p, t0, t1, f),
                                (4, false) => self.steps::<4, 1>(acc, g, b0, p, t0, t1, f),
                                (3, false) => self.steps::<3, 1>(acc, g, b0, p, t0, t1, f),
                                (2, false) => self.steps::<2, 1>(acc, g, b0, p, t0, t1, f),
                                (_, false) => self.steps::<1, 1>(acc, g, b0, p, t0, t1, f),
                            }
                        }
                        t0 = t1;
                    }
                    p += if full { tp } else { 1 };
                }
                b0 += nb;
            }
        }
        // `sum num*q = 2 * (sum of the codes under +1 weights) - sum q`.
        for p in first..end {
            for g in 0..s.groups {
                let q = self.qsum(p, g);
                let row = (p - first) * s.cout + g * s.cout_g;
                for v in &mut acc[row..row + s.cout_g] {
                    *v = v.wrapping_mul(2).wrapping_sub(q);
                }
            }
        }
    }

    /// `sum q` over the window of output pixel `p` (row-major over the whole output) in group
    /// `g`: the sums of all codes of each padded pixel after the tables.
    #[inline(always)]
    fn qsum(&self, p: usize, g: usize) -> i32 {
        let s = self.s;
        let sums = &self.x[s.lut_tables_len()..];
        let org = window_origin(s, p);
        let mut q = 0u32;
        for ky in 0..s.kh {
            for kx in 0..s.kw {
                let at = ((org + ky * s.wp + kx) * s.groups + g) * 2;
                q = q.wrapping_add(u32::from(sums[at]) | u32::from(sums[at + 1]) << 16);
            }
        }
        q as i32
    }
}

/// The mask of the first `n.min(16)` `i32` lanes.
#[inline(always)]
fn lane_mask(n: usize) -> __mmask16 {
    if n >= 16 {
        0xffff
    } else {
        (1u16 << n) - 1
    }
}

/// Adds the 32 `u16` sums in `v` to the `i32` sums at `p` (the first `lanes` of them; written
/// instead on the `first` run); on the last run (`qsum` given) stores `2 * S - qsum`, `S` the
/// whole sum, instead of `S`.
///
/// # Safety
/// AVX-512 F/BW present; `lanes.min(32)` `i32`s readable and writable at `p`.
#[inline(always)]
unsafe fn widen_store(v: __m512i, p: *mut i32, lanes: usize, first: bool, qsum: Option<i32>) {
    // SAFETY: AVX-512 F/BW present; masked lanes are not touched (caller).
    unsafe {
        let halves = [
            _mm512_cvtepu16_epi32(_mm512_castsi512_si256(v)),
            _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64::<1>(v)),
        ];
        for (h, w) in halves.into_iter().enumerate() {
            let m = lane_mask(lanes.saturating_sub(16 * h));
            let p = p.wrapping_add(16 * h);
            let r = if first {
                w
            } else {
                _mm512_add_epi32(_mm512_maskz_loadu_epi32(m, p as *const _), w)
            };
            let r = match qsum {
                Some(q) => _mm512_sub_epi32(_mm512_add_epi32(r, r), _mm512_set1_epi32(q)),
                None => r,
            };
            _mm512_mask_storeu_epi32(p as *mut _, m, r);
        }
    }
}

/// Adds the `u16` sums of a run to the `i32` sums at `out` (`lanes` of them per block; written
/// instead on the `first` run); returns cleared sums.
///
/// # Safety
/// AVX-512 F/BW present; `lanes[b]` `i32`s readable and writable at `out[j][b]`.
#[inline(always)]
unsafe fn lut_widen<const NB: usize, const P: usize>(
    part: [[__m512i; NB]; P],
    out: &[[*mut i32; NB]; P],
    lanes: &[usize; NB],
    first: bool,
) -> [[__m512i; NB]; P] {
    // SAFETY: AVX-512 F/BW present; `out` as the caller states.
    unsafe {
        for j in 0..P {
            for b in 0..NB {
                widen_store(part[j][b], out[j][b], lanes[b], first, None);
            }
        }
        [[_mm512_setzero_si512(); NB]; P]
    }
}

/// [`KernelKind::Int8LutAvx512`].
pub(super) fn lut_avx512(
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
        lut_prepared_len(s),
        y0,
        y1,
        acc.len(),
    );
    assert!(
        s.wbits == 1 && s.abits >= 2,
        "table lookup: 1-bit weights, 2- to 8-bit codes"
    );
    // SAFETY: `by_kind` hands this kernel out only where AVX-512 F/BW/VBMI is present, and the
    // call matches the contract (just checked).
    unsafe { lut_avx512_impl(s, x, w, y0, y1, acc) }
}

/// # Safety
/// AVX-512 F/BW/VBMI present; the call passed [`ConvShape::assert_call`].
unsafe fn lut_avx512_impl(
    s: &ConvShape,
    x: &[u16],
    w: &[u8],
    y0: usize,
    y1: usize,
    acc: &mut [i32],
) {
    let call = LutCall::new(s, x, w, y0);
    // SAFETY: forwarded preconditions.
    unsafe {
        if s.lut_k() == LUT_K8 {
            lut8_rows(&call, y0, y1, acc)
        } else {
            lut16_rows(&call, y0, y1, acc)
        }
    }
}

/// [`LutCall::run_lut`], compiled for AVX-512 F/BW.
///
/// # Safety
/// As [`LutCall::run_lut`].
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn lut16_rows(call: &LutCall<'_>, y0: usize, y1: usize, acc: &mut [i32]) {
    // SAFETY: forwarded preconditions.
    unsafe { call.run_lut::<4, 8>(y0, y1, acc) }
}
