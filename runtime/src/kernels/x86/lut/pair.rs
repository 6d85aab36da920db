//! A pair of table kinds of one kernel kind: the first's byte entries are exact only while a
//! few codes sum to at most 255; the builder takes it where they hold every sum of the call's
//! input, and the second, its fallback, elsewhere (the AVX-512 kind's pair: [`Quads`] and
//! [`Words`]). The input has room for either kind's tables, then one `u16` saying which it
//! holds (0 the first, 1 the second: [`set_fallback`]); the weights are prepared both ways, the
//! first kind's layout first, and the kernel takes the one of the tables it is given. The AVX2
//! kind's [`Trios`] keep the same flag, with a fallback that is not always a table kind (the
//! AVX2 dot, or nibble tables: `avx2::falls_back_to_dot`).

use super::*;

/// The input length of a pair of kinds: the longer of the two, and the flag.
pub(super) fn pair_input_len<A: Lookup, B: Lookup>(s: &ConvShape) -> usize {
    input_len::<A>(s).max(input_len::<B>(s)).saturating_add(1)
}

/// Writes which kind of the pair the tables in `out` are (`second`: the fallback).
pub(super) fn pair_set<A: Lookup, B: Lookup>(s: &ConvShape, out: &mut [u16], second: bool) {
    set_fallback(out, pair_input_len::<A, B>(s), second);
}

/// Whether the tables in `x` are the pair's second kind (its fallback).
pub(super) fn pair_is_second<A: Lookup, B: Lookup>(s: &ConvShape, x: &[u16]) -> bool {
    is_fallback(x, pair_input_len::<A, B>(s))
}

/// Writes, in the last `u16` of an input of `len`, whether it holds the fallback's input.
pub(super) fn set_fallback(out: &mut [u16], len: usize, fallback: bool) {
    out[len - 1] = u16::from(fallback);
}

/// Whether an input of `len` holds the fallback's input ([`set_fallback`]).
pub(super) fn is_fallback(x: &[u16], len: usize) -> bool {
    x[len - 1] != 0
}

/// The prepared length of a pair of kinds: both layouts.
pub(super) fn pair_prepared_len<A: Lookup, B: Lookup>(s: &ConvShape) -> usize {
    prepared_len_of::<A>(s).saturating_add(prepared_len_of::<B>(s))
}

/// The weights of a pair of kinds ([`prepare_of`]): the first kind's layout, then the second's.
pub(super) fn pair_prepare<A: Lookup, B: Lookup>(conv: &Conv<'_>, s: &ConvShape, out: &mut [u8]) {
    let a = prepared_len_of::<A>(s);
    prepare_of::<A>(conv, s, out);
    if let Some(rest) = out.get_mut(a..) {
        prepare_of::<B>(conv, s, rest);
    }
}

/// The weights of the kind of the pair whose tables are in `x`, and whether it is the second.
pub(super) fn pair_weights<'w, A: Lookup, B: Lookup>(
    s: &ConvShape,
    x: &[u16],
    w: &'w [u8],
) -> (&'w [u8], bool) {
    let (wa, wb) = w.split_at(prepared_len_of::<A>(s));
    if pair_is_second::<A, B>(s, x) {
        (wb, true)
    } else {
        (wa, false)
    }
}
