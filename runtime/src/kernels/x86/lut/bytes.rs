//! Byte tables of [`LUT_K8`] (6) channels for codes of up to 2 bits, looked up with `vpermb`
//! (AVX-512 VBMI): a sum of six 2-bit codes fits a byte, so one lookup does 64 output channels
//! x 6 inputs; byte sums are widened into `u16` sums every [`Lookup::narrow_run`] steps (14).
//! The table builder's step ([`Lookup::tables_of`]) is here; its walk is the parent's
//! `build_tables`.

#![allow(clippy::needless_range_loop)]

use super::*;

/// Channel groups of one 64-byte load of codes in the byte-table builder (60 codes).
const LUT8_CHUNK: usize = 10;

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
static LUT8_HALF: Align64<[[[u8; 64]; 3]; 3]> = Align64(lut8_half_index());

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
static LUT8_JOIN: Align64<[[[u8; 64]; 2]; 4]> = Align64(lut8_join_index());

/// Writes the byte tables of channel groups `0 .. n` (`n <= LUT8_CHUNK`) of the codes in `v`
/// (channel `6 gi + i` of group `gi` at byte `6 gi + i`, bytes from 60 on zero) at `t`, 64
/// bytes per group: entry `m` is the sum of the codes of the group whose bit is set in `m`
/// (at most 6 x 3 for 2-bit codes). Four groups at a time, one per 128-bit lane, first get
/// their two half tables of 8 entries (channels 0-2 and 3-5: 3 `vpermb` and 3 masked adds for
/// the four); then each table is the sum of two `vpermb` of its lane's halves. `top` becomes
/// the byte-wise maximum of itself and the tables.
///
/// # Safety
/// AVX-512 F/BW/VBMI present; `32 * n` writable `u16` at `t`.
#[inline(always)]
unsafe fn lut8_tables_of(v: __m512i, n: usize, t: *mut u16, top: &mut __m512i) {
    // SAFETY: AVX-512 F/BW/VBMI present and `64 * n` writable bytes at `t` (caller); the
    // constants are 64 bytes each.
    unsafe {
        let ld = |p: &[u8; 64]| _mm512_loadu_si512(p.as_ptr() as *const _);
        let n = n.min(LUT8_CHUNK);
        for q in 0..n.div_ceil(4) {
            let mut halves = _mm512_setzero_si512();
            for (i, &lanes) in LUT8_HALF_BITS.iter().enumerate() {
                let c = _mm512_permutexvar_epi8(ld(&LUT8_HALF.0[q][i]), v);
                halves = _mm512_mask_add_epi8(halves, lanes, halves, c);
            }
            for l in 0..(n - 4 * q).min(4) {
                let lo = _mm512_permutexvar_epi8(ld(&LUT8_JOIN.0[l][0]), halves);
                let hi = _mm512_permutexvar_epi8(ld(&LUT8_JOIN.0[l][1]), halves);
                let tab = _mm512_add_epi8(lo, hi);
                *top = _mm512_max_epu8(*top, tab);
                _mm512_storeu_si512(t.add(LUT_N * (4 * q + l)) as *mut _, tab);
            }
        }
    }
}

/// The byte-table kind of [`KernelKind::Int8LutAvx512`].
pub(super) struct Bytes;

impl Lookup for Bytes {
    type V = __m512i;
    /// Channels 0-31 of a block, then 32-63.
    type Wide = [__m512i; 2];
    const K: usize = LUT_K8;
    const LANES: usize = 64;
    const STEP: usize = 64;
    const TABLE: usize = LUT_N;
    const NARROW: bool = true;
    const CHUNK: usize = LUT8_CHUNK;
    /// Every code in one plane (2 bits: the byte tables take codes of up to 2 bits).
    const CODE_BITS: u8 = 2;

    #[inline(always)]
    unsafe fn look(part: __m512i, w: __m512i, t: __m512i) -> __m512i {
        // SAFETY: AVX-512 BW/VBMI present (caller).
        unsafe { _mm512_add_epi8(part, _mm512_permutexvar_epi8(w, t)) }
    }

    #[inline(always)]
    unsafe fn widen(wide: [__m512i; 2], part: __m512i) -> [__m512i; 2] {
        // SAFETY: AVX-512 F/BW present (caller).
        unsafe {
            let lo = _mm512_cvtepu8_epi16(_mm512_castsi512_si256(part));
            let hi = _mm512_cvtepu8_epi16(_mm512_extracti64x4_epi64::<1>(part));
            [_mm512_add_epi16(wide[0], lo), _mm512_add_epi16(wide[1], hi)]
        }
    }

    #[inline(always)]
    unsafe fn store(wide: [__m512i; 2], out: *mut i32, lanes: usize, st: Store) {
        for (h, v) in wide.into_iter().enumerate() {
            let n = lanes.saturating_sub(32 * h).min(32);
            if n > 0 {
                // SAFETY: AVX-512 F/BW present; `n` of the block's `lanes` `i32`s at `out`
                // from channel `32 h` (caller).
                unsafe { widen_store(v, out.add(32 * h), n, st) };
            }
        }
    }

    #[inline(always)]
    unsafe fn tables_of(
        codes: Option<*const u8>,
        pad: u8,
        (len, _): (usize, usize),
        n: usize,
        t: *mut u16,
        _: (usize, usize),
        top: &mut [__m512i; MAX_CODE_PLANES],
    ) -> u32 {
        // SAFETY: AVX-512 F/BW/VBMI present, `len <= 60` codes readable and `n` tables
        // writable (caller).
        unsafe {
            let (v, sum) = codes512(codes, pad, len);
            lut8_tables_of(v, n, t, &mut top[0]);
            sum
        }
    }

    #[inline(always)]
    unsafe fn entry_max(v: __m512i) -> u16 {
        let mut e = [0u8; 64];
        // SAFETY: AVX-512 F present (caller); 64 bytes written.
        unsafe { _mm512_storeu_si512(e.as_mut_ptr() as *mut _, v) };
        e.into_iter().max().map_or(0, u16::from)
    }
}
