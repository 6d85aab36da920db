//! Portable kernels (scalar Rust that LLVM vectorizes where it can; `count_ones` becomes
//! `popcnt` where the target has it and a short bit trick on Cortex-M) and the driver-side input
//! packers that every kernel family shares.

use super::{Algo, ConvKernel, ConvShape, KernelKind, Run};

mod bits;
mod int8;

use bits::{bits_prepare, bitserial_in_place_run, bitserial_run, xnor_run};
pub(crate) use bits::{bits_prepared_len, xnor_in_place_run};
pub(crate) use int8::{int8_in_place_run, int8_prepare, int8_prepared_len, int8_run};

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
