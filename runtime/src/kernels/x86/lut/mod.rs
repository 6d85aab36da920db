//! The table-lookup kernels for 1- and 2-bit weights with 2- to 8-bit activations. Per padded
//! input pixel and group of `K` input channels, a table holds the sums of the codes over every
//! subset of the `K` channels; the `K`-bit sign pattern of an output channel's weights indexes
//! it, so one lookup instruction does `K` multiply-adds for every output channel of a vector,
//! and `sum num*q = 2 S - sum q` (`S` the sum over the `+1` weights) gives the dot. A 2-bit
//! weight is two such sign weights, the second counted twice (`2k - 3 = 2 (2 b1 - 1) + (2 b0 -
//! 1)`): two planes of lookups over the same tables.
//!
//! One driver (the [`Tile`] of [`LutCall`], its row steps, `for_tiles`' walk) and one table
//! builder ([`build_tables`]) over the [`Lookup`] primitives of five table kinds, one file
//! each (as [`super::int8`]'s `Dot`):
//! * [`quads`]: byte sub-tables of 4 channels, four to a register (16 channels), `vpermb`
//!   over 16 output channels and `vpdpbusd` summing each one's four group sums into `i32`
//!   (AVX-512 VBMI/VNNI, codes of 3 to 8 bits where every 4 channels' codes sum to at most
//!   255: [`quads::quads_fit`] decides per layer from the input);
//! * [`words`]: `u16` tables of 5 channels, `vpermw` over 32 output channels (AVX-512 BW,
//!   codes of 3 to 8 bits where [`quads`] does not fit; the tables built with `vpdpbusd`,
//!   VNNI);
//! * [`bytes`]: byte tables of 6 channels, `vpermb` over 64 (AVX-512 VBMI, 2-bit codes);
//! * [`trios`]: byte sub-tables of 3 channels, two to a 128-bit lane, `vpshufb` over 16
//!   output channels and `vpmaddubsw` summing each one's two sums into `u16` (AVX2, codes of
//!   5 to 8 bits where every 3 channels' codes sum to at most 254: the builder's saturating
//!   sums decide per layer);
//! * [`avx2`]: byte tables of 4 channels, `vpshufb` over 32 (AVX2; 2-bit codes, or codes of 3
//!   to 8 bits as planes of nibbles, each with its tables; for codes of 5 to 8 bits only where
//!   [`trios`] does not fit, on shapes where the nibbles cost less than the AVX2 dot).
//!
//! The first three are [`KernelKind::Int8LutAvx512`]: [`bytes`] for 2-bit codes
//! ([`ConvShape::lut_k`]), else the pair of [`quads`] and its fallback [`words`]; the last
//! two [`KernelKind::Int8LutAvx2`], for CPUs without AVX-512: for codes of 5 to 8 bits
//! [`trios`] with a fallback (the AVX2 int8 dot, or [`avx2`]'s nibble tables where they cost
//! less), else [`avx2`]. A pair's builder takes one of the two by the layer's input, the
//! weights are prepared both ways, and the input's last `u16` says which it holds ([`pair`]). Each kernel kind's entry points (lengths,
//! weight layout, builder, kernel) are in its file: [`avx512`], [`avx2`]. All five kinds share
//! the weight layout (a table index per output channel, tap and channel group,
//! [`prepare_of`]), the tables' layout (per padded pixel a table per group and channel group,
//! [`Lookup::TABLE`] `u16` each, then the code sums: [`input_len`]) and the walks.
//!
//! A step of the walk is a kernel row and channel group, its taps together
//! ([`LutCall::row_steps`]): on a tile of pixels of one output row with 3 taps a row, the
//! tables of the tile's windows are loaded once a step and shared between the taps (pixel
//! `j`'s table at tap `kx` is table `sw j + kx` from the first pixel's), and the weights
//! are laid out in the walk's order, so a block's indices are read front to back.

#![allow(clippy::needless_range_loop)]

use super::*;

mod avx2;
mod avx512;
mod bytes;
mod pair;
mod quads;
mod trios;
mod words;

pub(super) use avx2::{
    lut_avx2, lut_avx2_input_len, lut_avx2_prepare, lut_avx2_prepared_len, lut_avx2_tables,
};
use avx2::{max_u8, store16};
use avx512::{codes512, max_u16, store_i32, widen_store};
pub(super) use avx512::{lut_avx512, lut_input_len, lut_prepare, lut_prepared_len, lut_tables};
use bytes::Bytes;
use pair::*;
use quads::{quads_fit, Quads};
use trios::{Trios, TRIO_ENTRY_MAX};
use words::Words;

/// `u16`s of one AVX-512 table (32 `u16`, or 64 bytes); one `__m512i`. The tables of a padded
/// pixel are [`pixel_stride`] `u16` apart.
const LUT_N: usize = 1 << LUT_K;

/// A register of a table kind's sums: its zero.
pub(super) trait Zero: Copy {
    /// # Safety
    /// The register's ISA is present.
    unsafe fn zero() -> Self;
}

/// A table kind's vector of indices, tables or narrow sums: its zero and an unaligned load.
pub(super) trait Vector: Zero {
    /// # Safety
    /// The vector's ISA is present; a vector's bytes readable at `p`.
    unsafe fn load(p: *const u8) -> Self;
}

impl Zero for __m512i {
    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: AVX-512 F present (caller).
        unsafe { _mm512_setzero_si512() }
    }
}

impl Vector for __m512i {
    #[inline(always)]
    unsafe fn load(p: *const u8) -> Self {
        // SAFETY: AVX-512 F present, 64 readable bytes at `p` (caller).
        unsafe { _mm512_loadu_si512(p as *const _) }
    }
}

impl Zero for __m256i {
    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: AVX present (caller).
        unsafe { _mm256_setzero_si256() }
    }
}

impl Vector for __m256i {
    #[inline(always)]
    unsafe fn load(p: *const u8) -> Self {
        // SAFETY: AVX present, 32 readable bytes at `p` (caller).
        unsafe { _mm256_loadu_si256(p as *const _) }
    }
}

/// Two halves of a block's `u16` sums (the byte kinds).
impl<T: Zero> Zero for [T; 2] {
    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: as `T::zero` (caller).
        unsafe { [T::zero(); 2] }
    }
}

/// How a run's sums go into the `i32` sums ([`Lookup::store`]).
#[derive(Clone, Copy)]
pub(super) struct Store {
    /// The first run: written instead of added.
    pub first: bool,
    /// The weight plane: the sums count `2^shift` times.
    pub shift: u32,
    /// The last run: `2 S - qsum` stored, `S` the whole sum.
    pub qsum: Option<i32>,
}

/// One table kind's primitives: the loads, the lookup, the widening, the store and the table
/// builder's step (the [`super::int8::Dot`] of the table lookup). A step looks up one table (a padded pixel and
/// channel group) with the indices of a block of [`Lookup::LANES`] output channels, adding
/// into narrow sums; byte sums are widened into `u16` sums every [`Lookup::narrow_run`] steps,
/// `u16` sums into the `i32` accumulators every [`Lookup::run`].
pub(super) trait Lookup {
    /// A block's indices a step, one table (in every lane the lookup reads), or a block's
    /// narrow sums.
    type V: Vector;
    /// A block's `u16` sums.
    type Wide: Zero;
    /// Channels a table (`2^K` entries).
    const K: usize;
    /// Output channels a block.
    const LANES: usize;
    /// Bytes of a block's indices a step (one [`Lookup::V`]).
    const STEP: usize;
    /// `u16`s from one table to the next channel group's.
    const TABLE: usize;
    /// Narrow sums are bytes, widened every [`Lookup::narrow_run`] steps (else they are the
    /// `u16` sums).
    const NARROW: bool;
    /// Channel groups the table builder makes from one load of codes ([`Lookup::tables_of`]).
    const CHUNK: usize;
    /// Bits of the codes one table sums: wider codes are split into planes of this many bits
    /// (low bits first), each with its own tables and looked up like a weight plane, counted
    /// `2^(CODE_BITS c)` times for plane `c`.
    const CODE_BITS: u8;

    /// The lane of a block's output channel `c` in its indices (and narrow sums): `c` unless
    /// the widening reorders them.
    #[inline(always)]
    fn lane(c: usize) -> usize {
        c
    }

    /// The bit of a table index that stands for channel `i` of its group: `i` unless the
    /// builder lays the entries out in another order.
    #[inline(always)]
    fn bit(i: usize) -> usize {
        i
    }

    /// Where the index bit of channel `i` of a group lies in an output channel's
    /// `STEP / LANES` index bytes: (byte, bit), by default byte 0 and [`Lookup::bit`].
    #[inline(always)]
    fn index_bit(i: usize) -> (usize, usize) {
        (0, Self::bit(i))
    }

    /// What byte `b` of the prepared weights holds before any weight bit is set (0 unless the
    /// indices also name a table).
    #[inline(always)]
    fn index_base(b: usize) -> u8 {
        let _ = b;
        0
    }

    /// Code planes of a shape's codes ([`Lookup::CODE_BITS`] bits each).
    #[inline(always)]
    fn code_planes(s: &ConvShape) -> usize {
        usize::from(s.abits.div_ceil(Self::CODE_BITS))
    }

    /// The largest code of one code plane.
    #[inline(always)]
    fn plane_max(s: &ConvShape) -> usize {
        (1usize << s.abits.min(Self::CODE_BITS)) - 1
    }

    /// Channel groups the table builder's next step ([`Lookup::tables_of`]) takes when `rem`
    /// channels of the group are left: [`Lookup::CHUNK`] at most.
    #[inline(always)]
    fn chunk(rem: usize) -> usize {
        rem.div_ceil(Self::K).min(Self::CHUNK)
    }

    /// Channel groups of `K` a tap.
    #[inline(always)]
    fn groups(s: &ConvShape) -> usize {
        s.cin_g.div_ceil(Self::K)
    }

    /// The largest entry a table of a shape's codes can hold: `K` times
    /// [`Lookup::plane_max`].
    #[inline(always)]
    fn entry_bound(s: &ConvShape) -> usize {
        Self::K * Self::plane_max(s)
    }

    /// Lookups (steps of one table) the narrow sums hold before they are widened (`None`: they
    /// are the `u16` sums), each adding at most `top` (at most [`Lookup::entry_bound`], at
    /// least 1); a row step of the walk takes `kw` of them.
    #[inline(always)]
    fn narrow_run(top: usize) -> Option<usize> {
        Self::NARROW.then(|| u8::MAX as usize / top.max(1))
    }

    /// Lookups a run of `u16` sums holds, each adding at most `top` (as in
    /// [`Lookup::narrow_run`]; a row step of the walk takes `kw` of them).
    #[inline(always)]
    fn run(top: usize) -> usize {
        u16::MAX as usize / top.max(1)
    }

    /// # Safety
    /// The ISA is present (so for every method below).
    #[inline(always)]
    unsafe fn zero() -> Self::V {
        // SAFETY: the ISA is present (caller).
        unsafe { Self::V::zero() }
    }
    /// # Safety
    /// The ISA is present.
    #[inline(always)]
    unsafe fn zero_wide() -> Self::Wide {
        // SAFETY: the ISA is present (caller).
        unsafe { Self::Wide::zero() }
    }
    /// A block's indices.
    ///
    /// # Safety
    /// [`Lookup::STEP`] readable bytes at `p`.
    #[inline(always)]
    unsafe fn load_w(p: *const u8) -> Self::V {
        // SAFETY: a vector's bytes readable at `p` (caller: `STEP` is the vector's width).
        unsafe { Self::V::load(p) }
    }
    /// A table (by default one vector: [`Lookup::TABLE`] `u16` of a vector's width).
    ///
    /// # Safety
    /// [`Lookup::TABLE`] readable `u16` at `p`.
    #[inline(always)]
    unsafe fn load_t(p: *const u16) -> Self::V {
        // SAFETY: as above.
        unsafe { Self::V::load(p as *const u8) }
    }
    /// `part` plus the entries of table `t` at indices `w`.
    ///
    /// # Safety
    /// The ISA is present.
    unsafe fn look(part: Self::V, w: Self::V, t: Self::V) -> Self::V;
    /// `wide` plus the narrow sums `part`.
    ///
    /// # Safety
    /// The ISA is present.
    unsafe fn widen(wide: Self::Wide, part: Self::V) -> Self::Wide;
    /// Adds the `u16` sums of the first `lanes` channels of a block, times `2^shift` (the
    /// weight plane's), to the `i32` sums at `out` (written instead when `first`); with `qsum`
    /// (the last run) stores `2 S - qsum`, `S` the whole sum.
    ///
    /// # Safety
    /// The ISA is present; `lanes` `i32`s readable and writable at `out`.
    unsafe fn store(wide: Self::Wide, out: *mut i32, lanes: usize, st: Store);
    /// The table builder's step: writes the tables of channel groups `0 .. n` (`n <=
    /// CHUNK`) of the `len <= CHUNK * K` codes at `codes` (`codes_len`: `len` and the bytes
    /// `readable >= len` at `codes`; `len` pad codes where `codes` is
    /// `None`: a pad pixel) at `t`, [`Lookup::TABLE`] `u16` each, for each of the `planes`
    /// code planes ([`Lookup::CODE_BITS`]) `stride` `u16` after the previous one's, and
    /// returns the sum of the codes; `top[c]` becomes the entry-wise maximum of itself and
    /// the tables of code plane `c` (in each lane the lookup reads). Entry `m` of a table is the sum of its group's codes
    /// (of the plane's bits) whose bit ([`Lookup::bit`]) is set in `m`; entries whose `m`
    /// names a channel past the `len` codes may hold anything (the weights never index
    /// them).
    ///
    /// # Safety
    /// The ISA is present; `readable >= len` readable bytes at `codes`; `n * TABLE` writable
    /// `u16` at `t` and at each plane's `stride` after.
    unsafe fn tables_of(
        codes: Option<*const u8>,
        pad: u8,
        codes_len: (usize, usize),
        n: usize,
        t: *mut u16,
        planes: (usize, usize),
        top: &mut [Self::V; MAX_CODE_PLANES],
    ) -> u32;

    /// The largest entry in `v`, a running maximum of tables ([`Lookup::tables_of`]'s `top`).
    ///
    /// # Safety
    /// The ISA is present.
    unsafe fn entry_max(v: Self::V) -> u16;
}

/// Code planes of a table kind at most (the AVX2 kind's two nibbles of codes of 5 to 8 bits,
/// where they are the fallback of [`Trios`]).
const MAX_CODE_PLANES: usize = 2;

/// `u16`s from one code plane's tables of a padded pixel to the next plane's: a table per
/// group and channel group.
fn plane_stride<L: Lookup>(s: &ConvShape) -> usize {
    s.groups * L::groups(s) * L::TABLE
}

/// `u16`s from one padded pixel's tables of kind `L` to the next: [`plane_stride`] per code
/// plane.
fn pixel_stride<L: Lookup>(s: &ConvShape) -> usize {
    L::code_planes(s) * plane_stride::<L>(s)
}

/// `u16`s of the tables of kind `L`: [`pixel_stride`] per padded pixel (the start of
/// [`input_len`]).
fn tables_len<L: Lookup>(s: &ConvShape) -> usize {
    s.hp.saturating_mul(s.wp)
        .saturating_mul(pixel_stride::<L>(s))
}

/// `u16`s of the code sums of a table-lookup kernel's input: a little-endian `u32` (two `u16`)
/// per padded pixel and group.
fn sums_len(s: &ConvShape) -> usize {
    s.hp.saturating_mul(s.wp).saturating_mul(s.groups) * 2
}

/// `u16`s of a table-lookup kernel's input of kind `L`: the tables ([`tables_len`]), then the
/// sum of the codes of each padded pixel and group ([`sums_len`]), then per code plane the
/// largest entry of its tables ([`MAX_CODE_PLANES`] `u16`), which bounds what a lookup adds and
/// so how many lookups a run of narrow or `u16` sums holds.
fn input_len<L: Lookup>(s: &ConvShape) -> usize {
    tables_len::<L>(s)
        .saturating_add(sums_len(s))
        .saturating_add(MAX_CODE_PLANES)
}

/// Whether the AVX2 lookup's fallback from its byte sub-tables is the AVX2 int8 dot for the
/// shape (else nibble tables), for the tests.
#[cfg(test)]
pub(in super::super) fn lut_avx2_falls_back_to_dot(s: &ConvShape) -> bool {
    avx2::falls_back_to_dot(s)
}

/// Whether the builder of `kind` (a table lookup) takes the byte sub-tables of its pair for
/// this input ([`Quads`], [`Trios`]) rather than their fallback, for the tests: `None` where
/// this CPU lacks the kind or the shape's codes take neither pair.
#[cfg(test)]
pub(in super::super) fn lut_takes_sub_tables(
    kind: KernelKind,
    s: &ConvShape,
    x: &[u8],
    pad: u8,
) -> Option<bool> {
    let Run::Tables(t) = super::by_kind(kind)?.run else {
        return None;
    };
    let mut out = vec![0u16; (t.len)(s)];
    (t.build)(s, x, pad, &mut out);
    match kind {
        KernelKind::Int8LutAvx512 if s.lut_k() != LUT_K8 => {
            Some(!pair_is_second::<Quads, Words>(s, &out))
        }
        KernelKind::Int8LutAvx2 if avx2::avx2_pairs(s) => Some(!avx2::trios_fall_back(s, &out)),
        _ => None,
    }
}

/// Bytes of one weight plane of a block of output channels: a step's indices per tap and
/// channel group.
fn plane_bytes<L: Lookup>(s: &ConvShape) -> usize {
    s.kh * s.kw * L::groups(s) * L::STEP
}

/// Bytes of one block of output channels: a plane per weight bit.
fn block_bytes<L: Lookup>(s: &ConvShape) -> usize {
    s.wbits as usize * plane_bytes::<L>(s)
}

/// Bytes of the weights as table indices of kind `L`.
fn prepared_len_of<L: Lookup>(s: &ConvShape) -> usize {
    s.groups * s.cout_g.div_ceil(L::LANES) * block_bytes::<L>(s)
}

/// The weights as table indices of kind `L`, `[g][O/LANES][wbits][kh][ceil(cin_g/K)][kw][LANES]`
/// of `STEP / LANES` bytes each (`u16` for [`Words`], the pattern in the low byte): bit `i` of
/// the index of channel `o` in plane `p` at a tap and channel group `G` is bit `p` of the code
/// of the weight of input channel `K G + i` (zero past `cin_g` and `cout_g`). With the code's
/// numerator `2 code - (2^wbits - 1)` that is `sum_p 2^p (2 b_p - 1)`: plane `p` is a sign
/// weight counted `2^p` times.
fn prepare_of<L: Lookup>(conv: &Conv<'_>, s: &ConvShape, out: &mut [u8]) {
    let len = prepared_len_of::<L>(s);
    let Some(dst) = out.get_mut(..len) else {
        return;
    };
    for (b, d) in dst.iter_mut().enumerate() {
        *d = L::index_base(b);
    }
    let codes = CodeReader::new(conv);
    let (k, lanes, el) = (L::K, L::LANES, L::STEP / L::LANES);
    let (gn, nblk, bb) = (L::groups(s), s.cout_g.div_ceil(lanes), block_bytes::<L>(s));
    let pb = plane_bytes::<L>(s);
    for o in 0..s.cout {
        let (g, oc) = (o / s.cout_g, o % s.cout_g);
        let blk = (g * nblk + oc / lanes) * bb;
        for ky in 0..s.kh {
            for kx in 0..s.kw {
                for i in 0..s.cin_g {
                    let code = codes.code(o, ky, kx, i);
                    for p in 0..s.wbits as usize {
                        if code >> p & 1 != 0 {
                            let (byte, bit) = L::index_bit(i % k);
                            let at = blk
                                + p * pb
                                + (((ky * gn + i / k) * s.kw + kx) * lanes + L::lane(oc % lanes))
                                    * el
                                + byte;
                            dst[at] |= 1 << bit;
                        }
                    }
                }
            }
        }
    }
}

/// The table builder of kind `L`: for every padded input pixel, group and channel group of
/// `K` channels, the sums of the codes over every subset of the group's channels (unpadded HWC
/// input `x`, pad pixels holding `pad`; channels past `cin_g` count 0), then the sum of all
/// codes of each padded pixel and group ([`input_len`] `u16`s in all). With `stop_above`, it
/// stops after the first padded row whose tables hold an entry above it (the first code
/// plane's largest entry, [`Lookup::entry_max`]) and returns false: the caller takes another
/// kernel; else true.
///
/// # Safety
/// `L`'s ISA present (the caller compiled with it).
#[inline(always)]
unsafe fn build_tables<L: Lookup>(
    s: &ConvShape,
    x: &[u8],
    pad: u8,
    out: &mut [u16],
    stop_above: Option<u16>,
) -> bool {
    let (h, w, c, cin, gn) = (s.h(), s.w(), s.c, s.cin_g, L::groups(s));
    let (px, sums) = (pixel_stride::<L>(s), tables_len::<L>(s));
    let planes = (L::code_planes(s), plane_stride::<L>(s));
    assert!(out.len() >= input_len::<L>(s) && x.len() >= h * w * c);
    let o = out.as_mut_ptr();
    // SAFETY: `L`'s ISA present (caller).
    let mut top = [unsafe { L::zero() }; MAX_CODE_PLANES];
    for y in 0..s.hp {
        for xx in 0..s.wp {
            let inside = y >= s.ph && y < s.ph + h && xx >= s.pw && xx < s.pw + w;
            let pix = if inside {
                ((y - s.ph) * w + (xx - s.pw)) * c
            } else {
                0
            };
            for g in 0..s.groups {
                // Chunks of `CHUNK` channel groups per load of codes.
                let (mut gi, mut sum) = (0, 0u32);
                while gi < gn {
                    let ch = gi * L::K;
                    let n = L::chunk(cin - ch);
                    let len = (cin - ch).min(n * L::K);
                    // SAFETY: `L`'s ISA present (caller); the chunk's `len` codes lie inside
                    // the pixel's group in `x`, its `n` tables inside the pixel's `px` u16 of
                    // `out` (both asserted above).
                    unsafe {
                        let at = pix + g * cin + ch;
                        let codes = inside.then(|| x.as_ptr().add(at));
                        let t = o.add((y * s.wp + xx) * px + (g * gn + gi) * L::TABLE);
                        let readable = if inside { x.len() - at } else { len };
                        sum += L::tables_of(codes, pad, (len, readable), n, t, planes, &mut top);
                    }
                    gi += n;
                }
                let at = sums + ((y * s.wp + xx) * s.groups + g) * 2;
                out[at] = sum as u16;
                out[at + 1] = (sum >> 16) as u16;
            }
        }
        // SAFETY: `L`'s ISA present (caller).
        if stop_above.is_some_and(|m| unsafe { L::entry_max(top[0]) } > m) {
            return false;
        }
    }
    let bounds = sums + sums_len(s);
    for (c, &v) in top.iter().enumerate().take(planes.0) {
        // SAFETY: `L`'s ISA present (caller).
        out[bounds + c] = unsafe { L::entry_max(v) };
    }
    true
}

/// A table-lookup kernel call of kind `L` (over the tables of its builder).
type LutCall<'a, L> = Call<'a, u16, L>;

impl<L: Lookup> Tile for LutCall<'_, L> {
    /// Every row step of the tile (kernel row by channel group, the row's taps together), in
    /// runs of at most [`Lookup::run`] lookups a sum, weight plane by code plane (a run of
    /// weight plane `p` and code plane `c` counts `2^(p + CODE_BITS c)` times).
    #[inline(always)]
    unsafe fn tile<const NB: usize, const P: usize>(
        &self,
        acc: &mut [i32],
        g: usize,
        b0: usize,
        p0: usize,
    ) {
        let s = self.s;
        let shared = self.shares_tables::<P>(p0);
        // `kw <= LUT_MAX_KW <= narrow_run <= run` (`lut_fits`): a run holds a row step.
        let (steps, planes) = (s.kh * L::groups(s), s.wbits as usize);
        let codes = L::code_planes(s);
        for p in 0..planes {
            for c in 0..codes {
                let run = L::run(self.top(c)) / s.kw;
                let mut t0 = 0;
                while t0 < steps {
                    let t1 = (t0 + run).min(steps);
                    let span = (
                        (p, c, t0, t1),
                        (
                            p == 0 && c == 0 && t0 == 0,
                            p + 1 == planes && c + 1 == codes && t1 == steps,
                        ),
                    );
                    // SAFETY: `t1 <= steps`, `p < wbits`; the rest is the caller's (and
                    // `shares_tables` for the shared walks).
                    unsafe {
                        match (shared, s.sw, s.kw) {
                            (true, 1, _) => {
                                self.row_steps::<NB, P, 1, true, 3>(acc, g, b0, p0, span)
                            }
                            (true, _, _) => {
                                self.row_steps::<NB, P, 2, true, 3>(acc, g, b0, p0, span)
                            }
                            (_, _, 3) => self.row_steps::<NB, P, 0, false, 3>(acc, g, b0, p0, span),
                            _ => self.row_steps::<NB, P, 0, false, 0>(acc, g, b0, p0, span),
                        }
                    }
                    t0 = t1;
                }
            }
        }
    }
}

/// Tables a row step holds in registers at most: the shared windows of a tile of up to 8
/// pixels at stride 1 (or 4 at stride 2) and 3 taps.
const ROW_TABLES: usize = 10;

impl<L: Lookup> LutCall<'_, L> {
    /// Whether a tile of `P` pixels from `p0` shares its tables between taps: 3 taps a
    /// kernel row, stride 1 or 2 and the pixels on one output row, so that pixel `j`'s table
    /// at tap `kx` is table `sw j + kx` of the row from the first pixel's window, and a row
    /// step loads `sw (P - 1) + 3` tables for `3 P` lookups a block (else `3 P`).
    #[inline(always)]
    fn shares_tables<const P: usize>(&self, p0: usize) -> bool {
        let s = self.s;
        P >= 2
            && s.kw == 3
            && (s.sw == 1 || s.sw == 2)
            && s.sw * (P - 1) + 3 <= ROW_TABLES
            && p0 / s.ow == (p0 + P - 1) / s.ow
    }

    /// Adds row steps `t0 .. t1` (row step `t`: kernel row `t / gn`, channel group `t % gn`,
    /// its `kw` taps) of weight plane `plane` over the tables of code plane `code` of `NB`
    /// blocks of output channels from block `b0` of group `g` for the `P` output pixels from
    /// `p0`, times `2^(plane + CODE_BITS code)`, to their `i32`
    /// sums in `acc`; `first`: written instead; `last`: `2 S - (2^wbits - 1) sum q`. At most
    /// [`Lookup::run`] lookups a sum: the sums of the run are `u16`. `SHARED`: the tables of
    /// a row step are loaded once for the tile (`SW` its stride, see
    /// [`LutCall::shares_tables`]); else per pixel and tap. `KW`: the kernel's width where it
    /// is a constant of the walk (3), else 0.
    ///
    /// # Safety
    /// `L`'s ISA present; the call passed [`ConvShape::assert_call`]; blocks `b0 .. b0 + NB`
    /// exist in the group, pixels `p0 .. p0 + P` lie in the call's rows, `t1 <= kh * gn`,
    /// `(t1 - t0) kw <= run`, `plane < wbits`, `code < code_planes`; `KW` 0 or `kw`;
    /// `shares_tables`, `SW == sw`
    /// and `KW == 3` if `SHARED`.
    #[allow(clippy::type_complexity)]
    #[inline(always)]
    unsafe fn row_steps<
        const NB: usize,
        const P: usize,
        const SW: usize,
        const SHARED: bool,
        const KW: usize,
    >(
        &self,
        acc: &mut [i32],
        g: usize,
        b0: usize,
        p0: usize,
        ((plane, code, t0, t1), (first, last)): ((usize, usize, usize, usize), (bool, bool)),
    ) {
        let s = self.s;
        let (gn, px, bb) = (L::groups(s), pixel_stride::<L>(s), block_bytes::<L>(s));
        let kw = if KW > 0 { KW } else { s.kw };
        let mut org = [0usize; P];
        for j in 0..P {
            org[j] = window_origin(s, p0 + j) * px + g * gn * L::TABLE;
        }
        // SAFETY: `L`'s ISA present; the tables of the tile's windows and plane `plane` of
        // its blocks lie inside the buffers (caller), as every load below.
        unsafe {
            let (x, w) = (self.x.as_ptr(), self.w.as_ptr());
            let w =
                w.add((g * s.cout_g.div_ceil(L::LANES) + b0) * bb + plane * plane_bytes::<L>(s));
            let (zero, zero_wide) = (L::zero(), L::zero_wide());
            let mut part = [[zero; NB]; P];
            let mut wide = [[zero_wide; NB]; P];
            // Row steps between two widenings of the narrow sums (all for `u16` ones).
            let nr = L::narrow_run(self.top(code)).map_or(usize::MAX, |n| n / kw);
            let mut pending = 0;
            let (mut ky, mut gi) = (t0 / gn, t0 % gn);
            // Weights by kernel row, channel group, then tap ([`prepare_of`]): one walk.
            let mut wt = w.add(t0 * kw * L::STEP);
            for _ in t0..t1 {
                let row = x.add(ky * s.wp * px + code * plane_stride::<L>(s) + gi * L::TABLE);
                let mut tv = [zero; ROW_TABLES];
                if SHARED {
                    for i in 0..SW * (P - 1) + 3 {
                        tv[i] = L::load_t(row.add(org[0] + i * px));
                    }
                }
                for kx in 0..kw {
                    let mut wv = [zero; NB];
                    for b in 0..NB {
                        wv[b] = L::load_w(wt.add(b * bb));
                    }
                    wt = wt.add(L::STEP);
                    for j in 0..P {
                        let tj = if SHARED {
                            tv[j * SW + kx]
                        } else {
                            L::load_t(row.add(org[j] + kx * px))
                        };
                        for b in 0..NB {
                            part[j][b] = L::look(part[j][b], wv[b], tj);
                        }
                    }
                }
                if L::NARROW {
                    pending += 1;
                    if pending == nr {
                        widen_all::<L, NB, P>(&mut part, &mut wide);
                        pending = 0;
                    }
                }
                gi += 1;
                if gi == gn {
                    (gi, ky) = (0, ky + 1);
                }
            }
            widen_all::<L, NB, P>(&mut part, &mut wide);
            let shift = plane + usize::from(L::CODE_BITS) * code;
            self.store_tile(&wide, acc, g, b0, p0, (first, shift as u32, last));
        }
    }

    /// Stores a tile's `u16` sums, times `2^shift`, into its `i32` sums in `acc`
    /// ([`Lookup::store`]; `first`: written instead; `last`: `2 S - (2^wbits - 1) sum q`).
    ///
    /// # Safety
    /// `L`'s ISA present; blocks `b0 .. b0 + NB` exist in group `g` and pixels `p0 .. p0 + P`
    /// lie in the call's rows.
    #[inline(always)]
    unsafe fn store_tile<const NB: usize, const P: usize>(
        &self,
        wide: &[[L::Wide; NB]; P],
        acc: &mut [i32],
        g: usize,
        b0: usize,
        p0: usize,
        (first, shift, last): (bool, u32, bool),
    ) {
        let s = self.s;
        let wmax = (1i32 << s.wbits) - 1;
        for j in 0..P {
            let qsum = last.then(|| wmax.wrapping_mul(self.qsum(p0 + j, g)));
            let st = Store { first, shift, qsum };
            let row = (p0 + j - self.first) * s.cout + g * s.cout_g;
            for b in 0..NB {
                let c0 = (b0 + b) * L::LANES;
                let lanes = (s.cout_g - c0).min(L::LANES);
                // SAFETY: the block's `lanes` channels of the pixel lie in `acc` (caller).
                unsafe { L::store(wide[j][b], acc.as_mut_ptr().add(row + c0), lanes, st) };
            }
        }
    }

    /// The largest entry of the tables of code plane `c`, as the builder found it
    /// ([`input_len`]), at most [`Lookup::entry_bound`].
    #[inline(always)]
    fn top(&self, c: usize) -> usize {
        let s = self.s;
        let at = tables_len::<L>(s) + sums_len(s) + c;
        usize::from(self.x[at]).min(L::entry_bound(s))
    }

    /// `sum q` over the window of output pixel `p` (row-major over the whole output) in group
    /// `g`: the sums of all codes of each padded pixel after the tables.
    #[inline(always)]
    fn qsum(&self, p: usize, g: usize) -> i32 {
        let s = self.s;
        let sums = &self.x[tables_len::<L>(s)..];
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

/// Widens every narrow sum of a tile into its `u16` sums and clears it.
///
/// # Safety
/// `L`'s ISA present.
#[inline(always)]
unsafe fn widen_all<L: Lookup, const NB: usize, const P: usize>(
    part: &mut [[L::V; NB]; P],
    wide: &mut [[L::Wide; NB]; P],
) {
    // SAFETY: `L`'s ISA present (caller).
    unsafe {
        let zero = L::zero();
        for j in 0..P {
            for b in 0..NB {
                wide[j][b] = L::widen(wide[j][b], part[j][b]);
                part[j][b] = zero;
            }
        }
    }
}

/// Runs rows `y0..y1` of a call of kind `L` (`for_tiles`: up to `NB` blocks by `P` pixels, tiles
/// of at most half of `NB` blocks by `PN`, then `P2`, the last ones one by one).
///
/// # Safety
/// `L`'s ISA present (the caller compiled with it); the call passed
/// [`ConvShape::assert_call`] with `L`'s prepared length.
#[inline(always)]
unsafe fn lut_rows<L: Lookup, const NB: usize, const P: usize, const PN: usize, const P2: usize>(
    s: &ConvShape,
    x: &[u16],
    w: &[u8],
    y0: usize,
    y1: usize,
    acc: &mut [i32],
) {
    let call = LutCall::<L>::new(s, x, w, y0);
    let nblk = s.cout_g.div_ceil(L::LANES);
    // SAFETY: forwarded preconditions.
    unsafe { for_tiles::<_, NB, P, PN, P2>(&call, s, nblk, y0, y1, acc) }
}
