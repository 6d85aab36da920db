//! Bit layout of packed weight codes.
//!
//! Codes are stored in OHWI order (output channel, kernel row, kernel column, input channel of
//! the group). For every `(o, ky, kx)` there are `bits` bit-plane rows, least significant plane
//! first; a row holds bit `p` of the code of each input channel `i` of the group at byte `i / 8`,
//! bit `i % 8` (least significant bit first: bitvec's `Lsb0` order over `u8`), and is
//! [`row_bytes`] long; bits past the channel count are zero. Total length: [`packed_len`].
//! Planes over channels are what XNOR/AND + popcount kernels consume directly.

use bitvec::prelude::*;

use crate::Conv;

/// Bytes of one bit-plane row for `in_per_group` channels.
pub const fn row_bytes(in_per_group: u32) -> usize {
    (in_per_group as usize).div_ceil(8)
}

/// Packed length in bytes of a conv's codes, or `None` on overflow.
pub fn packed_len(out: u32, kernel: [u16; 2], in_per_group: u32, bits: u8) -> Option<usize> {
    (out as usize)
        .checked_mul(kernel[0] as usize)?
        .checked_mul(kernel[1] as usize)?
        .checked_mul(bits as usize)?
        .checked_mul(row_bytes(in_per_group))
}

/// Random access to a parsed conv's codes (the reference view; kernels read rows directly).
///
/// Indices must lie inside the conv (`o < out_channels`, `ky < kernel[0]`, `kx < kernel[1]`,
/// `i < in_channels / groups`, `p < weight_bits`) and the conv must come from a parsed
/// [`crate::Model`] (so `codes` has the packed length); otherwise the accessors panic on the
/// out-of-bounds slice, like indexing.
#[derive(Clone, Copy, Debug)]
pub struct CodeReader<'a> {
    codes: &'a [u8],
    kw: usize,
    kh: usize,
    bits: usize,
    row: usize,
}

impl<'a> CodeReader<'a> {
    /// A reader over a validated conv's codes.
    pub fn new(conv: &Conv<'a>) -> Self {
        CodeReader {
            codes: conv.codes,
            kh: conv.kernel[0] as usize,
            kw: conv.kernel[1] as usize,
            bits: conv.weight_bits as usize,
            row: row_bytes(conv.in_per_group()),
        }
    }

    /// Byte offset of the first plane row of `(o, ky, kx)`.
    pub fn row_offset(&self, o: usize, ky: usize, kx: usize) -> usize {
        ((o * self.kh + ky) * self.kw + kx) * self.bits * self.row
    }

    /// Plane `p`'s row for `(o, ky, kx)`.
    pub fn plane_row(&self, o: usize, ky: usize, kx: usize, p: usize) -> &'a [u8] {
        let start = self.row_offset(o, ky, kx) + p * self.row;
        &self.codes[start..start + self.row]
    }

    /// The code `k` of weight `(o, ky, kx, i)`.
    pub fn code(&self, o: usize, ky: usize, kx: usize, i: usize) -> u8 {
        let mut k = 0u8;
        for p in 0..self.bits {
            let row = self.plane_row(o, ky, kx, p).view_bits::<Lsb0>();
            if row[i] {
                k |= 1 << p;
            }
        }
        k
    }

    /// The odd integer numerator `2k - (2^bits - 1)` of weight `(o, ky, kx, i)`.
    pub fn numerator(&self, o: usize, ky: usize, kx: usize, i: usize) -> i32 {
        2 * self.code(o, ky, kx, i) as i32 - ((1i32 << self.bits) - 1)
    }
}
