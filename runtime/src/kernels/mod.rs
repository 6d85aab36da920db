//! Convolution kernels: reference twins, portable optimized kernels and the ISA dispatch.
//!
//! The contract between the conv driver and the kernels is written in `CONTRACT.md` next to
//! this file: a kernel computes raw integer sums over a padded input for a range of output rows;
//! the driver does padding, zero-point and border corrections and requantization.

use slb_format::{AddParams, ChannelAffine, Conv, RawQuant};

use crate::quant::{self, QParams};

pub(crate) mod portable;
pub(crate) mod reference;

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) mod lanes8;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

#[cfg(test)]
pub(crate) mod tests;

#[cfg(target_arch = "aarch64")]
pub(crate) mod aarch64;

/// The algorithm family of a convolution kernel (what [`crate::PlanOptions::force`] picks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Algo {
    /// XNOR + popcount, W1A1 only.
    Xnor,
    /// Bit-serial AND + popcount over weight and activation bit planes (any bit pair).
    BitSerial,
    /// Unpacked u8 x i8 dot product (any bit pair; the default for A8).
    Int8Dot,
    /// The plain loop nest straight from the format's semantics (slow; for checking).
    Reference,
}

/// The kernel that runs a layer: algorithm and instruction set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KernelKind {
    /// Portable XNOR + popcount (W1A1).
    Xnor,
    /// Portable bit-serial AND + popcount.
    BitSerial,
    /// Portable u8 x i8 dot product.
    Int8Dot,
    /// The float executor's direct convolution with dequantized weights.
    Float,
    /// The reference loop nest.
    Reference,
    /// XNOR + popcount with AVX2.
    XnorAvx2,
    /// XNOR + VPOPCNTQ with AVX-512.
    XnorAvx512,
    /// Bit-serial with AVX2.
    BitSerialAvx2,
    /// Bit-serial with AVX-512 VPOPCNTQ.
    BitSerialAvx512,
    /// u8 x i8 dot product with AVX2 (`vpmaddubsw`).
    Int8DotAvx2,
    /// u8 x i8 dot product with AVX-512 VNNI (`vpdpbusd`).
    Int8DotVnni,
    /// The u8 code dot product of 1-bit weights by table lookup with AVX-512 BW/VBMI
    /// (`vpermw`): per input pixel and 5 channels, the sums of the codes over every subset of
    /// the channels; the weights of 32 output channels index them.
    Int8LutAvx512,
    /// The float executor's direct convolution compiled for AVX2.
    FloatAvx2,
    /// XNOR + popcount with aarch64 NEON (`cnt`).
    XnorNeon,
    /// Bit-serial with aarch64 NEON (`cnt`).
    BitSerialNeon,
    /// u8 x i8 dot product with aarch64 NEON (widening `smlal`).
    Int8DotNeon,
    /// u8 x i8 dot product with the Armv8.2 dot-product instruction (`sdot`).
    Int8DotSdot,
    /// Portable XNOR + popcount reading the model's packed codes in place (no prepared
    /// weights in the arena: the codes stay in flash).
    XnorInPlace,
    /// Portable bit-serial reading the model's packed codes in place.
    BitSerialInPlace,
    /// Portable u8 x i8 dot product decoding the model's packed codes in place, a block of
    /// channels at a time (weight stationary).
    Int8DotInPlace,
}

impl KernelKind {
    /// Every kind, for tests and listings.
    pub const ALL: [KernelKind; 20] = [
        KernelKind::Xnor,
        KernelKind::BitSerial,
        KernelKind::Int8Dot,
        KernelKind::Float,
        KernelKind::Reference,
        KernelKind::XnorAvx2,
        KernelKind::XnorAvx512,
        KernelKind::BitSerialAvx2,
        KernelKind::BitSerialAvx512,
        KernelKind::Int8DotAvx2,
        KernelKind::Int8DotVnni,
        KernelKind::Int8LutAvx512,
        KernelKind::FloatAvx2,
        KernelKind::XnorNeon,
        KernelKind::BitSerialNeon,
        KernelKind::Int8DotNeon,
        KernelKind::Int8DotSdot,
        KernelKind::XnorInPlace,
        KernelKind::BitSerialInPlace,
        KernelKind::Int8DotInPlace,
    ];

    /// Short name, `algorithm/isa`, e.g. `"xnor-popcnt/avx512"`.
    pub fn name(&self) -> &'static str {
        match self {
            KernelKind::Xnor => "xnor-popcnt/portable",
            KernelKind::BitSerial => "bitserial-popcnt/portable",
            KernelKind::Int8Dot => "int8-dot/portable",
            KernelKind::Float => "f32-direct/portable",
            KernelKind::Reference => "reference",
            KernelKind::XnorAvx2 => "xnor-popcnt/avx2",
            KernelKind::XnorAvx512 => "xnor-popcnt/avx512",
            KernelKind::BitSerialAvx2 => "bitserial-popcnt/avx2",
            KernelKind::BitSerialAvx512 => "bitserial-popcnt/avx512",
            KernelKind::Int8DotAvx2 => "int8-dot/avx2",
            KernelKind::Int8DotVnni => "int8-dot/avx512-vnni",
            KernelKind::Int8LutAvx512 => "int8-lut/avx512",
            KernelKind::FloatAvx2 => "f32-direct/avx2",
            KernelKind::XnorNeon => "xnor-popcnt/neon",
            KernelKind::BitSerialNeon => "bitserial-popcnt/neon",
            KernelKind::Int8DotNeon => "int8-dot/neon",
            KernelKind::Int8DotSdot => "int8-dot/neon-sdot",
            KernelKind::XnorInPlace => "xnor-popcnt/in-place",
            KernelKind::BitSerialInPlace => "bitserial-popcnt/in-place",
            KernelKind::Int8DotInPlace => "int8-dot/in-place",
        }
    }

    /// The algorithm family (`None` for the float kinds).
    pub fn algo(&self) -> Option<Algo> {
        match self {
            KernelKind::Xnor
            | KernelKind::XnorAvx2
            | KernelKind::XnorAvx512
            | KernelKind::XnorNeon
            | KernelKind::XnorInPlace => Some(Algo::Xnor),
            KernelKind::BitSerial
            | KernelKind::BitSerialAvx2
            | KernelKind::BitSerialAvx512
            | KernelKind::BitSerialNeon
            | KernelKind::BitSerialInPlace => Some(Algo::BitSerial),
            KernelKind::Int8Dot
            | KernelKind::Int8DotAvx2
            | KernelKind::Int8DotVnni
            | KernelKind::Int8LutAvx512
            | KernelKind::Int8DotNeon
            | KernelKind::Int8DotSdot
            | KernelKind::Int8DotInPlace => Some(Algo::Int8Dot),
            KernelKind::Reference => Some(Algo::Reference),
            KernelKind::Float | KernelKind::FloatAvx2 => None,
        }
    }
}

impl core::fmt::Display for KernelKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// One conv's geometry as kernels see it (see CONTRACT.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    /// Padded input height.
    pub hp: usize,
    /// Padded input width.
    pub wp: usize,
    /// Input channels (all groups).
    pub c: usize,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
    /// Output channels.
    pub cout: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride (rows).
    pub sh: usize,
    /// Stride (columns).
    pub sw: usize,
    /// Groups.
    pub groups: usize,
    /// Input channels per group.
    pub cin_g: usize,
    /// Output channels per group.
    pub cout_g: usize,
    /// Weight bits (1, 2, 4).
    pub wbits: u8,
    /// Activation bits (1, 2, 4, 8).
    pub abits: u8,
    /// u64 words per channel group, `ceil(cin_g / 64)`.
    pub cw: usize,
    /// Padding (rows), not seen by kernels.
    pub ph: usize,
    /// Padding (columns), not seen by kernels.
    pub pw: usize,
}

impl ConvShape {
    /// The shape of a validated conv on an input of `h x w` with `abits`-bit codes.
    // `%` rather than `is_multiple_of`: the workspace's MSRV is 1.85.
    #[allow(clippy::manual_is_multiple_of)]
    pub fn of(conv: &Conv<'_>, h: usize, w: usize, abits: u8) -> Option<ConvShape> {
        let ph = conv.padding[0] as usize;
        let pw = conv.padding[1] as usize;
        let hp = h.checked_add(ph.checked_mul(2)?)?;
        let wp = w.checked_add(pw.checked_mul(2)?)?;
        let kh = conv.kernel[0] as usize;
        let kw = conv.kernel[1] as usize;
        let sh = conv.stride[0] as usize;
        let sw = conv.stride[1] as usize;
        if kh == 0 || kw == 0 || sh == 0 || sw == 0 || hp < kh || wp < kw || conv.groups == 0 {
            return None;
        }
        let groups = conv.groups as usize;
        let c = conv.in_channels as usize;
        let cout = conv.out_channels as usize;
        if c % groups != 0 || cout % groups != 0 || c == 0 || cout == 0 {
            return None;
        }
        let cin_g = c / groups;
        Some(ConvShape {
            hp,
            wp,
            c,
            oh: (hp - kh) / sh + 1,
            ow: (wp - kw) / sw + 1,
            cout,
            kh,
            kw,
            sh,
            sw,
            groups,
            cin_g,
            cout_g: cout / groups,
            wbits: conv.weight_bits,
            abits,
            cw: cin_g.div_ceil(64),
            ph,
            pw,
        })
    }

    /// Taps per output: `kh * kw * cin_g`.
    pub fn taps(&self) -> usize {
        self.kh * self.kw * self.cin_g
    }

    /// Bytes of the driver's correction table (`packed::correct`): `cout` sums per border
    /// class ([`ConvShape::border_classes`]) for 1-bit activations, else `cout` zero-point
    /// sums, as `i32`; `None` if that overflows `usize` (the planner's error).
    pub(crate) fn correction_len(&self) -> Option<usize> {
        let classes = if self.abits == 1 {
            let (rows, cols) = self.border_classes();
            rows.checked_mul(cols)?
        } else {
            1
        };
        self.cout.checked_mul(classes)?.checked_mul(4)
    }

    /// The border classes of the output rows and of the output columns: runs of outputs whose
    /// windows have the same taps in the padding ([`border_runs`]). An output's class is its
    /// row's and its column's.
    pub(crate) fn border_classes(&self) -> (usize, usize) {
        (classes_of(self.row_runs()), self.col_classes())
    }

    /// The second of [`ConvShape::border_classes`] alone.
    pub(crate) fn col_classes(&self) -> usize {
        classes_of(self.col_runs())
    }

    /// [`border_runs`] of the output rows.
    pub(crate) fn row_runs(&self) -> BorderRuns {
        border_runs(self.oh, self.sh, self.ph, self.h(), self.kh)
    }

    /// [`border_runs`] of the output columns.
    pub(crate) fn col_runs(&self) -> BorderRuns {
        border_runs(self.ow, self.sw, self.pw, self.w(), self.kw)
    }

    /// Unpadded input height.
    pub fn h(&self) -> usize {
        self.hp - 2 * self.ph
    }

    /// Unpadded input width.
    pub fn w(&self) -> usize {
        self.wp - 2 * self.pw
    }

    /// Channel groups of [`LUT_K`] per group of the table-lookup layout, `ceil(cin_g / 5)`.
    pub(crate) fn lut_groups(&self) -> usize {
        self.cin_g.div_ceil(LUT_K)
    }

    /// `u16`s of the tables of the table-lookup kernels: `2^LUT_K` per padded pixel, group
    /// and channel group ([`ConvShape::lut_tables_len`]), then the sum of the codes of each
    /// padded pixel and group as a little-endian `u32` (two `u16`).
    pub(crate) fn lut_input_len(&self) -> usize {
        self.lut_tables_len()
            .saturating_add(self.hp.saturating_mul(self.wp).saturating_mul(self.groups) * 2)
    }

    /// `u16`s of the tables alone (the start of [`ConvShape::lut_input_len`]).
    pub(crate) fn lut_tables_len(&self) -> usize {
        self.hp
            .saturating_mul(self.wp)
            .saturating_mul(self.groups)
            .saturating_mul(self.lut_groups())
            .saturating_mul(1 << LUT_K)
    }
}

/// Along one axis of `n` outputs (stride `stride`, padding `pad` on both sides of `size`
/// inputs, a window of `k` taps): for each output `o` in order, `(o, class, (before, after))`
/// with `before` the window's taps in the padding before the input and `after` those after it,
/// and `class` the number of changes of that pair so far. The pair changes monotonically
/// (`before` falls, `after` rises), so each class is one run of outputs.
pub(crate) fn border_runs(
    n: usize,
    stride: usize,
    pad: usize,
    size: usize,
    k: usize,
) -> BorderRuns {
    BorderRuns {
        o: 0,
        n,
        stride,
        pad,
        size,
        k,
        class: 0,
        prev: None,
    }
}

/// The number of classes of a [`border_runs`] axis.
fn classes_of(runs: BorderRuns) -> usize {
    runs.last().map_or(0, |(_, c, _)| c + 1)
}

/// The iterator of [`border_runs`].
#[derive(Clone, Debug)]
pub(crate) struct BorderRuns {
    o: usize,
    n: usize,
    stride: usize,
    pad: usize,
    size: usize,
    k: usize,
    class: usize,
    prev: Option<(usize, usize)>,
}

impl Iterator for BorderRuns {
    type Item = (usize, usize, (usize, usize));

    fn next(&mut self) -> Option<Self::Item> {
        if self.o >= self.n {
            return None;
        }
        let t = self.o * self.stride;
        let before = self.pad.saturating_sub(t).min(self.k);
        let after = (t + self.k)
            .saturating_sub(self.pad + self.size)
            .min(self.k);
        let pair = (before, after);
        if self.prev.is_some_and(|p| p != pair) {
            self.class += 1;
        }
        self.prev = Some(pair);
        self.o += 1;
        Some((self.o - 1, self.class, pair))
    }
}

/// The buffer sizes and call preconditions the SIMD kernels check (x86-64 and AArch64 only).
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
impl ConvShape {
    /// Elements of the padded byte input of the byte family (`hp * wp * c`).
    pub(crate) fn byte_input_len(&self) -> usize {
        self.hp.saturating_mul(self.wp).saturating_mul(self.c)
    }

    /// `u64`s of the padded bit planes of the bit family.
    pub(crate) fn bit_input_len(&self) -> usize {
        self.hp
            .saturating_mul(self.wp)
            .saturating_mul(portable::bit_pixel_words(self))
    }

    /// Whether the fields agree with each other as [`ConvShape::of`] makes them.
    fn is_consistent(&self) -> bool {
        self.groups > 0
            && self.kh > 0
            && self.kw > 0
            && self.sh > 0
            && self.sw > 0
            && self.hp >= self.kh
            && self.wp >= self.kw
            && self.cin_g.checked_mul(self.groups) == Some(self.c)
            && self.cout_g.checked_mul(self.groups) == Some(self.cout)
            && self.cw == self.cin_g.div_ceil(64)
            && self.oh == (self.hp - self.kh) / self.sh + 1
            && self.ow == (self.wp - self.kw) / self.sw + 1
            && matches!(self.wbits, 1 | 2 | 4)
            && matches!(self.abits, 1 | 2 | 4 | 8)
    }

    /// The preconditions of a kernel call (CONTRACT.md), stated once: the shape is one
    /// [`ConvShape::of`] builds, `y0 <= y1 <= oh`, the input has at least `x_need` elements
    /// (`byte_input_len` or `bit_input_len`), the weights at least `w_need` bytes (the kernel's
    /// `prepared_len`) and the accumulators `(y1 - y0) * ow * cout` elements. The planner and
    /// the driver guarantee them; SIMD kernels, whose loads are unchecked, call this first.
    ///
    /// # Panics
    /// When a precondition fails, which no planned conv does: a kernel never reads out of
    /// bounds nor returns with its accumulators unwritten.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn assert_call(
        &self,
        x_len: usize,
        x_need: usize,
        w_len: usize,
        w_need: usize,
        y0: usize,
        y1: usize,
        acc_len: usize,
    ) {
        let ok = self.is_consistent()
            && y0 <= y1
            && y1 <= self.oh
            && x_len >= x_need
            && w_len >= w_need
            && acc_len >= (y1 - y0).saturating_mul(self.ow).saturating_mul(self.cout);
        assert!(ok, "kernel call outside the contract (kernels/CONTRACT.md)");
    }
}

/// Writes `wsum[o]`, the numerator sum of output channel `o` over all taps, as little-endian
/// `i32`s at the start of `out` (the table the popcount and sign-activation kernels append to
/// their prepared weights).
pub(crate) fn write_wsum(conv: &Conv<'_>, s: &ConvShape, out: &mut [u8]) {
    let reader = slb_format::CodeReader::new(conv);
    for o in 0..s.cout {
        let mut sum = 0i32;
        for ky in 0..s.kh {
            for kx in 0..s.kw {
                for i in 0..s.cin_g {
                    sum += reader.numerator(o, ky, kx, i);
                }
            }
        }
        if let Some(d) = out.get_mut(4 * o..4 * o + 4) {
            d.copy_from_slice(&sum.to_le_bytes());
        }
    }
}

/// A byte-family kernel: padded HWC u8 input.
pub(crate) type ByteRun = fn(&ConvShape, &[u8], &[u8], usize, usize, &mut [i32]);
/// A bit-family kernel: padded bit-plane input.
pub(crate) type BitRun = fn(&ConvShape, &[u64], &[u8], usize, usize, &mut [i32]);

/// The driver's requantization of exact accumulators into codes (`quant::requant`).
pub(crate) type RequantFn =
    fn(&RawQuant, Option<&ChannelAffine<'_>>, &QParams, usize, &[i32], &mut [u8]);
/// The residual add of two code tensors (`quant::add_rows`).
pub(crate) type AddRowsFn =
    fn(&[u8], &[u8], &QParams, &QParams, &AddParams<'_>, &QParams, usize, &mut [u8]);
/// The bit-plane packer of the bit family's input (`portable::pack_bits`).
pub(crate) type PackBitsFn = fn(&ConvShape, &[u8], u8, &mut [u64]);
/// A sign requantization by per-channel thresholds (`quant::sign_rows`).
pub(crate) type SignRowsFn = fn(&[i32], &[u8], &[i32], &mut [u8]);

/// The drivers' row operations around the kernels, in the variant the planner chose once
/// (every variant gives the same result: SIMD ones are the portable code compiled for the ISA,
/// or checked against it by the shared tests).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowOps {
    /// Stage 1 and 2 requantization.
    pub requant: RequantFn,
    /// The residual add.
    pub add_rows: AddRowsFn,
    /// The bit packer.
    pub pack_bits: PackBitsFn,
    /// Requantization into 1-bit codes by thresholds.
    pub sign_rows: SignRowsFn,
}

impl RowOps {
    /// The portable variants.
    pub(crate) const PORTABLE: RowOps = RowOps {
        requant: quant::requant,
        add_rows: quant::add_rows,
        pack_bits: portable::pack_bits,
        sign_rows: quant::sign_rows,
    };

    /// The best variants this CPU runs.
    pub(crate) fn native() -> RowOps {
        #[cfg(target_arch = "x86_64")]
        if let Some(ops) = x86::row_ops() {
            return ops;
        }
        RowOps::PORTABLE
    }

    /// Every variant this CPU runs, the portable one first (for the tests: each must give
    /// the portable result, not only the one `native` picks).
    #[cfg(test)]
    pub(crate) fn variants() -> std::vec::Vec<RowOps> {
        let v = core::iter::once(RowOps::PORTABLE);
        #[cfg(target_arch = "x86_64")]
        let v = v.chain(x86::row_ops_variants());
        v.collect()
    }
}

/// A table builder: unpadded HWC codes and the pad code in, [`ConvShape::lut_input_len`]
/// `u16`s of tables out.
pub(crate) type TableBuild = fn(&ConvShape, &[u8], u8, &mut [u16]);
/// A table-lookup kernel: the tables of [`TableBuild`].
pub(crate) type TableRun = fn(&ConvShape, &[u16], &[u8], usize, usize, &mut [i32]);

/// How a kernel consumes its input.
#[derive(Clone, Copy)]
pub(crate) enum Run {
    /// Padded HWC bytes.
    Bytes(ByteRun),
    /// Padded bit planes.
    Bits(BitRun),
    /// Tables of code sums per padded pixel and 5 channels, built once per layer (x86 only).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Tables(TableBuild, TableRun),
}

/// Channels per table of the table-lookup kernels (a table has `2^LUT_K` entries).
pub(crate) const LUT_K: usize = 5;

/// Whether a table-lookup kernel can run the shape: 1-bit weights, 2- to 8-bit codes.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) fn lut_fits(s: &ConvShape) -> bool {
    s.wbits == 1 && s.abits >= 2
}

/// A conv kernel: its kind, prepared-weight layout and hot loop.
#[derive(Clone, Copy)]
pub(crate) struct ConvKernel {
    pub kind: KernelKind,
    pub prepared_len: fn(&ConvShape) -> usize,
    pub prepare: fn(&Conv<'_>, &ConvShape, &mut [u8]),
    pub run: Run,
    /// The kernel reads `Conv::codes` (the model's bytes, e.g. in flash) as its weights
    /// instead of prepared weights in the arena (`prepared_len` is then 0).
    pub reads_codes: bool,
}

/// Whether `algo` can run a conv of this shape at all.
pub(crate) fn algo_fits(algo: Algo, s: &ConvShape) -> bool {
    match algo {
        Algo::Xnor => s.wbits == 1 && s.abits == 1,
        Algo::BitSerial | Algo::Int8Dot | Algo::Reference => true,
    }
}

/// Whether kernel `kind` can run a conv of this shape: its algorithm fits, and a table-lookup
/// kernel needs 1-bit weights and 2- to 8-bit codes ([`lut_fits`]). (The default rule reaches
/// the table-lookup kernel through `select`, which checks the shape; a kernel named in
/// [`crate::PlanOptions::kernel`] and the tests ask this.)
pub(crate) fn kind_fits(kind: KernelKind, s: &ConvShape) -> bool {
    kind.algo().is_some_and(|a| algo_fits(a, s))
        && (kind != KernelKind::Int8LutAvx512 || lut_fits(s))
}

/// Which table of measured kernel costs the planner ranks kernels by.
///
/// A kernel's speed relative to another depends on the CPU: on an x86 desktop the prepared
/// kernels (and SIMD) win, on a Cortex-M4 the int8 dot that reads the model's codes in place
/// (weight stationary) runs fewer instructions than the prepared one. The table decides the
/// default kernel of each conv and the order in which [`crate::Plan::fit`] moves convs in
/// place; it never changes results, which are bit-identical for every kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CostModel {
    /// Measured on an x86-64 desktop core (AVX2 and portable kernels; AVX-512 and NEON rows
    /// are estimates).
    Desktop,
    /// Measured on a Cortex-M4 (instructions under QEMU, `docs/MCU.md`): portable kernels only.
    CortexM4,
}

impl CostModel {
    /// The table for the CPU this build targets: [`CostModel::CortexM4`] on 32-bit Arm
    /// (microcontrollers), [`CostModel::Desktop`] elsewhere.
    pub const NATIVE: CostModel = if cfg!(target_arch = "arm") {
        CostModel::CortexM4
    } else {
        CostModel::Desktop
    };
}

/// Relative cost of one kernel step: int8 kinds per 64 multiply-adds, bit kinds per 64-channel
/// word and weight/activation plane pair. Only comparable within one table.
///
/// * [`CostModel::Desktop`]: tenths of a nanosecond on one core, measured on the development
///   machine over a whole ResNet-18-shaped CIFAR network (see README.md). Rows marked
///   "estimate" were not measured.
/// * [`CostModel::CortexM4`]: the portable kernels' desktop costs (on the M4 they rank the
///   same: `docs/MCU.md`, "Kernel choice"), with each in-place kernel scaled against its
///   prepared twin by the ratio of the two measured on the M4 (instructions under QEMU, the
///   same work both ways): the int8 dot in place ran 166.2 M instructions per ResNet-20 W1A8
///   inference against 204.8 M prepared, and 0.85-0.88x on single ResNet-18-wide layers with
///   8x8 or more outputs, 1.09x at 4x4 (512 channels: each block of codes is decoded for 16
///   pixels only; `scripts/mcu-test.sh costs`), which the per-step table does not model; XNOR in place ran 0.95x its prepared twin on ResNet-20 W1A1
///   (16-64 channels) but 1.40x on ResNet-18 W1A1 (64-512 channels: its byte-wise row loads
///   grow with the row), so the table takes the wide ratio and keeps prepared XNOR first.
///   Bit-serial in place ran 1.11x XNOR in place on ResNet-20 W1A1 (162.1 M against 146.0 M,
///   every conv in place), which keeps `Plan::fit` moving W1A1 convs to XNOR. SIMD kinds do
///   not exist on a Cortex-M and cost `u32::MAX`.
pub(crate) fn step_cost(kind: KernelKind, model: CostModel) -> u32 {
    if model == CostModel::CortexM4 {
        match kind {
            // The prepared portable kernels: the desktop rows below.
            KernelKind::Int8Dot | KernelKind::BitSerial | KernelKind::Xnor => {}
            // 340 * 166.2 / 204.8, 125 * 1.40 and 175 * 162.1 / 146.0.
            KernelKind::Int8DotInPlace => return 276,
            KernelKind::XnorInPlace => return 175,
            KernelKind::BitSerialInPlace => return 195,
            _ => return u32::MAX,
        }
    }
    match kind {
        KernelKind::Int8Dot => 340,
        KernelKind::BitSerial => 150,
        KernelKind::Xnor => 125,
        KernelKind::Int8DotAvx2 => 40,
        KernelKind::BitSerialAvx2 => 25,
        KernelKind::XnorAvx2 => 25,
        // VNNI: an estimate (4x the int8 work of AVX2 per instruction) that a kernel-only
        // timing bore out on a Zen 5 core: 480-530 MAC/ns, against 180-220 for AVX2 on the same
        // core (docs/PERFORMANCE.md).
        KernelKind::Int8DotVnni => 16,
        // Per 64 multiply-adds of the lookups; building the tables costs `LUT_TABLE_COST`
        // more per table (see `cost`). Calibrated against `Int8DotVnni`'s 16 with the
        // kernel-only timing on a Zen 5 core (docs/PERFORMANCE.md): the dot ran 480-510
        // MAC/ns on 3x3 layers, the lookups 570-740 (400 at 64 channels), a table 1.1 ns.
        KernelKind::Int8LutAvx512 => 13,
        // VPOPCNTQ instead of the AVX2 nibble-table popcount. Bit-serial, per plane pair:
        // measured on whole layers on a Zen 5 core (`benches/`, group `kernel`;
        // docs/PERFORMANCE.md), where it ties with the VNNI dot at W1A1 and 64 channels
        // (248 / 245 MAC/ns) and takes twice as long at W1A2 (152 / 285); it was an estimate
        // of 8, which gave W1A2's 64-channel, stride-2 and 1x1 layers to it (the whole network
        // 1.7x slower than with the dot). XNOR: an estimate (3.6x AVX2's 25); whole layers rank
        // it as this does but by less: W1A1 1.6-2.5x AVX2's from 128 channels, 1.3x at 64, where
        // the VNNI dot ties with it instead of taking 2.3x as long.
        KernelKind::BitSerialAvx512 => 16,
        KernelKind::XnorAvx512 => 7,
        // Estimates, not measured (no aarch64 hardware was available; the kernels were only
        // run under qemu-aarch64): 128-bit vectors, `cnt` per byte, `sdot` 16 MACs per
        // instruction, widening `smlal` 4.
        KernelKind::Int8DotSdot => 30,
        KernelKind::Int8DotNeon => 90,
        KernelKind::BitSerialNeon => 40,
        KernelKind::XnorNeon => 35,
        // The portable loops with byte-wise word loads from the packed rows (estimate).
        KernelKind::XnorInPlace => 140,
        KernelKind::BitSerialInPlace => 170,
        // The portable dot plus decoding each code once per output-row chunk (estimate).
        KernelKind::Int8DotInPlace => 400,
        KernelKind::Float | KernelKind::FloatAvx2 | KernelKind::Reference => u32::MAX,
    }
}

/// Cost of building one table of the table-lookup kernel, in [`step_cost`]'s desktop units.
const LUT_TABLE_COST: u64 = 140;

/// [`CostModel::CortexM4`]'s step cost of the int8 dot in place on 1-bit weights (the
/// sign-weight `USADA8` sums of `portable::int8::sign_weight_in_place_body`), per 64 multiply-adds:
/// `340 * 37.94 / 152.28` (the 64 -> 64 channel 3x3 conv at 32x32 of `scripts/mcu-test.sh
/// costs`, in place against prepared; 0.24-0.27x on the other widths, 0.34x at 4x4). Below
/// prepared XNOR's 125 per 64-channel word, so W1A1 convs read their codes in place too.
const SIGN_WEIGHT_IN_PLACE_M4: u64 = 85;

/// Estimated cost of one output element (all taps) with kernel `kind`.
pub(crate) fn cost(kind: KernelKind, s: &ConvShape, model: CostModel) -> u64 {
    let taps = (s.kh * s.kw) as u64;
    let step = if model == CostModel::CortexM4 && kind == KernelKind::Int8DotInPlace && s.wbits == 1
    {
        SIGN_WEIGHT_IN_PLACE_M4
    } else {
        u64::from(step_cost(kind, model))
    };
    if kind == KernelKind::Int8LutAvx512 {
        if step == u64::from(u32::MAX) {
            return u64::MAX;
        }
        // The lookups, then the tables of every padded input pixel shared by the outputs.
        let gn = s.lut_groups() as u64;
        let tables = (s.hp * s.wp) as u64 * gn * LUT_TABLE_COST;
        let outputs = ((s.oh * s.ow) as u64 * s.cout_g as u64).max(1);
        return taps * step * gn * LUT_K as u64 / 64 + tables / outputs;
    }
    match kind.algo() {
        // Int8: cin_g multiply-adds per tap, in units of 64.
        Some(Algo::Int8Dot) => taps * step * (s.cin_g as u64).div_ceil(4) * 4 / 64,
        Some(Algo::BitSerial) => {
            taps * step * s.cw as u64 * u64::from(s.wbits) * u64::from(s.abits)
        }
        Some(Algo::Xnor) => taps * step * s.cw as u64,
        _ => u64::MAX,
    }
}

/// The kernels the planner may give a conv of algorithm `algo`: the best prepared one
/// ([`select`], or the portable one when `portable_only`) and the portable in-place one.
fn candidates(algo: Algo, s: &ConvShape, portable_only: bool) -> [Option<ConvKernel>; 2] {
    if !algo_fits(algo, s) {
        return [None, None];
    }
    let prepared = if portable_only {
        portable::kernel(algo)
    } else {
        select(algo, s)
    };
    [prepared, portable::in_place_kernel(algo)]
}

/// The float engine's conv kernel for this CPU: AVX2 when detected (under `std`), else
/// portable.
pub(crate) fn float_kind(portable_only: bool) -> KernelKind {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    if !portable_only && std::is_x86_feature_detected!("avx2") {
        return KernelKind::FloatAvx2;
    }
    let _ = portable_only;
    KernelKind::Float
}

/// The default kernel for a shape: the cheapest by [`cost`] in `model` of the available kernels
/// (the SIMD ones when the CPU has them, unless `portable_only`; the in-place ones too). With
/// the desktop costs this means: XNOR for W1A1; int8 dot for A8 and for narrow inputs (the
/// 3-channel first layer); bit-serial for small bit products (portable: `wbits * abits <= 2`)
/// on wide layers; never an in-place kernel. With the Cortex-M4 costs the int8 dot reads the
/// codes in place.
pub(crate) fn default_kernel(
    s: &ConvShape,
    portable_only: bool,
    model: CostModel,
) -> Option<ConvKernel> {
    let mut best: Option<(u64, ConvKernel)> = None;
    for algo in [Algo::Xnor, Algo::BitSerial, Algo::Int8Dot] {
        for k in candidates(algo, s, portable_only).into_iter().flatten() {
            let c = cost(k.kind, s, model);
            if best.as_ref().is_none_or(|(b, _)| c < *b) {
                best = Some((c, k));
            }
        }
    }
    best.map(|(_, k)| k)
}

/// The available kernel with the smallest prepared weights (ties: the cheaper one in `model`).
/// The in-place kernels keep none in the arena, so every conv gets one of them.
pub(crate) fn smallest_kernel(
    s: &ConvShape,
    portable_only: bool,
    model: CostModel,
) -> Option<ConvKernel> {
    let mut best: Option<((usize, u64), ConvKernel)> = None;
    for algo in [Algo::Xnor, Algo::BitSerial, Algo::Int8Dot] {
        for k in candidates(algo, s, portable_only).into_iter().flatten() {
            let key = ((k.prepared_len)(s), cost(k.kind, s, model));
            if best.as_ref().is_none_or(|(b, _)| key < *b) {
                best = Some((key, k));
            }
        }
    }
    best.map(|(_, k)| k)
}

/// The best available kernel for `algo` and shape: an ISA-specific one when the CPU has it,
/// else the portable one. `None` for [`Algo::Reference`] (the driver runs it directly).
pub(crate) fn select(algo: Algo, s: &ConvShape) -> Option<ConvKernel> {
    if !algo_fits(algo, s) {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(k) = x86::select(algo, s) {
        return Some(k);
    }
    #[cfg(target_arch = "aarch64")]
    if let Some(k) = aarch64::select(algo, s) {
        return Some(k);
    }
    portable::kernel(algo)
}

/// The kernel of a kind chosen earlier by [`select`]; `None` if this build or CPU lacks it.
pub(crate) fn by_kind(kind: KernelKind) -> Option<ConvKernel> {
    match kind {
        KernelKind::Xnor => portable::kernel(Algo::Xnor),
        KernelKind::BitSerial => portable::kernel(Algo::BitSerial),
        KernelKind::Int8Dot => portable::kernel(Algo::Int8Dot),
        KernelKind::XnorInPlace => portable::in_place_kernel(Algo::Xnor),
        KernelKind::BitSerialInPlace => portable::in_place_kernel(Algo::BitSerial),
        KernelKind::Int8DotInPlace => portable::in_place_kernel(Algo::Int8Dot),
        KernelKind::Float | KernelKind::FloatAvx2 | KernelKind::Reference => None,
        #[cfg(target_arch = "x86_64")]
        other => x86::by_kind(other),
        #[cfg(target_arch = "aarch64")]
        other => aarch64::by_kind(other),
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        _ => None,
    }
}
