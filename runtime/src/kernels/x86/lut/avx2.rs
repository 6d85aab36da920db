//! The table lookup for 1- and 2-bit weights and 2- to 8-bit codes with AVX2 (`vpshufb`), for
//! CPUs without AVX-512: per padded pixel and group of 4 input channels a table of the code sums
//! over the 16 subsets, 16 bytes each; the 4-bit patterns of 32 output channels index it with
//! one `vpshufb` (the table in both 128-bit lanes), 128 multiply-adds. An entry must fit a
//! byte: 2-bit codes are one plane (entries up to 4 x 3), codes of 3 to 8 bits two nibble planes
//! (up to 4 x 15 each; [`Lookup::CODE_BITS`]), each with its own tables and lookups, the high
//! one counted 16 times. Byte sums are widened into `u16` sums every [`Lookup::narrow_run`]
//! steps (21 for 2-bit codes, 4 for nibbles: after every kernel row of 3 taps) by a mask and a
//! shift (channel `c` in byte `2 (c mod 16) + c / 16`, [`Lookup::lane`]), and into the `i32`
//! accumulators at the end of a run, where `2 S - sum q` is folded into the last store.
//!
//! A padded pixel's tables take 16 bytes per 4 channels and code plane (the AVX-512 byte
//! tables 64 per 6), then come the code sums ([`input_len`]).
//!
//! The entry points of [`KernelKind::Int8LutAvx2`] are here ([`lut_avx2_tables`],
//! [`lut_avx2`]): for codes of 5 to 8 bits they take the byte sub-tables of [`super::Trios`]
//! (half the instructions a multiply-add of the two nibble planes), and where a sum of 3 codes
//! of the layer's input passes a byte a fallback: these tables where the AVX2 cost table puts
//! them ahead of the AVX2 int8 dot (wide layers), else that dot on the padded input bytes.

#![allow(clippy::needless_range_loop)]

use super::*;

/// Channels per AVX2 table (16 entries).
const K: usize = 4;

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
static HALF: Align64<[[u8; 32]; 2]> = Align64(half_index());

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
static HALF_BITS: Align64<[[u8; 32]; 2]> = Align64(half_bits());

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
static JOIN: Align64<[[[u8; 32]; 2]; 2]> = Align64(join_index());

/// Whether [`KernelKind::Int8LutAvx2`] takes the [`Trios`] tables, with a fallback
/// ([`falls_back_to_dot`]), for the shape (codes of 5 to 8 bits, `kernels::lut_avx2_trios`),
/// else [`Avx2`] tables.
pub(super) fn avx2_pairs(s: &ConvShape) -> bool {
    crate::kernels::lut_avx2_trios(s)
}

/// Whether the fallback of the [`Trios`] tables for the shape is the AVX2 int8 dot over the
/// padded input bytes, else two nibble planes of [`Avx2`] tables: the dot where the AVX2 cost
/// table puts it ahead of the nibbles (`kernels::cost::lut_avx2_falls_back_to_dot`), and where
/// a kernel row's nibble lookups would not fit the byte sums (more than 4 taps).
pub(super) fn falls_back_to_dot(s: &ConvShape) -> bool {
    s.kw > crate::kernels::lut_avx2_byte_kw(s.abits)
        || crate::kernels::cost::lut_avx2_falls_back_to_dot(s)
}

/// `u16`s holding the padded input bytes of the fallback (the AVX2 int8 dot's input).
fn dot_input_u16(s: &ConvShape) -> usize {
    s.byte_input_len().div_ceil(2)
}

/// The input length of [`KernelKind::Int8LutAvx2`]: for codes of 5 to 8 bits ([`avx2_pairs`])
/// room for the [`Trios`] tables or the fallback's input (the padded bytes, or the nibble
/// tables), then the flag saying which ([`set_fallback`]); else the [`Avx2`] tables.
pub(in super::super) fn lut_avx2_input_len(s: &ConvShape) -> usize {
    if avx2_pairs(s) {
        let fallback = if falls_back_to_dot(s) {
            dot_input_u16(s)
        } else {
            input_len::<Avx2>(s)
        };
        input_len::<Trios>(s).max(fallback).saturating_add(1)
    } else {
        input_len::<Avx2>(s)
    }
}

/// The prepared length of [`KernelKind::Int8LutAvx2`]: for codes of 5 to 8 bits the [`Trios`]
/// layout and the fallback's (the AVX2 dot's, or the [`Avx2`] layout), else the [`Avx2`]
/// layout.
pub(in super::super) fn lut_avx2_prepared_len(s: &ConvShape) -> usize {
    if avx2_pairs(s) {
        let fallback = if falls_back_to_dot(s) {
            int8_prepared_len(s)
        } else {
            prepared_len_of::<Avx2>(s)
        };
        prepared_len_of::<Trios>(s).saturating_add(fallback)
    } else {
        prepared_len_of::<Avx2>(s)
    }
}

/// The weight layout of [`KernelKind::Int8LutAvx2`]: for codes of 5 to 8 bits the [`Trios`]
/// layout ([`prepare_of`]) then the fallback's (the AVX2 dot's, [`int8_prepare`], or the
/// [`Avx2`] layout), else the [`Avx2`] layout.
pub(in super::super) fn lut_avx2_prepare(conv: &Conv<'_>, s: &ConvShape, out: &mut [u8]) {
    if avx2_pairs(s) {
        let t = prepared_len_of::<Trios>(s);
        prepare_of::<Trios>(conv, s, out);
        if let Some(rest) = out.get_mut(t..) {
            if falls_back_to_dot(s) {
                int8_prepare(conv, s, rest);
            } else {
                prepare_of::<Avx2>(conv, s, rest);
            }
        }
    } else {
        prepare_of::<Avx2>(conv, s, out)
    }
}

/// Whether the input `x` of [`KernelKind::Int8LutAvx2`] holds the fallback's input rather than
/// [`Trios`] tables (codes of 5 to 8 bits only).
pub(super) fn trios_fall_back(s: &ConvShape, x: &[u16]) -> bool {
    is_fallback(x, lut_avx2_input_len(s))
}

/// The table builder of [`KernelKind::Int8LutAvx2`] ([`build_tables`]): for codes of 5 to 8
/// bits ([`avx2_pairs`]) [`Trios`] tables, or, where an entry passes [`TRIO_ENTRY_MAX`] (the
/// build stops at the first padded row that has one), the fallback's input: the padded input
/// bytes of the AVX2 int8 dot, or nibble [`Avx2`] tables ([`falls_back_to_dot`],
/// [`set_fallback`]); else [`Avx2`] tables.
pub(in super::super) fn lut_avx2_tables(s: &ConvShape, x: &[u8], pad: u8, out: &mut [u16]) {
    #[target_feature(enable = "avx2")]
    fn body(s: &ConvShape, x: &[u8], pad: u8, out: &mut [u16]) {
        if !avx2_pairs(s) {
            // SAFETY: AVX2 present (this function's features).
            unsafe { build_tables::<Avx2>(s, x, pad, out, None) };
            return;
        }
        // SAFETY: as above.
        let fits = unsafe { build_tables::<Trios>(s, x, pad, out, Some(TRIO_ENTRY_MAX)) };
        if !fits && falls_back_to_dot(s) {
            let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut out[..dot_input_u16(s)]);
            portable::pad_bytes(s, x, pad, &mut bytes[..s.byte_input_len()]);
        } else if !fits {
            // SAFETY: as above.
            unsafe { build_tables::<Avx2>(s, x, pad, out, None) };
        }
        set_fallback(out, lut_avx2_input_len(s), !fits);
    }
    // SAFETY: `by_kind` hands this builder out only where AVX2 is present.
    unsafe { body(s, x, pad, out) }
}

/// The kind of [`KernelKind::Int8LutAvx2`].
pub(super) struct Avx2;

impl Lookup for Avx2 {
    type V = __m256i;
    /// Channels 0-15 of a block, then 16-31.
    type Wide = [__m256i; 2];
    const K: usize = K;
    const LANES: usize = 32;
    const STEP: usize = 32;
    /// 16 bytes.
    const TABLE: usize = 8;
    const NARROW: bool = true;
    /// 16 channels a load.
    const CHUNK: usize = 4;
    /// Entries of at most 4 x 15 fit a byte: codes of 3 to 8 bits are split into nibbles.
    const CODE_BITS: u8 = 4;

    /// The table in both 128-bit lanes (`vpshufb` looks up within a lane).
    #[inline(always)]
    unsafe fn load_t(p: *const u16) -> __m256i {
        // SAFETY: 8 readable `u16` at `p` (caller); AVX2 present.
        unsafe { _mm256_broadcastsi128_si256(_mm_loadu_si128(p as *const _)) }
    }

    #[inline(always)]
    unsafe fn look(part: __m256i, w: __m256i, t: __m256i) -> __m256i {
        // SAFETY: AVX2 present (caller).
        unsafe { _mm256_add_epi8(part, _mm256_shuffle_epi8(t, w)) }
    }

    /// Channel `c < 16` in byte `2 c`, channel `16 + c` in byte `2 c + 1`, so that the
    /// widening is a mask and a shift ([`Lookup::widen`]) rather than two crossings of lanes.
    #[inline(always)]
    fn lane(c: usize) -> usize {
        (c % 16) * 2 + c / 16
    }

    /// The even bytes (channels 0-15, [`Lookup::lane`]) and the odd ones (16-31) as `u16`.
    #[inline(always)]
    unsafe fn widen(wide: [__m256i; 2], part: __m256i) -> [__m256i; 2] {
        // SAFETY: AVX2 present (caller).
        unsafe {
            let lo = _mm256_and_si256(part, _mm256_set1_epi16(0xff));
            let hi = _mm256_srli_epi16::<8>(part);
            [_mm256_add_epi16(wide[0], lo), _mm256_add_epi16(wide[1], hi)]
        }
    }

    #[inline(always)]
    unsafe fn store(wide: [__m256i; 2], out: *mut i32, lanes: usize, st: Store) {
        for (h, v) in wide.into_iter().enumerate() {
            let n = lanes.saturating_sub(16 * h).min(16);
            if n > 0 {
                // SAFETY: AVX2 present; `n` of the block's `lanes` `i32`s at `out` from
                // channel `16 h` (caller).
                unsafe { store16(v, out.add(16 * h), n, st) };
            }
        }
    }

    /// Four tables at a time from half tables of 2 channels: the 16 codes in both lanes, then
    /// per channel of a half a `vpshufb` and a mask; each pair of tables (one per lane) is the
    /// sum of two `vpshufb` of the halves.
    #[inline(always)]
    unsafe fn tables_of(
        codes: Option<*const u8>,
        pad: u8,
        (len, _): (usize, usize),
        n: usize,
        t: *mut u16,
        (planes, stride): (usize, usize),
        top: &mut [__m256i; MAX_CODE_PLANES],
    ) -> u32 {
        // SAFETY: AVX2 present; `len <= 16` readable bytes at `codes` (caller): 16 are loaded
        // directly, fewer through a zeroed copy.
        let (v, sum) = unsafe {
            let v = match codes {
                Some(p) if len == 16 => _mm_loadu_si128(p as *const _),
                None if len == 16 => _mm_set1_epi8(pad as i8),
                _ => {
                    let mut c = [0u8; 16];
                    match codes {
                        Some(p) => core::ptr::copy_nonoverlapping(p, c.as_mut_ptr(), len),
                        None => c[..len].fill(pad),
                    }
                    _mm_loadu_si128(c.as_ptr() as *const _)
                }
            };
            let sad = _mm_sad_epu8(v, _mm_setzero_si128());
            let sum = _mm_cvtsi128_si64(sad) + _mm_extract_epi64::<1>(sad);
            (_mm256_broadcastsi128_si256(v), sum as u32)
        };
        // SAFETY: AVX2 present and `n <= 4` tables of 8 `u16` writable at `t` and at each
        // further plane's `stride` after (caller); the constants are 32 bytes each.
        unsafe {
            let ld = |p: &[u8; 32]| _mm256_loadu_si256(p.as_ptr() as *const _);
            let nibble = _mm256_set1_epi8(0x0f);
            for c in 0..planes {
                // One plane keeps the codes whole (at most 4 bits); two split them.
                let v = match (planes, c) {
                    (1, _) => v,
                    (_, 0) => _mm256_and_si256(v, nibble),
                    _ => _mm256_and_si256(_mm256_srli_epi16::<4>(v), nibble),
                };
                let mut halves = _mm256_setzero_si256();
                for i in 0..2 {
                    let b = _mm256_shuffle_epi8(v, ld(&HALF.0[i]));
                    halves = _mm256_add_epi8(halves, _mm256_and_si256(b, ld(&HALF_BITS.0[i])));
                }
                let t = t.add(c * stride);
                for k in 0..n.div_ceil(2) {
                    let tab = _mm256_add_epi8(
                        _mm256_shuffle_epi8(halves, ld(&JOIN.0[k][0])),
                        _mm256_shuffle_epi8(halves, ld(&JOIN.0[k][1])),
                    );
                    // A pair's second table past `n` is of zero codes: all zero.
                    top[c] = _mm256_max_epu8(top[c], tab);
                    let t = t.add(16 * k);
                    _mm_storeu_si128(t as *mut _, _mm256_castsi256_si128(tab));
                    if 2 * k + 1 < n {
                        _mm_storeu_si128(t.add(8) as *mut _, _mm256_extracti128_si256::<1>(tab));
                    }
                }
            }
        }
        sum
    }

    #[inline(always)]
    unsafe fn entry_max(v: __m256i) -> u16 {
        // SAFETY: AVX present (caller).
        unsafe { max_u8(v) }
    }
}

/// The largest of the 32 bytes in `v` (the AVX2 kinds' [`Lookup::entry_max`]).
///
/// # Safety
/// AVX present.
#[inline(always)]
pub(super) unsafe fn max_u8(v: __m256i) -> u16 {
    let mut e = [0u8; 32];
    // SAFETY: AVX present (caller); 32 bytes written.
    unsafe { _mm256_storeu_si256(e.as_mut_ptr() as *mut _, v) };
    e.into_iter().max().map_or(0, u16::from)
}

/// Adds the 16 `u16` sums in `v`, times `2^st.shift`, to the first `n` `i32` sums at `p`
/// (written instead on the `first` run); on the last run (`qsum` given) stores `2 S - qsum`
/// instead of the whole sum `S`. Fewer than 16 lanes go through a stack copy (AMD's masked stores are slow).
///
/// # Safety
/// AVX2 present; `n <= 16` `i32`s readable and writable at `p`.
#[inline(always)]
pub(super) unsafe fn store16(v: __m256i, p: *mut i32, n: usize, st: Store) {
    // SAFETY: AVX2 present (caller); the full-width path reads and writes the 16 `i32` at `p`
    // (`n == 16`), the other a stack copy of the `n` there.
    unsafe {
        let sh = _mm_cvtsi32_si128(st.shift as i32);
        let halves = [
            _mm256_sll_epi32(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(v)), sh),
            _mm256_sll_epi32(_mm256_cvtepu16_epi32(_mm256_extracti128_si256::<1>(v)), sh),
        ];
        let mut tmp = [0i32; 16];
        let full = n >= 16;
        let d = if full {
            p
        } else {
            core::ptr::copy_nonoverlapping(p, tmp.as_mut_ptr(), n);
            tmp.as_mut_ptr()
        };
        for (h, w) in halves.into_iter().enumerate() {
            let d = d.add(8 * h) as *mut __m256i;
            let r = if st.first {
                w
            } else {
                _mm256_add_epi32(_mm256_loadu_si256(d), w)
            };
            let r = match st.qsum {
                Some(q) => _mm256_sub_epi32(_mm256_add_epi32(r, r), _mm256_set1_epi32(q)),
                None => r,
            };
            _mm256_storeu_si256(d, r);
        }
        if !full {
            core::ptr::copy_nonoverlapping(tmp.as_ptr(), p, n);
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
        lut_avx2_input_len(s),
        w.len(),
        lut_avx2_prepared_len(s),
        y0,
        y1,
        acc.len(),
    );
    assert!(
        crate::kernels::lut_avx2_fits(s),
        "AVX2 table lookup: 1- or 2-bit weights, 2- to 8-bit codes, a short enough kernel row"
    );
    /// # Safety
    /// As [`lut_rows`].
    #[target_feature(enable = "avx2")]
    unsafe fn rows(s: &ConvShape, x: &[u16], w: &[u8], y0: usize, y1: usize, acc: &mut [i32]) {
        // SAFETY: forwarded preconditions. Tiles of 2 blocks x 2 pixels (the best of 11
        // measured, PERFORMANCE.md).
        unsafe { lut_rows::<Avx2, 2, 2, 2, 2>(s, x, w, y0, y1, acc) }
    }
    /// [`lut_rows`] over [`Trios`] tables.
    ///
    /// # Safety
    /// As [`lut_rows`].
    #[target_feature(enable = "avx2")]
    unsafe fn trios(s: &ConvShape, x: &[u16], w: &[u8], y0: usize, y1: usize, acc: &mut [i32]) {
        // SAFETY: forwarded preconditions.
        unsafe { lut_rows::<Trios, 3, 2, 3, 2>(s, x, w, y0, y1, acc) }
    }
    // SAFETY: `by_kind` hands this kernel out only where AVX2 is present, and the call matches
    // the contract (just checked).
    unsafe {
        if !avx2_pairs(s) {
            return rows(s, x, w, y0, y1, acc);
        }
        let (wt, wf) = w.split_at(prepared_len_of::<Trios>(s));
        if !trios_fall_back(s, x) {
            trios(s, x, wt, y0, y1, acc)
        } else if falls_back_to_dot(s) {
            let bytes: &[u8] = bytemuck::cast_slice(&x[..dot_input_u16(s)]);
            int8_avx2(s, &bytes[..s.byte_input_len()], wf, y0, y1, acc)
        } else {
            rows(s, x, wf, y0, y1, acc)
        }
    }
}
