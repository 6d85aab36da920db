//! The 8-lane bit-plane weight layout of the SIMD popcount kernels (x86 AVX2/AVX-512 and
//! aarch64 NEON): `u64 [g][ceil(cout_g/8)][kh][kw][cw][wb][8]`, a block of [`LANES`] output
//! channels per weight word (lane = output channel of the block; zero past `cout_g` and past
//! `cin_g`), followed by `i32 wsum[cout]` (the numerator sum of each output channel, for the
//! 1-bit sign convention). One activation word is broadcast against a whole block.

use slb_format::Conv;

use super::ConvShape;

/// Output channels per block.
pub(crate) const LANES: usize = 8;

/// `u64`s of one block of [`LANES`] output channels.
pub(crate) fn block_words(s: &ConvShape) -> usize {
    s.kh * s.kw * s.cw * s.wbits as usize * LANES
}

/// Bytes of the blocked weights, before `wsum`.
pub(crate) fn weight_bytes(s: &ConvShape) -> usize {
    s.groups * s.cout_g.div_ceil(LANES) * block_words(s) * 8
}

/// Bytes of the prepared weights: the blocks and `wsum`.
pub(crate) fn prepared_len(s: &ConvShape) -> usize {
    weight_bytes(s) + 4 * s.cout
}

/// Regroups the format's plane rows (`codes[((o*kh + ky)*kw + kx)*wb + p][row]`, little-endian
/// bit order) into blocks of [`LANES`] output channels, then appends `wsum`.
pub(crate) fn prepare(conv: &Conv<'_>, s: &ConvShape, out: &mut [u8]) {
    let len = weight_bytes(s);
    let Some(dst) = out.get_mut(..len) else {
        return;
    };
    dst.fill(0);
    let row = s.cin_g.div_ceil(8);
    let (wb, cw) = (s.wbits as usize, s.cw);
    let nblk = s.cout_g.div_ceil(LANES);
    let bw = block_words(s);
    for o in 0..s.cout {
        let (g, oc) = (o / s.cout_g, o % s.cout_g);
        let blk = (g * nblk + oc / LANES) * bw;
        for t in 0..s.kh * s.kw {
            for p in 0..wb {
                let src_at = ((o * s.kh * s.kw + t) * wb + p) * row;
                let src = conv.codes.get(src_at..src_at + row).unwrap_or(&[]);
                for (wd, chunk) in src.chunks(8).enumerate() {
                    let at = (blk + ((t * cw + wd) * wb + p) * LANES + oc % LANES) * 8;
                    dst[at..at + chunk.len()].copy_from_slice(chunk);
                }
            }
        }
    }
    super::write_wsum(conv, s, out.get_mut(len..).unwrap_or(&mut []));
}
