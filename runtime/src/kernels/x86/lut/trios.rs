//! Byte sub-tables of 3 channels, two to a 128-bit lane, looked up with `vpshufb` and summed
//! by `vpmaddubsw` (AVX2), for codes of 5 to 8 bits: the 16 bytes of a table are the 8-entry
//! sub-tables of channels 0-2 and 3-5 of a group of 6; an output channel's two index bytes
//! name one sub-table each (bit 3), so a lookup puts its two sums side by side and
//! `vpmaddubsw` against ones adds them into its `u16` sum: 16 output channels x 6 inputs in
//! three instructions, where [`super::avx2::Avx2`]'s two nibble planes take six (two lookups, two
//! byte adds, the widening) for 32 x 4 x 2.
//!
//! A byte entry is exact only while the sum of its 3 codes is at most 255: the builder adds
//! with unsigned saturation and keeps the largest entry, and the caller
//! ([`super::lut_avx2_tables`]) stops where an entry reached 255 (a saturated sum cannot be
//! told from an exact 255) and gives the layer to a fallback instead: the AVX2 int8 dot, or
//! [`super::avx2::Avx2`]'s nibble tables where they cost less.

use super::*;

/// The byte sub-table kind of [`KernelKind::Int8LutAvx2`] for codes of 5 to 8 bits.
pub(super) struct Trios;

/// Channels a sub-table.
const SUB: usize = 3;

/// The largest entry of byte sub-tables the kernel takes: the builder's sums saturate at 255,
/// which an exact 255 cannot be told from.
pub(super) const TRIO_ENTRY_MAX: u16 = u8::MAX as u16 - 1;

/// Per channel `i < 3` of a sub-table: the `vpshufb` indices that put, in byte `k` of lane
/// `L`, the code of channel `6 L + 3 (k / 8) + i` (group `L` of a load, sub-table `k / 8`).
const fn code_index() -> [[u8; 32]; SUB] {
    let mut v = [[0u8; 32]; SUB];
    let mut i = 0;
    while i < SUB {
        let mut b = 0;
        while b < 32 {
            let (l, k) = (b / 16, b % 16);
            v[i][b] = (2 * SUB * l + SUB * (k / 8) + i) as u8;
            b += 1;
        }
        i += 1;
    }
    v
}

/// The indices of [`code_index`].
static CODE: Align64<[[u8; 32]; SUB]> = Align64(code_index());

/// Per channel `i < 3`: `0xff` in the bytes whose entry (`byte mod 8`) has bit `i` set.
const fn entry_bits() -> [[u8; 32]; SUB] {
    let mut v = [[0u8; 32]; SUB];
    let mut i = 0;
    while i < SUB {
        let mut b = 0;
        while b < 32 {
            v[i][b] = if (b % 8) >> i & 1 == 1 { 0xff } else { 0 };
            b += 1;
        }
        i += 1;
    }
    v
}

/// The masks of [`entry_bits`].
static BITS: Align64<[[u8; 32]; SUB]> = Align64(entry_bits());

/// 16 bytes `0xff` then 16 zeros: the 16 bytes from `16 - len` keep the first `len`.
static LEN_MASK: Align64<[u8; 32]> = {
    let mut v = [0u8; 32];
    let mut b = 0;
    while b < 16 {
        v[b] = 0xff;
        b += 1;
    }
    Align64(v)
};

impl Lookup for Trios {
    type V = __m256i;
    type Wide = __m256i;
    const K: usize = 2 * SUB;
    const LANES: usize = 16;
    const STEP: usize = 32;
    /// 16 bytes.
    const TABLE: usize = 8;
    const NARROW: bool = false;
    /// Two groups (12 codes) from one load of 16, a group in each 128-bit lane.
    const CHUNK: usize = 2;
    /// Every code in one plane (8 bits).
    const CODE_BITS: u8 = 8;

    /// Channel `i` of a group: byte `i / 3` of its output channel's two (sub-table `i / 3`),
    /// entry bit `i % 3`.
    #[inline(always)]
    fn index_bit(i: usize) -> (usize, usize) {
        (i / SUB, i % SUB)
    }

    /// Byte `b % 2` of an output channel's two names sub-table `b % 2` (index bit 3).
    #[inline(always)]
    fn index_base(b: usize) -> u8 {
        ((b % 2) << 3) as u8
    }

    /// A lookup adds two entries of at most 255 to a `u16` sum: 128 of them a run.
    #[inline(always)]
    fn run(_top: usize) -> usize {
        u16::MAX as usize / (2 * u8::MAX as usize)
    }

    /// The table in both 128-bit lanes, as [`Avx2`](super::avx2::Avx2)'s.
    #[inline(always)]
    unsafe fn load_t(p: *const u16) -> __m256i {
        // SAFETY: forwarded (8 readable `u16` at `p`; AVX2 present).
        unsafe { <super::avx2::Avx2 as Lookup>::load_t(p) }
    }

    #[inline(always)]
    unsafe fn look(part: __m256i, w: __m256i, t: __m256i) -> __m256i {
        // SAFETY: AVX2 present (caller).
        unsafe {
            let pair = _mm256_maddubs_epi16(_mm256_shuffle_epi8(t, w), _mm256_set1_epi8(1));
            _mm256_add_epi16(part, pair)
        }
    }

    #[inline(always)]
    unsafe fn widen(wide: __m256i, part: __m256i) -> __m256i {
        // SAFETY: AVX2 present (caller).
        unsafe { _mm256_add_epi16(wide, part) }
    }

    #[inline(always)]
    unsafe fn store(wide: __m256i, out: *mut i32, lanes: usize, st: Store) {
        // SAFETY: AVX2 present; `lanes <= 16` `i32`s at `out` (caller).
        unsafe { store16(wide, out, lanes, st) }
    }

    /// Two tables from one load of 16 codes (the first `len <= 12` kept, the rest zeroed), in
    /// both lanes: per channel of a sub-table a `vpshufb` and a mask, added with unsigned
    /// saturation; lane `L` is group `L`'s table. `top[0]` keeps the largest entry.
    #[inline(always)]
    unsafe fn tables_of(
        codes: Option<*const u8>,
        pad: u8,
        (len, readable): (usize, usize),
        n: usize,
        t: *mut u16,
        _: (usize, usize),
        top: &mut [__m256i; MAX_CODE_PLANES],
    ) -> u32 {
        // SAFETY: AVX2 present; `len <= 12` codes and `readable` bytes readable at `codes`
        // (caller): 16 are loaded directly where readable, else `len` through a zeroed copy;
        // `n <= 2` tables writable at `t`; the constants are 32 bytes each.
        unsafe {
            let v = match codes {
                Some(p) if readable >= 16 => _mm_loadu_si128(p as *const _),
                Some(p) => {
                    let mut c = [0u8; 16];
                    core::ptr::copy_nonoverlapping(p, c.as_mut_ptr(), len);
                    _mm_loadu_si128(c.as_ptr() as *const _)
                }
                None => _mm_set1_epi8(pad as i8),
            };
            let keep = _mm_loadu_si128(LEN_MASK.0.as_ptr().add(16 - len) as *const _);
            let v = _mm_and_si128(v, keep);
            let sad = _mm_sad_epu8(v, _mm_setzero_si128());
            let sum = (_mm_cvtsi128_si64(sad) + _mm_extract_epi64::<1>(sad)) as u32;
            let v = _mm256_broadcastsi128_si256(v);
            let ld = |p: &[u8; 32]| _mm256_loadu_si256(p.as_ptr() as *const _);
            let mut tab = _mm256_setzero_si256();
            for i in 0..SUB {
                let c = _mm256_shuffle_epi8(v, ld(&CODE.0[i]));
                tab = _mm256_adds_epu8(tab, _mm256_and_si256(c, ld(&BITS.0[i])));
            }
            top[0] = _mm256_max_epu8(top[0], tab);
            _mm_storeu_si128(t as *mut _, _mm256_castsi256_si128(tab));
            if n > 1 {
                _mm_storeu_si128(t.add(8) as *mut _, _mm256_extracti128_si256::<1>(tab));
            }
            sum
        }
    }

    #[inline(always)]
    unsafe fn entry_max(v: __m256i) -> u16 {
        // SAFETY: AVX present (caller).
        unsafe { max_u8(v) }
    }
}
