//! `u16` tables of [`LUT_K`] (5) channels, looked up with `vpermw` (AVX-512 BW): 32 output
//! channels x 5 inputs a lookup, for codes of 3 to 8 bits (a table entry is at most 5 x 255).
//! The sums of a run stay `u16` ([`Lookup::run`] steps). The table builder's constants and
//! its step ([`Lookup::tables_of`]: two `vpdpbusd` and a `vpackusdw` a table, AVX-512 VNNI)
//! are here; its walk is the parent's `build_tables`. (Tables of 6 channels, 64 entries in two
//! registers looked up with `vpermi2w`, were measured on a Zen 4 core and lost on the network:
//! docs/PERFORMANCE.md, "6-channel `u16` tables, tried and dropped".)

use super::*;
use core::ptr::read_unaligned;

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

    /// Entries in the order of [`lut_tables_of`]: index bits 0, 1 for channels 0, 1, bit 2
    /// for channel 4, bits 3, 4 for channels 2, 3.
    #[inline(always)]
    fn bit(i: usize) -> usize {
        [0, 1, 3, 4, 2][i]
    }

    /// The rest of a group in one step where it fits one load of 64 codes (13 groups for 64
    /// channels), else [`LUT_CHUNK`].
    #[inline(always)]
    fn chunk(rem: usize) -> usize {
        if rem <= 64 {
            rem.div_ceil(LUT_K)
        } else {
            LUT_CHUNK
        }
    }

    #[inline(always)]
    unsafe fn tables_of(
        codes: Option<*const u8>,
        pad: u8,
        (len, readable): (usize, usize),
        n: usize,
        t: *mut u16,
        _: (usize, usize),
        top: &mut [__m512i; MAX_CODE_PLANES],
    ) -> u32 {
        let n = n.min(LUT_CHUNK + 1);
        // SAFETY: AVX-512 F/BW/VNNI present, `len <= 64` codes and `readable` bytes readable
        // at `codes`, `n <= 13` tables writable (caller); the dwords read directly lie in the
        // readable bytes (the last at `5 (n - 1) + 4`), those of the copy in its 128 bytes.
        unsafe {
            let (v, sum) = codes512(codes, pad, len);
            match codes {
                Some(p) if readable >= LUT_K * (n - 1) + 8 => {
                    lut_tables_of(|at| read_unaligned(p.add(at) as *const i32), n, t, top)
                }
                Some(_) => {
                    let mut copy = Align64([0u8; 128]);
                    _mm512_store_si512(copy.0.as_mut_ptr() as *mut _, v);
                    let c = copy.0.as_ptr();
                    lut_tables_of(|at| read_unaligned(c.add(at) as *const i32), n, t, top)
                }
                None => lut_tables_of(|_| i32::from_ne_bytes([pad; 4]), n, t, top),
            }
            sum
        }
    }

    #[inline(always)]
    unsafe fn entry_max(v: __m512i) -> u16 {
        // SAFETY: AVX-512 F present (caller).
        unsafe { max_u16(v) }
    }
}

/// Channel groups of one 64-byte load of codes in the table builder (60 codes).
const LUT_CHUNK: usize = 12;

/// `vpdpbusd` weights of the first four channels of a group: byte `k` of `i32` lane `j` is
/// bit `k` of `j`, so that lane `j` sums the codes of the channels whose bit is set in `j`.
const fn lut_low_bits() -> [u8; 64] {
    let mut v = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        v[i] = ((i / 4) >> (i % 4) & 1) as u8;
        i += 1;
    }
    v
}

/// The weights of [`lut_low_bits`], then those adding the fifth channel (byte 0 of each
/// lane).
pub(super) static LUT_BITS: Align64<[[u8; 64]; 2]> = Align64([lut_low_bits(), {
    let mut v = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        v[i] = (i % 4 == 0) as u8;
        i += 1;
    }
    v
}]);

/// Writes the tables of channel groups `0 .. n` (`n <= LUT_CHUNK + 1`) of a chunk of codes at
/// `t`, 32 `u16` per group, `dword(at)` reading the four codes from byte `at` of the chunk
/// (channel `5 gi + i` of group `gi` at byte `5 gi + i`). Per group two `vpdpbusd` over the
/// group's codes broadcast to every lane give the 16 sums of its first four channels (`lo`,
/// lane `j`: the channels of the bits of `j`) and the same plus the fifth channel (`hi`),
/// and `vpackusdw` interleaves them by 128-bit lane: entry `8 L + w` is `lo[4 L + w]` for
/// `w < 4`, else `hi[4 L + w - 4]`, the sum over the channels of index bits 0, 1 (channels 0,
/// 1), 2 (channel 4), 3, 4 (channels 2, 3): [`Words::bit`]. Bytes past the chunk's codes
/// (the next pixel's, or anything) reach only entries that name channels past them.
///
/// # Safety
/// AVX-512 F/BW/VNNI present; `32 * n` writable `u16` at `t`; `dword` reads for `at` up to
/// `5 (n - 1) + 4`. `top[0]` becomes the entry-wise maximum of itself and the tables.
#[inline(always)]
unsafe fn lut_tables_of(
    dword: impl Fn(usize) -> i32,
    n: usize,
    t: *mut u16,
    top: &mut [__m512i; MAX_CODE_PLANES],
) {
    // SAFETY: AVX-512 F/BW/VNNI present and `64 * n` writable bytes at `t` (caller); the
    // constants are 64 bytes each.
    unsafe {
        let ld = |p: &[u8; 64]| _mm512_load_si512(p.as_ptr() as *const _);
        let (lo_bits, fifth) = (ld(&LUT_BITS.0[0]), ld(&LUT_BITS.0[1]));
        for gi in 0..n {
            let at = |k: usize| _mm512_set1_epi32(dword(LUT_K * gi + k));
            let lo = _mm512_dpbusd_epi32(_mm512_setzero_si512(), at(0), lo_bits);
            let hi = _mm512_dpbusd_epi32(lo, at(4), fifth);
            let tab = _mm512_packus_epi32(lo, hi);
            top[0] = _mm512_max_epu16(top[0], tab);
            _mm512_storeu_si512(t.add(LUT_N * gi) as *mut _, tab);
        }
    }
}
