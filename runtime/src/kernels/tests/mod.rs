//! The kernel tests, the only ones: every kernel kind this build and CPU has against
//! `reference::conv_acc`, bit for bit, through the conv driver's own steps (prepare, pad or
//! pack, run over row chunks, correct), over awkward shapes; the ISA variants against the CPU's
//! features; the bit packers against their reference.

use proptest::prelude::*;

use super::{portable, reference, Algo, ConvKernel, ConvShape, KernelKind, RowOps, Run};
use crate::testutil::Rng;

mod harness;

use harness::*;
pub(crate) use harness::{algo_kernel, kernel_exact};

/// The SIMD kinds `by_kind` hands out are exactly those whose instructions this CPU has
/// (detected here independently), so the shared proptests run every variant the CPU supports;
/// and every kind named by `SLB_REQUIRE_KERNELS` (a comma list matched against kind names,
/// e.g. `avx512`, `avx2`, `neon`, `int8-dot/neon-sdot`) is available, else the test fails. A
/// CPU without AVX-512 is legitimate (the development machine): a line says which kernels did
/// not run.
/// Whether the CPU has AMX-TILE and AMX-INT8 (CPUID leaf 7, EDX bits 24 and 25, asked here
/// independently of the runtime's detection) and the OS grants AMX's state (Linux 5.16 and
/// later grant it to any process that asks; the runtime's request, the only way to ask): the
/// AMX kernel must be available exactly then.
#[cfg(target_arch = "x86_64")]
fn amx_int8() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    let cpu = __cpuid(0).eax >= 7 && __cpuid_count(7, 0).edx >> 24 & 3 == 3;
    #[cfg(target_os = "linux")]
    return cpu && super::x86::request_amx();
    #[cfg(not(target_os = "linux"))]
    return false;
}

#[test]
fn isa_variants_match_the_cpu() {
    #[cfg(target_arch = "x86_64")]
    let cpu: Vec<(KernelKind, bool)> = {
        use std::arch::is_x86_feature_detected as has;
        let avx2 = has!("avx2");
        let f = has!("avx512f") && has!("avx512bw");
        let (vnni, popcnt) = (f && has!("avx512vnni"), f && has!("avx512vpopcntdq"));
        if !(vnni && popcnt) {
            report(&format!(
                "kernels: AVX-512 NOT TESTED on this CPU (avx512f+bw: {f}, vnni: {vnni}, \
                 vpopcntdq: {popcnt}): int8-dot/avx512-vnni, xnor-popcnt/avx512 and \
                 bitserial-popcnt/avx512 did not run; run the tests on an AVX-512 CPU with \
                 SLB_REQUIRE_KERNELS=avx512"
            ));
        }
        vec![
            (KernelKind::XnorAvx2, avx2),
            (KernelKind::BitSerialAvx2, avx2),
            (KernelKind::Int8DotAvx2, avx2),
            (KernelKind::Int8DotVnni, vnni),
            (KernelKind::Int8LutAvx2, avx2),
            (KernelKind::Int8LutAvx512, vnni && has!("avx512vbmi")),
            (KernelKind::Int8DotAmx, amx_int8()),
            (KernelKind::XnorAvx512, popcnt),
            (KernelKind::BitSerialAvx512, popcnt),
        ]
    };
    #[cfg(target_arch = "aarch64")]
    let cpu: Vec<(KernelKind, bool)> = {
        use std::arch::is_aarch64_feature_detected as has;
        let (neon, dot) = (has!("neon"), has!("neon") && has!("dotprod"));
        vec![
            (KernelKind::XnorNeon, neon),
            (KernelKind::BitSerialNeon, neon),
            (KernelKind::Int8DotNeon, neon),
            (KernelKind::Int8DotSdot, dot),
        ]
    };
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let cpu: Vec<(KernelKind, bool)> = Vec::new();
    for (kind, has) in cpu {
        assert_eq!(
            super::by_kind(kind).is_some(),
            has,
            "{kind}: the CPU has its instructions: {has}"
        );
        if has {
            report(&format!("kernels: {kind} runs on this CPU"));
        }
    }
    let required = std::env::var("SLB_REQUIRE_KERNELS").unwrap_or_default();
    for want in required.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        let kinds: Vec<KernelKind> = KernelKind::ALL
            .into_iter()
            .filter(|k| k.algo().is_some_and(|a| a != Algo::Reference) && k.name().contains(want))
            .collect();
        assert!(
            !kinds.is_empty(),
            "SLB_REQUIRE_KERNELS: no kernel kind matches {want:?}"
        );
        for kind in kinds {
            assert!(
                super::by_kind(kind).is_some(),
                "SLB_REQUIRE_KERNELS={required}: {kind} is required but not available on this CPU"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
    /// Every optimized kernel equals the reference bit for bit over awkward shapes.
    #[test]
    fn kernels_match_reference(c in case()) {
        let ran = check_case(&c);
        // Int8Dot and BitSerial run every shape; Xnor adds itself for W1A1.
        prop_assert!(ran >= 2);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    /// The AMX dot's shapes (one group, input channels a multiple of 64, output channels of
    /// 16): every kernel against the reference, with rows narrower and wider than a tile's 16
    /// pixels (the last chunk of a row overlapping the one before), strides 1 and 2, 1x1 and
    /// 3x3 kernels, one or two blocks a register tile, and calls of 1 to 5 rows. The AMX dot
    /// must be among the kernels exactly where the CPU has it.
    #[test]
    fn kernels_match_reference_on_amx_shapes(
        cin_g in prop::sample::select(vec![64u32, 128]),
        cout_g in prop::sample::select(vec![16u32, 32, 48]),
        (h, w) in (1u32..=5, 1u32..=37),
        k in prop::sample::select(vec![1u16, 3]),
        stride in 1u16..=2,
        pad in 0u16..=1,
        (wbits, abits) in (prop::sample::select(vec![1u8, 2, 4]), prop::sample::select(vec![1u8, 2, 8])),
        rows in 1usize..=5,
        seed in any::<u64>(),
    ) {
        prop_assume!(h + 2 * u32::from(pad) >= u32::from(k) && w + 2 * u32::from(pad) >= u32::from(k));
        let c = Case {
            h,
            w,
            k: (k, k),
            stride: (stride, stride),
            pad: (pad, pad),
            rows,
            zp: if abits == 1 { 0 } else { (seed % (1 << abits)) as i32 },
            ..Case::new(cin_g, cout_g, wbits, abits, seed)
        };
        let amx = |s: &ConvShape| {
            let k: Vec<ConvKernel> = kernels_for(s)
                .into_iter()
                .filter(|k| k.kind == KernelKind::Int8DotAmx)
                .collect();
            #[cfg(target_arch = "x86_64")]
            assert_eq!(k.len(), usize::from(amx_int8()), "{s:?}");
            k
        };
        check_case_with(&c, amx);
    }
}

/// The AMX dot's sums at their extremes: every weight the largest or smallest numerator and
/// every code 255 over 9 taps of 256 channels (2.9 M in magnitude at 2-bit weights).
#[test]
fn amx_at_the_extremes() {
    for (wbits, code) in [(1u8, 1u8), (2, 0), (4, 15), (4, 0)] {
        let c = Case {
            h: 3,
            w: 18,
            zp: 0,
            rows: 3,
            ..Case::new(256, 32, wbits, 8, 11)
        };
        let codes = vec![code; weight_count(&c)];
        let x = vec![255u8; input_count(&c)];
        assert!(check_inputs(&c, &codes, &x, kernels_for) >= 2);
    }
}

#[test]
fn kernels_match_reference_on_wide_inputs() {
    // More input channels than one block of the in-place int8 kernel (256) and than four
    // 64-channel words, for every weight width, 8- and 1-bit activations.
    let mut total = 0;
    for wbits in [1u8, 2, 4] {
        for abits in [1u8, 8] {
            let c = Case {
                zp: if abits == 1 { 0 } else { 77 },
                ..Case::new(300, 5, wbits, abits, 99 + u64::from(wbits * abits))
            };
            total += check_case(&c);
        }
    }
    assert!(total >= 2 * 3 * 2);
}

/// The table lookups' narrow sums at their bounds: every weight `+1` and every code at its
/// maximum make each lookup the largest its table holds (6 x 3 in an AVX-512 byte table and 4 x
/// 3 in an AVX2 one at 2 bits, 5 x 255 and 5 x 15 in a `u16` table at 8 and 4 bits, 4 x 15 in
/// each nibble plane of an AVX2 table at 8 and 4 bits), over more steps than a run of byte sums
/// (14 and 21 at 2 bits) and of `u16` sums (3,640 and 5,461; 51 and 873; 1,092 for the
/// nibbles: 1,350 lookups here) holds: one step more than any of them overflows. Every other
/// kernel of the shape runs too.
#[test]
fn kernels_match_reference_at_the_table_sums_bounds() {
    let mut total = 0;
    for (abits, cin_g, cout_g) in [(2u8, 2500u32, 150u32), (8, 600, 70), (4, 600, 70)] {
        let c = Case {
            pad: (0, 0),
            zp: 0,
            rows: 1,
            ..Case::new(cin_g, cout_g, 1, abits, 5)
        };
        let codes = vec![1u8; weight_count(&c)];
        let x = vec![((1u16 << abits) - 1) as u8; input_count(&c)];
        total += check_inputs(&c, &codes, &x, kernels_for);
    }
    assert!(total >= 3 * 2);
}

/// The table lookups' runs sized by the largest entry the builder found rather than by the
/// codes' range: every code the same value below the maximum makes each lookup exactly that
/// bound (5 x 53 = 265 in a `u16` table: runs of 247 lookups; nibble planes of 4 x 5 and 4 x 3:
/// byte runs of 12 and 21; 6 x 2 = 12 in a byte table at 2 bits: 21), over several runs of
/// each (1,500 and 2,500 lookups): a run one lookup longer than its bound allows overflows.
#[test]
fn kernels_match_reference_at_the_tables_largest_entry() {
    let mut total = 0;
    for (abits, code, cin_g) in [(8u8, 0x35u8, 1500u32), (4, 9, 1500), (2, 2, 2500)] {
        let c = Case {
            pad: (0, 0),
            zp: 0,
            rows: 1,
            ..Case::new(cin_g, 70, 1, abits, 6)
        };
        let codes = vec![1u8; weight_count(&c)];
        let x = vec![code; input_count(&c)];
        total += check_inputs(&c, &codes, &x, kernels_for);
    }
    assert!(total >= 3 * 2);
}

/// The lookups over byte sub-tables and their fallbacks: the AVX-512 kind's sub-tables of 4
/// channels (`Quads`, codes of 3 to 8 bits; fallback `u16` tables) and the AVX2 kind's of 3
/// (`Trios`, codes of 5 to 8 bits; fallback two nibble planes). Each kind takes its sub-tables
/// exactly where every sub-table's codes (and as many pad codes) sum to at most its limit (255
/// for 4 channels, with channels a multiple of 4; 254 for 3, whose saturated sums cannot be
/// told from 255), a sum one above it
/// anywhere (a code, or the pad) its fallback, and both match the reference, with whole and
/// partial groups of channels, two groups, 70 outputs (16-lane blocks 4 + 1), rows at stride 1
/// and 2 whose tiles share their tables between taps, and 5x5 kernels; the AVX2 kind's two
/// fallbacks (nibble tables where they cost less than the AVX2 dot, else the dot) both run.
#[test]
fn byte_sub_tables_and_their_fallback_match_reference() {
    use KernelKind::{Int8LutAvx2, Int8LutAvx512};
    let mut total = 0;
    #[cfg(target_arch = "x86_64")]
    let mut fallbacks = [false; 2];
    // (kind, channels of a sub-table, its largest sum)
    for (kind, sub, limit) in [(Int8LutAvx512, 4usize, 255u32), (Int8LutAvx2, 3, 254)] {
        let pad_max = limit / sub as u32;
        // (input channels, groups, (width, height, stride), kernel, output channels)
        for (cin_g, groups, (w, h, stride), k, cout_g) in [
            (16u32, 1u32, (5u32, 3u32, 1u16), 3u16, 70u32),
            (20, 1, (16, 4, 2), 3, 70),
            (64, 1, (12, 4, 1), 3, 70),
            (24, 2, (5, 3, 1), 3, 70),
            (6, 1, (8, 2, 1), 3, 70),
            (64, 1, (8, 8, 1), 3, 256),
            (12, 1, (7, 5, 1), 5, 70),
        ] {
            for (hot, zp, takes) in [
                (None, pad_max, true),
                (Some(limit), 3, true),
                (Some(limit + 1), 3, false),
                (None, pad_max + 1, false),
            ] {
                let c = Case {
                    groups,
                    w,
                    h,
                    k: (k, k),
                    pad: (k / 2, k / 2),
                    stride: (stride, stride),
                    zp: zp as i32,
                    ..Case::new(cin_g, cout_g, 1, 8, 41 + u64::from(cin_g))
                };
                let mut rng = Rng(c.seed);
                let codes: Vec<u8> = (0..weight_count(&c)).map(|_| rng.below(2) as u8).collect();
                let mut x: Vec<u8> = (0..input_count(&c)).map(|_| rng.below(60) as u8).collect();
                if let Some(sum) = hot {
                    // The second sub-table of the second pixel: 64s and the rest.
                    let at = (cin_g * groups) as usize + sub;
                    x[at..at + sub].fill(64);
                    x[at + sub - 1] = (sum - 64 * (sub as u32 - 1)) as u8;
                }
                #[cfg(target_arch = "x86_64")]
                if let Some(t) =
                    super::x86::lut_takes_sub_tables(kind, &case_shape(&c), &x, zp as u8)
                {
                    // Quads' input scan also needs channels a multiple of 4.
                    let layout = sub == 3 || cin_g % 4 == 0;
                    assert_eq!(t, takes && layout, "{kind:?} on {c:?} hot {hot:?}");
                }
                #[cfg(target_arch = "x86_64")]
                if kind == Int8LutAvx2 {
                    fallbacks
                        [usize::from(super::x86::lut_avx2_falls_back_to_dot(&case_shape(&c)))] =
                        true;
                }
                #[cfg(not(target_arch = "x86_64"))]
                let _ = (kind, takes);
                total += check_inputs(&c, &codes, &x, kernels_for);
            }
        }
    }
    assert!(total >= 2 * 7 * 4 * 2);
    // The AVX2 lookup's two fallbacks (nibble tables, the dot) both ran.
    #[cfg(target_arch = "x86_64")]
    assert_eq!(fallbacks, [true, true]);
}

#[test]
fn kernels_match_reference_on_wide_outputs_at_every_tile_width() {
    // Enough output channels for tiles of 4 blocks (70: 16-lane blocks 4 + 1, 32-lane 2 + 1),
    // and calls of 4, 5, 8, 10 and 30 pixels: the tile drivers' full tiles, their narrower
    // tiles for what is left (8 pixels: two of 4 rather than 6, 1, 1), and single pixels.
    let mut total = 0;
    for (w, rows) in [(4u32, 1usize), (5, 1), (8, 1), (5, 2), (10, 3)] {
        for (wbits, abits) in [(1u8, 8u8), (1, 2), (1, 1), (2, 2)] {
            let c = Case {
                w,
                zp: if abits == 1 { 0 } else { 3 },
                rows,
                ..Case::new(20, 70, wbits, abits, 7 + u64::from(w) * 10 + rows as u64)
            };
            total += check_case(&c);
        }
    }
    assert!(total >= 5 * 4 * 2);
}

/// The table lookups' row steps that share a tile's tables between the taps of a kernel row:
/// stride 1 and 2, tiles of 4 and 8 pixels on one output row (8 and 16 pixels a row), one to
/// three blocks of output channels (70 outputs), and tiles that span two output rows (12 and 6
/// pixels a row), which load the tables per pixel; the weight layout follows the walk.
#[test]
fn kernels_match_reference_on_shared_row_steps() {
    let mut total = 0;
    for (w, stride, cout_g) in [
        (8u32, 1u16, 70u32),
        (16, 1, 5),
        (16, 2, 70),
        (12, 1, 70),
        (12, 2, 5),
    ] {
        for (wbits, abits) in [(1u8, 8u8), (1, 2), (2, 2), (2, 4)] {
            let c = Case {
                w,
                h: 4,
                stride: (stride, stride),
                rows: 3,
                ..Case::new(
                    11,
                    cout_g,
                    wbits,
                    abits,
                    31 + u64::from(w + cout_g) + u64::from(stride),
                )
            };
            total += check_case(&c);
        }
    }
    assert!(total >= 5 * 4 * 2);
}

#[test]
fn kernels_match_reference_on_large_windows() {
    // A 9x9 window (81 taps) is more than the sign-weight kernel's mask buffer holds for one
    // chunk of taps (72 at two words), so its taps run in chunks; 1-bit weights, every
    // activation width, aligned (32) and byte-wise (33) channel counts, and 1 to 4 channels,
    // one mask word a tap, where the mask buffer would hold all 81 taps but its tap offsets
    // hold 72 (a chunk of 81 indexed past them and panicked).
    let mut total = 0;
    for abits in [1u8, 2, 8] {
        for cin_g in [1u32, 3, 4, 32, 33] {
            let c = Case {
                k: (9, 9),
                pad: (4, 4),
                w: 2,
                ..Case::new(cin_g, 5, 1, abits, 7 + u64::from(abits) + u64::from(cin_g))
            };
            total += check_case(&c);
        }
    }
    assert!(total >= 3 * 5 * 2);
}

#[test]
fn kernels_match_reference_on_inputs_of_a_few_bytes() {
    // 1x1 convs on one or two pixels of 1, 2, 3 or 7 channels: inputs of 1 to 14 bytes, most
    // of them not a whole number of 4-byte words (the sign-weight kernel views the input's
    // whole words: here none, or fewer than its bytes), for the weight and activation widths.
    let mut total = 0;
    for (cin_g, w) in [(1u32, 1u32), (2, 1), (3, 1), (3, 2), (7, 1), (7, 2)] {
        for wbits in [1u8, 2, 4] {
            for abits in [1u8, 2, 8] {
                let seed = 3 + u64::from(cin_g) * 16 + u64::from(wbits) * 4 + u64::from(abits);
                let c = Case {
                    k: (1, 1),
                    pad: (0, 0),
                    h: 1,
                    w,
                    rows: 1,
                    ..Case::new(cin_g, 5, wbits, abits, seed)
                };
                total += check_case(&c);
            }
        }
    }
    assert!(total >= 6 * 3 * 3 * 2);
}

#[test]
fn kernels_match_reference_every_bit_pair() {
    // Deterministic sweep: every (wbits, abits) pair on the awkward channel counts, with
    // stride 2, padding 1 and groups 2.
    let mut total = 0;
    for wbits in [1u8, 2, 4] {
        for abits in [1u8, 2, 4, 8] {
            for cin_g in [1u32, 3, 16, 31, 32, 33, 63, 64, 65] {
                let qmax = (1i32 << abits) - 1;
                let seed = u64::from(cin_g) * 7919 + u64::from(wbits) * 31 + u64::from(abits);
                let c = Case {
                    groups: 2,
                    stride: (2, 2),
                    h: 5,
                    w: 4,
                    zp: if abits == 1 { 0 } else { qmax / 3 },
                    ..Case::new(cin_g, 3, wbits, abits, seed)
                };
                total += check_case(&c);
            }
        }
    }
    assert!(total >= 2 * 3 * 4 * 9);
}

#[test]
fn accumulator_extremes() {
    // All-max codes and all-max weights over a large window: the raw bit-serial sum 2*sum(k*q)
    // exceeds i32 but the exact result fits; kernels must still agree.
    for (wbits, abits) in [(4u8, 8u8), (4, 4), (1, 8), (2, 1)] {
        let c = Case {
            pad: (2, 2),
            zp: 0,
            rows: 3,
            ..Case::new(130, 2, wbits, abits, 99)
        };
        check_case(&c);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]
    /// The bit packers (the portable one, 8 channels at a time, and the CPU's: AVX2 on x86)
    /// against the one-bit-at-a-time reference.
    #[test]
    fn pack_bits_matches_reference(
        cin_g in prop::sample::select(vec![1usize, 3, 7, 8, 9, 31, 63, 64, 65, 130]),
        groups in 1usize..=3,
        (h, w) in (1usize..=4, 1usize..=4),
        (ph, pw) in (0usize..=2, 0usize..=2),
        abits in prop::sample::select(vec![1u8, 2, 4, 8]),
        pad in any::<u8>(),
        seed in any::<u64>(),
    ) {
        let c = cin_g * groups;
        let s = ConvShape {
            hp: h + 2 * ph,
            wp: w + 2 * pw,
            c,
            oh: 1,
            ow: 1,
            cout: 1,
            kh: 1,
            kw: 1,
            sh: 1,
            sw: 1,
            groups,
            cin_g,
            cout_g: 1,
            wbits: 1,
            abits,
            cw: cin_g.div_ceil(64),
            ph,
            pw,
        };
        let mut rng = Rng(seed | 1);
        let mask = if abits == 8 { 0xff } else { (1u8 << abits) - 1 };
        let x: Vec<u8> = (0..h * w * c).map(|_| rng.below(256) as u8 & mask).collect();
        let n = s.hp * s.wp * portable::bit_pixel_words(&s);
        let mut want = vec![0xdead_beefu64; n];
        reference::pack_bits_ref(&s, &x, pad & mask, &mut want);
        for ops in RowOps::variants() {
            let mut got = vec![0x1234u64; n];
            (ops.pack_bits)(&s, &x, pad & mask, &mut got);
            prop_assert_eq!(&got, &want);
        }
    }
}

/// `c` channels in and out, `hw` x `hw`, a `k` x `k` window, stride 1, same padding: the
/// ResNet18-CIFAR conv shapes of the cost tables' tests.
fn layer_shape(c: usize, hw: usize, k: usize, wbits: u8, abits: u8) -> ConvShape {
    ConvShape {
        hp: hw + k - 1,
        wp: hw + k - 1,
        c,
        oh: hw,
        ow: hw,
        cout: c,
        kh: k,
        kw: k,
        sh: 1,
        sw: 1,
        groups: 1,
        cin_g: c,
        cout_g: c,
        wbits,
        abits,
        cw: c.div_ceil(64),
        ph: k / 2,
        pw: k / 2,
    }
}

/// A W1A8 stride-2 `k` x `k` conv (3: same padding, 1: none) from `c` channels at `hw` x `hw`
/// into `2 c`: ResNet18-CIFAR's downsampling convs.
fn down_shape(c: usize, hw: usize, k: usize) -> ConvShape {
    ConvShape {
        cout: 2 * c,
        cout_g: 2 * c,
        oh: hw / 2,
        ow: hw / 2,
        sh: 2,
        sw: 2,
        hp: if k == 3 { hw + 2 } else { hw },
        wp: if k == 3 { hw + 2 } else { hw },
        ..layer_shape(c, hw, k, 1, 8)
    }
}

/// ResNet18-CIFAR's W1A8 stem: 3 channels into 64 at 32 x 32, 3 x 3.
fn stem_shape() -> ConvShape {
    ConvShape {
        c: 3,
        cin_g: 3,
        cw: 1,
        ..layer_shape(64, 32, 3, 1, 8)
    }
}

/// Asserts that `model` costs each `(shape, faster, slower)` of `orders` as measured: the
/// faster kernel below the slower one.
fn assert_ranks(model: super::CostModel, orders: &[(ConvShape, KernelKind, KernelKind)]) {
    let cost = |kind, s: &ConvShape| super::cost(kind, s, model);
    for &(s, fast, slow) in orders {
        assert!(
            cost(fast, &s) < cost(slow, &s),
            "{model:?}: {fast:?} {} against {slow:?} {} on {}ch {}x{} k{} W{}A{}",
            cost(fast, &s),
            cost(slow, &s),
            s.c,
            s.oh,
            s.ow,
            s.kh,
            s.wbits,
            s.abits
        );
    }
}

/// The desktop cost table ranks the AVX-512 (and AVX2) kernels as whole layers measured them
/// on a Zen 5 core (`benches/`, group `kernel`, at fce77e4; docs/PERFORMANCE.md, "One conv
/// layer per kernel"), on the ResNet18-CIFAR shapes where the choice matters (MAC/ns in the
/// comments). The bit-serial kernel's cost was once half what it measures, and W1A2 layers
/// went to it.
#[test]
fn desktop_costs_rank_the_x86_kernels_as_measured() {
    let shape = layer_shape;
    use KernelKind::{BitSerialAvx512 as Bits, Int8DotVnni as Dot, Int8LutAvx512 as Lut};
    // (shape, faster kernel, slower kernel)
    let orders = [
        // W1A2 (the lookup over byte tables), 64 channels: lookup 318, the dot 298, bit-serial
        // 212; 128: lookup 642, dot 355, bits 297; 512: lookup 1,182, dot 365.
        (shape(64, 32, 3, 1, 2), Lut, Dot),
        (shape(64, 32, 3, 1, 2), Dot, Bits),
        (shape(128, 16, 3, 1, 2), Lut, Dot),
        (shape(128, 16, 3, 1, 2), Dot, Bits),
        (shape(512, 4, 3, 1, 2), Lut, Dot),
        // W1A2, 1x1: the dot 113, the lookup 110, bit-serial 81.
        (shape(128, 16, 1, 1, 2), Dot, Lut),
        (shape(128, 16, 1, 1, 2), Dot, Bits),
        // W1A8: the dot ahead at 64 channels (277 / 247) and on 1x1 (109 / 96), the lookup
        // from 128 channels (425 / 337, 580 / 355 at 512).
        (shape(64, 32, 3, 1, 8), Dot, Lut),
        (shape(128, 16, 1, 1, 8), Dot, Lut),
        (shape(128, 16, 3, 1, 8), Lut, Dot),
        (shape(512, 4, 3, 1, 8), Lut, Dot),
        // W1A1: XNOR ahead of the dot everywhere (528 / 300 at 64 channels, 962 / 363 at 128,
        // 1,734 / 356 at 512, 161 / 134 on the 1x1 layer).
        (shape(64, 32, 3, 1, 1), KernelKind::XnorAvx512, Dot),
        (shape(128, 16, 3, 1, 1), KernelKind::XnorAvx512, Dot),
        (shape(512, 4, 3, 1, 1), KernelKind::XnorAvx512, Dot),
        (shape(128, 16, 1, 1, 1), KernelKind::XnorAvx512, Dot),
        // The AVX2 kernels on the same core: W1A2 the dot ahead of bit-serial (155 / 74 at 64
        // channels), W1A1 XNOR ahead of the dot (263 / 159).
        (
            shape(64, 32, 3, 1, 2),
            KernelKind::Int8DotAvx2,
            KernelKind::BitSerialAvx2,
        ),
        (
            shape(64, 32, 3, 1, 1),
            KernelKind::XnorAvx2,
            KernelKind::Int8DotAvx2,
        ),
        // The AVX2 table lookup at W1A2: ahead of the AVX2 dot everywhere since its table
        // builder got faster (257 / 158 at 64 channels, 557 / 204 at 512, 91 / 80 on the 1x1
        // layer; it was behind there, 83 / 88).
        (
            shape(64, 32, 3, 1, 2),
            KernelKind::Int8LutAvx2,
            KernelKind::Int8DotAvx2,
        ),
        (
            shape(512, 4, 3, 1, 2),
            KernelKind::Int8LutAvx2,
            KernelKind::Int8DotAvx2,
        ),
        (
            shape(128, 16, 1, 1, 2),
            KernelKind::Int8LutAvx2,
            KernelKind::Int8DotAvx2,
        ),
        // W2A2, the lookups a plane per weight bit over the same tables: the dot ahead at 64
        // channels (319 / 279) and on the 1x1 layer (135 / 116), the lookup from 128 channels
        // (493 / 379, 685 / 378 at 512); bit-serial behind the dot (202 at 64 channels).
        (shape(64, 32, 3, 2, 2), Dot, Lut),
        (shape(128, 16, 1, 2, 2), Dot, Lut),
        (shape(128, 16, 3, 2, 2), Lut, Dot),
        (shape(512, 4, 3, 2, 2), Lut, Dot),
        (shape(64, 32, 3, 2, 2), Dot, Bits),
        // The AVX2 lookup at W2A2: ahead of the AVX2 dot at 64 channels (179 / 167) and at 512
        // (310 / 209), behind on the 1x1 layer (86 / 92).
        (
            shape(64, 32, 3, 2, 2),
            KernelKind::Int8LutAvx2,
            KernelKind::Int8DotAvx2,
        ),
        (
            shape(512, 4, 3, 2, 2),
            KernelKind::Int8LutAvx2,
            KernelKind::Int8DotAvx2,
        ),
        (
            shape(128, 16, 1, 2, 2),
            KernelKind::Int8DotAvx2,
            KernelKind::Int8LutAvx2,
        ),
        // The AVX2 lookup at W1A8 (byte sub-tables of 3 channels), whole layers of the W1A8
        // network on a Zen 4 core with AVX-512 denied (time of the lookup / time of the AVX2
        // dot): ahead at 64 channels (0.79), 128 (0.69), 256 (0.62) and 512 (0.41), and on the
        // stride-2 3x3 convs (0.72 into 256 channels, 0.50 into 512); behind on the 1x1 convs
        // (4.3 into 128 channels, 1.5 into 512) and the stem (1.3).
        (
            shape(64, 32, 3, 1, 8),
            KernelKind::Int8LutAvx2,
            KernelKind::Int8DotAvx2,
        ),
        (
            shape(128, 16, 3, 1, 8),
            KernelKind::Int8LutAvx2,
            KernelKind::Int8DotAvx2,
        ),
        (
            shape(512, 4, 3, 1, 8),
            KernelKind::Int8LutAvx2,
            KernelKind::Int8DotAvx2,
        ),
        (
            down_shape(128, 16, 3),
            KernelKind::Int8LutAvx2,
            KernelKind::Int8DotAvx2,
        ),
        (
            down_shape(64, 32, 1),
            KernelKind::Int8DotAvx2,
            KernelKind::Int8LutAvx2,
        ),
        (
            down_shape(256, 8, 1),
            KernelKind::Int8DotAvx2,
            KernelKind::Int8LutAvx2,
        ),
        (
            stem_shape(),
            KernelKind::Int8DotAvx2,
            KernelKind::Int8LutAvx2,
        ),
        // The AMX dot on an Emerald Rapids class Xeon, whole layers in the W1A8 network
        // (kcycles, AMX / VNNI dot / lookup): 64 channels 110 / 260 / 427, 128 channels 85 /
        // 252 / 364, 512 channels at 4x4 128 / 430 / 331, the 1x1 into 256 channels 19 / 23
        // / 55.
        (shape(64, 32, 3, 1, 8), KernelKind::Int8DotAmx, Dot),
        (shape(64, 32, 3, 1, 8), KernelKind::Int8DotAmx, Lut),
        (shape(128, 16, 3, 1, 8), KernelKind::Int8DotAmx, Lut),
        (shape(512, 4, 3, 1, 8), KernelKind::Int8DotAmx, Lut),
        (shape(256, 8, 1, 1, 8), KernelKind::Int8DotAmx, Dot),
        (shape(256, 8, 1, 1, 8), KernelKind::Int8DotAmx, Lut),
    ];
    assert_ranks(super::CostModel::Desktop, &orders);
}

/// The Intel table ranks the int8 kernels as whole layers of the W1A8, W1A2 and W2A2 networks
/// measured them on an Intel Xeon with AMX denied (`noamx`, docs/PERFORMANCE.md, "Intel
/// without AMX"; time of the lookup / time of the VNNI dot in the comments): the VNNI dot
/// ahead of the lookups over 16-bit tables everywhere, the lookups over byte tables ahead from
/// 128 channels (W1A2) and 256 (W2A2). With the Zen 5 table's 13 the 16-bit lookups took the
/// 128- to 512-channel layers of W1A8, the network 6 % slower than with the dot.
#[test]
fn intel_costs_rank_the_int8_kernels_as_measured() {
    use KernelKind::{Int8DotAmx as Amx, Int8DotVnni as Dot, Int8LutAvx512 as Lut};
    let shape = layer_shape;
    // (shape, faster kernel, slower kernel)
    let orders = [
        // W1A8: 1.74 at 64 channels, 1.43 at 128, 1.30 at 256, 1.04 at 512.
        (shape(64, 32, 3, 1, 8), Dot, Lut),
        (shape(128, 16, 3, 1, 8), Dot, Lut),
        (shape(256, 8, 3, 1, 8), Dot, Lut),
        (shape(512, 4, 3, 1, 8), Dot, Lut),
        // W1A2: 0.65 at 128 channels, 0.53 at 256, 0.42 at 512; 1x1 2.5.
        (shape(128, 16, 3, 1, 2), Lut, Dot),
        (shape(256, 8, 3, 1, 2), Lut, Dot),
        (shape(512, 4, 3, 1, 2), Lut, Dot),
        (shape(128, 16, 1, 1, 2), Dot, Lut),
        // W2A2: 1.4 at 64 channels, 0.88 at 256, 0.74 at 512.
        (shape(64, 32, 3, 2, 2), Dot, Lut),
        (shape(256, 8, 3, 2, 2), Lut, Dot),
        (shape(512, 4, 3, 2, 2), Lut, Dot),
        // AMX where it is granted, as in the Zen 5 table.
        (shape(64, 32, 3, 1, 8), Amx, Dot),
        (shape(512, 4, 3, 1, 8), Amx, Dot),
    ];
    assert_ranks(super::CostModel::DesktopIntel, &orders);
}

/// The Zen 4 table ranks the VNNI dot and the lookups over 16-bit tables as whole layers of
/// the W1A8 network measured them on an AMD Zen 4 core (each kernel forced, `LAYERS=1
/// prof_model`, alternating; docs/PERFORMANCE.md, "W1A8 on a Zen 4 core"; time of the lookup /
/// time of the dot in the comments), where the Zen 5 table gave the 64-channel convs and the
/// stride-2 conv into 256 channels to the dot (the network 5 % slower).
#[test]
fn zen4_costs_rank_the_int8_kernels_as_measured() {
    use KernelKind::{Int8DotVnni as Dot, Int8LutAvx512 as Lut};
    let (shape, down, stem) = (layer_shape, down_shape, stem_shape());
    // (shape, faster kernel, slower kernel), with the tables built by `vpdpbusd` (cost.rs,
    // `LUT_ZEN4_COSTS`).
    let orders = [
        // 0.80 at 64 channels, 0.65 at 128, 0.57 at 512.
        (shape(64, 32, 3, 1, 8), Lut, Dot),
        (shape(128, 16, 3, 1, 8), Lut, Dot),
        (shape(512, 4, 3, 1, 8), Lut, Dot),
        // Stride 2: 0.70 into 256 channels, 0.86 into 128 (1.05 with the old tables).
        (down(128, 16, 3), Lut, Dot),
        (down(64, 32, 3), Lut, Dot),
        // The stem 1.53, the 1x1 downsample convs into 128 and 256 2.0 and 1.3.
        (stem, Dot, Lut),
        (down(64, 32, 1), Dot, Lut),
        (down(128, 16, 1), Dot, Lut),
    ];
    assert_ranks(super::CostModel::DesktopZen4, &orders);
    // The Zen 5 table keeps the 64-channel convs on the dot (there it ran 533 MAC/ns to the
    // lookup's 347).
    assert_ranks(
        super::CostModel::Desktop,
        &[(shape(64, 32, 3, 1, 8), Dot, Lut)],
    );
}

/// `CostModel::native` is the Intel table exactly where CPUID's vendor string is
/// `GenuineIntel`, the Zen 4 table where it is `AuthenticAMD` with family 19h and AVX-512 F
/// (the 12 bytes read here from EBX, EDX, ECX, the family from leaf 1), and the build's table
/// elsewhere.
#[cfg(target_arch = "x86_64")]
#[test]
fn native_costs_follow_the_cpu_vendor() {
    // CPUID is present on every x86-64 CPU.
    let r = std::arch::x86_64::__cpuid(0);
    let mut vendor = [0u8; 12];
    for (i, reg) in [r.ebx, r.edx, r.ecx].into_iter().enumerate() {
        vendor[4 * i..4 * i + 4].copy_from_slice(&reg.to_le_bytes());
    }
    let eax = std::arch::x86_64::__cpuid(1).eax;
    let family = ((eax >> 8) & 0xf) + ((eax >> 20) & 0xff) * u32::from((eax >> 8) & 0xf == 0xf);
    let want = if &vendor == b"GenuineIntel" {
        super::CostModel::DesktopIntel
    } else if &vendor == b"AuthenticAMD"
        && family == 0x19
        && std::arch::is_x86_feature_detected!("avx512f")
    {
        super::CostModel::DesktopZen4
    } else {
        super::CostModel::NATIVE
    };
    eprintln!(
        "cost table: {:?} (CPU vendor {}, family {family:#x})",
        super::CostModel::native(),
        String::from_utf8_lossy(&vendor)
    );
    assert_eq!(super::CostModel::native(), want);
    assert_eq!(crate::PlanOptions::default().costs, want);
}

/// The portable int8 dot takes prepared weights of at least `prepared_len` bytes (the
/// contract's "at least"): a longer buffer gives the same sums. A shorter one is outside the
/// contract: the portable kernel then returns with `acc` untouched instead of indexing past
/// the weights (a panic).
#[test]
fn portable_int8_dot_takes_weights_of_at_least_prepared_len() {
    // A 1x1 conv, 4 channels in and out, on one 8-bit pixel.
    let s = ConvShape {
        hp: 1,
        wp: 1,
        c: 4,
        oh: 1,
        ow: 1,
        cout: 4,
        kh: 1,
        kw: 1,
        sh: 1,
        sw: 1,
        groups: 1,
        cin_g: 4,
        cout_g: 4,
        wbits: 2,
        abits: 8,
        cw: 1,
        ph: 0,
        pw: 0,
    };
    let x = [1u8, 2, 3, 200];
    let num: [i8; 16] = [1, -1, 3, -3, 3, 3, 3, 3, -3, -1, 1, 3, -1, -1, -1, 1];
    let want: Vec<i32> = (0..4)
        .map(|o| {
            (0..4)
                .map(|i| i32::from(num[o * 4 + i]) * i32::from(x[i]))
                .sum()
        })
        .collect();
    assert_eq!(portable::int8_prepared_len(&s), 16);
    let w: Vec<u8> = num.iter().map(|&v| v as u8).collect();
    for extra in [0usize, 1, 64] {
        let mut wl = w.clone();
        wl.resize(16 + extra, 0x55);
        let mut acc = [7i32; 4];
        portable::int8_run(&s, &x, &wl, 0, 1, &mut acc);
        assert_eq!(acc.to_vec(), want, "{extra} bytes past the weights");
    }
    let mut acc = [7i32; 4];
    portable::int8_run(&s, &x, &w[..15], 0, 1, &mut acc);
    assert_eq!(acc, [7; 4]);
}

/// A 3x3 conv with 1-bit weights over one 3x3 pixel window of 16 8-bit channels (4 output
/// channels): the sign-weight kernel's aligned path (`sign_rows::<4>`, one block of channels
/// and taps). Returns the shape, the packed codes and the padded input (144 bytes, in a
/// word buffer one word longer) with the dot products the kernel must give.
fn sign_weight_case() -> (ConvShape, Vec<u8>, Vec<u32>, Vec<i32>) {
    let s = ConvShape {
        hp: 3,
        wp: 3,
        c: 16,
        oh: 1,
        ow: 1,
        cout: 4,
        kh: 3,
        kw: 3,
        sh: 1,
        sw: 1,
        groups: 1,
        cin_g: 16,
        cout_g: 4,
        wbits: 1,
        abits: 8,
        cw: 1,
        ph: 0,
        pw: 0,
    };
    let mut rng = Rng(0x5167);
    // Rows of 2 bytes per (output channel, tap): bit i is input channel i, weight 2b - 1.
    let codes: Vec<u8> = (0..4 * 9 * 2).map(|_| rng.below(256) as u8).collect();
    let mut xw = vec![0u32; 144 / 4 + 1];
    for v in xw.iter_mut() {
        *v = rng.below(1 << 32) as u32;
    }
    let x = bytemuck::cast_slice::<u32, u8>(&xw);
    let want = (0..4)
        .map(|o| {
            (0..9)
                .flat_map(|t| (0..16).map(move |i| (t, i)))
                .map(|(t, i)| {
                    let b = (codes[(o * 9 + t) * 2 + i / 8] >> (i % 8)) & 1;
                    (2 * i32::from(b) - 1) * i32::from(x[t * 16 + i])
                })
                .sum()
        })
        .collect();
    (s, codes, xw, want)
}

/// The in-place int8 kernels (sign weights and 2-bit weights) write no accumulator for an
/// empty range of rows (`y0 == y1`, here at the first row) and do not panic.
#[test]
fn portable_in_place_int8_writes_nothing_for_no_rows() {
    let (s, codes, xw, want) = sign_weight_case();
    let x = &bytemuck::cast_slice::<u32, u8>(&xw)[..144];
    let mut acc = [7i32; 4];
    portable::int8_in_place_run(&s, x, &codes, 0, 1, &mut acc);
    assert_eq!(acc.to_vec(), want);
    for wbits in [1u8, 2] {
        let s = ConvShape { wbits, ..s };
        let codes = vec![0x5au8; 4 * 9 * 2 * usize::from(wbits)];
        let mut acc = [7i32; 4];
        portable::int8_in_place_run(&s, x, &codes, 0, 0, &mut acc);
        assert_eq!(acc, [7; 4], "W{wbits}");
    }
}

/// The sign-weight kernel reads no activation past the slice it is given: an input one word
/// shorter than the padded window (its last tap's last word missing, though the memory after
/// it is readable) leaves the accumulators untouched.
#[test]
fn portable_sign_weight_reads_no_activation_past_its_input() {
    let (s, codes, xw, want) = sign_weight_case();
    let x = bytemuck::cast_slice::<u32, u8>(&xw);
    let mut acc = [7i32; 4];
    portable::int8_in_place_run(&s, &x[..144], &codes, 0, 1, &mut acc);
    assert_eq!(acc.to_vec(), want);
    let mut acc = [7i32; 4];
    portable::int8_in_place_run(&s, &x[..140], &codes, 0, 1, &mut acc);
    assert_eq!(acc, [7; 4]);
}

/// The bit kernels' prepared weights take exactly their plane words and the output channels'
/// `wsum` (4 bytes each, rounded up to 8 bytes): the planner reserves this many arena bytes.
#[test]
fn bits_prepared_len_is_the_plane_words_and_the_wsums() {
    let base = ConvShape {
        hp: 3,
        wp: 3,
        c: 64,
        oh: 1,
        ow: 1,
        cout: 1,
        kh: 1,
        kw: 1,
        sh: 1,
        sw: 1,
        groups: 1,
        cin_g: 64,
        cout_g: 1,
        wbits: 1,
        abits: 1,
        cw: 1,
        ph: 0,
        pw: 0,
    };
    // (cout, kh, kw, wbits, cw): plane words of 8 bytes, then ceil(4 * cout / 8) * 8 bytes.
    for ((cout, kh, kw, wbits, cw), want) in [
        ((1, 1, 1, 1, 1), 8 + 8),
        ((3, 3, 3, 2, 2), 3 * 3 * 3 * 2 * 2 * 8 + 16),
        ((4, 3, 1, 4, 1), 4 * 3 * 4 * 8 + 16),
        ((5, 1, 1, 1, 3), 5 * 3 * 8 + 24),
    ] {
        let s = ConvShape {
            cout,
            cout_g: cout,
            kh,
            kw,
            wbits,
            cw,
            cin_g: 64 * cw,
            c: 64 * cw,
            ..base
        };
        assert_eq!(portable::bits_prepared_len(&s), want, "{s:?}");
    }
}

/// `xnor_in_place_run` runs every bit pair: W1A1 by XNOR, the others through the bit-serial
/// kernel on the codes in place. (The planner gives it W1A1 convs only, where both agree.)
#[test]
fn portable_xnor_in_place_runs_every_bit_pair() {
    // Labelled as the bit-serial in-place kind, which fits every pair, so that the driver
    // runs it on every shape (with the portable packer).
    let xnor_in_place = |_: &ConvShape| {
        vec![ConvKernel {
            kind: KernelKind::BitSerialInPlace,
            run: Run::Bits(portable::xnor_in_place_run),
            ..portable::in_place_kernel(Algo::Xnor).unwrap()
        }]
    };
    for wbits in [1u8, 2, 4] {
        for abits in [1u8, 2, 4, 8] {
            let c = Case {
                groups: 2,
                h: 4,
                ..Case::new(
                    33,
                    3,
                    wbits,
                    abits,
                    41 + u64::from(wbits) * 8 + u64::from(abits),
                )
            };
            assert_eq!(check_case_with(&c, xnor_in_place), 1, "W{wbits}A{abits}");
        }
    }
}

/// The border runs of an axis: the taps of each output's window in the padding before and
/// after the input, and the class (run) each output belongs to.
#[test]
fn border_runs_follow_the_padded_taps() {
    let runs = |n, stride, pad, size, k| {
        super::shape::border_runs(n, stride, pad, size, k).collect::<Vec<_>>()
    };
    // 3 taps, stride 1, padding 1 on 4 inputs: the first and last outputs see one pad tap.
    assert_eq!(
        runs(4, 1, 1, 4, 3),
        [
            (0, 0, (1, 0)),
            (1, 1, (0, 0)),
            (2, 1, (0, 0)),
            (3, 2, (0, 1))
        ]
    );
    // Stride 2: the last window ends on the last input, so there are two classes.
    assert_eq!(runs(2, 2, 1, 4, 3), [(0, 0, (1, 0)), (1, 1, (0, 0))]);
    // One input under a 5-tap window with padding 2: both sides padded, one class.
    assert_eq!(runs(1, 1, 2, 1, 5), [(0, 0, (2, 2))]);
    // No padding: one class, nothing padded.
    assert_eq!(
        runs(3, 1, 0, 5, 3),
        [(0, 0, (0, 0)), (1, 0, (0, 0)), (2, 0, (0, 0))]
    );
}
