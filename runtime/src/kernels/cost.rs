//! The planner's cost tables: what one kernel step costs on each kind of CPU.

use super::{Algo, ConvShape, KernelKind, ACC_CHUNK, LUT_K8};

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
    /// Measured on x86-64 desktop cores: the portable and AVX2 rows on an AVX2-only core, the
    /// AVX-512 rows on a Zen 5 core. The NEON and in-place rows are estimates, and say so.
    Desktop,
    /// [`CostModel::Desktop`] with the AVX-512 table lookup measured on an Intel Xeon
    /// (Emerald Rapids class, its AMX denied so that the VNNI dot and the lookups competed):
    /// `vpermw` issues on one port of an Intel core, where a Zen 5 core has two, and the
    /// lookups over 16-bit tables (codes of 3 to 8 bits) ran behind the VNNI dot on every
    /// layer. [`CostModel::native`] picks it on Intel CPUs.
    DesktopIntel,
    /// [`CostModel::Desktop`] with the AVX-512 table lookup over 16-bit tables measured on an
    /// AMD Zen 4 core (a 2-vCPU EPYC, family 19h): its 512-bit instructions run on 256-bit
    /// datapaths, `vpdpbusd` and `vpermw` one a cycle each (two on a Zen 5 core), and whole
    /// layers of the W1A8 network ran the lookups ahead of the VNNI dot from 64 channels.
    /// [`CostModel::native`] picks it on Zen 4.
    DesktopZen4,
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

    /// The table for the CPU this runs on: [`CostModel::DesktopIntel`] on an Intel x86-64 CPU,
    /// [`CostModel::DesktopZen4`] on an AMD Zen 4 (both read from CPUID once, with or without
    /// `std`), else [`CostModel::NATIVE`]. [`crate::PlanOptions`]' default.
    pub fn native() -> CostModel {
        #[cfg(target_arch = "x86_64")]
        {
            if super::x86::intel() {
                return CostModel::DesktopIntel;
            }
            if super::x86::zen4() {
                return CostModel::DesktopZen4;
            }
        }
        CostModel::NATIVE
    }
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
        // AMX (`tdpbusd`): measured on an Intel Xeon with AMX (Emerald Rapids class) against
        // the VNNI dot on the same core, every layer of the W1A8 ResNet18-CIFAR network timed
        // in the network with each kernel forced (docs/PERFORMANCE.md, "The int8 dot with
        // AMX"): 3x3 convs 2.0-2.5x the dot's speed at 64 channels, 2.6-3.0x at 128 and 256,
        // 3.4x at 512 (4x4 outputs), 1.6-2.0x strided; 1x1 convs 1.1-1.3x: `16 / 2.6`. On
        // that core the table lookup ran below the dot (the rows above are Zen 5's).
        KernelKind::Int8DotAmx => 6,
        // Per 64 multiply-adds of the lookups; building the tables costs `LUT_TABLE_COST`
        // more per table (see `cost`). Calibrated against `Int8DotVnni`'s 16 with the
        // kernel-only timing on a Zen 5 core (docs/PERFORMANCE.md): the dot ran 480-510
        // MAC/ns on 3x3 layers, the lookups 570-740 (400 at 64 channels), a table 1.1 ns.
        // On an Intel Xeon, whole layers of the W1A8 network with each kernel forced ran the
        // lookups 1.7x the dot's time at 64 channels, 1.4x at 128, 1.3x at 256 and 1.04x at
        // 512 (4x4 outputs, where the dot waits on its weights). 20 gives 1.5x, 1.4x, 1.35x
        // and 1.3x: every 3x3 layer behind the dot, as measured (docs/PERFORMANCE.md, "Intel
        // without AMX").
        // (The byte tables of 1- and 2-bit codes have their own costs, below, which rank
        // those layers on that Xeon as measured.)
        KernelKind::Int8LutAvx512 if model == CostModel::DesktopIntel => 20,
        // On an AMD Zen 4 core (2-vCPU EPYC, family 19h), whole layers of the W1A8 network with
        // each kernel forced (TSC ticks a layer, 4 rounds alternating) ran the lookups in
        // 0.90-0.94x the dot's time at 64 channels, 0.83x on the stride-2 conv into 256
        // channels, 1.05x on the one into 128, 1.5x on the 3-channel stem and 1.2-2.5x on the
        // 1x1 convs. 11 gives 0.92x at 64 channels, 0.95x into 256, 1.14x into 128, 1.11x on
        // the stem and 1.6-4.3x on the 1x1 convs: those ranks (the 128- to 512-channel 3x3
        // convs were the lookup's with 13 already). The network 0.91x the time it took with 13
        // (median of 10 alternating rounds; docs/PERFORMANCE.md, "W1A8 on a Zen 4 core").
        KernelKind::Int8LutAvx512 if model == CostModel::DesktopZen4 => 11,
        KernelKind::Int8LutAvx512 => 13,
        // Per 64 multiply-adds of the lookups (`vpshufb`, 32 output channels x 4 inputs), the
        // tables `LUT_AVX2_TABLE_COST` each. Measured against the AVX2 dot's 40 on whole W1A2
        // layers, the AVX2 code on a Zen 5 core (`benches/`, group `kernel`, at 56b44be;
        // docs/PERFORMANCE.md): 1.63x the dot's speed at 64 channels, 2.0x at 128, 2.5x at
        // 256, 2.7x at 512, 1.13x on the 1x1 layer; 15 and 160 a table put each within 20 %
        // and rank them as measured. Not measured on an AVX2-only core, where `vpshufb` may
        // issue less often.
        KernelKind::Int8LutAvx2 => 15,
        // VPOPCNTQ instead of the AVX2 nibble-table popcount. Both measured on whole layers
        // on a Zen 5 core against the VNNI dot's 16 (`benches/`, group `kernel`, at fce77e4;
        // docs/PERFORMANCE.md, "One conv layer per kernel"): `16 * dot MAC/ns / kernel MAC/ns`
        // on the ResNet18-CIFAR 3x3 layers. XNOR at W1A1: 9.1 at 64 channels (528 against
        // 300 MAC/ns), 6.0 at 128, 5.0 at 256, 3.3 at 512, 13 on the 1x1 layer. Bit-serial per
        // plane pair, at W1A2, where it competes with the dot: 10.5 at 64 channels (212
        // against 277), 9.1 at 128, 9.3 at 256, 7.1 at 512 (at W1A1 it runs as fast as XNOR,
        // which the planner prefers there). Its first figure, 8, was an estimate that gave
        // W1A2's 64-channel, stride-2 and 1x1 layers to it (the network 1.7x slower).
        KernelKind::BitSerialAvx512 => 9,
        KernelKind::XnorAvx512 => 6,
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

/// The `u16` table lookup's costs on [`CostModel::DesktopZen4`] besides its steps: a table, and
/// an output element. Fitted on that Zen 4 core after the tables came to be built with
/// `vpdpbusd` (two and a pack a table, from 3 `vpermb`, 3 `vpmaddubsw` and 2 adds): about 1.3
/// ns a table (`perf`: 7.6 % of the W1A8 network for its 125 k tables), 65 units at the 2.9 ns
/// an output the VNNI dot (16 a step) took on the stride-2 conv into 128 channels. Whole layers,
/// each kernel forced, then ran the lookup at 1.53x the dot's time on the 3-channel stem, 0.80x
/// at 64 channels, 0.86x on the stride-2 conv into 128, 0.65x at 128, 0.57-0.63x above, 1.3-2.0x
/// on the 1x1 downsample convs into 128 and 256 and 0.91x on the one into 512. 65 a table and 5 an
/// output give 1.54x, 0.83x, 0.94x, 0.77x, 0.7-0.8x, 1.5-2.4x and 1.2x: those ranks but the last
/// (about a microsecond); without the 5 the stem's lookup would tie the dot's 9. These are the
/// `u16` tables' costs: where every 4 channels' codes sum to at most 255 the kernel now takes
/// byte sub-tables instead (`x86::lut::quads`), 0.65-0.8x those layers' time on that core, which
/// these rows do not model (the choice depends on the activations; the `u16` figures bound it,
/// and the ranks they give are unchanged: the lookup was already ahead on every 3x3 conv but the
/// stem, and behind on the 1x1 ones, as it still measures).
const LUT_ZEN4_COSTS: (u64, u64) = (65, 5);

/// Cost of building one table of the AVX2 table lookup (4 channels, 16 bytes), in
/// [`step_cost`]'s desktop units (see its `Int8LutAvx2` entry).
const LUT_AVX2_TABLE_COST: u64 = 160;

/// The AVX2 table lookup's step cost per 64 multiply-adds of one nibble plane (codes of 3 to
/// 8 bits are looked up as two planes of 4 bits, [`LUT_AVX2_TABLE_COST`] a table of each).
/// Byte sums of nibbles (entries up to 60) are widened after every kernel row (3 lookups)
/// instead of every 7 rows of 2-bit codes. Fitted to whole layers of the W1A8 ResNet18-CIFAR
/// network, each kernel forced, the AVX2 dot's cost beside it (docs/PERFORMANCE.md): time of
/// the lookup / time of the dot, after the runs sized by the tables' largest entry (c3c6cde),
/// on a Zen 4 core with AVX-512 denied (`SLB_NO_AVX512=1`; its 256-bit datapaths are Zen 3's)
/// 1.08-1.10 at 64 channels, 0.97-1.00 at 128, 0.83-0.90 at 256 and 0.57-0.58 at 512 (4x4
/// outputs), 1.21 / 1.03 / 0.70 on the stride-2 3x3 convs into 128 / 256 / 512, 2.4-3.5 on
/// the 1x1 ones, 1.27 on the 3-channel stem; the model's ratios 1.10, 0.99, 0.94, 0.57, 1.35 /
/// 1.13 / 0.64, 4.8, 1.09. (Before c3c6cde, on an AVX2-only Zen 3 EPYC: 1.24, 1.15, 0.99,
/// 0.68, fitted by 19; the same ratios times the 0.77-0.91 the longer runs gave the lookup on
/// the Zen 4 core agree with the figures above.)
const LUT_AVX2_NIBBLE_STEP: u64 = 17;

/// The AVX2 table lookup's costs over byte sub-tables of 3 channels (`x86::lut::trios`, codes
/// of 5 to 8 bits), in [`step_cost`]'s desktop units: a step per 64 multiply-adds (a group of
/// 6 channels, a lookup of 16 output channels), a table (16 bytes, 6 channels) and an output
/// element. Fitted to whole layers of the W1A8 ResNet18-CIFAR network on a Zen 4 core with
/// AVX-512 denied (`SLB_NO_AVX512=1`), each kernel forced, the AVX2 dot's 40 beside it (time
/// of the lookup / time of the dot, medians of 3 alternating rounds; docs/PERFORMANCE.md,
/// "Byte sub-tables for AVX2"): 0.79 at 64 channels, 0.69 at 128, 0.62 at 256 (the three
/// points of the fit), 0.41 at 512 (4x4 outputs), 0.72 and 0.50 on the stride-2 3x3 convs
/// into 256 and 512, 1.3 on the 3-channel stem, 1.5-4.3 on the 1x1 convs; on six CIFAR-10
/// test images 0.71-0.94 at 64 channels. A table is the builder's share of the profile (2.1
/// ns). Where a sum of 3 codes passes 254 the kernel falls back to the AVX2 dot, or to two
/// nibble planes where they cost less ([`lut_avx2_falls_back_to_dot`]; with the dot, a
/// 64-channel layer of the synthetic input that falls back ran 1.02-1.07x the dot's time, the
/// build stopping at the first row that does not fit), which these costs leave out: the choice
/// depends on the activations.
const LUT_AVX2_TRIO_COSTS: (u64, u64, u64) = (22, 160, 44);

/// Prepared weights of the int8 dot beyond which [`dot_avx2_stream`] counts their reading.
const DOT_AVX2_STREAM_MIN: u64 = 1 << 20;

/// The AVX2 dot's cost of reading its weights, per output element, where they exceed
/// [`DOT_AVX2_STREAM_MIN`] bytes (more than the L2 cache of most desktop cores): a call of
/// [`ACC_CHUNK`] accumulators reads every weight once, so an output element costs `4 /
/// ACC_CHUNK` of the weight bytes, 3 units a byte. On the Zen 3 EPYC of
/// [`LUT_AVX2_NIBBLE_STEP`] the 512-channel 3x3 convs at 4x4 outputs (2.36 MB of byte
/// weights) ran the dot 1.55x as long as a 64-channel conv of the same multiply-adds; the
/// 256-channel ones (0.59 MB) as long. The per-step costs leave that out, and without it the
/// dot kept the 512-channel convs, where the table lookup (a quarter of the weight bytes) ran
/// in 0.68x its time.
fn dot_avx2_stream(s: &ConvShape) -> u64 {
    let bytes =
        (s.groups * s.cout_g.div_ceil(16) * 16 * s.kh * s.kw * s.cin_g.div_ceil(4) * 4) as u64;
    if bytes > DOT_AVX2_STREAM_MIN {
        bytes * 4 * 3 / ACC_CHUNK as u64
    } else {
        0
    }
}

/// The table-lookup kernel's step cost over byte tables (codes of up to 2 bits, 6 channels a
/// table), per 64 multiply-adds of the lookups of one weight plane, and its cost per output
/// element besides the lookups and the tables ([`LUT8_OUTPUT_COST`]). Whole layers on a Zen 5
/// core (`benches/`, group `kernel`; docs/PERFORMANCE.md) ran the lookup, against the VNNI
/// dot, at W1A2 1.07-1.13x the dot's speed at 64 channels, 1.8x at 128, 2.1x at 256, 3.2x at
/// 512 and 0.97x on the 1x1 layer; at W2A2 (two planes over the same tables) 0.88x at 64
/// channels, 1.30x at 128, 1.35x at 256, 1.81x at 512 and 0.86x on the 1x1 layer. A second
/// plane costs far less than the first at 64 channels, where a tile has one block of output
/// channels for its table loads: 3 a step and 70 an output, halved where the tile has two
/// blocks, fit both bit pairs (each ratio within about 30 %) and rank them as measured; 6 a
/// step and nothing more, the figure fitted to W1A2 alone, gave W2A2's 64-channel layers to
/// the lookup (the network 6 % slower), and 70 an output whatever the blocks gave W1A2's
/// stride-2 conv into 128 channels to the dot (the network 2.6 % slower).
const LUT8_STEP_COST: u64 = 3;

/// The byte-table lookup's cost per output element besides its lookups and tables, with one
/// block of output channels a tile (see [`LUT8_STEP_COST`]).
const LUT8_OUTPUT_COST: u64 = 70;

/// [`CostModel::CortexM4`]'s step cost of the int8 dot in place on 1-bit weights (the
/// sign-weight `USADA8` sums of `portable::int8::sign_weight_in_place_body`), per 64 multiply-adds:
/// `340 * 37.94 / 152.28` (the 64 -> 64 channel 3x3 conv at 32x32 of `scripts/mcu-test.sh
/// costs`, in place against prepared; 0.24-0.27x on the other widths, 0.34x at 4x4). Below
/// prepared XNOR's 125 per 64-channel word, so W1A1 convs read their codes in place too.
const SIGN_WEIGHT_IN_PLACE_M4: u64 = 85;

/// The AVX2 table lookup over byte tables of 4 channels (`x86::lut::avx2`), `step` a step
/// of 2-bit codes: as the AVX-512 lookup's, a set of lookups and tables per code plane (codes
/// of 3 to 8 bits: nibbles, each a plane), a step of a nibble plane `LUT_AVX2_NIBBLE_STEP`.
fn lut_avx2_tables_cost(s: &ConvShape, step: u64) -> u64 {
    let taps = (s.kh * s.kw) as u64;
    let (planes, step) = if s.abits > 2 {
        (u64::from(s.abits.div_ceil(4)), LUT_AVX2_NIBBLE_STEP)
    } else {
        (1, step)
    };
    let gn = s.cin_g.div_ceil(4) as u64;
    let tables = (s.hp * s.wp) as u64 * gn * LUT_AVX2_TABLE_COST * planes;
    let outputs = ((s.oh * s.ow) as u64 * s.cout_g as u64).max(1);
    taps * step * gn * 4 * u64::from(s.wbits) * planes / 64 + tables / outputs
}

/// Whether the AVX2 table lookup's fallback from its byte sub-tables of 3 channels (where a
/// layer's input does not fit them) is the AVX2 int8 dot rather than two nibble planes of byte
/// tables: where the dot costs less on the AVX2 cost table ([`CostModel::Desktop`]). With the
/// dot everywhere, the synthetic W1A8 model (all of whose lookup layers fall back) ran its
/// 512-channel convs 1.3-1.5x slower than on the nibbles; with the nibbles everywhere, its
/// 64-channel convs 1.5x slower than on the dot (docs/PERFORMANCE.md, "The fallback").
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) fn lut_avx2_falls_back_to_dot(s: &ConvShape) -> bool {
    let step = u64::from(step_cost(KernelKind::Int8LutAvx2, CostModel::Desktop));
    lut_avx2_tables_cost(s, step) >= cost(KernelKind::Int8DotAvx2, s, CostModel::Desktop)
}

/// Estimated cost of one output element (all taps) with kernel `kind`.
pub(crate) fn cost(kind: KernelKind, s: &ConvShape, model: CostModel) -> u64 {
    let taps = (s.kh * s.kw) as u64;
    let step = if model == CostModel::CortexM4 && kind == KernelKind::Int8DotInPlace && s.wbits == 1
    {
        SIGN_WEIGHT_IN_PLACE_M4
    } else {
        u64::from(step_cost(kind, model))
    };
    if kind == KernelKind::Int8LutAvx2 {
        if step == u64::from(u32::MAX) {
            return u64::MAX;
        }
        if super::lut_avx2_trios(s) {
            // Byte sub-tables of 3 channels, 6 a group: lookups, tables and outputs.
            let (step, table, output) = LUT_AVX2_TRIO_COSTS;
            let gn = s.cin_g.div_ceil(6) as u64;
            let tables = (s.hp * s.wp) as u64 * gn * table;
            let outputs = ((s.oh * s.ow) as u64 * s.cout_g as u64).max(1);
            let lookups = taps * step * gn * 6 * u64::from(s.wbits);
            return (lookups * outputs / 64 + tables) / outputs + output;
        }
        return lut_avx2_tables_cost(s, step);
    }
    if kind == KernelKind::Int8LutAvx512 {
        if step == u64::from(u32::MAX) {
            return u64::MAX;
        }
        // The lookups (a plane of them per weight bit), then the tables of every padded input
        // pixel shared by the outputs and the planes.
        let (gn, k) = (s.lut_groups() as u64, s.lut_k() as u64);
        let (step, fixed) = if s.lut_k() == LUT_K8 {
            // The byte kind's tiles take two blocks of 64 output channels where there are.
            let blocks = s.cout_g.div_ceil(64).clamp(1, 2) as u64;
            (LUT8_STEP_COST, LUT8_OUTPUT_COST / blocks)
        } else {
            (step, 0)
        };
        let (table, output) = match model {
            CostModel::DesktopZen4 if s.lut_k() != LUT_K8 => LUT_ZEN4_COSTS,
            _ => (LUT_TABLE_COST, 0),
        };
        let tables = (s.hp * s.wp) as u64 * gn * table;
        let outputs = ((s.oh * s.ow) as u64 * s.cout_g as u64).max(1);
        // Summed before one division: rounding each term down tied the 3-channel stem's
        // lookup (7.7 + 2.5) with the dot's 9 on a Zen 4 core.
        let lookups = taps * step * gn * k * u64::from(s.wbits);
        return (lookups * outputs / 64 + tables) / outputs + fixed + output;
    }
    match kind.algo() {
        // Int8: cin_g multiply-adds per tap, in units of 64.
        Some(Algo::Int8Dot) => {
            let stream = if kind == KernelKind::Int8DotAvx2 && model != CostModel::CortexM4 {
                dot_avx2_stream(s)
            } else {
                0
            };
            taps * step * (s.cin_g as u64).div_ceil(4) * 4 / 64 + stream
        }
        Some(Algo::BitSerial) => {
            taps * step * s.cw as u64 * u64::from(s.wbits) * u64::from(s.abits)
        }
        Some(Algo::Xnor) => taps * step * s.cw as u64,
        _ => u64::MAX,
    }
}
