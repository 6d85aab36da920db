//! The entry points of [`KernelKind::Int8LutAvx512`] (its lengths, weight layout, table
//! builder and kernel: [`Bytes`] tables for 2-bit codes, else the pair of [`Quads`] and its
//! fallback [`Words`]) and the primitives its kinds share: the builder's load of codes
//! ([`codes512`]) and the stores into the `i32` sums.

use super::*;

/// The input length of [`KernelKind::Int8LutAvx512`]: [`Bytes`] tables by
/// [`ConvShape::lut_k`], else [`Quads`] or [`Words`] ones.
pub(in super::super) fn lut_input_len(s: &ConvShape) -> usize {
    if s.lut_k() == LUT_K8 {
        input_len::<Bytes>(s)
    } else {
        pair_input_len::<Quads, Words>(s)
    }
}

/// The prepared length of [`KernelKind::Int8LutAvx512`]: [`Bytes`] by [`ConvShape::lut_k`],
/// else the pair of [`Quads`] and [`Words`].
pub(in super::super) fn lut_prepared_len(s: &ConvShape) -> usize {
    if s.lut_k() == LUT_K8 {
        prepared_len_of::<Bytes>(s)
    } else {
        pair_prepared_len::<Quads, Words>(s)
    }
}

/// The weight layout of [`KernelKind::Int8LutAvx512`] ([`prepare_of`]): [`Bytes`] by
/// [`ConvShape::lut_k`], else [`pair_prepare`] of [`Quads`] and [`Words`].
pub(in super::super) fn lut_prepare(conv: &Conv<'_>, s: &ConvShape, out: &mut [u8]) {
    if s.lut_k() == LUT_K8 {
        prepare_of::<Bytes>(conv, s, out)
    } else {
        pair_prepare::<Quads, Words>(conv, s, out)
    }
}

/// The table builder of [`KernelKind::Int8LutAvx512`]: [`Bytes`] or [`Words`] tables by
/// [`ConvShape::lut_k`] ([`build_tables`]).
pub(in super::super) fn lut_tables(s: &ConvShape, x: &[u8], pad: u8, out: &mut [u16]) {
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    fn bytes(s: &ConvShape, x: &[u8], pad: u8, out: &mut [u16]) {
        // SAFETY: AVX-512 F/BW/VBMI present (this function's features).
        unsafe { build_tables::<Bytes>(s, x, pad, out, None) };
    }
    /// [`Quads`] tables, or [`Words`] ones where a sum of 4 codes passes a byte
    /// ([`pair_input_len`]).
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni")]
    fn words(s: &ConvShape, x: &[u8], pad: u8, out: &mut [u16]) {
        // SAFETY: AVX-512 F/BW/VBMI/VNNI present (this function's features).
        let words = unsafe { !quads_fit(s, x, pad) };
        if words {
            // SAFETY: as above.
            unsafe { build_tables::<Words>(s, x, pad, out, None) };
        } else {
            // SAFETY: as above.
            unsafe { build_tables::<Quads>(s, x, pad, out, None) };
        }
        pair_set::<Quads, Words>(s, out, words);
    }
    // SAFETY: `by_kind` hands this builder out only where AVX-512 F/BW/VBMI/VNNI is present.
    unsafe {
        if s.lut_k() == LUT_K8 {
            bytes(s, x, pad, out)
        } else {
            words(s, x, pad, out)
        }
    }
}

/// The AVX-512 kinds' builder step: the `len` codes at `codes` (or `len` pad codes) in one
/// vector, zero above, and their sum.
///
/// # Safety
/// AVX-512 F/BW present; `len <= 64` readable bytes at `codes`.
#[inline(always)]
pub(super) unsafe fn codes512(codes: Option<*const u8>, pad: u8, len: usize) -> (__m512i, u32) {
    // SAFETY: as the caller states (the masked load reads `len` bytes).
    unsafe {
        let mask: __mmask64 = if len >= 64 { !0 } else { (1u64 << len) - 1 };
        let v = match codes {
            Some(p) => _mm512_maskz_loadu_epi8(mask, p as *const _),
            None => _mm512_maskz_set1_epi8(mask, pad as i8),
        };
        let sum = _mm512_reduce_add_epi64(_mm512_sad_epu8(v, _mm512_setzero_si512()));
        (v, sum as u32)
    }
}

/// [`KernelKind::Int8LutAvx512`]: [`Bytes`] or [`Words`] by [`ConvShape::lut_k`].
pub(in super::super) fn lut_avx512(
    s: &ConvShape,
    x: &[u16],
    w: &[u8],
    y0: usize,
    y1: usize,
    acc: &mut [i32],
) {
    s.assert_call(
        x.len(),
        lut_input_len(s),
        w.len(),
        lut_prepared_len(s),
        y0,
        y1,
        acc.len(),
    );
    assert!(
        crate::kernels::lut_fits(s),
        "table lookup: 1- or 2-bit weights, 2- to 8-bit codes"
    );
    /// [`lut_rows`] over byte tables: tiles of 2 blocks x 4 pixels (1 block x 6).
    ///
    /// # Safety
    /// As [`lut_rows`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    unsafe fn bytes(s: &ConvShape, x: &[u16], w: &[u8], y0: usize, y1: usize, acc: &mut [i32]) {
        // SAFETY: forwarded preconditions.
        unsafe { lut_rows::<Bytes, 2, 4, 6, 4>(s, x, w, y0, y1, acc) }
    }
    /// [`lut_rows`] over `u16` tables: tiles of 4 blocks x 4 pixels (2 blocks or fewer x 8).
    ///
    /// # Safety
    /// As [`lut_rows`].
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn words(s: &ConvShape, x: &[u16], w: &[u8], y0: usize, y1: usize, acc: &mut [i32]) {
        // SAFETY: forwarded preconditions.
        unsafe { lut_rows::<Words, 4, 4, 8, 4>(s, x, w, y0, y1, acc) }
    }
    /// [`lut_rows`] over [`Quads`] tables: tiles of 4 blocks (64 channels) x 4 pixels.
    ///
    /// # Safety
    /// As [`lut_rows`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni")]
    unsafe fn quads(s: &ConvShape, x: &[u16], w: &[u8], y0: usize, y1: usize, acc: &mut [i32]) {
        // SAFETY: forwarded preconditions.
        unsafe { lut_rows::<Quads, 4, 4, 8, 4>(s, x, w, y0, y1, acc) }
    }
    // SAFETY: `by_kind` hands this kernel out only where AVX-512 F/BW/VBMI is present, and the
    // call matches the contract (just checked).
    unsafe {
        if s.lut_k() == LUT_K8 {
            bytes(s, x, w, y0, y1, acc)
        } else {
            match pair_weights::<Quads, Words>(s, x, w) {
                (w, true) => words(s, x, w, y0, y1, acc),
                (w, false) => quads(s, x, w, y0, y1, acc),
            }
        }
    }
}

/// Adds the 32 `u16` sums in `v`, times `2^st.shift`, to the `i32` sums at `p` (the first
/// `lanes` of them; written instead on the `first` run); on the last run (`qsum` given) stores
/// `2 * S - qsum`, `S` the whole sum, instead of `S` (the AVX-512 kinds' [`Lookup::store`]).
///
/// # Safety
/// AVX-512 F/BW present; `lanes.min(32)` `i32`s readable and writable at `p`.
#[inline(always)]
pub(super) unsafe fn widen_store(v: __m512i, p: *mut i32, lanes: usize, st: Store) {
    // SAFETY: AVX-512 F/BW present; masked lanes are not touched (caller).
    unsafe {
        let sh = _mm_cvtsi32_si128(st.shift as i32);
        let halves = [
            _mm512_sll_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(v)), sh),
            _mm512_sll_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64::<1>(v)), sh),
        ];
        for (h, w) in halves.into_iter().enumerate() {
            let m = lane_mask(lanes.saturating_sub(16 * h));
            store_i32(w, p.wrapping_add(16 * h), m, st);
        }
    }
}

/// Adds the 16 `i32` sums in `w` (already times `2^st.shift`) to those at `p` in the lanes of
/// `m` (written instead on the `first` run); on the last run (`qsum` given) stores `2 * S -
/// qsum`, `S` the whole sum ([`widen_store`]'s halves, the [`Quads`] store).
///
/// # Safety
/// AVX-512 F present; the lanes of `m` readable and writable at `p`.
#[inline(always)]
pub(super) unsafe fn store_i32(w: __m512i, p: *mut i32, m: __mmask16, st: Store) {
    // SAFETY: AVX-512 F present; masked lanes are not touched (caller).
    unsafe {
        let r = if st.first {
            w
        } else {
            _mm512_add_epi32(_mm512_maskz_loadu_epi32(m, p as *const _), w)
        };
        let r = match st.qsum {
            Some(q) => _mm512_sub_epi32(_mm512_add_epi32(r, r), _mm512_set1_epi32(q)),
            None => r,
        };
        _mm512_mask_storeu_epi32(p as *mut _, m, r);
    }
}

/// The largest of the 32 `u16` in `v` (the `u16` kinds' [`Lookup::entry_max`]).
///
/// # Safety
/// AVX-512 F present.
#[inline(always)]
pub(super) unsafe fn max_u16(v: __m512i) -> u16 {
    let mut e = [0u16; 32];
    // SAFETY: AVX-512 F present (caller); 64 bytes written.
    unsafe { _mm512_storeu_si512(e.as_mut_ptr() as *mut _, v) };
    e.into_iter().max().unwrap_or(0)
}
