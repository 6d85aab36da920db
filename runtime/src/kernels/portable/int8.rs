//! The portable int8 dot: prepared (codes decoded to bytes) and in place (the packed codes read
//! where the model lies; the sign-weight sums of 1-bit weights on a Cortex-M4).

use slb_format::Conv;

use crate::kernels::ConvShape;

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
