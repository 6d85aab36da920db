//! aarch64 NEON convolution kernels (kernels/CONTRACT.md): XNOR and bit-serial popcount over
//! bit planes (`cnt` + `uadalp`), and the u8 x i8 dot product, widening (`smlal`, any NEON
//! core) or with the Armv8.2 dot-product instruction (`sdot`, where the CPU has `dotprod`).
//!
//! # Layouts
//! * Bit kinds: the 8-lane layout of [`super::lanes8`], shared with the x86 kernels (a block of
//!   8 output channels is four 128-bit registers), followed by `i32 wsum[cout]`.
//! * Int8 kinds: the portable layout `i8 w[o][ky][kx][i]` padded to 4 bytes, followed by
//!   `i32 wsum[cout]`. With one group the taps of a kernel row are contiguous in both the
//!   weights and the padded input (`kw * c` bytes), so the dot products run over whole rows.
//!
//! # Arithmetic
//! * XNOR: `acc = taps - 2 * popcount(w ^ x)` (bits past `cin_g` are 0 in both).
//! * Bit-serial: `sum k*q = sum_{p,r} 2^(p+r) popcount(w_p & x_r)`,
//!   `sum num*q = 2 sum k*q - (2^wb - 1) sum q`.
//! * `sdot` multiplies signed bytes; codes up to 255 are shifted by -128 (`q ^ 0x80`) and the
//!   shift is added back as `128 * wsum[o]`.
//! * 1-bit sign activations (`v = 2q - 1`) on the bit-serial and int8 kinds: the unsigned sum
//!   `S` becomes `2S - wsum[o]`.
//!
//! All sums wrap in `i32`, which is exact because the true value fits (the format bounds it).
//! Every kernel is checked bit for bit against `reference::conv_acc` by the shared proptest
//! (`kernels::tests::kernels_match_reference`), run under `qemu-aarch64` by `scripts/aarch64-test.sh`.

// Register tiles are indexed by pixel and lane in lock step; index loops read clearest there.
#![allow(clippy::needless_range_loop)]

use core::arch::aarch64::*;

use slb_format::Conv;

use super::lanes8::{self, block_words, LANES};
use super::{portable, Algo, ConvKernel, ConvShape, KernelKind, Run};

/// What the running CPU offers (run-time detection with `std`, target features without).
#[derive(Clone, Copy)]
struct Features {
    neon: bool,
    dotprod: bool,
}

fn features() -> Features {
    #[cfg(feature = "std")]
    {
        Features {
            neon: std::arch::is_aarch64_feature_detected!("neon"),
            dotprod: std::arch::is_aarch64_feature_detected!("dotprod"),
        }
    }
    #[cfg(not(feature = "std"))]
    {
        Features {
            neon: cfg!(target_feature = "neon"),
            dotprod: cfg!(target_feature = "neon") && cfg!(target_feature = "dotprod"),
        }
    }
}

/// The best NEON kernel for `algo` on this CPU, or `None` (the portable one is used).
pub(crate) fn select(algo: Algo, _s: &ConvShape) -> Option<ConvKernel> {
    let kinds: &[KernelKind] = match algo {
        Algo::Xnor => &[KernelKind::XnorNeon],
        Algo::BitSerial => &[KernelKind::BitSerialNeon],
        Algo::Int8Dot => &[KernelKind::Int8DotSdot, KernelKind::Int8DotNeon],
        Algo::Reference => &[],
    };
    kinds.iter().find_map(|&k| by_kind(k))
}

/// The NEON kernel of `kind` if this CPU runs it.
pub(crate) fn by_kind(kind: KernelKind) -> Option<ConvKernel> {
    let f = features();
    let (ok, prepared_len, prepare, run): (bool, fn(&ConvShape) -> usize, _, Run) = match kind {
        KernelKind::XnorNeon => (
            f.neon,
            lanes8::prepared_len,
            lanes8::prepare as fn(&Conv<'_>, &ConvShape, &mut [u8]),
            Run::Bits(xnor_run),
        ),
        KernelKind::BitSerialNeon => (
            f.neon,
            lanes8::prepared_len,
            lanes8::prepare,
            Run::Bits(bitserial_run),
        ),
        KernelKind::Int8DotNeon => (
            f.neon,
            int8_prepared_len,
            int8_prepare,
            Run::Bytes(int8_run_smlal),
        ),
        KernelKind::Int8DotSdot => (
            f.neon && f.dotprod,
            int8_prepared_len,
            int8_prepare,
            Run::Bytes(int8_run_sdot),
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

/// Reads `i32` number `i` stored little-endian at byte `at + 4 * i` (0 past the end).
fn i32_at(w: &[u8], at: usize, i: usize) -> i32 {
    match w.get(at + 4 * i..at + 4 * i + 4) {
        Some(b) => i32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        None => 0,
    }
}

// ---------------------------------------------------------------------------------------------
// int8 dot

/// Bytes of the int8 weights, before `wsum`.
fn int8_weight_bytes(s: &ConvShape) -> usize {
    portable::int8_prepared_len(s).div_ceil(4) * 4
}

fn int8_prepared_len(s: &ConvShape) -> usize {
    int8_weight_bytes(s) + 4 * s.cout
}

fn int8_prepare(conv: &Conv<'_>, s: &ConvShape, out: &mut [u8]) {
    let n = portable::int8_prepared_len(s);
    if let Some(w) = out.get_mut(..n) {
        portable::int8_prepare(conv, s, w);
    }
    super::write_wsum(
        conv,
        s,
        out.get_mut(int8_weight_bytes(s)..).unwrap_or(&mut []),
    );
}

/// A dot-product flavour: how 16 byte pairs are multiplied and summed into four `i32` lanes.
trait Dot {
    /// Added to every activation code before the product (`-128` for `sdot`).
    const SHIFT: i32;
    /// `acc += sum of 16 products of the codes at x and the weights at w`.
    ///
    /// # Safety
    /// 16 bytes are readable at `x` and at `w`; the CPU has NEON (and `dotprod` for `Sdot`).
    unsafe fn dot16(acc: int32x4_t, xv: uint8x16_t, w: *const i8) -> int32x4_t;
    /// Prepares 16 activation codes for [`Dot::dot16`].
    ///
    /// # Safety
    /// NEON present.
    unsafe fn load_x(x: *const u8) -> uint8x16_t;
}

/// Widening multiply-accumulate (`sxtl`/`uxtl` + `smlal`), any NEON core.
struct Smlal;
impl Dot for Smlal {
    const SHIFT: i32 = 0;
    #[inline(always)]
    unsafe fn dot16(acc: int32x4_t, xv: uint8x16_t, w: *const i8) -> int32x4_t {
        // SAFETY: 16 readable bytes at `w` (caller).
        unsafe {
            let wv = vld1q_s8(w);
            let xl = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(xv)));
            let xh = vreinterpretq_s16_u16(vmovl_high_u8(xv));
            let wl = vmovl_s8(vget_low_s8(wv));
            let wh = vmovl_high_s8(wv);
            let a = vmlal_s16(acc, vget_low_s16(xl), vget_low_s16(wl));
            let a = vmlal_high_s16(a, xl, wl);
            let a = vmlal_s16(a, vget_low_s16(xh), vget_low_s16(wh));
            vmlal_high_s16(a, xh, wh)
        }
    }
    #[inline(always)]
    unsafe fn load_x(x: *const u8) -> uint8x16_t {
        // SAFETY: 16 readable bytes at `x` (caller).
        unsafe { vld1q_u8(x) }
    }
}

/// The Armv8.2 dot product (`sdot`) on codes shifted to signed bytes.
struct Sdot;
impl Dot for Sdot {
    const SHIFT: i32 = -128;
    #[inline(always)]
    unsafe fn dot16(mut acc: int32x4_t, xv: uint8x16_t, w: *const i8) -> int32x4_t {
        // SAFETY: 16 readable bytes at `w`; `dotprod` present (caller). The intrinsic
        // `vdotq_s32` is not stable yet, so the instruction is written out; it only reads and
        // writes the named vector registers.
        unsafe {
            let wv = vld1q_s8(w);
            let xs = vreinterpretq_s8_u8(xv);
            core::arch::asm!(
                "sdot {acc:v}.4s, {x:v}.16b, {w:v}.16b",
                acc = inout(vreg) acc,
                x = in(vreg) xs,
                w = in(vreg) wv,
                options(pure, nomem, nostack, preserves_flags)
            );
            acc
        }
    }
    #[inline(always)]
    unsafe fn load_x(x: *const u8) -> uint8x16_t {
        // SAFETY: 16 readable bytes at `x` (caller). `q ^ 0x80` read as i8 is `q - 128`.
        unsafe { veorq_u8(vld1q_u8(x), vdupq_n_u8(0x80)) }
    }
}

fn int8_run_smlal(s: &ConvShape, x: &[u8], w: &[u8], y0: usize, y1: usize, acc: &mut [i32]) {
    int8_check(s, x, w, y0, y1, acc);
    // SAFETY: NEON present (`by_kind` hands this kernel out only then) and the call checked.
    unsafe { int8_neon::<Smlal>(s, x, w, y0, y1, acc) }
}

fn int8_run_sdot(s: &ConvShape, x: &[u8], w: &[u8], y0: usize, y1: usize, acc: &mut [i32]) {
    int8_check(s, x, w, y0, y1, acc);
    // SAFETY: NEON and dotprod present (`by_kind` hands this kernel out only then) and the
    // call checked.
    unsafe { int8_dotprod(s, x, w, y0, y1, acc) }
}

/// The `sdot` kernel, compiled with the `dotprod` feature.
///
/// # Safety
/// As [`int8_neon`], and the CPU has `dotprod`.
#[target_feature(enable = "neon,dotprod")]
unsafe fn int8_dotprod(s: &ConvShape, x: &[u8], w: &[u8], y0: usize, y1: usize, acc: &mut [i32]) {
    // SAFETY: forwarded preconditions.
    unsafe { int8_neon::<Sdot>(s, x, w, y0, y1, acc) }
}

/// The kernel preconditions ([`ConvShape::assert_call`]) of an int8 call.
fn int8_check(s: &ConvShape, x: &[u8], w: &[u8], y0: usize, y1: usize, acc: &[i32]) {
    let (xl, xn, wl, wn) = (x.len(), s.byte_input_len(), w.len(), int8_prepared_len(s));
    s.assert_call(xl, xn, wl, wn, y0, y1, acc.len());
}

/// Output channels computed together (they share every activation load).
const OB: usize = 4;

/// The int8 kernel: for each output pixel and block of [`OB`] output channels, dot products
/// over contiguous segments of the window (whole kernel rows with one group, else one tap).
///
/// # Safety
/// NEON present (and `dotprod` for [`Sdot`]); `int8_check` passed.
#[inline(always)]
unsafe fn int8_neon<D: Dot>(
    s: &ConvShape,
    x: &[u8],
    w: &[u8],
    y0: usize,
    y1: usize,
    acc: &mut [i32],
) {
    let k = s.cin_g;
    let wrow = s.kh * s.kw * k;
    let ws = int8_weight_bytes(s);
    // Segments of the window: (input offset from the window origin, weight offset, length).
    let (seg_len, nseg) = if s.groups == 1 {
        (s.kw * s.c, s.kh)
    } else {
        (k, s.kh * s.kw)
    };
    let seg = |i: usize| -> (usize, usize) {
        if s.groups == 1 {
            (i * s.wp * s.c, i * seg_len)
        } else {
            let (ky, kx) = (i / s.kw, i % s.kw);
            ((ky * s.wp + kx) * s.c, i * k)
        }
    };
    let xp = x.as_ptr();
    let wp = w.as_ptr() as *const i8;
    for oy in y0..y1 {
        for ox in 0..s.ow {
            let origin = (oy * s.sh * s.wp + ox * s.sw) * s.c;
            let out = &mut acc[((oy - y0) * s.ow + ox) * s.cout..][..s.cout];
            for g in 0..s.groups {
                let xg = origin + g * k;
                let mut o = g * s.cout_g;
                let o1 = o + s.cout_g;
                while o < o1 {
                    let n = (o1 - o).min(OB);
                    let mut v = [vdupq_n_s32(0); OB];
                    let mut tail = [0i32; OB];
                    for i in 0..nseg {
                        let (xo, wo) = seg(i);
                        // SAFETY: the window lies inside the padded input and the weights of
                        // outputs `o .. o + n` inside `w` (`int8_check`); `c + 16 <= seg_len`
                        // keeps the 16-byte loads inside the segment.
                        unsafe {
                            let xs = xp.add(xg + xo);
                            let mut c = 0;
                            while c + 16 <= seg_len {
                                let xv = D::load_x(xs.add(c));
                                for j in 0..n {
                                    let wj = wp.add((o + j) * wrow + wo + c);
                                    v[j] = D::dot16(v[j], xv, wj);
                                }
                                c += 16;
                            }
                            while c < seg_len {
                                let q = i32::from(*xs.add(c)) + D::SHIFT;
                                for j in 0..n {
                                    let wj = *wp.add((o + j) * wrow + wo + c);
                                    tail[j] = tail[j].wrapping_add(q * i32::from(wj));
                                }
                                c += 1;
                            }
                        }
                    }
                    for j in 0..n {
                        let wsum = i32_at(w, ws, o + j);
                        let mut t = vaddvq_s32(v[j])
                            .wrapping_add(tail[j])
                            .wrapping_sub(D::SHIFT.wrapping_mul(wsum));
                        if s.abits == 1 {
                            t = t.wrapping_mul(2).wrapping_sub(wsum);
                        }
                        out[o + j] = t;
                    }
                    o += n;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// bit planes: XNOR and bit-serial

/// The kernel preconditions ([`ConvShape::assert_call`]) of a bit-plane call.
fn bits_check(s: &ConvShape, x: &[u64], w: &[u8], y0: usize, y1: usize, acc: &[i32]) {
    let (xl, xn, wl, wn) = (x.len(), s.bit_input_len(), w.len(), lanes8::prepared_len(s));
    s.assert_call(xl, xn, wl, wn, y0, y1, acc.len());
}

/// XNOR + popcount for W1A1 (any other shape runs bit-serial).
fn xnor_run(s: &ConvShape, x: &[u64], w: &[u8], y0: usize, y1: usize, acc: &mut [i32]) {
    bits_check(s, x, w, y0, y1, acc);
    // SAFETY: NEON present (`by_kind` hands this kernel out only then) and the call checked.
    unsafe {
        if s.wbits == 1 && s.abits == 1 {
            bits_neon::<true>(s, x, w, y0, y1, acc)
        } else {
            bits_neon::<false>(s, x, w, y0, y1, acc)
        }
    }
}

/// Bit-serial AND + popcount, any bit pair.
fn bitserial_run(s: &ConvShape, x: &[u64], w: &[u8], y0: usize, y1: usize, acc: &mut [i32]) {
    bits_check(s, x, w, y0, y1, acc);
    // SAFETY: NEON present (`by_kind` hands this kernel out only then) and the call checked.
    unsafe { bits_neon::<false>(s, x, w, y0, y1, acc) }
}

/// Output pixels per register tile.
const PIX: usize = 4;

/// # Safety
/// NEON present; `bits_check` passed.
#[target_feature(enable = "neon")]
unsafe fn bits_neon<const XNOR: bool>(
    s: &ConvShape,
    x: &[u64],
    w: &[u8],
    y0: usize,
    y1: usize,
    acc: &mut [i32],
) {
    let (first, end) = (y0 * s.ow, y1 * s.ow);
    let nblk = s.cout_g.div_ceil(LANES);
    let mut p0 = first;
    while p0 < end {
        let np = (end - p0).min(PIX);
        for g in 0..s.groups {
            for b in 0..nblk {
                // SAFETY: forwarded preconditions; pixels `p0 .. p0 + np` exist.
                unsafe {
                    if np == PIX {
                        bits_tile::<XNOR, PIX>(s, x, w, g, b, p0, first, acc)
                    } else {
                        for j in 0..np {
                            bits_tile::<XNOR, 1>(s, x, w, g, b, p0 + j, first, acc)
                        }
                    }
                }
            }
        }
        p0 += np;
    }
}

/// One block of [`LANES`] output channels of group `g` by `P` output pixels from `p0`.
///
/// # Safety
/// NEON present; `bits_check` passed; block `b` exists and pixels `p0 .. p0 + P` are below
/// `oh * ow`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn bits_tile<const XNOR: bool, const P: usize>(
    s: &ConvShape,
    x: &[u64],
    w: &[u8],
    g: usize,
    b: usize,
    p0: usize,
    first: usize,
    acc: &mut [i32],
) {
    let (cw, wb) = (s.cw, s.wbits as usize);
    let ab = if XNOR { 1 } else { s.abits as usize };
    let px = portable::bit_pixel_words(s);
    // Window origin (u64 index of the group's planes) of each pixel.
    let mut base = [0usize; P];
    for j in 0..P {
        let (oy, ox) = ((p0 + j) / s.ow, (p0 + j) % s.ow);
        base[j] = (oy * s.sh * s.wp + ox * s.sw) * px + g * ab * cw;
    }
    let wblk = w.as_ptr() as *const u64;
    let bw = block_words(s);
    let blk = (g * s.cout_g.div_ceil(LANES) + b) * bw;
    let xp = x.as_ptr();
    let mut tot = [[0i64; LANES]; P];
    let pairs = if XNOR { 1 } else { wb * ab };
    for pr in 0..pairs {
        let (p, r) = (pr / ab, pr % ab);
        // u16 lanes: each `uadalp` adds at most 16, so flush before 4096 steps.
        let mut c16 = [[vdupq_n_u16(0); LANES / 2]; P];
        let mut pending = 0usize;
        let mut sum = [[0u64; LANES]; P];
        for ky in 0..s.kh {
            for kx in 0..s.kw {
                let tap = (ky * s.wp + kx) * px + r * cw;
                let t = ky * s.kw + kx;
                for wd in 0..cw {
                    // SAFETY: word `wd` of plane `p` of tap `t` lies inside block `b` of the
                    // prepared weights; the activation word inside the padded planes.
                    unsafe {
                        let wq = wblk.add(blk + ((t * cw + wd) * wb + p) * LANES);
                        let wv = [
                            vld1q_u64(wq),
                            vld1q_u64(wq.add(2)),
                            vld1q_u64(wq.add(4)),
                            vld1q_u64(wq.add(6)),
                        ];
                        for j in 0..P {
                            let av = vld1q_dup_u64(xp.add(base[j] + tap + wd));
                            for q in 0..LANES / 2 {
                                let m = if XNOR {
                                    veorq_u64(av, wv[q])
                                } else {
                                    vandq_u64(av, wv[q])
                                };
                                c16[j][q] =
                                    vpadalq_u8(c16[j][q], vcntq_u8(vreinterpretq_u8_u64(m)));
                            }
                        }
                    }
                    pending += 1;
                    if pending == 4095 {
                        flush::<P>(&mut c16, &mut sum);
                        pending = 0;
                    }
                }
            }
        }
        flush::<P>(&mut c16, &mut sum);
        for j in 0..P {
            for l in 0..LANES {
                tot[j][l] += (sum[j][l] as i64) << (p + r);
            }
        }
    }
    bits_store::<XNOR, P>(s, x, w, (g, b), (p0, first), &base, &tot, acc);
}

/// Stores a tile's sums `tot` (pixels `p0..p0 + P` whose windows start at `base`, block `b` of
/// group `g`) into the accumulators: XNOR `taps - 2t`; bit-serial `2t - (2^wb - 1) * sum q`,
/// and for 1-bit codes `2u` minus the block's zero-point term.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn bits_store<const XNOR: bool, const P: usize>(
    s: &ConvShape,
    x: &[u64],
    w: &[u8],
    (g, b): (usize, usize),
    (p0, first): (usize, usize),
    base: &[usize; P],
    tot: &[[i64; LANES]; P],
    acc: &mut [i32],
) {
    let (cw, wb) = (s.cw, s.wbits as usize);
    let ab = if XNOR { 1 } else { s.abits as usize };
    let px = portable::bit_pixel_words(s);
    let o0 = g * s.cout_g + b * LANES;
    let n = (s.cout_g - b * LANES).min(LANES);
    let taps = (s.kh * s.kw * s.cin_g) as i64;
    let wmax = (1i64 << wb) - 1;
    let ws = lanes8::weight_bytes(s);
    for j in 0..P {
        let asum = if XNOR {
            0
        } else {
            // Sum of the activation codes over the window.
            let mut q = 0i64;
            for ky in 0..s.kh {
                for kx in 0..s.kw {
                    let at = base[j] + (ky * s.wp + kx) * px;
                    for (i, v) in x[at..at + ab * cw].iter().enumerate() {
                        q += i64::from(v.count_ones()) << (i / cw);
                    }
                }
            }
            q
        };
        let row = (p0 + j - first) * s.cout + o0;
        for l in 0..n {
            let t = tot[j][l];
            let v = if XNOR {
                (taps - 2 * t) as i32
            } else {
                let u = (2 * t - wmax * asum) as i32;
                if s.abits == 1 {
                    u.wrapping_mul(2).wrapping_sub(i32_at(w, ws, o0 + l))
                } else {
                    u
                }
            };
            acc[row + l] = v;
        }
    }
}

/// Widens the `u16` popcount lanes into `sum` (lane pair `q` = output channels `2q, 2q + 1`)
/// and clears them.
#[inline(always)]
fn flush<const P: usize>(c16: &mut [[uint16x8_t; LANES / 2]; P], sum: &mut [[u64; LANES]; P]) {
    for j in 0..P {
        for q in 0..LANES / 2 {
            // SAFETY: NEON is part of every aarch64 target this module is compiled for.
            unsafe {
                let v = vpaddlq_u32(vpaddlq_u16(c16[j][q]));
                sum[j][2 * q] += vgetq_lane_u64::<0>(v);
                sum[j][2 * q + 1] += vgetq_lane_u64::<1>(v);
                c16[j][q] = vdupq_n_u16(0);
            }
        }
    }
}
