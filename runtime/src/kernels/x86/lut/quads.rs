//! Byte sub-tables of 4 channels, four to a register, looked up with `vpermb` and summed by
//! `vpdpbusd` (AVX-512 VBMI and VNNI), for codes of 3 to 8 bits: a register holds the 16-entry
//! tables of four groups of 4 channels (16 channels of a pixel); the index byte of an output
//! channel for group `m` names sub-table `m`, so each dword of a lookup holds one output
//! channel's four group sums, and `vpdpbusd` against ones adds them to its `i32` sum: 16
//! output channels x 16 inputs a lookup, no narrow sums to widen.
//!
//! A byte entry is exact only while the sum of its 4 codes is at most 255: before building,
//! the caller ([`super::lut_tables`]) finds the largest sum of 4 channels in the layer's input
//! ([`quads_fit`], a `vpdpbusd` per 64 bytes) and builds the `u16` tables of
//! [`super::Words`] instead where it is larger.

use super::*;

/// The byte sub-table kind of [`KernelKind::Int8LutAvx512`] for codes of 3 to 8 bits.
pub(super) struct Quads;

/// Channel groups (of 16) of one 64-byte load of codes in the table builder.
const QUAD_CHUNK: usize = 4;

/// Channels a sub-table.
const SUB: usize = 4;

/// The largest entry a byte sub-table holds exactly.
const QUAD_ENTRY_MAX: usize = u8::MAX as usize;

impl Lookup for Quads {
    type V = __m512i;
    type Wide = __m512i;
    const K: usize = 4 * SUB;
    const LANES: usize = 16;
    const STEP: usize = 64;
    const TABLE: usize = LUT_N;
    const NARROW: bool = false;
    const CHUNK: usize = QUAD_CHUNK;
    /// Every code in one plane (8 bits).
    const CODE_BITS: u8 = 8;

    /// Channel `i` of a group: byte `i / 4` of its output channel's dword (sub-table `i /
    /// 4`), entry bit `i % 4`, which the builder's packs put at index bits 0, 1, 4, 5.
    #[inline(always)]
    fn index_bit(i: usize) -> (usize, usize) {
        (i / SUB, [0, 1, 4, 5][i % SUB])
    }

    /// Byte `b % 4` of an output channel's dword names sub-table `b % 4` (index bits 2, 3).
    #[inline(always)]
    fn index_base(b: usize) -> u8 {
        ((b % SUB) << 2) as u8
    }

    /// The sums are `i32`: a run is as long as the walk.
    #[inline(always)]
    fn run(_top: usize) -> usize {
        usize::MAX >> 8
    }

    #[inline(always)]
    unsafe fn look(part: __m512i, w: __m512i, t: __m512i) -> __m512i {
        // SAFETY: AVX-512 VBMI/VNNI present (caller).
        unsafe { _mm512_dpbusd_epi32(part, _mm512_permutexvar_epi8(w, t), _mm512_set1_epi8(1)) }
    }

    #[inline(always)]
    unsafe fn widen(wide: __m512i, part: __m512i) -> __m512i {
        // SAFETY: AVX-512 F present (caller).
        unsafe { _mm512_add_epi32(wide, part) }
    }

    #[inline(always)]
    unsafe fn store(wide: __m512i, out: *mut i32, lanes: usize, st: Store) {
        // SAFETY: AVX-512 F present; masked lanes are not touched (caller: `lanes` `i32`s at
        // `out`).
        unsafe {
            let w = _mm512_sll_epi32(wide, _mm_cvtsi32_si128(st.shift as i32));
            store_i32(w, out, lane_mask(lanes), st)
        }
    }

    /// Per group of 16 codes four `vpdpbusd` (a sub-table's 16 entries as dwords, from its 4
    /// codes broadcast), two `vpackusdw` and a `vpackuswb`: byte `16 L + 4 m + w` of the
    /// register is entry `4 L + w` of sub-table `m` ([`Quads::index_bit`]). Codes past `len`
    /// are zeros. No running maximum (`top` stays as it is): [`quads_fit`] bounded the entries
    /// before the build, and the `i32` sums need no runs.
    #[inline(always)]
    unsafe fn tables_of(
        codes: Option<*const u8>,
        pad: u8,
        (len, _): (usize, usize),
        n: usize,
        t: *mut u16,
        _: (usize, usize),
        _: &mut [__m512i; MAX_CODE_PLANES],
    ) -> u32 {
        // SAFETY: AVX-512 F/BW/VBMI/VNNI present, `len <= 64` readable bytes at `codes` and
        // `n <= 4` tables writable at `t` (caller); the constant is 64 bytes.
        unsafe {
            let (v, sum) = codes512(codes, pad, len);
            let bits = _mm512_load_si512(super::words::LUT_BITS.0[0].as_ptr() as *const _);
            for gi in 0..n.min(QUAD_CHUNK) {
                // (A loop, not a closure: a closure here kept the intrinsics from inlining.)
                let mut e = [_mm512_setzero_si512(); SUB];
                for m in 0..SUB {
                    let at = _mm512_set1_epi32((SUB * gi + m) as i32);
                    let q = _mm512_permutexvar_epi32(at, v);
                    e[m] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, bits);
                }
                let ab = _mm512_packus_epi32(e[0], e[1]);
                let cd = _mm512_packus_epi32(e[2], e[3]);
                let tab = _mm512_packus_epi16(ab, cd);
                _mm512_storeu_si512(t.add(LUT_N * gi) as *mut _, tab);
            }
            sum
        }
    }

    /// Always 0: the builder keeps no maximum ([`Quads::tables_of`]).
    #[inline(always)]
    unsafe fn entry_max(_: __m512i) -> u16 {
        0
    }
}

/// Whether every sub-table of the input `x` (unpadded HWC, pad pixels `pad`) holds its sums in
/// bytes: each 4 channels' codes sum to at most [`QUAD_ENTRY_MAX`]. With channels a multiple
/// of 4 (a pixel, and each group of it, starts at a dword of `x`) that is the largest sum of a
/// dword's bytes, and `4 pad`; otherwise it says no.
///
/// # Safety
/// AVX-512 F/BW/VNNI present.
// `%` rather than `is_multiple_of`: the workspace's MSRV is 1.85.
#[allow(clippy::manual_is_multiple_of)]
#[inline(always)]
pub(super) unsafe fn quads_fit(s: &ConvShape, x: &[u8], pad: u8) -> bool {
    if s.c % SUB != 0 || s.cin_g % SUB != 0 || SUB * usize::from(pad) > QUAD_ENTRY_MAX {
        return false;
    }
    let n = (s.h() * s.w() * s.c).min(x.len());
    // SAFETY: AVX-512 F/BW/VNNI present (caller); every load reads inside `x[..n]` (the last
    // one masked).
    unsafe {
        let ones = _mm512_set1_epi8(1);
        let mut top = _mm512_setzero_si512();
        let mut i = 0;
        while i < n {
            let m: __mmask64 = if n - i >= 64 {
                !0
            } else {
                (1u64 << (n - i)) - 1
            };
            let v = _mm512_maskz_loadu_epi8(m, x.as_ptr().add(i) as *const _);
            top = _mm512_max_epu32(top, _mm512_dpbusd_epi32(_mm512_setzero_si512(), v, ones));
            i += 64;
        }
        _mm512_reduce_max_epu32(top) as usize <= QUAD_ENTRY_MAX
    }
}
