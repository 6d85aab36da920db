//! x86-64 SIMD convolution kernels (kernels/CONTRACT.md): AVX2 and AVX-512 (VNNI, VPOPCNTDQ,
//! BW/VBMI/VNNI).
//!
//! Each operation has one generic tile driver; an instruction set supplies only its primitives
//! (the shape of tract-linalg's generic kernels), one file per operation:
//! * [`int8`]: the int8 dot (`Int8Call`) over `Dot`, 4 activation codes
//!   against a block of 16 output channels: `Avx2Dot` (`vpmaddubsw` + `vpmaddwd`),
//!   `VnniDot` (`vpdpbusd`);
//! * [`bits`]: XNOR and bit-serial popcount (`BitsCall`) over `Popcount`, one
//!   activation word against a block of 8 output channels: `Avx2Popcount` (`vpshufb`
//!   nibble table + `vpsadbw`), `Avx512Popcount` (`vpopcntq`);
//! * [`lut`]: the table lookup for 1- and 2-bit weights with multi-bit activations (`LutCall`) over
//!   `Lookup`, one table of code sums per padded pixel and channel group against a block of
//!   output channels: `Quads` (`vpermb` over byte sub-tables of 4 channels, summed by
//!   `vpdpbusd`, where the codes' sums fit a byte), `Words` (`vpermw` over `u16` tables),
//!   `Bytes` (`vpermb` over byte tables, 2-bit codes), `Avx2` (`vpshufb` over byte tables of 4 channels; 2-bit
//!   codes, or wider codes as two nibble planes);
//! * [`amx`]: the int8 dot with Intel AMX (`tdpbusd` on 2-D tile registers, 16 pixels x 16
//!   output channels x 64 input channels an instruction): its own walk (chunks of pixels by
//!   pairs of channel blocks), since a tile register is not a vector of `Dot`; 1-bit weights
//!   kept as sign masks and expanded into tiles as it goes;
//! * [`rows`]: the drivers' row operations (bit packing, requantization, residual add).
//!
//! This file: CPU feature detection, kernel selection, and the register-tile walk shared by
//! the drivers.
//!
//! [`for_tiles`] walks a call's output in register tiles of up to `NB` channel blocks by `P`
//! pixels (the dot and bit kernels: AVX2 1 x 4, AVX-512 4 x 6; the table lookup: 4 x 4, 2 x 4
//! or 2 x 2 by kind, its narrow tiles wider), then of `P2` pixels, the last ones one by one,
//! the last blocks in a narrower tile.
//!
//! # Layouts
//! * Int8: `i8 [g][O/16][kh][kw][ceil(cin_g/4)][16][4]` (numerators, zero past `cin_g` and
//!   `cout_g`) + `i32 wsum[cout]`; the AMX dot reads the same for 2- and 4-bit weights, and
//!   for 1-bit weights a `u64` sign mask per 64-byte row of it (`[O/16][kh][kw][cin/4]`).
//! * Bit kinds: the 8-lane layout of [`super::lanes8`], shared with the NEON kernels.
//!
//! # Arithmetic
//! * XNOR: `acc = taps - 2 * popcount(w ^ x)` (bits past `cin_g` are 0 in both).
//! * Bit-serial: `sum num*q = 2 sum_{p,r} 2^(p+r) popcount(w_p & x_r) - (2^wb - 1) sum q`.
//! * 1-bit sign activations (`v = 2q - 1`) on the bit-serial and int8 kinds: the unsigned sum
//!   `S` becomes `2S - wsum[o]` ([`sign_fix`]); XNOR kinds on other shapes run bit-serial.
//! * `vpmaddubsw` saturates at `i16`: with `|num| <= 15` and `q <= 255` a sum of four products
//!   is at most 15,300, and `Avx2Dot` widens a run of them before it could pass `i16::MAX`.
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
use core::sync::atomic::{AtomicU16, Ordering};

use slb_format::{AddParams, ChannelAffine, CodeReader, Conv, RawQuant};

use super::{
    lanes8, portable, write_wsum, Algo, ConvKernel, ConvShape, KernelKind, RowOps, Run, Tables,
    LUT_K, LUT_K8,
};
use crate::quant::{self, QParams, Steps};

mod amx;
mod bits;
mod int8;
mod lut;
mod rows;

#[cfg(all(test, target_os = "linux"))]
pub(crate) use amx::request_amx;
use amx::*;
use bits::*;
use int8::*;
use lut::*;
#[cfg(test)]
pub(super) use lut::{lut_avx2_falls_back_to_dot, lut_takes_sub_tables};
use rows::*;

// ---------------------------------------------------------------------------------------------
// CPU features, detected once

/// The instruction-set extensions of this module's kernels that the running CPU has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Features {
    /// AVX2: the AVX2 kernels (the table lookup too), packer, requantization
    /// and residual add.
    pub avx2: bool,
    /// AVX-512 F/BW/VNNI: [`KernelKind::Int8DotVnni`].
    pub avx512vnni: bool,
    /// AVX-512 F/BW/VPOPCNTDQ: [`KernelKind::XnorAvx512`], [`KernelKind::BitSerialAvx512`].
    pub avx512popcnt: bool,
    /// AVX-512 F/BW/VBMI/VNNI: [`KernelKind::Int8LutAvx512`] (`vpermb` over byte tables,
    /// `vpdpbusd` building `u16` ones).
    pub avx512vbmi: bool,
    /// AVX-512 F/BW/DQ/VL: the requantization and residual add compiled for AVX-512.
    pub avx512dq: bool,
    /// AMX-TILE/INT8 with AVX-512 F/BW, AMX's state granted by the OS (Linux with `std`
    /// only): [`KernelKind::Int8DotAmx`].
    pub amx: bool,
    /// An Intel CPU (CPUID's vendor `GenuineIntel`): the planner's costs are
    /// [`super::CostModel::DesktopIntel`].
    pub intel: bool,
    /// An AMD Zen 4 core (vendor `AuthenticAMD`, family 19h, AVX-512 F: the one family 19h
    /// generation with AVX-512, on 256-bit datapaths): the planner's costs are
    /// [`super::CostModel::DesktopZen4`]. Not with AVX-512 denied: then it plans as the Zen 3
    /// cores of the same family.
    pub zen4: bool,
}

/// [`Features::get`]'s cache: bit 0 set once detected, bits 1-8 the eight fields.
static DETECTED: AtomicU16 = AtomicU16::new(0);

impl Features {
    /// Asks the CPU (at run time with `std`, from `cfg(target_feature)` without).
    fn detect() -> Features {
        #[cfg(feature = "std")]
        {
            let f = std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && !avx512_denied();
            Features {
                avx2: std::arch::is_x86_feature_detected!("avx2"),
                avx512vnni: f && std::arch::is_x86_feature_detected!("avx512vnni"),
                avx512popcnt: f && std::arch::is_x86_feature_detected!("avx512vpopcntdq"),
                avx512vbmi: f
                    && std::arch::is_x86_feature_detected!("avx512vbmi")
                    && std::arch::is_x86_feature_detected!("avx512vnni"),
                avx512dq: f
                    && std::arch::is_x86_feature_detected!("avx512dq")
                    && std::arch::is_x86_feature_detected!("avx512vl"),
                amx: f && amx_granted(),
                intel: vendor_is_intel(),
                zen4: f && amd_family() == 0x19,
            }
        }
        #[cfg(not(feature = "std"))]
        {
            let f = cfg!(all(target_feature = "avx512f", target_feature = "avx512bw"));
            Features {
                avx2: cfg!(target_feature = "avx2"),
                avx512vnni: f && cfg!(target_feature = "avx512vnni"),
                avx512popcnt: f && cfg!(target_feature = "avx512vpopcntdq"),
                avx512vbmi: f
                    && cfg!(target_feature = "avx512vbmi")
                    && cfg!(target_feature = "avx512vnni"),
                avx512dq: f
                    && cfg!(all(
                        target_feature = "avx512dq",
                        target_feature = "avx512vl"
                    )),
                amx: false,
                intel: vendor_is_intel(),
                zen4: cfg!(target_feature = "avx512f") && amd_family() == 0x19,
            }
        }
    }

    /// The running CPU's features: detected on the first call, then read from a cache.
    pub(crate) fn get() -> Features {
        let mut v = DETECTED.load(Ordering::Relaxed);
        if v == 0 {
            let f = Features::detect();
            v = 1
                | u16::from(f.avx2) << 1
                | u16::from(f.avx512vnni) << 2
                | u16::from(f.avx512popcnt) << 3
                | u16::from(f.avx512vbmi) << 4
                | u16::from(f.avx512dq) << 5
                | u16::from(f.amx) << 6
                | u16::from(f.intel) << 7
                | u16::from(f.zen4) << 8;
            DETECTED.store(v, Ordering::Relaxed);
        }
        Features {
            avx2: v & 2 != 0,
            avx512vnni: v & 4 != 0,
            avx512popcnt: v & 8 != 0,
            avx512vbmi: v & 16 != 0,
            avx512dq: v & 32 != 0,
            amx: v & 64 != 0,
            intel: v & 128 != 0,
            zen4: v & 256 != 0,
        }
    }
}

/// CPUID's vendor string (leaf 0: EBX, EDX, ECX, 4 bytes each).
fn vendor() -> [u8; 12] {
    // CPUID is present on every x86-64 CPU.
    let r = __cpuid(0);
    let mut v = [0u8; 12];
    for (i, reg) in [r.ebx, r.edx, r.ecx].into_iter().enumerate() {
        v[4 * i..4 * i + 4].copy_from_slice(&reg.to_le_bytes());
    }
    v
}

/// Whether CPUID names Intel as the CPU's vendor (`GenuineIntel`).
fn vendor_is_intel() -> bool {
    &vendor() == b"GenuineIntel"
}

/// The CPU's family (CPUID leaf 1: the base family, plus the extended family where the base
/// is 0Fh) where CPUID names AMD as its vendor (`AuthenticAMD`), else 0.
fn amd_family() -> u32 {
    if &vendor() != b"AuthenticAMD" {
        return 0;
    }
    // CPUID leaf 1 is present on every x86-64 CPU.
    let eax = __cpuid(1).eax;
    let base = (eax >> 8) & 0xf;
    if base == 0xf {
        base + ((eax >> 20) & 0xff)
    } else {
        base
    }
}

/// Whether the environment denies AVX-512 (and with it AMX): [`crate::NO_AVX512_VAR`] set to
/// anything but empty or `0`. The kernels, the planner's cost table and the row operations
/// then behave as on a CPU without AVX-512 (an AVX2-only core), which lets one machine measure
/// both (as oneDNN's `ONEDNN_MAX_CPU_ISA` does).
#[cfg(feature = "std")]
fn avx512_denied() -> bool {
    std::env::var_os(crate::NO_AVX512_VAR).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Whether this is an Intel CPU ([`super::CostModel::native`]'s question).
pub(crate) fn intel() -> bool {
    Features::get().intel
}

/// Whether this is an AMD Zen 4 core ([`super::CostModel::native`]'s other question).
pub(crate) fn zen4() -> bool {
    Features::get().zen4
}

/// Whether the CPU has AMX-TILE/INT8 and Linux granted this process their state (asked once,
/// on the first detection).
#[cfg(feature = "std")]
fn amx_granted() -> bool {
    #[cfg(target_os = "linux")]
    return cpu_has_amx_int8() && request_amx();
    #[cfg(not(target_os = "linux"))]
    return false;
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
        KernelKind::Int8DotAmx => (f.amx, amx_prepared_len, amx_prepare, Run::Bytes(int8_amx)),
        KernelKind::Int8LutAvx512 => (
            f.avx512vbmi,
            lut_prepared_len,
            lut_prepare,
            Run::Tables(Tables {
                len: lut_input_len,
                build: lut_tables,
                run: lut_avx512,
            }),
        ),
        KernelKind::Int8LutAvx2 => (
            f.avx2,
            lut_avx2_prepared_len,
            lut_avx2_prepare,
            Run::Tables(Tables {
                len: lut_avx2_input_len,
                build: lut_avx2_tables,
                run: lut_avx2,
            }),
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

/// The best x86 kernel for `algo` on this CPU (AVX-512 before AVX2; for the int8 dot the
/// cheapest by [`super::cost`] of the widest dot, the AMX dot and the table lookups, where they
/// fit the shape), or `None`.
pub(crate) fn select(algo: Algo, s: &ConvShape, model: super::CostModel) -> Option<ConvKernel> {
    if !matches!(s.abits, 1 | 2 | 4 | 8) || !matches!(s.wbits, 1 | 2 | 4) {
        return None;
    }
    let kinds = match algo {
        Algo::Xnor => [KernelKind::XnorAvx512, KernelKind::XnorAvx2],
        Algo::BitSerial => [KernelKind::BitSerialAvx512, KernelKind::BitSerialAvx2],
        Algo::Int8Dot => {
            let dot = [KernelKind::Int8DotVnni, KernelKind::Int8DotAvx2]
                .into_iter()
                .find_map(by_kind);
            let others = [
                KernelKind::Int8DotAmx,
                KernelKind::Int8LutAvx512,
                KernelKind::Int8LutAvx2,
            ]
            .into_iter()
            .filter(|&k| super::kind_fits(k, s))
            .filter_map(by_kind);
            // The cheapest, the dot on a tie.
            return dot
                .into_iter()
                .chain(others)
                .min_by_key(|k| super::cost(k.kind, s, model));
        }
        Algo::Reference => return None,
    };
    kinds.into_iter().find_map(by_kind)
}

/// The driver's row operations compiled with AVX2, where the CPU has it; with AVX-512 where
/// the CPU has AVX-512 F/BW/DQ/VL ([`row_ops_variants`]' last).
pub(crate) fn row_ops() -> Option<RowOps> {
    row_ops_variants().last().copied()
}

/// The row operations this CPU runs, slowest first: AVX2, then AVX-512 F/BW/DQ/VL (the
/// requantization written out in 16 `i32` lanes where they are exact, the residual add
/// vectorised by LLVM, the packer with `vptestmb`).
pub(crate) fn row_ops_variants() -> heapless::Vec<RowOps, 2> {
    let f = Features::get();
    let mut v = heapless::Vec::new();
    if f.avx2 {
        let _ = v.push(RowOps {
            requant: requant_avx2,
            add_rows: add_rows_avx2,
            pack_bits: pack_bits_avx2,
            step_rows: step_rows_avx2,
        });
        if f.avx512dq {
            let _ = v.push(RowOps {
                requant: requant_avx512,
                add_rows: add_rows_avx512,
                pack_bits: pack_bits_avx512,
                step_rows: step_rows_avx512,
            });
        }
    }
    v
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
/// to `NB` (at most 4); pixels in runs of `P` (`PN` for a tile of at most half of `NB`
/// blocks: the table lookup gives its narrow tiles more pixels), then of `P2` (a call's pixel
/// count is rarely a multiple of `P`; 16 pixels in tiles of 6 leave 4), the last ones one by
/// one.
///
/// # Safety
/// As [`Tile::tile`] for the whole call.
#[inline(always)]
unsafe fn for_tiles<T: Tile, const NB: usize, const P: usize, const PN: usize, const P2: usize>(
    t: &T,
    s: &ConvShape,
    nblk: usize,
    y0: usize,
    y1: usize,
    acc: &mut [i32],
) {
    const { assert!(NB >= 1 && NB <= 4 && P2 >= 1 && P2 <= P && P2 <= PN) };
    let (first, end) = (y0 * s.ow, y1 * s.ow);
    for g in 0..s.groups {
        let mut b0 = 0;
        while b0 < nblk {
            let nb = (nblk - b0).min(NB);
            let full = if 2 * nb > NB { P } else { PN };
            // A last full tile that would leave fewer than `P2` pixels, which `P2` tiles
            // cover exactly instead, gives way to them (32 pixels by 6 and 4: 6 6 6 6 4 4,
            // not 6 6 6 6 6 1 1).
            let n = end - first;
            let r = n % full;
            let swap = n > full && r != 0 && r < P2 && (full + r) % P2 == 0;
            let p2_from = if swap { end - full - r } else { end };
            let mut p = first;
            while p < end {
                let left = end - p;
                // (tile width, which of the three)
                let (tp, w) = if left >= full && p < p2_from {
                    (full, 0)
                } else if left >= P2 {
                    (P2, 1)
                } else {
                    (1, 2)
                };
                // SAFETY: blocks `b0 .. b0 + nb` exist and the pixels of the tile lie before
                // `end`; the rest is the caller's.
                unsafe {
                    match (nb, w) {
                        (4, 0) => t.tile::<4, P>(acc, g, b0, p),
                        (3, 0) => t.tile::<3, P>(acc, g, b0, p),
                        (2, 0) if NB < 4 => t.tile::<2, P>(acc, g, b0, p),
                        (2, 0) => t.tile::<2, PN>(acc, g, b0, p),
                        (_, 0) if NB < 2 => t.tile::<1, P>(acc, g, b0, p),
                        (_, 0) => t.tile::<1, PN>(acc, g, b0, p),
                        (4, 1) => t.tile::<4, P2>(acc, g, b0, p),
                        (3, 1) => t.tile::<3, P2>(acc, g, b0, p),
                        (2, 1) => t.tile::<2, P2>(acc, g, b0, p),
                        (_, 1) => t.tile::<1, P2>(acc, g, b0, p),
                        (4, _) => t.tile::<4, 1>(acc, g, b0, p),
                        (3, _) => t.tile::<3, 1>(acc, g, b0, p),
                        (2, _) => t.tile::<2, 1>(acc, g, b0, p),
                        (_, _) => t.tile::<1, 1>(acc, g, b0, p),
                    }
                }
                p += tp;
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

/// The mask of the first `n.min(16)` `i32` lanes.
#[inline(always)]
fn lane_mask(n: usize) -> __mmask16 {
    if n >= 16 {
        0xffff
    } else {
        (1u16 << n) - 1
    }
}

/// A value 64-byte aligned: the table builders' constant vectors (a 64-byte load across two
/// cache lines is slower: `LUT_PAIRS` 32 bytes off a line made the `u16` table builder about
/// 50 % slower, 2.3 % of the W1A8 network's time) and the AMX kernel's expanded weight tiles.
#[repr(C, align(64))]
struct Align64<T>(T);

/// One kernel call: the shape, the input (`X`: `u8` codes or `u64` bit planes), the prepared
/// weights and the output pixel `acc` starts at; `K` the kernel (`Int8Call`, `BitsCall`, `LutCall`).
struct Call<'a, X, K> {
    s: &'a ConvShape,
    x: &'a [X],
    w: &'a [u8],
    first: usize,
    kernel: PhantomData<K>,
}

impl<'a, X, K> Call<'a, X, K> {
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
}

impl<X, K> Call<'_, X, K>
where
    Self: Tile,
{
    /// Runs rows `y0..y1` in tiles of up to `NB` blocks of `lanes` output channels by `P`
    /// pixels (`P2` for what is left, see [`for_tiles`]).
    ///
    /// # Safety
    /// The kernel's ISA is present and the call passed [`ConvShape::assert_call`] with the
    /// kernel's prepared length.
    #[inline(always)]
    unsafe fn run<const NB: usize, const P: usize, const P2: usize>(
        &self,
        lanes: usize,
        y0: usize,
        y1: usize,
        acc: &mut [i32],
    ) {
        let nblk = self.s.cout_g.div_ceil(lanes);
        // SAFETY: forwarded preconditions.
        unsafe { for_tiles::<_, NB, P, P, P2>(self, self.s, nblk, y0, y1, acc) }
    }
}
