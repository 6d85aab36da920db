//! `u16` tables of [`LUT_K`] (5) channels, looked up with `vpermw` (AVX-512 BW): 32 output
//! channels x 5 inputs a lookup, for codes of 3 to 8 bits (a table entry is at most 5 x 255).
//! The sums of a run stay `u16` ([`Lookup::run`] steps). The table builder's constants and
//! its step ([`Lookup::tables_of`]) are here; its walk is the parent's `build_tables`.

use super::*;

/// The `u16` table kind of [`KernelKind::Int8LutAvx512`].
pub(super) struct Words;

impl Lookup for Words {
    type V = __m512i;
    type Wide = __m512i;
    const K: usize = LUT_K;
    const LANES: usize = 32;
    const STEP: usize = 64;
    const TABLE: usize = LUT_N;
    const NARROW: bool = false;
    const CHUNK: usize = LUT_CHUNK;
    /// Every code in one plane (8 bits).
    const CODE_BITS: u8 = 8;

    #[inline(always)]
    unsafe fn look(part: __m512i, w: __m512i, t: __m512i) -> __m512i {
        // SAFETY: AVX-512 BW present (caller).
        unsafe { _mm512_add_epi16(part, _mm512_permutexvar_epi16(w, t)) }
    }

    #[inline(always)]
    unsafe fn widen(wide: __m512i, part: __m512i) -> __m512i {
        // SAFETY: AVX-512 BW present (caller).
        unsafe { _mm512_add_epi16(wide, part) }
    }

    #[inline(always)]
    unsafe fn store(wide: __m512i, out: *mut i32, lanes: usize, st: Store) {
        // SAFETY: AVX-512 F/BW present, `lanes` `i32`s at `out` (caller).
        unsafe { widen_store(wide, out, lanes, st) }
    }

    #[inline(always)]
    unsafe fn tables_of(
        codes: Option<*const u8>,
        pad: u8,
        len: usize,
        n: usize,
        t: *mut u16,
        _: (usize, usize),
    ) -> u32 {
        // SAFETY: AVX-512 F/BW/VBMI present, `len <= 60` codes readable and `n` tables
        // writable (caller).
        unsafe {
            let (v, sum) = codes512(codes, pad, len);
            lut_tables_of(v, n, t);
            sum
        }
    }
}

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
static LUT_BITS: Align64<[[u8; 64]; 3]> =
    Align64([lut_pair_bits(0), lut_pair_bits(1), lut_pair_bits(2)]);

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
static LUT_PAIRS: Align64<[[[u8; 64]; 3]; LUT_CHUNK]> = Align64(lut_pair_index());

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
        let (b0, b1, b2) = (ld(&LUT_BITS.0[0]), ld(&LUT_BITS.0[1]), ld(&LUT_BITS.0[2]));
        for gi in 0..n.min(LUT_CHUNK) {
            let pair = |k: usize| _mm512_permutexvar_epi8(ld(&LUT_PAIRS.0[gi][k]), v);
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
