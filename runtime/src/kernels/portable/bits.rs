//! The portable bit-plane kernels: XNOR and bit-serial popcounts, over prepared planes or the
//! packed codes in place.

use slb_format::Conv;

use crate::kernels::ConvShape;

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
    crate::kernels::write_wsum(conv, s, out.get_mut(ws..).unwrap_or(&mut []));
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
