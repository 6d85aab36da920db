//! x86-64 SIMD convolution kernels (kernels/CONTRACT.md): AVX2 and AVX-512 (VNNI, VPOPCNTDQ).
//!
//! Each operation has one generic tile driver; an instruction set supplies only its primitives
//! (the shape of tract-linalg's generic kernels):
//! * int8 dot ([`Int8Call`]) over [`Dot`], 4 activation codes against a block of 16 output
//!   channels: [`Avx2Dot`] (`vpmaddubsw` + `vpmaddwd`), [`VnniDot`] (`vpdpbusd`);
//! * XNOR and bit-serial popcount ([`BitsCall`]) over [`Popcount`], one activation word against
//!   a block of 8 output channels: [`Avx2Popcount`] (`vpshufb` nibble table + `vpsadbw`),
//!   [`Avx512Popcount`] (`vpopcntq`).
//!
//! [`for_tiles`] walks a call's output in register tiles of up to `NB` channel blocks by `P`
//! pixels (AVX2: 1 x 4, AVX-512: 4 x 6; the last pixels one by one, the last blocks in a
//! narrower tile).
//!
//! # Layouts
//! * Int8: `i8 [g][O/16][kh][kw][ceil(cin_g/4)][16][4]` (numerators, zero past `cin_g` and
//!   `cout_g`) + `i32 wsum[cout]`.
//! * Bit kinds: the 8-lane layout of [`super::lanes8`], shared with the NEON kernels.
//!
//! # Arithmetic
//! * XNOR: `acc = taps - 2 * popcount(w ^ x)` (bits past `cin_g` are 0 in both).
//! * Bit-serial: `sum num*q = 2 sum_{p,r} 2^(p+r) popcount(w_p & x_r) - (2^wb - 1) sum q`.
//! * 1-bit sign activations (`v = 2q - 1`) on the bit-serial and int8 kinds: the unsigned sum
//!   `S` becomes `2S - wsum[o]` ([`sign_fix`]); XNOR kinds on other shapes run bit-serial.
//! * `vpmaddubsw` saturates at `i16`: with `|num| <= 15` and `q <= 255` a sum of four products
//!   is at most 15,300, and [`Avx2Dot`] widens a run of them before it could pass `i16::MAX`.
//!   Accumulators are `i32` (`u64` for popcounts); the format bounds the true sum to `i32`.
//!
//! # Features and preconditions
//! [`Features::get`] detects the CPU once and caches it; [`by_kind`] and [`row_ops`] hand out a
//! kernel only when its instructions are present, and the kernel entry points (private to this
//! module, reachable only through those two) rely on that. Each entry point checks the call
//! against the contract with [`ConvShape::assert_call`] (stated once, guaranteed by the
//! planner) before its unchecked loads. Every kernel is checked bit for bit against
//! `reference::conv_acc` by the shared proptests (`kernels::tests::kernels_match_reference`).

// Register tiles are indexed by pixel and block in lock step; index loops read clearest there.
#![allow(clippy::needless_range_loop)]

use core::arch::x86_64::*;
use core::marker::PhantomData;
use core::sync::atomic::{AtomicU8, Ordering};

use slb_format::{AddParams, ChannelAffine, CodeReader, Conv, RawQuant};

use super::{lanes8, portable, Algo, ConvKernel, ConvShape, KernelKind, RowOps, Run, LUT_K};
use crate::quant::{self, QParams};

// ---------------------------------------------------------------------------------------------
// CPU features, detected once

/// The instruction-set extensions of this module's kernels that the running CPU has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Features {
    /// AVX2: the AVX2 kernels, packer, requantization and residual add.
    pub avx2: bool,
    /// AVX-512 F/BW/VNNI: [`KernelKind::Int8DotVnni`].
    pub avx512vnni: bool,
    /// AVX-512 F/BW/VPOPCNTDQ: [`KernelKind::XnorAvx512`], [`KernelKind::BitSerialAvx512`].
    pub avx512popcnt: bool,
    /// AVX-512 F/BW/VBMI: [`KernelKind::Int8LutAvx512`].
    pub avx512vbmi: bool,
    /// AVX-512 F/BW/DQ/VL: the requantization and residual add compiled for AVX-512.
    pub avx512dq: bool,
}

/// [`Features::get`]'s cache: bit 0 set once detected, bits 1-5 the five features.
static DETECTED: AtomicU8 = AtomicU8::new(0);

impl Features {
    /// Asks the CPU (at run time with `std`, from `cfg(target_feature)` without).
    fn detect() -> Features {
        #[cfg(feature = "std")]
        {
            let f = std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw");
            Features {
                avx2: std::arch::is_x86_feature_detected!("avx2"),
                avx512vnni: f && std::arch::is_x86_feature_detected!("avx512vnni"),
                avx512popcnt: f && std::arch::is_x86_feature_detected!("avx512vpopcntdq"),
                avx512vbmi: f && std::arch::is_x86_feature_detected!("avx512vbmi"),
                avx512dq: f
                    && std::arch::is_x86_feature_detected!("avx512dq")
                    && std::arch::is_x86_feature_detected!("avx512vl"),
            }
        }
        #[cfg(not(feature = "std"))]
        {
            let f = cfg!(all(target_feature = "avx512f", target_feature = "avx512bw"));
            Features {
                avx2: cfg!(target_feature = "avx2"),
                avx512vnni: f && cfg!(target_feature = "avx512vnni"),
                avx512popcnt: f && cfg!(target_feature = "avx512vpopcntdq"),
                avx512vbmi: f && cfg!(target_feature = "avx512vbmi"),
                avx512dq: f
                    && cfg!(all(
                        target_feature = "avx512dq",
                        target_feature = "avx512vl"
                    )),
            }
        }
    }

    /// The running CPU's features: detected on the first call, then read from a cache.
    pub(crate) fn get() -> Features {
        let mut v = DETECTED.load(Ordering::Relaxed);
        if v == 0 {
            let f = Features::detect();
            v = 1
                | u8::from(f.avx2) << 1
                | u8::from(f.avx512vnni) << 2
                | u8::from(f.avx512popcnt) << 3
                | u8::from(f.avx512vbmi) << 4
                | u8::from(f.avx512dq) << 5;
            DETECTED.store(v, Ordering::Relaxed);
        }
        Features {
            avx2: v & 2 != 0,
            avx512vnni: v & 4 != 0,
            avx512popcnt: v & 8 != 0,
            avx512vbmi: v & 16 != 0,
            avx512dq: v & 32 != 0,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// selection (kernels/CONTRACT.md)

/// The x86 kernel of `kind` if this CPU runs it (any shape the planner accepts).
pub(crate) fn by_kind(kind: KernelKind) -> Option<ConvKernel> {
    let f = Features::get();
    let (ok, prepared_len, prepare, run): (bool, fn(&ConvShape) -> usize, _, Run) = match kind {
        KernelKind::Int8DotVnni => (
            f.avx512vnni,
            int8_prepared_len,
            int8_prepare as fn(&Conv<'_>, &ConvShape, &mut [u8]),
            Run::Bytes(int8_vnni),
        ),
        KernelKind::Int8DotAvx2 => (
            f.avx2,
            int8_prepared_len,
            int8_prepare,
            Run::Bytes(int8_avx2),
        ),
        KernelKind::Int8LutAvx512 => (
            f.avx512vbmi,
            lut_prepared_len,
            lut_prepare,
            Run::Tables(lut_tables, lut_avx512),
        ),
        KernelKind::XnorAvx512 | KernelKind::BitSerialAvx512 => (
            f.avx512popcnt,
            lanes8::prepared_len,
            lanes8::prepare,
            Run::Bits(bits_avx512),
        ),
        KernelKind::XnorAvx2 | KernelKind::BitSerialAvx2 => (
            f.avx2,
            lanes8::prepared_len,
            lanes8::prepare,
            Run::Bits(bits_avx2),
        ),
        _ => return None,
    };
    ok.then_some(ConvKernel {
        kind,
        prepared_len,
        prepare,
        run,
        reads_codes: false,
    })
}

/// The best x86 kernel for `algo` on this CPU (AVX-512 before AVX2; for the int8 dot of
/// 1-bit weights the cheaper by [`super::cost`] of table lookup and the dot), or `None`.
pub(crate) fn select(algo: Algo, s: &ConvShape) -> Option<ConvKernel> {
    if !matches!(s.abits, 1 | 2 | 4 | 8) || !matches!(s.wbits, 1 | 2 | 4) {
        return None;
    }
    if algo == Algo::Int8Dot && super::lut_fits(s) {
        let dot = [KernelKind::Int8DotVnni, KernelKind::Int8DotAvx2]
            .into_iter()
            .find_map(by_kind);
        let cost = |k: &ConvKernel| super::cost(k.kind, s, super::CostModel::Desktop);
        return match (by_kind(KernelKind::Int8LutAvx512), dot) {
            (Some(l), Some(d)) if cost(&l) < cost(&d) => Some(l),
            (l, d) => d.or(l),
        };
    }
    let kinds = match algo {
        Algo::Xnor => [KernelKind::XnorAvx512, KernelKind::XnorAvx2],
        Algo::BitSerial => [KernelKind::BitSerialAvx512, KernelKind::BitSerialAvx2],
        Algo::Int8Dot => [KernelKind::Int8DotVnni, KernelKind::Int8DotAvx2],
        Algo::Reference => return None,
    };
    kinds.into_iter().find_map(by_kind)
}

/// The driver's row operations compiled with AVX2, where the CPU has it; the requantization
/// and residual add compiled with AVX-512 (8 `i64` lanes) where the CPU has AVX-512 DQ/VL.
pub(crate) fn row_ops() -> Option<RowOps> {
    let f = Features::get();
    let ops = f.avx2.then_some(RowOps {
        requant: requant_avx2,
        add_rows: add_rows_avx2,
        pack_bits: pack_bits_avx2,
    })?;
    Some(if f.avx512dq {
        RowOps {
            requant: requant_avx512,
            add_rows: add_rows_avx512,
            ..ops
        }
    } else {
        ops
    })
}

// ---------------------------------------------------------------------------------------------
// register tiles

/// One operation's register tile over a call's output.
trait Tile {
    /// Computes `NB` blocks of output channels from block `b0` of group `g` for the `P`
    /// output pixels from `p0` (row-major over the whole output) into `acc`.
    ///
    /// # Safety
    /// The instructions of the tile's ISA are present; the call passed
    /// [`ConvShape::assert_call`]; blocks `b0 .. b0 + NB` exist in the group and pixels
    /// `p0 .. p0 + P` lie in the call's rows.
    unsafe fn tile<const NB: usize, const P: usize>(
        &self,
        acc: &mut [i32],
        g: usize,
        b0: usize,
        p0: usize,
    );
}

/// Runs `t` over every tile of rows `y0..y1`: per group, `nblk` channel blocks in runs of up
/// to `NB` (at most 4), pixels in runs of `P`, the last ones one by one.
///
/// # Safety
/// As [`Tile::tile`] for the whole call.
#[inline(always)]
unsafe fn for_tiles<T: Tile, const NB: usize, const P: usize>(
    t: &T,
    s: &ConvShape,
    nblk: usize,
    y0: usize,
    y1: usize,
    acc: &mut [i32],
) {
    const { assert!(NB >= 1 && NB <= 4 && P >= 1) };
    let (first, end) = (y0 * s.ow, y1 * s.ow);
    for g in 0..s.groups {
        let mut b0 = 0;
        while b0 < nblk {
            let nb = (nblk - b0).min(NB);
            let mut p = first;
            while p < end {
                let full = end - p >= P;
                // SAFETY: blocks `b0 .. b0 + nb` exist and the pixels of the tile lie before
                // `end`; the rest is the caller's.
                unsafe {
                    match (nb, full) {
                        (4, true) => t.tile::<4, P>(acc, g, b0, p),
                        (3, true) => t.tile::<3, P>(acc, g, b0, p),
                        (2, true) => t.tile::<2, P>(acc, g, b0, p),
                        (_, true) => t.tile::<1, P>(acc, g, b0, p),
                        (4, false) => t.tile::<4, 1>(acc, g, b0, p),
                        (3, false) => t.tile::<3, 1>(acc, g, b0, p),
                        (2, false) => t.tile::<2, 1>(acc, g, b0, p),
                        (_, false) => t.tile::<1, 1>(acc, g, b0, p),
                    }
                }
                p += if full { P } else { 1 };
            }
            b0 += nb;
        }
    }
}

/// Offset, in pixels of the padded input, of the window origin of output pixel `pix`.
#[inline(always)]
fn window_origin(s: &ConvShape, pix: usize) -> usize {
    let (oy, ox) = (pix / s.ow, pix % s.ow);
    oy * s.sh * s.wp + ox * s.sw
}

/// Turns `sum num*q` into `sum num*(2q - 1) = 2 sum num*q - wsum` for 1-bit sign inputs.
fn sign_fix(s: &ConvShape, wsum: &[u8], acc: &mut [i32]) {
    for row in acc.chunks_exact_mut(s.cout) {
        for (v, d) in row.iter_mut().zip(wsum.chunks_exact(4)) {
            let ws = i32::from_le_bytes([d[0], d[1], d[2], d[3]]);
            *v = v.wrapping_mul(2).wrapping_sub(ws);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// int8 dot: layout, the primitive, the driver

/// Channel chunks of 4 per kernel tap in the int8 layout.
fn int8_chunks(s: &ConvShape) -> usize {
    s.cin_g.div_ceil(4)
}

/// Bytes of one block of 16 output channels in the int8 layout.
fn int8_block_bytes(s: &ConvShape) -> usize {
    s.kh * s.kw * int8_chunks(s) * 64
}

/// Bytes of the int8 weights, before `wsum`.
fn int8_weight_bytes(s: &ConvShape) -> usize {
    s.groups * s.cout_g.div_ceil(16) * int8_block_bytes(s)
}

fn int8_prepared_len(s: &ConvShape) -> usize {
    int8_weight_bytes(s) + 4 * s.cout
}

/// Expands the format's codes into `i8 [g][O/16][kh][kw][ceil(cin_g/4)][16][4]`, then `wsum`.
fn int8_prepare(conv: &Conv<'_>, s: &ConvShape, out: &mut [u8]) {
    let len = int8_weight_bytes(s);
    let Some(dst) = out.get_mut(..len) else {
        return;
    };
    dst.fill(0);
    let codes = CodeReader::new(conv);
    let (c4n, nblk, bb) = (int8_chunks(s), s.cout_g.div_ceil(16), int8_block_bytes(s));
    for o in 0..s.cout {
        let (g, oc) = (o / s.cout_g, o % s.cout_g);
        let blk = (g * nblk + oc / 16) * bb;
        for ky in 0..s.kh {
            for kx in 0..s.kw {
                let tap = (ky * s.kw + kx) * c4n;
                for i in 0..s.cin_g {
                    let num = codes.numerator(o, ky, kx, i);
                    dst[blk + (tap + i / 4) * 64 + (oc % 16) * 4 + i % 4] = num as i8 as u8;
                }
            }
        }
    }
    super::write_wsum(conv, s, out.get_mut(len..).unwrap_or(&mut []));
}

/// An int8 dot-product primitive: 4 activation codes (one `i32`, broadcast) against the 16 x 4
/// weights of one chunk of a 16-channel block, summed into 16 `i32` lanes. Partial sums of a
/// run of chunks may be kept narrower ([`Dot::Part`]) and widened at the end of the run.
trait Dot {
    /// One chunk of a block's weights.
    type W: Copy;
    /// A broadcast group of 4 activation codes.
    type X: Copy;
    /// 16 `i32` sums.
    type Acc: Copy;
    /// The partial sums of a run.
    type Part: Copy;
    /// Chunks one run may hold for weights of `wbits` bits (exact: no lane saturates).
    fn run_len(wbits: u8) -> usize;
    /// # Safety
    /// The ISA is present (so for every method of this trait).
    unsafe fn zero() -> Self::Acc;
    /// # Safety
    /// 64 readable bytes at `w`.
    unsafe fn load_w(w: *const u8) -> Self::W;
    /// # Safety
    /// The ISA is present.
    unsafe fn splat(x: i32) -> Self::X;
    /// Starts a run on top of `acc`.
    ///
    /// # Safety
    /// The ISA is present.
    unsafe fn begin(acc: Self::Acc) -> Self::Part;
    /// `part += x . w` lane-wise over the 4 codes.
    ///
    /// # Safety
    /// The ISA is present.
    unsafe fn dot(part: Self::Part, x: Self::X, w: Self::W) -> Self::Part;
    /// Ends a run started on `acc`.
    ///
    /// # Safety
    /// The ISA is present.
    unsafe fn end(acc: Self::Acc, part: Self::Part) -> Self::Acc;
    /// Writes the first `n <= 16` lanes to `out`.
    ///
    /// # Safety
    /// The ISA is present; `n` `i32`s writable at `out`.
    unsafe fn store(acc: Self::Acc, out: *mut i32, n: usize);
}

/// A 512-bit AVX2 operand: two `__m256i` halves.
type Pair = [__m256i; 2];

/// # Safety
/// AVX2 present.
#[inline(always)]
unsafe fn pair_zero() -> Pair {
    // SAFETY: AVX2 present (caller).
    unsafe { [_mm256_setzero_si256(); 2] }
}

/// # Safety
/// AVX2 present; 64 readable bytes at `p` (any alignment).
#[inline(always)]
unsafe fn pair_load(p: *const u8) -> Pair {
    // SAFETY: 64 readable bytes at `p` (caller).
    unsafe {
        [
            _mm256_loadu_si256(p as *const _),
            _mm256_loadu_si256(p.add(32) as *const _),
        ]
    }
}

/// # Safety
/// AVX2 present; 64 writable bytes at `p` (any alignment).
#[inline(always)]
unsafe fn pair_store(v: Pair, p: *mut u8) {
    // SAFETY: 64 writable bytes at `p` (caller).
    unsafe {
        _mm256_storeu_si256(p as *mut _, v[0]);
        _mm256_storeu_si256(p.add(32) as *mut _, v[1]);
    }
}

/// AVX2: `vpmaddubsw` (pairs summed in saturating `i16`) over runs short enough never to
/// saturate, widened with `vpmaddwd`; a block is two `__m256i` halves of 8 channels.
struct Avx2Dot;

impl Dot for Avx2Dot {
    type W = Pair;
    type X = __m256i;
    type Acc = Pair;
    type Part = Pair;
    fn run_len(wbits: u8) -> usize {
        // One `vpmaddubsw` lane is at most `2 * 255 * (2^wb - 1)` in magnitude; this many of
        // them still fit an i16: 64 (W1), 21 (W2), 4 (W4).
        (i16::MAX as usize / (2 * 255 * ((1usize << wbits) - 1))).max(1)
    }
    #[inline(always)]
    unsafe fn zero() -> Self::Acc {
        // SAFETY: AVX2 present (caller).
        unsafe { pair_zero() }
    }
    #[inline(always)]
    unsafe fn load_w(w: *const u8) -> Self::W {
        // SAFETY: 64 readable bytes at `w` (caller).
        unsafe { pair_load(w) }
    }
    #[inline(always)]
    unsafe fn splat(x: i32) -> Self::X {
        // SAFETY: AVX2 present (caller).
        unsafe { _mm256_set1_epi32(x) }
    }
    #[inline(always)]
    unsafe fn begin(_acc: Self::Acc) -> Self::Part {
        // SAFETY: AVX2 present (caller).
        unsafe { pair_zero() }
    }
    #[inline(always)]
    unsafe fn dot(part: Self::Part, x: Self::X, w: Self::W) -> Self::Part {
        // SAFETY: AVX2 present (caller).
        unsafe {
            [
                _mm256_add_epi16(part[0], _mm256_maddubs_epi16(x, w[0])),
                _mm256_add_epi16(part[1], _mm256_maddubs_epi16(x, w[1])),
            ]
        }
    }
    #[inline(always)]
    unsafe fn end(acc: Self::Acc, part: Self::Part) -> Self::Acc {
        // SAFETY: AVX2 present (caller).
        unsafe {
            let ones = _mm256_set1_epi16(1);
            [
                _mm256_add_epi32(acc[0], _mm256_madd_epi16(part[0], ones)),
                _mm256_add_epi32(acc[1], _mm256_madd_epi16(part[1], ones)),
            ]
        }
    }
    #[inline(always)]
    unsafe fn store(acc: Self::Acc, out: *mut i32, n: usize) {
        let mut t = [0i32; 16];
        // SAFETY: `t` holds 16 i32 (64 bytes); `n <= 16` writable at `out` (caller).
        unsafe {
            pair_store(acc, t.as_mut_ptr() as *mut u8);
            core::ptr::copy_nonoverlapping(t.as_ptr(), out, n);
        }
    }
}

/// AVX-512 VNNI: `vpdpbusd` straight into `i32` lanes (runs are the whole tap).
struct VnniDot;

impl Dot for VnniDot {
    type W = __m512i;
    type X = __m512i;
    type Acc = __m512i;
    type Part = __m512i;
    fn run_len(_wbits: u8) -> usize {
        usize::MAX
    }
    #[inline(always)]
    unsafe fn zero() -> Self::Acc {
        // SAFETY: AVX-512 F present (caller).
        unsafe { _mm512_setzero_si512() }
    }
    #[inline(always)]
    unsafe fn load_w(w: *const u8) -> Self::W {
        // SAFETY: 64 readable bytes at `w` (caller).
        unsafe { _mm512_loadu_si512(w as *const _) }
    }
    #[inline(always)]
    unsafe fn splat(x: i32) -> Self::X {
        // SAFETY: AVX-512 F present (caller).
        unsafe { _mm512_set1_epi32(x) }
    }
    #[inline(always)]
    unsafe fn begin(acc: Self::Acc) -> Self::Part {
        acc
    }
    #[inline(always)]
    unsafe fn dot(part: Self::Part, x: Self::X, w: Self::W) -> Self::Part {
        // SAFETY: AVX-512 VNNI present (caller).
        unsafe { _mm512_dpbusd_epi32(part, x, w) }
    }
    #[inline(always)]
    unsafe fn end(_acc: Self::Acc, part: Self::Part) -> Self::Acc {
        part
    }
    #[inline(always)]
    unsafe fn store(acc: Self::Acc, out: *mut i32, n: usize) {
        let mask: __mmask16 = if n >= 16 { 0xffff } else { (1u16 << n) - 1 };
        // SAFETY: AVX-512 F present; `n` i32s writable at `out` (caller); masked lanes are not
        // touched.
        unsafe { _mm512_mask_storeu_epi32(out as *mut _, mask, acc) }
    }
}

/// Reads four activation bytes at `p`, only the first `n` of them (the rest zero).
///
/// # Safety
/// `p .. p + n` must be readable.
#[inline(always)]
unsafe fn load4(p: *const u8, n: usize) -> i32 {
    let mut v = 0u32;
    for i in 0..n.min(4) {
        // SAFETY: the caller guarantees `n` readable bytes at `p`.
        v |= (unsafe { p.add(i).read() } as u32) << (8 * i);
    }
    v as i32
}

/// One kernel call: the shape, the input (`X`: `u8` codes or `u64` bit planes), the prepared
/// weights and the output pixel `acc` starts at; `K` the kernel ([`Int8Call`], [`BitsCall`]).
struct Call<'a, X, K> {
    s: &'a ConvShape,
    x: &'a [X],
    w: &'a [u8],
    first: usize,
    kernel: PhantomData<K>,
}

impl<'a, X, K> Call<'a, X, K>
where
    Self: Tile,
{
    /// The call over rows from `y0`.
    fn new(s: &'a ConvShape, x: &'a [X], w: &'a [u8], y0: usize) -> Self {
        let (first, kernel) = (y0 * s.ow, PhantomData);
        Call {
            s,
            x,
            w,
            first,
            kernel,
        }
    }

    /// Runs rows `y0..y1` in tiles of up to `NB` blocks of `lanes` output channels by `P`
    /// pixels.
    ///
    /// # Safety
    /// The kernel's ISA is present and the call passed [`ConvShape::assert_call`] with the
    /// kernel's prepared length.
    #[inline(always)]
    unsafe fn run<const NB: usize, const P: usize>(
        &self,
        lanes: usize,
        y0: usize,
        y1: usize,
        acc: &mut [i32],
    ) {
        let nblk = self.s.cout_g.div_ceil(lanes);
        // SAFETY: forwarded preconditions.
        unsafe { for_tiles::<_, NB, P>(self, self.s, nblk, y0, y1, acc) }
    }
}

/// An int8 kernel call over the dot-product primitive `D`.
type Int8Call<'a, D> = Call<'a, u8, D>;

impl<D: Dot> Int8Call<'_, D> {
    /// Adds the run of chunks `q0 .. q0 + n` of a tap to the sums `a`: per chunk `NB` weight
    /// loads from `wt`, one broadcast of 4 activation codes per pixel (only the first `rem`
    /// codes for the `PARTIAL` chunk past the full ones).
    ///
    /// # Safety
    /// `D`'s ISA is present; chunks `q0 .. q0 + n` of blocks `0 .. NB` lie inside the weights
    /// at `wt` and inside the input pixels at `xp` (4 bytes each, `rem` for `PARTIAL`).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn run_chunks<const NB: usize, const P: usize, const PARTIAL: bool>(
        &self,
        a: &mut [[D::Acc; NB]; P],
        wt: *const u8,
        xp: &[*const u8; P],
        q0: usize,
        n: usize,
        rem: usize,
    ) {
        let bb = int8_block_bytes(self.s);
        // SAFETY: the ISA is present and every load in bounds (caller).
        unsafe {
            let mut part = [[D::begin(a[0][0]); NB]; P];
            for j in 0..P {
                for b in 0..NB {
                    part[j][b] = D::begin(a[j][b]);
                }
            }
            for q in q0..q0 + n {
                let mut wv = [D::load_w(wt.add(q * 64)); NB];
                for b in 1..NB {
                    wv[b] = D::load_w(wt.add(b * bb + q * 64));
                }
                for j in 0..P {
                    let xv = D::splat(if PARTIAL {
                        load4(xp[j].add(4 * q), rem)
                    } else {
                        (xp[j].add(4 * q) as *const i32).read_unaligned()
                    });
                    for b in 0..NB {
                        part[j][b] = D::dot(part[j][b], xv, wv[b]);
                    }
                }
            }
            for j in 0..P {
                for b in 0..NB {
                    a[j][b] = D::end(a[j][b], part[j][b]);
                }
            }
        }
    }
}

impl<D: Dot> Tile for Int8Call<'_, D> {
    #[inline(always)]
    unsafe fn tile<const NB: usize, const P: usize>(
        &self,
        acc: &mut [i32],
        g: usize,
        b0: usize,
        p0: usize,
    ) {
        let s = self.s;
        let (cin, c4n, bb) = (s.cin_g, int8_chunks(s), int8_block_bytes(s));
        let (full, rem) = (cin / 4, cin % 4);
        let run = D::run_len(s.wbits);
        let mut base = [0usize; P];
        for j in 0..P {
            base[j] = window_origin(s, p0 + j) * s.c + g * cin;
        }
        let x = self.x.as_ptr();
        // SAFETY: block `b0` of group `g` lies inside the prepared weights (caller).
        let w = unsafe { self.w.as_ptr().add((g * s.cout_g.div_ceil(16) + b0) * bb) };
        // SAFETY: the ISA is present (caller).
        let mut a = [[unsafe { D::zero() }; NB]; P];
        for ky in 0..s.kh {
            for kx in 0..s.kw {
                let aoff = (ky * s.wp + kx) * s.c;
                // SAFETY: tap offsets stay inside the block (`kh * kw * c4n * 64` bytes).
                let wt = unsafe { w.add((ky * s.kw + kx) * c4n * 64) };
                let mut xp = [x; P];
                for j in 0..P {
                    // SAFETY: the tap's pixel lies inside the padded input.
                    xp[j] = unsafe { x.add(base[j] + aoff) };
                }
                // Runs of full chunks, then the partial chunk `rem` as a run of one.
                let mut q = 0;
                while q < full {
                    let n = (full - q).min(run);
                    // SAFETY: chunks `q .. q + n < full` are inside the block and the pixels.
                    unsafe { self.run_chunks::<NB, P, false>(&mut a, wt, &xp, q, n, rem) };
                    q += n;
                }
                if rem != 0 {
                    // SAFETY: chunk `full < c4n` is inside the block, its first `rem` codes
                    // inside the pixels.
                    unsafe { self.run_chunks::<NB, P, true>(&mut a, wt, &xp, full, 1, rem) };
                }
            }
        }
        for j in 0..P {
            let row = (p0 + j - self.first) * s.cout + g * s.cout_g;
            for b in 0..NB {
                let o0 = (b0 + b) * 16;
                let n = (s.cout_g - o0).min(16);
                // SAFETY: `row + o0 + n <= acc.len()` (the call's accumulator length).
                unsafe { D::store(a[j][b], acc.as_mut_ptr().add(row + o0), n) };
            }
        }
    }
}

/// An int8 kernel's driver for one ISA.
type Int8Impl = unsafe fn(&ConvShape, &[u8], &[u8], usize, usize, &mut [i32]);

/// Checks an int8 call, runs the ISA's driver `imp`, then the sign fix for 1-bit inputs.
///
/// # Safety
/// The instructions `imp` needs are present.
unsafe fn int8_call(
    s: &ConvShape,
    x: &[u8],
    w: &[u8],
    y0: usize,
    y1: usize,
    acc: &mut [i32],
    imp: Int8Impl,
) {
    s.assert_call(
        x.len(),
        s.byte_input_len(),
        w.len(),
        int8_prepared_len(s),
        y0,
        y1,
        acc.len(),
    );
    // SAFETY: the ISA is present (caller) and the call matches the contract (just checked).
    unsafe { imp(s, x, w, y0, y1, acc) };
    if s.abits == 1 {
        sign_fix(s, &w[int8_weight_bytes(s)..], acc);
    }
}

/// [`KernelKind::Int8DotAvx2`].
fn int8_avx2(s: &ConvShape, x: &[u8], w: &[u8], y0: usize, y1: usize, acc: &mut [i32]) {
    // SAFETY: `by_kind` hands this kernel out only where AVX2 is present.
    unsafe { int8_call(s, x, w, y0, y1, acc, int8_avx2_impl) }
}

/// [`KernelKind::Int8DotVnni`].
fn int8_vnni(s: &ConvShape, x: &[u8], w: &[u8], y0: usize, y1: usize, acc: &mut [i32]) {
    // SAFETY: `by_kind` hands this kernel out only where AVX-512 F/BW/VNNI is present.
    unsafe { int8_call(s, x, w, y0, y1, acc, int8_vnni_impl) }
}

/// # Safety
/// AVX2 present; the call passed [`ConvShape::assert_call`].
#[target_feature(enable = "avx2")]
unsafe fn int8_avx2_impl(s: &ConvShape, x: &[u8], w: &[u8], y0: usize, y1: usize, acc: &mut [i32]) {
    // SAFETY: forwarded preconditions.
    unsafe { Int8Call::<Avx2Dot>::new(s, x, w, y0).run::<1, 4>(16, y0, y1, acc) }
}

/// # Safety
/// AVX-512 F/BW/VNNI present; the call passed [`ConvShape::assert_call`].
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn int8_vnni_impl(s: &ConvShape, x: &[u8], w: &[u8], y0: usize, y1: usize, acc: &mut [i32]) {
    // SAFETY: forwarded preconditions.
    unsafe { Int8Call::<VnniDot>::new(s, x, w, y0).run::<4, 6>(16, y0, y1, acc) }
}

// ---------------------------------------------------------------------------------------------
// bit planes: the popcount primitive and the XNOR / bit-serial driver

/// A popcount primitive: one activation word (broadcast) XOR or AND the 8 weight words of a
/// block, counted per lane. Counts of a run of words may be kept in narrow lanes
/// ([`Popcount::Cnt`]) and widened into `u64` lanes ([`Popcount::Sum`]) every [`Popcount::RUN`]
/// words.
trait Popcount {
    /// A block's 8 weight words.
    type W: Copy;
    /// A broadcast activation word.
    type X: Copy;
    /// Counts of a run.
    type Cnt: Copy;
    /// 8 `u64` lanes.
    type Sum: Copy;
    /// Words a run may hold (`usize::MAX`: no limit, the counts are already wide).
    const RUN: usize;
    /// # Safety
    /// The ISA is present (so for every method of this trait).
    unsafe fn zero() -> Self::Sum;
    /// # Safety
    /// 8 readable `u64`s at `w` (any alignment).
    unsafe fn load_w(w: *const u64) -> Self::W;
    /// # Safety
    /// The ISA is present.
    unsafe fn splat(x: u64) -> Self::X;
    /// Starts a run on top of `sum`.
    ///
    /// # Safety
    /// The ISA is present.
    unsafe fn begin(sum: Self::Sum) -> Self::Cnt;
    /// `cnt += popcount(x ^ w)` (`XNOR`) or `popcount(x & w)` per lane.
    ///
    /// # Safety
    /// The ISA is present.
    unsafe fn count<const XNOR: bool>(cnt: Self::Cnt, x: Self::X, w: Self::W) -> Self::Cnt;
    /// Ends a run started on `sum`.
    ///
    /// # Safety
    /// The ISA is present.
    unsafe fn end(sum: Self::Sum, cnt: Self::Cnt) -> Self::Sum;
    /// `tot + (sum << sh)` per lane.
    ///
    /// # Safety
    /// The ISA is present.
    unsafe fn shift_add(tot: Self::Sum, sum: Self::Sum, sh: usize) -> Self::Sum;
    /// The 8 lanes.
    ///
    /// # Safety
    /// The ISA is present.
    unsafe fn lanes(sum: Self::Sum) -> [i64; 8];
}

/// AVX2: byte-wise `vpshufb` nibble-table counts summed in `u8` lanes for up to 31 words, then
/// widened with `vpsadbw`; a block is two `u64x4` halves.
struct Avx2Popcount;

impl Avx2Popcount {
    /// Byte-wise popcount of `v`, each byte `0..=8`.
    ///
    /// # Safety
    /// AVX2 present.
    #[inline(always)]
    unsafe fn popcnt8(v: __m256i) -> __m256i {
        // SAFETY: AVX2 present (caller).
        unsafe {
            let lut = _mm256_setr_epi8(
                0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3,
                2, 3, 3, 4,
            );
            let low = _mm256_set1_epi8(0x0f);
            let lo = _mm256_and_si256(v, low);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), low);
            _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi))
        }
    }
}

impl Popcount for Avx2Popcount {
    type W = Pair;
    type X = __m256i;
    type Cnt = Pair;
    type Sum = Pair;
    // Each byte count grows by at most 8 a word: 31 words stay below 256.
    const RUN: usize = 31;
    #[inline(always)]
    unsafe fn zero() -> Self::Sum {
        // SAFETY: AVX2 present (caller).
        unsafe { pair_zero() }
    }
    #[inline(always)]
    unsafe fn load_w(w: *const u64) -> Self::W {
        // SAFETY: 8 readable u64s at `w` (caller).
        unsafe { pair_load(w as *const u8) }
    }
    #[inline(always)]
    unsafe fn splat(x: u64) -> Self::X {
        // SAFETY: AVX2 present (caller).
        unsafe { _mm256_set1_epi64x(x as i64) }
    }
    #[inline(always)]
    unsafe fn begin(_sum: Self::Sum) -> Self::Cnt {
        // SAFETY: AVX2 present (caller).
        unsafe { pair_zero() }
    }
    #[inline(always)]
    unsafe fn count<const XNOR: bool>(cnt: Self::Cnt, x: Self::X, w: Self::W) -> Self::Cnt {
        let mut out = cnt;
        for h in 0..2 {
            // SAFETY: AVX2 present (caller).
            unsafe {
                let m = if XNOR {
                    _mm256_xor_si256(x, w[h])
                } else {
                    _mm256_and_si256(x, w[h])
                };
                out[h] = _mm256_add_epi8(cnt[h], Self::popcnt8(m));
            }
        }
        out
    }
    #[inline(always)]
    unsafe fn end(sum: Self::Sum, cnt: Self::Cnt) -> Self::Sum {
        // SAFETY: AVX2 present (caller).
        unsafe {
            let zero = _mm256_setzero_si256();
            [
                _mm256_add_epi64(sum[0], _mm256_sad_epu8(cnt[0], zero)),
                _mm256_add_epi64(sum[1], _mm256_sad_epu8(cnt[1], zero)),
            ]
        }
    }
    #[inline(always)]
    unsafe fn shift_add(tot: Self::Sum, sum: Self::Sum, sh: usize) -> Self::Sum {
        // SAFETY: AVX2 present (caller).
        unsafe {
            let sh = _mm_cvtsi64_si128(sh as i64);
            [
                _mm256_add_epi64(tot[0], _mm256_sll_epi64(sum[0], sh)),
                _mm256_add_epi64(tot[1], _mm256_sll_epi64(sum[1], sh)),
            ]
        }
    }
    #[inline(always)]
    unsafe fn lanes(sum: Self::Sum) -> [i64; 8] {
        let mut v = [0i64; 8];
        // SAFETY: `v` holds 8 i64 (64 bytes).
        unsafe { pair_store(sum, v.as_mut_ptr() as *mut u8) };
        v
    }
}

/// AVX-512 VPOPCNTDQ: `vpopcntq` straight into `u64` lanes (one run per plane pair).
struct Avx512Popcount;

impl Popcount for Avx512Popcount {
    type W = __m512i;
    type X = __m512i;
    type Cnt = __m512i;
    type Sum = __m512i;
    const RUN: usize = usize::MAX;
    #[inline(always)]
    unsafe fn zero() -> Self::Sum {
        // SAFETY: AVX-512 F present (caller).
        unsafe { _mm512_setzero_si512() }
    }
    #[inline(always)]
    unsafe fn load_w(w: *const u64) -> Self::W {
        // SAFETY: 8 readable u64s at `w` (caller).
        unsafe { _mm512_loadu_si512(w as *const _) }
    }
    #[inline(always)]
    unsafe fn splat(x: u64) -> Self::X {
        // SAFETY: AVX-512 F present (caller).
        unsafe { _mm512_set1_epi64(x as i64) }
    }
    #[inline(always)]
    unsafe fn begin(sum: Self::Sum) -> Self::Cnt {
        sum
    }
    #[inline(always)]
    unsafe fn count<const XNOR: bool>(cnt: Self::Cnt, x: Self::X, w: Self::W) -> Self::Cnt {
        // SAFETY: AVX-512 F/VPOPCNTDQ present (caller).
        unsafe {
            let m = if XNOR {
                _mm512_xor_si512(x, w)
            } else {
                _mm512_and_si512(x, w)
            };
            _mm512_add_epi64(cnt, _mm512_popcnt_epi64(m))
        }
    }
    #[inline(always)]
    unsafe fn end(_sum: Self::Sum, cnt: Self::Cnt) -> Self::Sum {
        cnt
    }
    #[inline(always)]
    unsafe fn shift_add(tot: Self::Sum, sum: Self::Sum, sh: usize) -> Self::Sum {
        // SAFETY: AVX-512 F present (caller).
        unsafe {
            let sh = _mm_cvtsi64_si128(sh as i64);
            _mm512_add_epi64(tot, _mm512_sll_epi64(sum, sh))
        }
    }
    #[inline(always)]
    unsafe fn lanes(sum: Self::Sum) -> [i64; 8] {
        let mut v = [0i64; 8];
        // SAFETY: `v` holds 8 i64.
        unsafe { _mm512_storeu_si512(v.as_mut_ptr() as *mut _, sum) };
        v
    }
}

/// The XNOR (`XNOR`) or bit-serial kernel over the popcount primitive `I`.
struct Bits<I, const XNOR: bool>(PhantomData<I>);

/// An XNOR or bit-serial kernel call.
type BitsCall<'a, I, const XNOR: bool> = Call<'a, u64, Bits<I, XNOR>>;

impl<I: Popcount, const XNOR: bool> BitsCall<'_, I, XNOR> {
    /// `sum q` over the window at `base` (the valid channels of group planes).
    fn act_sum(&self, base: usize) -> i64 {
        let s = self.s;
        let (nw, px) = (s.cw, portable::bit_pixel_words(s));
        let mut q = 0i64;
        for ky in 0..s.kh {
            for kx in 0..s.kw {
                let at = base + (ky * s.wp + kx) * px;
                for (i, v) in self.x[at..at + s.abits as usize * nw].iter().enumerate() {
                    q += i64::from(v.count_ones()) << (i / nw);
                }
            }
        }
        q
    }
}

impl<I: Popcount, const XNOR: bool> Tile for BitsCall<'_, I, XNOR> {
    #[inline(always)]
    unsafe fn tile<const NB: usize, const P: usize>(
        &self,
        acc: &mut [i32],
        g: usize,
        b0: usize,
        p0: usize,
    ) {
        let s = self.s;
        let (nw, wb, ab) = (s.cw, s.wbits as usize, s.abits as usize);
        let px = portable::bit_pixel_words(s);
        let bw = lanes8::block_words(s);
        let mut base = [0usize; P];
        for j in 0..P {
            base[j] = window_origin(s, p0 + j) * px + g * ab * nw;
        }
        let x = self.x.as_ptr();
        // SAFETY: block `b0` of group `g` lies inside the prepared weights (caller).
        let wp = unsafe {
            (self.w.as_ptr() as *const u64).add((g * s.cout_g.div_ceil(lanes8::LANES) + b0) * bw)
        };
        // SAFETY: the ISA is present (caller).
        let mut tot = [[unsafe { I::zero() }; NB]; P];
        let pairs = if XNOR { 1 } else { wb * ab };
        for pr in 0..pairs {
            let (p, r) = (pr / ab, pr % ab);
            // SAFETY: the ISA is present (caller).
            let (mut sum, mut cnt) =
                unsafe { ([[I::zero(); NB]; P], [[I::begin(I::zero()); NB]; P]) };
            let mut pending = 0;
            for ky in 0..s.kh {
                for kx in 0..s.kw {
                    let tap = (ky * s.wp + kx) * px + r * nw;
                    let mut xp = [x; P];
                    for j in 0..P {
                        // SAFETY: plane `r` of the tap's input pixel lies inside the planes.
                        xp[j] = unsafe { x.add(base[j] + tap) };
                    }
                    // SAFETY: plane `p` of the tap inside block `b0` of the weights.
                    let wt = unsafe { wp.add(((ky * s.kw + kx) * nw * wb + p) * lanes8::LANES) };
                    for wd in 0..nw {
                        // SAFETY: word `wd` of plane `p` of the tap in blocks `b0 .. b0 + NB`
                        // lies inside the weights; word `wd` of the pixels' planes inside the
                        // planes.
                        unsafe {
                            let at = wd * wb * lanes8::LANES;
                            let mut wv = [I::load_w(wt.add(at)); NB];
                            for b in 1..NB {
                                wv[b] = I::load_w(wt.add(b * bw + at));
                            }
                            for j in 0..P {
                                let xv = I::splat(xp[j].add(wd).read());
                                for b in 0..NB {
                                    cnt[j][b] = I::count::<XNOR>(cnt[j][b], xv, wv[b]);
                                }
                            }
                        }
                        pending += 1;
                        if I::RUN != usize::MAX && pending == I::RUN {
                            for j in 0..P {
                                for b in 0..NB {
                                    // SAFETY: the ISA is present (caller).
                                    unsafe {
                                        sum[j][b] = I::end(sum[j][b], cnt[j][b]);
                                        cnt[j][b] = I::begin(sum[j][b]);
                                    }
                                }
                            }
                            pending = 0;
                        }
                    }
                }
            }
            for j in 0..P {
                for b in 0..NB {
                    // SAFETY: the ISA is present (caller).
                    unsafe {
                        sum[j][b] = I::end(sum[j][b], cnt[j][b]);
                        tot[j][b] = I::shift_add(tot[j][b], sum[j][b], p + r);
                    }
                }
            }
        }
        // XNOR: `taps - 2t`; bit-serial: `2t - (2^wb - 1) * sum q`.
        let taps = (s.kh * s.kw * s.cin_g) as i64;
        let wmax = (1i64 << wb) - 1;
        for j in 0..P {
            let asum = if XNOR { 0 } else { self.act_sum(base[j]) };
            let row = (p0 + j - self.first) * s.cout + g * s.cout_g;
            for b in 0..NB {
                let o0 = (b0 + b) * lanes8::LANES;
                let n = (s.cout_g - o0).min(lanes8::LANES);
                // SAFETY: the ISA is present (caller).
                let t = unsafe { I::lanes(tot[j][b]) };
                for (o, &v) in t[..n].iter().enumerate() {
                    acc[row + o0 + o] = if XNOR {
                        taps - 2 * v
                    } else {
                        2 * v - wmax * asum
                    } as i32;
                }
            }
        }
    }
}

/// A bit kernel's driver for one ISA (XNOR or bit-serial).
type BitsImpl = unsafe fn(&ConvShape, &[u64], &[u8], usize, usize, &mut [i32]);

/// Checks a bit-plane call, runs XNOR (W1A1) or bit-serial, then the sign fix for 1-bit
/// inputs of wider weights.
///
/// # Safety
/// The instructions the drivers need are present.
unsafe fn bits_call(
    s: &ConvShape,
    x: &[u64],
    w: &[u8],
    y0: usize,
    y1: usize,
    acc: &mut [i32],
    (xnor, bitserial): (BitsImpl, BitsImpl),
) {
    s.assert_call(
        x.len(),
        s.bit_input_len(),
        w.len(),
        lanes8::prepared_len(s),
        y0,
        y1,
        acc.len(),
    );
    let imp = if s.wbits == 1 && s.abits == 1 {
        xnor
    } else {
        bitserial
    };
    // SAFETY: the ISA is present (caller) and the call matches the contract (just checked).
    unsafe { imp(s, x, w, y0, y1, acc) };
    if s.abits == 1 && s.wbits != 1 {
        sign_fix(s, &w[lanes8::weight_bytes(s)..], acc);
    }
}

/// [`KernelKind::XnorAvx2`] and [`KernelKind::BitSerialAvx2`].
fn bits_avx2(s: &ConvShape, x: &[u64], w: &[u8], y0: usize, y1: usize, acc: &mut [i32]) {
    let imp = (
        bits_avx2_impl::<true> as BitsImpl,
        bits_avx2_impl::<false> as BitsImpl,
    );
    // SAFETY: `by_kind` hands this kernel out only where AVX2 is present.
    unsafe { bits_call(s, x, w, y0, y1, acc, imp) }
}

/// [`KernelKind::XnorAvx512`] and [`KernelKind::BitSerialAvx512`].
fn bits_avx512(s: &ConvShape, x: &[u64], w: &[u8], y0: usize, y1: usize, acc: &mut [i32]) {
    let imp = (
        bits_avx512_impl::<true> as BitsImpl,
        bits_avx512_impl::<false> as BitsImpl,
    );
    // SAFETY: `by_kind` hands this kernel out only where AVX-512 F/BW/VPOPCNTDQ is present.
    unsafe { bits_call(s, x, w, y0, y1, acc, imp) }
}

/// # Safety
/// AVX2 present; the call passed [`ConvShape::assert_call`].
#[target_feature(enable = "avx2")]
unsafe fn bits_avx2_impl<const XNOR: bool>(
    s: &ConvShape,
    x: &[u64],
    w: &[u8],
    y0: usize,
    y1: usize,
    acc: &mut [i32],
) {
    // SAFETY: forwarded preconditions.
    unsafe {
        BitsCall::<Avx2Popcount, XNOR>::new(s, x, w, y0).run::<1, 4>(lanes8::LANES, y0, y1, acc)
    }
}

/// # Safety
/// AVX-512 F/BW/VPOPCNTDQ present; the call passed [`ConvShape::assert_call`].
#[target_feature(enable = "avx512f,avx512bw,avx512vpopcntdq")]
unsafe fn bits_avx512_impl<const XNOR: bool>(
    s: &ConvShape,
    x: &[u64],
    w: &[u8],
    y0: usize,
    y1: usize,
    acc: &mut [i32],
) {
    // SAFETY: forwarded preconditions.
    unsafe {
        BitsCall::<Avx512Popcount, XNOR>::new(s, x, w, y0).run::<4, 6>(lanes8::LANES, y0, y1, acc)
    }
}

// ---------------------------------------------------------------------------------------------
// row operations of the drivers, compiled with AVX2 (handed out by `row_ops` only)

/// The driver's bit packer with AVX2 (`vpmovmskb`: 32 channels per instruction and plane):
/// the same result as `portable::pack_bits` (unpadded HWC input, `pad` codes around it, planes
/// as in CONTRACT.md).
fn pack_bits_avx2(s: &ConvShape, x: &[u8], pad: u8, out: &mut [u64]) {
    let (h, w, c, cin, cw, ab) = (s.h(), s.w(), s.c, s.cin_g, s.cw, s.abits as usize);
    let px = portable::bit_pixel_words(s);
    // The words of a pad pixel: plane `p` is all ones over the valid channels when bit `p` of
    // `pad` is set.
    let valid = |wd: usize| match cin - wd * 64 {
        n if n >= 64 => u64::MAX,
        n => (1u64 << n) - 1,
    };
    let mut chunk = [0u8; 64];
    let mut planes = [0u64; 8];
    for y in 0..s.hp {
        for xx in 0..s.wp {
            let dst = &mut out[(y * s.wp + xx) * px..(y * s.wp + xx + 1) * px];
            let inside = y >= s.ph && y < s.ph + h && xx >= s.pw && xx < s.pw + w;
            if !inside {
                for g in 0..s.groups {
                    for p in 0..ab {
                        for wd in 0..cw {
                            dst[(g * ab + p) * cw + wd] =
                                if pad >> p & 1 == 1 { valid(wd) } else { 0 };
                        }
                    }
                }
                continue;
            }
            let src = &x[((y - s.ph) * w + (xx - s.pw)) * c..][..c];
            for g in 0..s.groups {
                for wd in 0..cw {
                    let part = &src[g * cin + wd * 64..g * cin + (wd * 64 + 64).min(cin)];
                    chunk[..part.len()].copy_from_slice(part);
                    chunk[part.len()..].fill(0);
                    // SAFETY: `row_ops` hands this packer out only where AVX2 is present.
                    unsafe { planes_of_chunk_avx2(&chunk, &mut planes) };
                    for p in 0..ab {
                        dst[(g * ab + p) * cw + wd] = planes[p];
                    }
                }
            }
        }
    }
}

/// `w[r]` = bit `r` of each of the 64 codes.
///
/// # Safety
/// The CPU supports AVX2.
#[target_feature(enable = "avx2")]
unsafe fn planes_of_chunk_avx2(chunk: &[u8; 64], w: &mut [u64; 8]) {
    // SAFETY: `chunk` holds 64 bytes: two 32-byte loads.
    let (lo, hi) = unsafe {
        (
            _mm256_loadu_si256(chunk.as_ptr() as *const _),
            _mm256_loadu_si256(chunk.as_ptr().add(32) as *const _),
        )
    };
    macro_rules! plane {
        ($r:literal) => {{
            let l = _mm256_movemask_epi8(_mm256_slli_epi16::<{ 7 - $r }>(lo)) as u32 as u64;
            let h = _mm256_movemask_epi8(_mm256_slli_epi16::<{ 7 - $r }>(hi)) as u32 as u64;
            w[$r] = l | h << 32;
        }};
    }
    plane!(0);
    plane!(1);
    plane!(2);
    plane!(3);
    plane!(4);
    plane!(5);
    plane!(6);
    plane!(7);
}

/// The driver's requantization (`quant::requant`, same result) compiled with AVX2, so that
/// LLVM vectorises its i64 arithmetic (`vpmuldq`, `vpcmpgtq`) 4 lanes wide.
fn requant_avx2(
    raw: &RawQuant,
    aff: Option<&ChannelAffine<'_>>,
    outq: &QParams,
    cout: usize,
    acc: &[i32],
    dst: &mut [u8],
) {
    #[target_feature(enable = "avx2")]
    fn body(
        raw: &RawQuant,
        aff: Option<&ChannelAffine<'_>>,
        outq: &QParams,
        cout: usize,
        acc: &[i32],
        dst: &mut [u8],
    ) {
        quant::requant(raw, aff, outq, cout, acc, dst);
    }
    // SAFETY: `row_ops` hands this function out only where AVX2 is present.
    unsafe { body(raw, aff, outq, cout, acc, dst) }
}

/// The residual add (`quant::add_rows`, same result) compiled with AVX2.
#[allow(clippy::too_many_arguments)]
fn add_rows_avx2(
    a: &[u8],
    b: &[u8],
    qa: &QParams,
    qb: &QParams,
    p: &AddParams<'_>,
    qo: &QParams,
    c: usize,
    out: &mut [u8],
) {
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2")]
    fn body(
        a: &[u8],
        b: &[u8],
        qa: &QParams,
        qb: &QParams,
        p: &AddParams<'_>,
        qo: &QParams,
        c: usize,
        out: &mut [u8],
    ) {
        quant::add_rows(a, b, qa, qb, p, qo, c, out);
    }
    // SAFETY: `row_ops` hands this function out only where AVX2 is present.
    unsafe { body(a, b, qa, qb, p, qo, c, out) }
}

// ---------------------------------------------------------------------------------------------
// table lookup (1-bit weights, 2- to 8-bit activations, AVX-512 BW/VBMI): `vpermw`

/// Bytes of one block of 32 output channels in the table-lookup layout.
fn lut_block_bytes(s: &ConvShape) -> usize {
    s.kh * s.kw * s.lut_groups() * 32 * 2
}

fn lut_prepared_len(s: &ConvShape) -> usize {
    s.groups * s.cout_g.div_ceil(32) * lut_block_bytes(s)
}

/// The weights as table indices, `u16 [g][O/32][kh][kw][ceil(cin_g/5)][32]`: bit `i` of the
/// index of channel `o` at a tap and channel group `G` is set when the weight of input channel
/// `5G + i` is `+1` (zero past `cin_g` and `cout_g`).
fn lut_prepare(conv: &Conv<'_>, s: &ConvShape, out: &mut [u8]) {
    let len = lut_prepared_len(s);
    let Some(dst) = out.get_mut(..len) else {
        return;
    };
    dst.fill(0);
    let codes = CodeReader::new(conv);
    let (gn, nblk, bb) = (s.lut_groups(), s.cout_g.div_ceil(32), lut_block_bytes(s));
    for o in 0..s.cout {
        let (g, oc) = (o / s.cout_g, o % s.cout_g);
        let blk = (g * nblk + oc / 32) * bb;
        for ky in 0..s.kh {
            for kx in 0..s.kw {
                for i in 0..s.cin_g {
                    if codes.numerator(o, ky, kx, i) > 0 {
                        let at = blk + (((ky * s.kw + kx) * gn + i / LUT_K) * 32 + oc % 32) * 2;
                        dst[at] |= 1 << (i % LUT_K);
                    }
                }
            }
        }
    }
}

/// Entries of one table, `2^LUT_K`: one `__m512i` of `u16`.
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
/// and channel group of 5 ([`ConvShape::lut_input_len`] `u16`s in all), the sums of the codes
/// over every subset of the 5 channels (unpadded HWC input `x`, pad pixels holding `pad`;
/// channels past `cin_g` count 0).
fn lut_tables(s: &ConvShape, x: &[u8], pad: u8, out: &mut [u16]) {
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    fn body(s: &ConvShape, x: &[u8], pad: u8, out: &mut [u16]) {
        let (h, w, c, cin, gn) = (s.h(), s.w(), s.c, s.cin_g, s.lut_groups());
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
                    // Chunks of `LUT_CHUNK` channel groups (60 codes) per 64-byte load.
                    let mut gi = 0;
                    let mut sum = 0u64;
                    while gi < gn {
                        let n = (gn - gi).min(LUT_CHUNK);
                        let ch = gi * LUT_K;
                        let len = (cin - ch).min(LUT_CHUNK * LUT_K);
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
                            lut_tables_of(v, n, t);
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
    unsafe { body(s, x, pad, out) }
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

/// Table steps a run of `u16` sums may hold: each adds at most `6 * (2^abits - 1)`.
fn lut_run(s: &ConvShape) -> usize {
    (u16::MAX as usize / (LUT_K * ((1usize << s.abits) - 1))).max(1)
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
        // `sum num*q = 2 * (sum of the codes under +1 weights) - sum q`, `sum q` from the last
        // entry of the tables (all channels of a group).
        let sums = &self.x[s.lut_tables_len()..];
        for p in first..end {
            let org = window_origin(s, p);
            for g in 0..s.groups {
                let mut qsum = 0u32;
                for ky in 0..s.kh {
                    for kx in 0..s.kw {
                        let at = ((org + ky * s.wp + kx) * s.groups + g) * 2;
                        qsum += u32::from(sums[at]) | u32::from(sums[at + 1]) << 16;
                    }
                }
                let row = (p - first) * s.cout + g * s.cout_g;
                for v in &mut acc[row..row + s.cout_g] {
                    *v = v.wrapping_mul(2).wrapping_sub(qsum as i32);
                }
            }
        }
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
    // SAFETY: AVX-512 F/BW present; masked lanes are not touched (caller).
    unsafe {
        for j in 0..P {
            for b in 0..NB {
                let v = part[j][b];
                let halves = [
                    _mm512_cvtepu16_epi32(_mm512_castsi512_si256(v)),
                    _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64::<1>(v)),
                ];
                for (h, w) in halves.into_iter().enumerate() {
                    let m = lane_mask(lanes[b].saturating_sub(16 * h));
                    let p = out[j][b].add(16 * h);
                    let r = if first {
                        w
                    } else {
                        _mm512_add_epi32(_mm512_maskz_loadu_epi32(m, p as *const _), w)
                    };
                    _mm512_mask_storeu_epi32(p as *mut _, m, r);
                }
            }
        }
        [[_mm512_setzero_si512(); NB]; P]
    }
}

/// [`KernelKind::Int8LutAvx512`].
fn lut_avx512(s: &ConvShape, x: &[u16], w: &[u8], y0: usize, y1: usize, acc: &mut [i32]) {
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
/// AVX-512 F/BW present; the call passed [`ConvShape::assert_call`].
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn lut_avx512_impl(
    s: &ConvShape,
    x: &[u16],
    w: &[u8],
    y0: usize,
    y1: usize,
    acc: &mut [i32],
) {
    // SAFETY: forwarded preconditions.
    unsafe { LutCall::new(s, x, w, y0).run_lut::<4, 8>(y0, y1, acc) }
}

/// The driver's requantization (`quant::requant`, same result) compiled with AVX-512.
fn requant_avx512(
    raw: &RawQuant,
    aff: Option<&ChannelAffine<'_>>,
    outq: &QParams,
    cout: usize,
    acc: &[i32],
    dst: &mut [u8],
) {
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512dq,avx512vl")]
    fn body(
        raw: &RawQuant,
        aff: Option<&ChannelAffine<'_>>,
        outq: &QParams,
        cout: usize,
        acc: &[i32],
        dst: &mut [u8],
    ) {
        quant::requant(raw, aff, outq, cout, acc, dst);
    }
    // SAFETY: `row_ops` hands this function out only where AVX-512 F/BW/DQ/VL is present.
    unsafe { body(raw, aff, outq, cout, acc, dst) }
}

/// The residual add (`quant::add_rows`, same result) compiled with AVX-512.
#[allow(clippy::too_many_arguments)]
fn add_rows_avx512(
    a: &[u8],
    b: &[u8],
    qa: &QParams,
    qb: &QParams,
    p: &AddParams<'_>,
    qo: &QParams,
    c: usize,
    out: &mut [u8],
) {
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512dq,avx512vl")]
    fn body(
        a: &[u8],
        b: &[u8],
        qa: &QParams,
        qb: &QParams,
        p: &AddParams<'_>,
        qo: &QParams,
        c: usize,
        out: &mut [u8],
    ) {
        quant::add_rows(a, b, qa, qb, p, qo, c, out);
    }
    // SAFETY: `row_ops` hands this function out only where AVX-512 F/BW/DQ/VL is present.
    unsafe { body(a, b, qa, qb, p, qo, c, out) }
}
