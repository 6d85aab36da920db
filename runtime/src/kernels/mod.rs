//! Convolution kernels: reference twins, portable optimized kernels and the ISA dispatch.
//!
//! The contract between the conv driver and the kernels is written in `CONTRACT.md` next to
//! this file: a kernel computes raw integer sums over a padded input for a range of output rows;
//! the driver does padding, zero-point and border corrections and requantization.

use slb_format::{AddParams, ChannelAffine, Conv, RawQuant};

use crate::quant::{self, QParams};

mod cost;
pub(crate) mod portable;
pub(crate) mod reference;
mod shape;

pub(crate) use cost::cost;
pub use cost::CostModel;
pub(crate) use shape::BorderRuns;
pub use shape::ConvShape;

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
    /// u8 x i8 dot product with Intel AMX (`tdpbusd`, 16 pixels x 16 output channels x 64
    /// input channels an instruction), for convs of one group with input channels a multiple
    /// of 64 and output channels a multiple of 16.
    Int8DotAmx,
    /// The u8 code dot product of 1- and 2-bit weights by table lookup with AVX-512
    /// BW/VBMI/VNNI: per input pixel and 4 channels, the sums of the codes over every subset of
    /// the channels in bytes, four such tables to a register (`vpermb` for 16 output channels,
    /// `vpdpbusd` adding each one's four sums), where every 4 channels' codes sum to at most
    /// 255; else `u16` tables of 5 channels (`vpermw`, 32 output channels); `vpermb` over byte
    /// tables of 6 channels and 64 output channels for 2-bit codes; 2-bit weights as two
    /// planes of sign weights.
    Int8LutAvx512,
    /// The same table lookup with AVX2 (`vpshufb`), for 1- and 2-bit weights: codes of 5 to 8
    /// bits over byte sub-tables of 3 channels, two to a 128-bit lane (16 output channels a
    /// lookup, `vpmaddubsw` adding each one's two sums) where every 3 channels' codes sum to
    /// at most 254, else (per layer, by its input) the AVX2 int8 dot, or two nibble planes of
    /// byte tables of 4 channels (32 output channels a lookup) where they cost less; 2-bit
    /// codes in one plane of those tables, codes of 3 to 4 bits in one nibble plane.
    Int8LutAvx2,
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
    pub const ALL: [KernelKind; 22] = [
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
        KernelKind::Int8DotAmx,
        KernelKind::Int8LutAvx512,
        KernelKind::Int8LutAvx2,
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
            KernelKind::Int8DotAmx => "int8-dot/amx",
            KernelKind::Int8LutAvx512 => "int8-lut/avx512",
            KernelKind::Int8LutAvx2 => "int8-lut/avx2",
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
            | KernelKind::Int8DotAmx
            | KernelKind::Int8LutAvx512
            | KernelKind::Int8LutAvx2
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
/// A step requantization by per-channel thresholds (`quant::step_rows`).
pub(crate) type StepRowsFn = fn(&quant::Steps<'_>, &[i32], &mut [u8]);

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
    /// Requantization into 1- and 2-bit codes by thresholds.
    pub step_rows: StepRowsFn,
}

impl RowOps {
    /// The portable variants.
    pub(crate) const PORTABLE: RowOps = RowOps {
        requant: quant::requant,
        add_rows: quant::add_rows,
        pack_bits: portable::pack_bits,
        step_rows: quant::step_rows,
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

/// A table-lookup kernel over the tables of [`Tables::build`].
pub(crate) type TableRun = fn(&ConvShape, &[u16], &[u8], usize, usize, &mut [i32]);

/// A table-lookup kind's three parts: its input's length, the builder of that input and the
/// kernel over it.
#[derive(Clone, Copy)]
pub(crate) struct Tables {
    /// `u16`s of the input: the tables of every padded pixel, then the sums of its codes.
    pub len: fn(&ConvShape) -> usize,
    /// Unpadded HWC codes and the pad code in, `len` `u16`s of tables out.
    pub build: fn(&ConvShape, &[u8], u8, &mut [u16]),
    /// The kernel over the tables.
    pub run: TableRun,
}

/// How a kernel consumes its input.
#[derive(Clone, Copy)]
pub(crate) enum Run {
    /// Padded HWC bytes.
    Bytes(ByteRun),
    /// Padded bit planes.
    Bits(BitRun),
    /// Tables of code sums per padded pixel and group of 4 to 6 channels, built once per
    /// layer (x86 only).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Tables(Tables),
}

/// Channels per `u16` table of the table-lookup kernel (a table has `2^LUT_K` entries), for
/// codes of 3 to 8 bits.
pub(crate) const LUT_K: usize = 5;

/// Channels per byte table of the table-lookup kernel (`2^LUT_K8` entries), for codes of up
/// to 2 bits: a sum of 6 of them is at most 18 and fits a byte. Either table is 64 bytes.
pub(crate) const LUT_K8: usize = 6;

/// Whether a table-lookup kernel can run the shape: 1- or 2-bit weights (a plane of sign
/// weights per bit, looked up in the same tables), 2- to 8-bit codes.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) fn lut_fits(s: &ConvShape) -> bool {
    s.wbits <= 2 && s.abits >= 2 && s.kw <= LUT_MAX_KW
}

/// The widest kernel row of the table-lookup kernels: a row's lookups are taken together and
/// must fit the narrowest run of byte sums (14 lookups of 6 two-bit codes).
pub(crate) const LUT_MAX_KW: usize = 14;

/// Whether the AVX2 table-lookup kernel can run the shape: 1- or 2-bit weights, 2- to 8-bit
/// codes (those of 5 to 8 bits over byte sub-tables of 3 channels, [`lut_avx2_trios`], whose
/// `u16` runs hold 128 lookups; those of 2 to 4 bits over byte tables, whose byte sums must hold
/// a kernel row's lookups: `kw <= 255 / (4 * largest code)`, 21 for 2-bit codes, 9 for 3-bit,
/// 4 for 4-bit), and a kernel row of at most [`LUT_MAX_KW`].
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) fn lut_avx2_fits(s: &ConvShape) -> bool {
    let kw_max = if lut_avx2_trios(s) {
        LUT_MAX_KW
    } else {
        lut_avx2_byte_kw(s.abits)
    };
    s.wbits <= 2 && s.abits >= 2 && s.kw <= kw_max
}

/// The widest kernel row whose lookups the AVX2 byte tables of 4 channels hold in their byte
/// sums for codes of `abits` (nibbles above 4 bits): `255 / (4 * largest code)`, at most
/// [`LUT_MAX_KW`].
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) fn lut_avx2_byte_kw(abits: u8) -> usize {
    LUT_MAX_KW.min(255 / (4 * ((1usize << abits.clamp(2, 4)) - 1)))
}

/// Whether the AVX2 table lookup takes byte sub-tables of 3 channels for the shape (codes of 5
/// to 8 bits, `x86::lut::trios`), with the AVX2 int8 dot as the fallback where a sum of 3 codes
/// of the layer's input passes a byte; else byte tables of 4 channels (codes of 2 to 4 bits).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) fn lut_avx2_trios(s: &ConvShape) -> bool {
    s.abits > 4
}

/// Whether the AMX int8 dot can run the shape: one group, input channels a multiple of 64
/// (a tile's 64 bytes of a pixel) and output channels a multiple of 16 (a tile's columns).
// `%` rather than `is_multiple_of`: the workspace's MSRV is 1.85.
#[allow(clippy::manual_is_multiple_of)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) fn amx_fits(s: &ConvShape) -> bool {
    s.groups == 1 && s.cin_g % 64 == 0 && s.cout_g % 16 == 0
}

/// Target size of one chunk of conv accumulators: the driver runs a kernel over as many output
/// rows as fit (at least one), then corrects and requantizes them while they are in the L1
/// cache.
pub(crate) const ACC_CHUNK: usize = 16 * 1024;

/// The accumulator chunk of kernel `kind`: [`ACC_CHUNK`], and four times that for the AMX and
/// VNNI dots, whose calls read every weight of their blocks once for all the call's pixels (the
/// AMX dot also expands each tile of 1-bit weights once a call). On ResNet18-CIFAR's 4x4 layers
/// a call then takes the whole layer instead of half of it, so their 2.36 MB of byte weights
/// come from memory once instead of twice: the W1A8 network 12 % faster with AMX (16 times as
/// much changed nothing more); with the VNNI dot forced on an Intel Xeon without AMX, the
/// 512-channel convs 22 % faster and the other layers level, the network about 9 %. The AVX2
/// dot (one block of 16 channels a tile, compute-bound) ran its 512-channel convs 10-20 %
/// slower with 64 KiB calls, and the table lookups were level: they keep 16 KiB.
pub(crate) fn acc_chunk(kind: KernelKind) -> usize {
    match kind {
        KernelKind::Int8DotAmx | KernelKind::Int8DotVnni => 4 * ACC_CHUNK,
        _ => ACC_CHUNK,
    }
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
/// kernel needs 1- or 2-bit weights and 2- to 8-bit codes ([`lut_fits`]), the AMX dot whole
/// tiles of channels ([`amx_fits`]). (The default rule reaches
/// the table-lookup kernel through `select`, which checks the shape; a kernel named in
/// [`crate::PlanOptions::kernel`] and the tests ask this.)
pub(crate) fn kind_fits(kind: KernelKind, s: &ConvShape) -> bool {
    kind.algo().is_some_and(|a| algo_fits(a, s))
        && (kind != KernelKind::Int8LutAvx512 || lut_fits(s))
        && (kind != KernelKind::Int8LutAvx2 || lut_avx2_fits(s))
        && (kind != KernelKind::Int8DotAmx || amx_fits(s))
}

/// The kernels the planner may give a conv of algorithm `algo`: the best prepared one in
/// `model` ([`select`], or the portable one when `portable_only`) and the portable in-place
/// one.
fn candidates(
    algo: Algo,
    s: &ConvShape,
    portable_only: bool,
    model: CostModel,
) -> [Option<ConvKernel>; 2] {
    if !algo_fits(algo, s) {
        return [None, None];
    }
    let prepared = if portable_only {
        portable::kernel(algo)
    } else {
        select(algo, s, model)
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
        for k in candidates(algo, s, portable_only, model)
            .into_iter()
            .flatten()
        {
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
        for k in candidates(algo, s, portable_only, model)
            .into_iter()
            .flatten()
        {
            let key = ((k.prepared_len)(s), cost(k.kind, s, model));
            if best.as_ref().is_none_or(|(b, _)| key < *b) {
                best = Some((key, k));
            }
        }
    }
    best.map(|(_, k)| k)
}

/// The best available kernel for `algo` and shape: an ISA-specific one when the CPU has it
/// (the cheapest in `model` where several run the shape), else the portable one. `None` for
/// [`Algo::Reference`] (the driver runs it directly).
pub(crate) fn select(algo: Algo, s: &ConvShape, model: CostModel) -> Option<ConvKernel> {
    if !algo_fits(algo, s) {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(k) = x86::select(algo, s, model) {
        return Some(k);
    }
    let _ = model;
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
