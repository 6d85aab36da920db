//! Portable kernels (scalar Rust that LLVM vectorizes where it can; `count_ones` becomes
//! `popcnt` where the target has it and a short bit trick on Cortex-M) and the driver-side input
//! packers that every kernel family shares.

use slb_format::Conv;

use super::{Algo, ConvKernel, ConvShape, KernelKind, Run};

/// The portable kernel of an algorithm (`None` for [`Algo::Reference`]).
pub(crate) fn kernel(algo: Algo) -> Option<ConvKernel> {
    match algo {
        Algo::Xnor => Some(ConvKernel {
            kind: KernelKind::Xnor,
            prepared_len: bits_prepared_len,
            prepare: bits_prepare,
            run: Run::Bits(xnor_run),
            reads_codes: false,
        }),
        Algo::BitSerial => Some(ConvKernel {
            kind: KernelKind::BitSerial,
            prepared_len: bits_prepared_len,
            prepare: bits_prepare,
            run: Run::Bits(bitserial_run),
            reads_codes: false,
        }),
        Algo::Int8Dot => Some(ConvKernel {
            kind: KernelKind::Int8Dot,
            prepared_len: int8_prepared_len,
            prepare: int8_prepare,
            run: Run::Bytes(int8_run),
            reads_codes: false,
        }),
        Algo::Reference => None,
    }
}

/// The portable kernel of an algorithm that reads the model's packed codes in place (from
/// flash on a microcontroller) instead of prepared weights in the arena. `None` for
/// [`Algo::Reference`].
pub(crate) fn in_place_kernel(algo: Algo) -> Option<ConvKernel> {
    let (kind, run) = match algo {
        Algo::Xnor => (KernelKind::XnorInPlace, Run::Bits(xnor_in_place_run)),
        Algo::BitSerial => (
            KernelKind::BitSerialInPlace,
            Run::Bits(bitserial_in_place_run),
        ),
        Algo::Int8Dot => (KernelKind::Int8DotInPlace, Run::Bytes(int8_in_place_run)),
        Algo::Reference => return None,
    };
    Some(ConvKernel {
        kind,
        prepared_len: |_| 0,
        prepare: |_, _, _| {},
        run,
        reads_codes: true,
    })
}

// ---------------------------------------------------------------------------------------------
// int8 dot

/// Bytes of the int8 layout `w[o][ky][kx][i]`.
pub(crate) fn int8_prepared_len(s: &ConvShape) -> usize {
    s.cout * s.kh * s.kw * s.cin_g
}

/// Unpacks the codes to odd i8 numerators `2k - (2^b - 1)`.
pub(crate) fn int8_prepare(conv: &Conv<'_>, s: &ConvShape, out: &mut [u8]) {
    let off = (1i32 << s.wbits) - 1;
    let mut codes = [0u8; 64];
    let mut idx = 0;
    for o in 0..s.cout {
        for ky in 0..s.kh {
            for kx in 0..s.kw {
                let mut i0 = 0;
                while i0 < s.cin_g {
                    let n = (s.cin_g - i0).min(64);
                    decode_range(conv, s, o, ky, kx, i0, &mut codes[..n]);
                    for &k in &codes[..n] {
                        if let Some(b) = out.get_mut(idx) {
                            *b = (2 * i32::from(k) - off) as i8 as u8;
                        }
                        idx += 1;
                    }
                    i0 += n;
                }
            }
        }
    }
}

/// Codes of channels `i0 .. i0 + out.len()` of `(o, ky, kx)`.
fn decode_range(
    conv: &Conv<'_>,
    s: &ConvShape,
    o: usize,
    ky: usize,
    kx: usize,
    i0: usize,
    out: &mut [u8],
) {
    let row = s.cin_g.div_ceil(8);
    let wb = s.wbits as usize;
    let base = ((o * s.kh + ky) * s.kw + kx) * wb * row;
    for (j, k) in out.iter_mut().enumerate() {
        let i = i0 + j;
        let mut v = 0u8;
        for p in 0..wb {
            let byte = conv.codes.get(base + p * row + i / 8).copied().unwrap_or(0);
            v |= ((byte >> (i % 8)) & 1) << p;
        }
        *k = v;
    }
}

/// The value a code stands for in the dot product: `q`, or `2q - 1` for 1-bit signs.
#[inline(always)]
fn val<const SIGN: bool>(a: u8) -> i16 {
    if SIGN {
        2 * a as i16 - 1
    } else {
        a as i16
    }
}

/// One dot product (products fit i16: 255 * 15; i16 x i16 -> i32 sums map onto SMLAD/pmaddwd).
#[inline]
fn dot1<const SIGN: bool>(x: &[u8], w: &[u8]) -> i32 {
    x.iter()
        .zip(w)
        .map(|(&a, &b)| i32::from(val::<SIGN>(a) * i16::from(b as i8)))
        .fold(0i32, |s, v| s.wrapping_add(v))
}

/// Four dot products sharing the activation loads.
#[inline]
fn dot4<const SIGN: bool>(x: &[u8], w: [&[u8]; 4]) -> [i32; 4] {
    let n = x.len();
    let (w0, w1, w2, w3) = (&w[0][..n], &w[1][..n], &w[2][..n], &w[3][..n]);
    let mut s = [0i32; 4];
    for i in 0..n {
        let v = i32::from(val::<SIGN>(x[i]));
        s[0] = s[0].wrapping_add(v * i32::from(w0[i] as i8));
        s[1] = s[1].wrapping_add(v * i32::from(w1[i] as i8));
        s[2] = s[2].wrapping_add(v * i32::from(w2[i] as i8));
        s[3] = s[3].wrapping_add(v * i32::from(w3[i] as i8));
    }
    s
}

/// Portable u8 x i8 dot product (contract: raw sums over the padded HWC input), four output
/// channels at a time.
pub(crate) fn int8_run(s: &ConvShape, x: &[u8], w: &[u8], y0: usize, y1: usize, acc: &mut [i32]) {
    if s.abits == 1 {
        int8_body::<true>(s, x, w, y0, y1, acc)
    } else {
        int8_body::<false>(s, x, w, y0, y1, acc)
    }
}

fn int8_body<const SIGN: bool>(
    s: &ConvShape,
    x: &[u8],
    w: &[u8],
    y0: usize,
    y1: usize,
    acc: &mut [i32],
) {
    let k = s.cin_g;
    let wrow = s.kh * s.kw * k;
    if w.len() < s.cout * wrow {
        return;
    }
    for oy in y0..y1 {
        for ox in 0..s.ow {
            let base = ((oy - y0) * s.ow + ox) * s.cout;
            let Some(out) = acc.get_mut(base..base + s.cout) else {
                return;
            };
            out.fill(0);
            for ky in 0..s.kh {
                let iy = oy * s.sh + ky;
                for kx in 0..s.kw {
                    let ix = ox * s.sw + kx;
                    let wt = (ky * s.kw + kx) * k;
                    for g in 0..s.groups {
                        let xo = (iy * s.wp + ix) * s.c + g * k;
                        let Some(xs) = x.get(xo..xo + k) else {
                            return;
                        };
                        let (o0, o1) = (g * s.cout_g, (g + 1) * s.cout_g);
                        let mut o = o0;
                        while o + 4 <= o1 {
                            let wr = |j: usize| &w[(o + j) * wrow + wt..(o + j) * wrow + wt + k];
                            let d = dot4::<SIGN>(xs, [wr(0), wr(1), wr(2), wr(3)]);
                            for (a, v) in out[o..o + 4].iter_mut().zip(d) {
                                *a = a.wrapping_add(v);
                            }
                            o += 4;
                        }
                        while o < o1 {
                            let wo = &w[o * wrow + wt..o * wrow + wt + k];
                            out[o] = out[o].wrapping_add(dot1::<SIGN>(xs, wo));
                            o += 1;
                        }
                    }
                }
            }
        }
    }
}

/// `SPREAD[b]`: byte `i` of the word holds bit `i` of `b` (bit planes to bytes, 8 at a time).
const SPREAD: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut b = 0;
    while b < 256 {
        let mut i = 0;
        while i < 8 {
            t[b] |= (((b >> i) & 1) as u64) << (8 * i);
            i += 1;
        }
        b += 1;
    }
    t
};

/// Channels decoded at a time by [`int8_in_place_run`] (its stack buffer).
const IN_PLACE_BLOCK: usize = 256;

/// The int8 dot reading the model's packed codes in place (`w` = `Conv::codes`), weight
/// stationary: for each block of four output channels and each tap, up to [`IN_PLACE_BLOCK`]
/// input channels are decoded once (plane bytes spread to code bytes through [`SPREAD`]) into
/// a stack buffer of i8 numerators (1 KB) and applied to every output pixel of the rows
/// `y0..y1` with [`dot4`]. On a Cortex-M4 this takes fewer instructions than the prepared int8
/// kernel (docs/MCU.md).
pub(crate) fn int8_in_place_run(
    s: &ConvShape,
    x: &[u8],
    w: &[u8],
    y0: usize,
    y1: usize,
    acc: &mut [i32],
) {
    match (s.wbits, s.abits) {
        (1, _) => sign_weight_in_place_body(s, x, w, y0, y1, acc),
        (_, 1) => int8_in_place_body::<true>(s, x, w, y0, y1, acc),
        _ => int8_in_place_body::<false>(s, x, w, y0, y1, acc),
    }
}

/// `MASK4[b]`: byte `i` of the word is `0xFF` when bit `i` of `b` is set (4 weight bits to a
/// mask over 4 activation bytes).
const MASK4: [u32; 16] = {
    let mut t = [0u32; 16];
    let mut b = 0;
    while b < 16 {
        let mut i = 0;
        while i < 4 {
            if (b >> i) & 1 == 1 {
                t[b] |= 0xFF << (8 * i);
            }
            i += 1;
        }
        b += 1;
    }
    t
};

/// `sum |a_i - m_i|` over the four bytes of `a` and `m`, added to `acc`: the Armv7E-M `USADA8`
/// instruction. The sign-weight kernel only passes masks whose bytes are `0` or `0xFF`, where
/// `|a - m| = a ^ m`; this portable twin sums the bytes of `a ^ m` (exact for such masks).
#[cfg(not(all(target_arch = "arm", feature = "arm-dsp")))]
#[inline(always)]
fn usada8(acc: u32, a: u32, m: u32) -> u32 {
    let v = a ^ m;
    let t = (v & 0x00FF_00FF) + ((v >> 8) & 0x00FF_00FF);
    acc.wrapping_add((t & 0xFFFF) + (t >> 16))
}

/// `sum |a_i - m_i|` over the four bytes of `a` and `m`, added to `acc`, in one `USADA8`
/// (Armv7E-M DSP extension: Cortex-M4/M7; the `arm-dsp` feature promises such a core).
#[cfg(all(target_arch = "arm", feature = "arm-dsp"))]
#[inline(always)]
fn usada8(acc: u32, a: u32, m: u32) -> u32 {
    let r: u32;
    // SAFETY: USADA8 reads and writes registers only (no memory, no flags); the `arm-dsp`
    // feature is enabled only for Armv7E-M targets, which have the instruction.
    unsafe {
        core::arch::asm!(
            "usada8 {r}, {a}, {m}, {acc}",
            r = lateout(reg) r,
            a = in(reg) a,
            m = in(reg) m,
            acc = in(reg) acc,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    r
}

/// Mask words of [`sign_weight_in_place_body`]'s stack buffer (2.25 KB: the nine taps of a 3x3
/// window over 64 input channels, for four output channels).
const SIGN_MASK_WORDS: usize = 576;

/// [`int8_in_place_run`] for 1-bit weights: with every weight `+1` or `-1` (bit `b`, weight
/// `2b - 1`), a dot product over activation codes `a` is `2 * S_ab - S_a` (`S_ab` sums the
/// codes whose weight bit is set, `S_a` all of them). With the weight bits as byte masks `m`
/// (`0xFF` where set, [`MASK4`]), `U = sum |a - m| = 255 * n_set + S_a - 2 * S_ab`, so the dot
/// is `255 * n_set - U`: one [`usada8`] per four activations and output channel, and `n_set`
/// (the set weight bits) a constant per output channel. For 1-bit activations (`v = 2q - 1`)
/// the dot is `4 * S_qb - 2 * S_q - 2 * n_set + n = 508 * n_set + n - 2 * U`.
///
/// Per block of four output channels and of input channels, the masks of every tap (up to
/// [`SIGN_MASK_WORDS`] words) are built once; each output pixel then runs all its taps with
/// the four sums in registers and updates its accumulators once. Same results, bit for bit, as
/// the int8 dot over the `+-1` numerators.
fn sign_weight_in_place_body(
    s: &ConvShape,
    x: &[u8],
    codes: &[u8],
    y0: usize,
    y1: usize,
    acc: &mut [i32],
) {
    let n_acc = (y1 - y0) * s.ow * s.cout;
    let Some(acc) = acc.get_mut(..n_acc) else {
        return;
    };
    // `ConvShape::of` refuses shapes without taps or input channels.
    let taps = s.kh * s.kw;
    let row = s.cin_g.div_ceil(8);
    // Words of input channels per block: even (a block starts on a code byte), at least 2, and
    // as many taps per chunk as the buffer holds.
    let cin_words = s.cin_g.div_ceil(4);
    let bw = cin_words.min(((SIGN_MASK_WORDS / (4 * taps)) & !1).clamp(2, 16));
    let mut masks = [[0u32; 4]; SIGN_MASK_WORDS / 4];
    let mut toff = [0usize; SIGN_MASK_WORDS / 8];
    // Taps per chunk: as many as the masks hold, and at most one offset each (a block of one
    // word, `cin_g <= 4`, would fit twice as many masks as offsets).
    let tc = taps.min(SIGN_MASK_WORDS / (4 * bw)).min(toff.len());
    // Whole-word loads where every block of every pixel starts 4-byte aligned (the arena's
    // tensors are, with channel counts a multiple of 4), byte loads otherwise.
    let words_ok = ((s.c | s.cin_g) & 3) == 0;
    let xw: &[u32] = match bytemuck::try_cast_slice(&x[..x.len() / 4 * 4]) {
        Ok(w) if words_ok => w,
        _ => &[],
    };
    let sign = s.abits == 1;
    for g in 0..s.groups {
        let mut o = g * s.cout_g;
        let o1 = o + s.cout_g;
        while o < o1 {
            let nb = (o1 - o).min(4);
            let mut i0 = 0;
            while i0 < s.cin_g {
                let n = (s.cin_g - i0).min(4 * bw);
                let words = n.div_ceil(4);
                let mut t0 = 0;
                while t0 < taps {
                    let t1 = (t0 + tc).min(taps);
                    // Masks of channels i0 .. i0 + n of taps t0 .. t1 (bits past the block's
                    // last channel cleared) and their set-bit counts.
                    let mut nset = [0u32; 4];
                    for t in t0..t1 {
                        let (ky, kx) = (t / s.kw, t % s.kw);
                        toff[t - t0] = (ky * s.wp + kx) * s.c;
                        let mrow = &mut masks[(t - t0) * words..(t - t0 + 1) * words];
                        for (w, mw) in mrow.iter_mut().enumerate() {
                            let valid = (n - 4 * w).min(4);
                            for j in 0..4 {
                                let bits = if j < nb {
                                    let base = (((o + j) * s.kh + ky) * s.kw + kx) * row + i0 / 8;
                                    let byte = codes.get(base + w / 2).copied().unwrap_or(0);
                                    (byte >> (4 * (w % 2))) & 0xF & ((1u8 << valid) - 1)
                                } else {
                                    0
                                };
                                nset[j] += bits.count_ones();
                                mw[j] = MASK4[usize::from(bits)];
                            }
                        }
                    }
                    let cst = nset.map(|k| {
                        if sign {
                            (508 * k) as i32 + (n * (t1 - t0)) as i32
                        } else {
                            (255 * k) as i32
                        }
                    });
                    let ms = &masks[..(t1 - t0) * words];
                    let offs = &toff[..t1 - t0];
                    let blk = SignBlock {
                        o,
                        nb,
                        cst,
                        sign,
                        ch: g * s.cin_g + i0,
                        n,
                        first: i0 == 0 && t0 == 0,
                    };
                    match (xw.is_empty(), words) {
                        (false, 4) => sign_rows::<4>(s, xw, &blk, offs, ms, y0, y1, acc),
                        (false, 8) => sign_rows::<8>(s, xw, &blk, offs, ms, y0, y1, acc),
                        (false, 16) => sign_rows::<16>(s, xw, &blk, offs, ms, y0, y1, acc),
                        _ => sign_rows_any(s, x, xw, &blk, offs, ms, y0, y1, acc),
                    }
                    t0 = t1;
                }
                i0 += n;
            }
            o += nb;
        }
    }
}

/// One block of [`sign_weight_in_place_body`]: output channels `o .. o + nb`, input channels
/// `ch .. ch + n` (of the whole pixel), the constant part of each dot product (`cst`) and
/// whether the activations are signs (`U` counts twice).
struct SignBlock {
    o: usize,
    nb: usize,
    cst: [i32; 4],
    sign: bool,
    ch: usize,
    n: usize,
    /// The block's first pass over the pixels (first channels, first taps): it writes the
    /// accumulators, the later ones add to them.
    first: bool,
}

impl SignBlock {
    /// Writes or adds the dot products of one pixel (its sums `u`) into its accumulators.
    #[inline(always)]
    fn store(&self, acc: &mut [i32], at: usize, u: [u32; 4]) {
        let Some(out) = acc.get_mut(at + self.o..at + self.o + self.nb) else {
            return;
        };
        let dot = |j: usize| {
            let uj = if self.sign {
                u[j].wrapping_mul(2)
            } else {
                u[j]
            };
            self.cst[j].wrapping_sub(uj as i32)
        };
        // Four channels (every block but a group's last, when its width is not a multiple
        // of four) without a count check per channel.
        if let Ok(out) = <&mut [i32; 4]>::try_from(&mut *out) {
            for (j, a) in out.iter_mut().enumerate() {
                *a = if self.first {
                    dot(j)
                } else {
                    a.wrapping_add(dot(j))
                };
            }
            return;
        }
        for (j, a) in out.iter_mut().enumerate() {
            *a = if self.first {
                dot(j)
            } else {
                a.wrapping_add(dot(j))
            };
        }
    }
}

/// The pixels of rows `y0..y1` for one block, `W` aligned activation words per tap (`xw`: the
/// input as words; `offs`: the taps' byte offsets from a pixel; `ms`: their masks, `W` quads
/// per tap): each tap is `W` words loaded at fixed offsets, with no bounds check per tap (one
/// check per call covers the last pixel's last tap, the largest index).
#[allow(clippy::too_many_arguments)]
fn sign_rows<const W: usize>(
    s: &ConvShape,
    xw: &[u32],
    blk: &SignBlock,
    offs: &[usize],
    ms: &[[u32; 4]],
    y0: usize,
    y1: usize,
    acc: &mut [i32],
) {
    let (Some(&last), true) = (offs.last(), ms.len() == offs.len() * W) else {
        return;
    };
    // Word index of tap 0 of pixel (oy, ox): row part + column part.
    let c4 = s.c / 4;
    let at = |oy: usize, ox: usize| (oy * s.sh * s.wp + ox * s.sw) * c4 + blk.ch / 4;
    if y1 <= y0 || s.ow == 0 || at(y1 - 1, s.ow - 1) + last / 4 + W > xw.len() {
        return;
    }
    let xp = xw.as_ptr();
    for oy in y0..y1 {
        for ox in 0..s.ow {
            let p = at(oy, ox);
            let mut u = [0u32; 4];
            for (&off, m) in offs.iter().zip(ms.chunks_exact(W)) {
                // SAFETY: `p + off / 4 + W <= xw.len()`: `p` and `off` are largest for the
                // last pixel and tap (offsets grow with the tap, positions with the pixel),
                // checked above, so the `W` words from `p + off / 4` are in `xw`.
                let xs: &[u32; W] = unsafe { &*xp.add(p + off / 4).cast::<[u32; W]>() };
                // Four words at a time, written out: LLVM keeps a 16-word tap as a loop of
                // single words otherwise.
                for (x4, m4) in xs.chunks_exact(4).zip(m.chunks_exact(4)) {
                    for (&v, mq) in x4.iter().zip(m4) {
                        let v = u32::from_le(v);
                        u[0] = usada8(u[0], v, mq[0]);
                        u[1] = usada8(u[1], v, mq[1]);
                        u[2] = usada8(u[2], v, mq[2]);
                        u[3] = usada8(u[3], v, mq[3]);
                    }
                }
            }
            blk.store(acc, ((oy - y0) * s.ow + ox) * s.cout, u);
        }
    }
}

/// [`sign_rows`] for any number of words per tap, and byte loads where the activations are
/// not word-aligned (`xw` empty; a last partial word is zero-filled).
#[allow(clippy::too_many_arguments)]
fn sign_rows_any(
    s: &ConvShape,
    x: &[u8],
    xw: &[u32],
    blk: &SignBlock,
    offs: &[usize],
    ms: &[[u32; 4]],
    y0: usize,
    y1: usize,
    acc: &mut [i32],
) {
    let n = blk.n;
    let words = n.div_ceil(4);
    for oy in y0..y1 {
        for ox in 0..s.ow {
            let px = (oy * s.sh * s.wp + ox * s.sw) * s.c + blk.ch;
            let mut u = [0u32; 4];
            for (&off, mt) in offs.iter().zip(ms.chunks_exact(words)) {
                if xw.is_empty() {
                    let Some(xs) = x.get(px + off..px + off + n) else {
                        return;
                    };
                    for (xb, m) in xs.chunks(4).zip(mt) {
                        let v = xb.iter().rev().fold(0u32, |v, &b| v << 8 | u32::from(b));
                        for (uj, &mj) in u.iter_mut().zip(m) {
                            *uj = usada8(*uj, v, mj);
                        }
                    }
                } else {
                    let at = (px + off) / 4;
                    let Some(xs) = xw.get(at..at + words) else {
                        return;
                    };
                    for (&v, m) in xs.iter().zip(mt) {
                        let v = u32::from_le(v);
                        for (uj, &mj) in u.iter_mut().zip(m) {
                            *uj = usada8(*uj, v, mj);
                        }
                    }
                }
            }
            blk.store(acc, ((oy - y0) * s.ow + ox) * s.cout, u);
        }
    }
}

fn int8_in_place_body<const SIGN: bool>(
    s: &ConvShape,
    x: &[u8],
    codes: &[u8],
    y0: usize,
    y1: usize,
    acc: &mut [i32],
) {
    let n_acc = (y1 - y0) * s.ow * s.cout;
    let Some(acc) = acc.get_mut(..n_acc) else {
        return;
    };
    acc.fill(0);
    let row = s.cin_g.div_ceil(8);
    let wb = s.wbits as usize;
    let off = (1i32 << wb) - 1;
    // Four output channels at a time share every activation load (`dot4`).
    let mut buf = [[0u8; IN_PLACE_BLOCK]; 4];
    for g in 0..s.groups {
        let mut o = g * s.cout_g;
        let o1 = o + s.cout_g;
        while o < o1 {
            let nb = (o1 - o).min(4);
            for ky in 0..s.kh {
                for kx in 0..s.kw {
                    let mut i0 = 0;
                    while i0 < s.cin_g {
                        let n = (s.cin_g - i0).min(IN_PLACE_BLOCK);
                        // Decode channels i0 .. i0 + n (i0 is a multiple of 8) to numerators.
                        for (j, b) in buf[..nb].iter_mut().enumerate() {
                            let base = (((o + j) * s.kh + ky) * s.kw + kx) * wb * row;
                            for (k, chunk) in b[..n].chunks_mut(8).enumerate() {
                                let byte = i0 / 8 + k;
                                let mut k8 = 0u64;
                                for p in 0..wb {
                                    let v = codes.get(base + p * row + byte).copied().unwrap_or(0);
                                    k8 |= SPREAD[v as usize] << p;
                                }
                                for (d, k) in chunk.iter_mut().zip(k8.to_le_bytes()) {
                                    *d = (2 * i32::from(k) - off) as i8 as u8;
                                }
                            }
                        }
                        for oy in y0..y1 {
                            let iy = oy * s.sh + ky;
                            for ox in 0..s.ow {
                                let xo = (iy * s.wp + ox * s.sw + kx) * s.c + g * s.cin_g + i0;
                                let Some(xs) = x.get(xo..xo + n) else {
                                    return;
                                };
                                let at = ((oy - y0) * s.ow + ox) * s.cout + o;
                                let out = &mut acc[at..at + nb];
                                if nb == 4 {
                                    let d = dot4::<SIGN>(
                                        xs,
                                        [&buf[0][..n], &buf[1][..n], &buf[2][..n], &buf[3][..n]],
                                    );
                                    for (a, v) in out.iter_mut().zip(d) {
                                        *a = a.wrapping_add(v);
                                    }
                                } else {
                                    for (a, b) in out.iter_mut().zip(&buf) {
                                        *a = a.wrapping_add(dot1::<SIGN>(xs, &b[..n]));
                                    }
                                }
                            }
                        }
                        i0 += n;
                    }
                }
            }
            o += nb;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// bit planes (XNOR and bit-serial)

/// Bytes of the bit-plane layout `w[((o*kh + ky)*kw + kx)*wbits + p][cw]` (u64) followed by
/// `wsum[o]` (i32, sum of the numerators over all taps), padded to 8 bytes.
pub(crate) fn bits_prepared_len(s: &ConvShape) -> usize {
    let words = s.cout * s.kh * s.kw * s.wbits as usize * s.cw;
    words * 8 + (s.cout * 4).div_ceil(8) * 8
}

/// Copies the format's plane rows into u64 words (the format's row is already little-endian
/// bit order) and appends the per-output numerator sums.
pub(crate) fn bits_prepare(conv: &Conv<'_>, s: &ConvShape, out: &mut [u8]) {
    let row = s.cin_g.div_ceil(8);
    let wb = s.wbits as usize;
    let nrows = s.cout * s.kh * s.kw * wb;
    for r in 0..nrows {
        let src = conv.codes.get(r * row..(r + 1) * row).unwrap_or(&[]);
        let dst_start = r * s.cw * 8;
        if let Some(dst) = out.get_mut(dst_start..dst_start + src.len()) {
            dst.copy_from_slice(src);
        }
    }
    let ws = nrows * s.cw * 8;
    super::write_wsum(conv, s, out.get_mut(ws..).unwrap_or(&mut []));
}

/// Reads a little-endian u64 word `i` of a byte slice (0 past the end).
#[inline]
fn word(w: &[u8], i: usize) -> u64 {
    match w.get(i * 8..i * 8 + 8) {
        Some(b) => u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        None => 0,
    }
}

/// Where a kernel reads weight plane rows: word `k` of plane row `r` (row `r` =
/// `((o*kh + ky)*kw + kx)*wbits + p`, the format's row order), and `wsum[o]` when stored.
trait Planes {
    fn word(&self, r: usize, k: usize) -> u64;
    /// `wsum[o]` if the layout stores it (`None`: the kernel sums the numerators itself).
    fn wsum(&self, s: &ConvShape, o: usize) -> Option<i32>;
}

/// Prepared `u64` words, `cw` per row (a free cast when aligned, as the arena always is).
struct Prepared<'a> {
    w: &'a [u64],
    bytes: &'a [u8],
    cw: usize,
}
impl Planes for Prepared<'_> {
    #[inline(always)]
    fn word(&self, r: usize, k: usize) -> u64 {
        self.w[r * self.cw + k]
    }
    fn wsum(&self, s: &ConvShape, o: usize) -> Option<i32> {
        Some(wsum_at(s, self.bytes, o))
    }
}

/// Prepared words read byte-wise (an unaligned arena).
struct PreparedBytes<'a> {
    w: &'a [u8],
    cw: usize,
}
impl Planes for PreparedBytes<'_> {
    #[inline(always)]
    fn word(&self, r: usize, k: usize) -> u64 {
        word(self.w, r * self.cw + k)
    }
    fn wsum(&self, s: &ConvShape, o: usize) -> Option<i32> {
        Some(wsum_at(s, self.w, o))
    }
}

/// The format's packed codes in place: rows of `ceil(cin_g / 8)` bytes, any alignment, the
/// last word of a row zero-extended.
struct Codes<'a> {
    c: &'a [u8],
    row: usize,
}
impl Planes for Codes<'_> {
    #[inline(always)]
    fn word(&self, r: usize, k: usize) -> u64 {
        let at = r * self.row + 8 * k;
        let n = (self.row - 8 * k).min(8);
        match self.c.get(at..at + n) {
            Some(b) if n == 8 => {
                u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
            }
            Some(b) => b.iter().rev().fold(0u64, |v, &x| v << 8 | u64::from(x)),
            None => 0,
        }
    }
    fn wsum(&self, _: &ConvShape, _: usize) -> Option<i32> {
        None
    }
}

/// `wsum[o]` stored after the words.
#[inline]
fn wsum_at(s: &ConvShape, w: &[u8], o: usize) -> i32 {
    let at = s.cout * s.kh * s.kw * s.wbits as usize * s.cw * 8 + 4 * o;
    match w.get(at..at + 4) {
        Some(b) => i32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        None => 0,
    }
}

/// Portable XNOR + popcount (W1A1): `acc = taps - 2 * popcount(w ^ x)`, i.e. the sum of
/// `(2k - 1) * (2q - 1)`.
pub(crate) fn xnor_run(s: &ConvShape, x: &[u64], w: &[u8], y0: usize, y1: usize, acc: &mut [i32]) {
    let n = w.len() / 8;
    match bytemuck::try_cast_slice::<u8, u64>(&w[..n * 8]) {
        Ok(wv) => xnor_body(
            s,
            x,
            Prepared {
                w: wv,
                bytes: w,
                cw: s.cw,
            },
            y0,
            y1,
            acc,
        ),
        Err(_) => xnor_body(s, x, PreparedBytes { w, cw: s.cw }, y0, y1, acc),
    }
}

/// [`xnor_run`] on the model's packed codes in place (`w` = `Conv::codes`).
pub(crate) fn xnor_in_place_run(
    s: &ConvShape,
    x: &[u64],
    w: &[u8],
    y0: usize,
    y1: usize,
    acc: &mut [i32],
) {
    if s.wbits == 1 && s.abits == 1 {
        let row = s.cin_g.div_ceil(8);
        xnor_body(s, x, Codes { c: w, row }, y0, y1, acc)
    } else {
        bitserial_in_place_run(s, x, w, y0, y1, acc)
    }
}

fn xnor_body<W: Planes>(s: &ConvShape, x: &[u64], wv: W, y0: usize, y1: usize, acc: &mut [i32]) {
    let cw = s.cw;
    let taps = s.taps() as i32;
    for oy in y0..y1 {
        for ox in 0..s.ow {
            let base = ((oy - y0) * s.ow + ox) * s.cout;
            for o in 0..s.cout {
                let g = o / s.cout_g;
                let mut pc = 0u32;
                for ky in 0..s.kh {
                    let iy = oy * s.sh + ky;
                    for kx in 0..s.kw {
                        let ix = ox * s.sw + kx;
                        let xo = ((iy * s.wp + ix) * s.groups + g) * cw;
                        let r = (o * s.kh + ky) * s.kw + kx;
                        for (k, a) in x[xo..xo + cw].iter().enumerate() {
                            pc += (a ^ wv.word(r, k)).count_ones();
                        }
                    }
                }
                if let Some(a) = acc.get_mut(base + o) {
                    *a = taps.wrapping_sub(2i32.wrapping_mul(pc as i32));
                }
            }
        }
    }
}

/// Portable bit-serial AND + popcount: `sum k*q = sum_{i,j} 2^(i+j) popcount(w_i & x_j)`,
/// then `sum num*q = 2 * sum k*q - (2^wb - 1) * sum q` (and `2 * that - wsum` for 1-bit signs,
/// whose value is `2q - 1`).
pub(crate) fn bitserial_run(
    s: &ConvShape,
    x: &[u64],
    w: &[u8],
    y0: usize,
    y1: usize,
    acc: &mut [i32],
) {
    let n = w.len() / 8;
    match bytemuck::try_cast_slice::<u8, u64>(&w[..n * 8]) {
        Ok(wv) => bitserial_pairs(
            s,
            x,
            Prepared {
                w: wv,
                bytes: w,
                cw: s.cw,
            },
            y0,
            y1,
            acc,
        ),
        Err(_) => bitserial_pairs(s, x, PreparedBytes { w, cw: s.cw }, y0, y1, acc),
    }
}

/// [`bitserial_run`] on the model's packed codes in place (`w` = `Conv::codes`).
pub(crate) fn bitserial_in_place_run(
    s: &ConvShape,
    x: &[u64],
    w: &[u8],
    y0: usize,
    y1: usize,
    acc: &mut [i32],
) {
    let row = s.cin_g.div_ceil(8);
    bitserial_pairs(s, x, Codes { c: w, row }, y0, y1, acc)
}

fn bitserial_pairs<W: Planes>(
    s: &ConvShape,
    x: &[u64],
    wv: W,
    y0: usize,
    y1: usize,
    acc: &mut [i32],
) {
    // Monomorphized per bit pair so that the plane loops unroll.
    macro_rules! go {
        ($($wb:literal, $ab:literal);*) => {
            match (s.wbits, s.abits) {
                $(($wb, $ab) => bitserial_body::<_, $wb, $ab>(s, x, wv, y0, y1, acc),)*
                _ => {}
            }
        };
    }
    go!(1, 1; 1, 2; 1, 4; 1, 8; 2, 1; 2, 2; 2, 4; 2, 8; 4, 1; 4, 2; 4, 4; 4, 8);
}

fn bitserial_body<W: Planes, const WB: usize, const AB: usize>(
    s: &ConvShape,
    x: &[u64],
    wv: W,
    y0: usize,
    y1: usize,
    acc: &mut [i32],
) {
    let cw = s.cw;
    let (wb, ab) = (WB, AB);
    let off = (1i32 << wb) - 1;
    let taps = s.taps() as i32;
    for oy in y0..y1 {
        for ox in 0..s.ow {
            let base = ((oy - y0) * s.ow + ox) * s.cout;
            let mut last_g = usize::MAX;
            let mut qsum = 0u32;
            for o in 0..s.cout {
                let g = o / s.cout_g;
                if g != last_g {
                    // Sum of the activation codes of this group's window.
                    qsum = 0;
                    for ky in 0..s.kh {
                        let iy = oy * s.sh + ky;
                        for kx in 0..s.kw {
                            let ix = ox * s.sw + kx;
                            let xo = ((iy * s.wp + ix) * s.groups + g) * ab * cw;
                            for j in 0..ab {
                                let c: u32 = x[xo + j * cw..xo + (j + 1) * cw]
                                    .iter()
                                    .map(|a| a.count_ones())
                                    .sum();
                                qsum = qsum.wrapping_add(c << j);
                            }
                        }
                    }
                    last_g = g;
                }
                // Sign activations need `wsum[o]`; a layout without it sums the codes here.
                let stored = if AB == 1 { wv.wsum(s, o) } else { Some(0) };
                let mut ksum = 0u32;
                let mut kq = 0u32;
                for ky in 0..s.kh {
                    let iy = oy * s.sh + ky;
                    for kx in 0..s.kw {
                        let ix = ox * s.sw + kx;
                        let xo = ((iy * s.wp + ix) * s.groups + g) * ab * cw;
                        let r = ((o * s.kh + ky) * s.kw + kx) * wb;
                        for i in 0..wb {
                            for j in 0..ab {
                                let xrow = &x[xo + j * cw..xo + (j + 1) * cw];
                                let mut c = 0u32;
                                for (k, a) in xrow.iter().enumerate() {
                                    let wk = wv.word(r + i, k);
                                    if stored.is_none() {
                                        ksum = ksum.wrapping_add(wk.count_ones() << i);
                                    }
                                    c += (a & wk).count_ones();
                                }
                                kq = kq.wrapping_add(c << (i + j));
                            }
                        }
                    }
                }
                let numq = (kq.wrapping_mul(2) as i32).wrapping_sub(off.wrapping_mul(qsum as i32));
                let v = if s.abits == 1 {
                    let wsum = stored.unwrap_or_else(|| {
                        (ksum.wrapping_mul(2) as i32).wrapping_sub(off.wrapping_mul(taps))
                    });
                    numq.wrapping_mul(2).wrapping_sub(wsum)
                } else {
                    numq
                };
                if let Some(a) = acc.get_mut(base + o) {
                    *a = v;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// input packers (driver side)

/// Pads an HWC u8 tensor (`s.h() x s.w() x s.c`) into `out` (`hp x wp x c`) with `pad` codes.
pub(crate) fn pad_bytes(s: &ConvShape, x: &[u8], pad: u8, out: &mut [u8]) {
    let (h, w, c) = (s.h(), s.w(), s.c);
    let row = s.wp * c;
    for (y, orow) in out.chunks_exact_mut(row).take(s.hp).enumerate() {
        if y < s.ph || y >= s.ph + h {
            orow.fill(pad);
            continue;
        }
        let iy = y - s.ph;
        orow[..s.pw * c].fill(pad);
        orow[(s.pw + w) * c..].fill(pad);
        if let Some(src) = x.get(iy * w * c..(iy + 1) * w * c) {
            orow[s.pw * c..(s.pw + w) * c].copy_from_slice(src);
        }
    }
}

/// Words per padded pixel in the bit-plane layout.
pub(crate) fn bit_pixel_words(s: &ConvShape) -> usize {
    s.groups * s.abits as usize * s.cw
}

/// Gathers bit 0 of each of the 8 bytes of `v` into one byte (byte `i` -> bit `i`): the
/// masked bits times `0x0102040810204080` land, without carries, in the top byte.
#[inline(always)]
fn gather8(v: u64) -> u64 {
    (v & 0x0101_0101_0101_0101).wrapping_mul(0x0102_0408_1020_4080) >> 56
}

/// Packs an HWC u8 tensor into padded bit planes (CONTRACT.md), pad pixels holding `pad`:
/// 8 channels at a time, one multiply per plane ([`gather8`]); equal to the one-bit-at-a-time
/// `reference::pack_bits_ref` (proptest `pack_bits_matches_reference`).
pub(crate) fn pack_bits(s: &ConvShape, x: &[u8], pad: u8, out: &mut [u64]) {
    let (h, w, c) = (s.h(), s.w(), s.c);
    let ab = usize::from(s.abits).min(8);
    let (cw, cin) = (s.cw, s.cin_g);
    let px = bit_pixel_words(s);
    for y in 0..s.hp {
        for xx in 0..s.wp {
            let at = (y * s.wp + xx) * px;
            let Some(dst) = out.get_mut(at..at + px) else {
                return;
            };
            let inside = y >= s.ph && y < s.ph + h && xx >= s.pw && xx < s.pw + w;
            let src = if inside {
                let p = ((y - s.ph) * w + (xx - s.pw)) * c;
                x.get(p..p + c)
            } else {
                None
            };
            for g in 0..s.groups {
                for wd in 0..cw {
                    let c0 = wd * 64;
                    let n = (cin - c0).min(64);
                    let mut planes = [0u64; 8];
                    let mut k = 0;
                    while k < n {
                        let m = (n - k).min(8);
                        let v = match src {
                            Some(sv) => {
                                let b = &sv[g * cin + c0 + k..g * cin + c0 + k + m];
                                if m == 8 {
                                    u64::from_le_bytes([
                                        b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
                                    ])
                                } else {
                                    b.iter().rev().fold(0u64, |v, &q| v << 8 | u64::from(q))
                                }
                            }
                            None => {
                                u64::from(pad).wrapping_mul(0x0101_0101_0101_0101)
                                    & (u64::MAX >> (64 - 8 * m))
                            }
                        };
                        for (p, plane) in planes[..ab].iter_mut().enumerate() {
                            *plane |= gather8(v >> p) << k;
                        }
                        k += 8;
                    }
                    for (p, &plane) in planes[..ab].iter().enumerate() {
                        dst[(g * ab + p) * cw + wd] = plane;
                    }
                }
            }
        }
    }
}
