//! The requantization's and the residual add's tests: every variant against the element-wise
//! reference, bit for bit, and their bounds.

use super::*;
use crate::kernels::RowOps;
use proptest::prelude::*;
use slb_format::{i32_bytes, I32s};

fn i32_wide() -> impl Strategy<Value = i32> {
    prop_oneof![
        Just(i32::MIN),
        Just(i32::MAX),
        Just(0),
        Just(-1),
        -70_000i32..70_000,
        any::<i32>(),
    ]
}

fn shift() -> impl Strategy<Value = u8> {
    prop_oneof![Just(1u8), Just(62), Just(31), Just(32), 1u8..=62]
}

fn bits() -> impl Strategy<Value = u8> {
    prop_oneof![Just(1u8), Just(2), Just(4), Just(8)]
}

/// Stage 1's parameters, the zero point reduced to a code of `bits`.
fn raw_quant(mult: i32, shift: u8, zr: u32, bits: u8) -> RawQuant {
    RawQuant {
        mult,
        shift,
        zero_point: (zr % (1 << bits)) as i32,
        bits,
        scale: 1.0,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]
    /// A step requantization's thresholds (1- and 2-bit outputs) give the reference's code for
    /// every accumulator: random ones, the extremes, and each side of every threshold; and
    /// `step_rows` (every variant the CPU runs) gives `requant_ref`'s codes.
    #[test]
    fn step_thresholds_match_reference(
        cout in prop_oneof![1usize..=9, 60usize..=70],
        npx in 1usize..=4,
        seed in prop::collection::vec(i32_wide(), 2 * 70 + 4 * 70),
        raw_mult in i32_wide(),
        (s1, s2) in (shift(), shift()),
        (raw_bits, out_bits) in (prop_oneof![Just(2u8), Just(4), Just(8)], 1u8..=2),
        (zr, zo) in (0u32..256, 0i32..4),
        relu in any::<bool>(),
        small in any::<bool>(),
    ) {
        // Multipliers of trained layers' size half the time (so that every code is reached).
        let small_i32 = |v: i32| if small { v % (1 << 12) } else { v };
        let mult: Vec<u8> = i32_bytes(&seed[..cout].iter().map(|&v| small_i32(v)).collect::<Vec<_>>());
        let bias = i32_bytes(&seed[cout..2 * cout]);
        let (raw_mult, s1, s2) = if small { (raw_mult % (1 << 14), s1.clamp(20, 40), s2.clamp(8, 20)) } else { (raw_mult, s1, s2) };
        let raw = raw_quant(raw_mult, s1, zr, raw_bits);
        let aff = ChannelAffine { shift: s2, mult: I32s(&mult), bias: I32s(&bias), relu };
        let outq = QParams { scale: 1.0, zp: if out_bits == 1 { 0 } else { zo }, bits: out_bits };
        let n = step_count(Some(&aff), &outq).unwrap();
        prop_assert_eq!(n, (1 << out_bits) - 1);
        prop_assert_eq!(step_count(None, &outq), None);
        let (mut thr, mut add, mut flip) = (vec![0i32; n * cout], vec![0u8; cout], vec![0u8; cout]);
        let mut ts = vec![0i32; n];
        for c in 0..cout {
            (add[c], flip[c]) = step_thresholds(&raw, &aff, &outq, c, &mut ts);
            prop_assert!(ts.windows(2).all(|w| w[0] <= w[1]), "channel {} thresholds {:?}", c, ts);
            let p = affine_at(&aff, c);
            let mut probes = vec![i32::MIN, i32::MAX, seed[2 * cout + c]];
            for &t in &ts {
                probes.extend([t.saturating_sub(1), t, t.saturating_add(1)]);
            }
            for a in probes {
                let want = stage2(stage1(a, &raw), raw.zero_point, p, aff.shift, aff.relu, &outq);
                let k = ts.iter().filter(|&&t| a >= t).count() as u8;
                prop_assert_eq!(step_code(k, add[c], flip[c]), want, "channel {} acc {} thresholds {:?}", c, a, ts);
            }
            for (j, &t) in ts.iter().enumerate() {
                thr[j * cout + c] = t;
            }
        }
        // Accumulators around the thresholds, through every variant of `step_rows`.
        let acc: Vec<i32> = (0..npx * cout)
            .map(|i| {
                let (c, k) = (i % cout, i / cout);
                match k {
                    0 => thr[c].saturating_sub(1),
                    1 => thr[(n - 1) * cout + c],
                    _ => seed[2 * cout + 70 * k % (4 * 70) + c],
                }
            })
            .collect();
        let mut want = vec![7u8; acc.len()];
        requant_ref(&raw, Some(&aff), &outq, cout, &acc, &mut want);
        let steps = Steps { n, thr: &thr, add: &add, flip: &flip };
        for ops in RowOps::variants() {
            let mut got = vec![9u8; acc.len()];
            (ops.step_rows)(&steps, &acc, &mut got);
            prop_assert_eq!(&got, &want);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    /// The driver's requantization (AVX2 where the CPU has it, and the portable body)
    /// against the element-wise reference, bit for bit.
    #[test]
    fn requant_matches_reference(
        cout in prop_oneof![1usize..=9, 60usize..=70, 127usize..=130],
        npx in 1usize..=5,
        seed in prop::collection::vec(i32_wide(), 3 * 130 * 5 + 2),
        raw_mult in i32_wide(),
        (s1, s2) in (shift(), shift()),
        (raw_bits, out_bits) in (prop_oneof![Just(2u8), Just(4), Just(8)], bits()),
        (zr, zo) in (0u32..256, 0u32..256),
        (relu, affine) in (any::<bool>(), prop_oneof![1 => Just(false), 4 => Just(true)]),
    ) {
        let n = npx * cout;
        let acc = &seed[..n];
        let mult = i32_bytes(&seed[n..n + cout]);
        let bias = i32_bytes(&seed[n + cout..n + 2 * cout]);
        let raw = raw_quant(raw_mult, s1, zr, raw_bits);
        let aff = ChannelAffine { shift: s2, mult: I32s(&mult), bias: I32s(&bias), relu };
        let aff = affine.then_some(&aff);
        let outq = QParams {
            scale: 1.0,
            zp: (zo % (1 << out_bits)) as i32,
            bits: if affine { out_bits } else { raw_bits },
        };
        let mut want = vec![7u8; n];
        requant_ref(&raw, aff, &outq, cout, acc, &mut want);
        let mut got = vec![7u8; n];
        requant(&raw, aff, &outq, cout, acc, &mut got);
        prop_assert_eq!(&got, &want);
        for ops in RowOps::variants() {
            let mut got = vec![7u8; n];
            (ops.requant)(&raw, aff, &outq, cout, acc, &mut got);
            prop_assert_eq!(&got, &want);
        }
        // The Cortex-M4's 32-bit variant.
        let mut got = vec![7u8; n];
        requant_m4(&raw, aff, &outq, cout, acc, &mut got);
        prop_assert_eq!(&got, &want);
    }
}

/// The 32-bit lanes of [`add_rows`] (`add_rows_lanes32`) at the extremes: multipliers and
/// biases across the whole i32 range (`i32::MIN` and `i32::MAX` among them), codes of 0 and 255,
/// 1-bit inputs (whose constants double the multipliers), zero points at both ends, shifts at
/// and just outside the lanes' 16 to 47 (15 and 48 take the 64-bit loop): every variant of the
/// driver's add equals the element-wise [`add_code`].
#[test]
fn add_rows_lanes32_at_its_bounds() {
    let mut rng = crate::testutil::Rng(43);
    let wide = |rng: &mut crate::testutil::Rng| -> i32 {
        match rng.below(4) {
            0 => [i32::MIN, i32::MAX, 0, -1][rng.below(4) as usize],
            1 => rng.next() as i32 >> rng.below(31),
            _ => rng.next() as i32,
        }
    };
    let c = 67;
    let mut checked = 0;
    for shift in [15u8, 16, 17, 30, 46, 47, 48] {
        for (bits_a, bits_b, bits_o) in [(8u8, 8u8, 8u8), (1, 8, 8), (8, 1, 1), (1, 1, 2)] {
            for round in 0..12 {
                let zp = |bits: u8, r: u32| {
                    if bits == 1 {
                        0
                    } else {
                        [0, 255, 128][r as usize % 3] % (1 << bits)
                    }
                };
                let q = |bits: u8, z: i32| QParams {
                    scale: 1.0,
                    zp: z,
                    bits,
                };
                let (qa, qb) = (
                    q(bits_a, zp(bits_a, round)),
                    q(bits_b, zp(bits_b, round + 1)),
                );
                let qo = q(bits_o, zp(bits_o, round + 2));
                let code = |rng: &mut crate::testutil::Rng, bits: u8| -> u8 {
                    let max = ((1u32 << bits) - 1) as u8;
                    match rng.below(3) {
                        0 => 0,
                        1 => max,
                        _ => rng.next() as u8 & max,
                    }
                };
                let a: Vec<u8> = (0..3 * c).map(|_| code(&mut rng, bits_a)).collect();
                let b: Vec<u8> = (0..3 * c).map(|_| code(&mut rng, bits_b)).collect();
                let ws = |rng: &mut crate::testutil::Rng| -> Vec<u8> {
                    i32_bytes(&(0..c).map(|_| wide(rng)).collect::<Vec<_>>())
                };
                let (ma, mb, bias) = (ws(&mut rng), ws(&mut rng), ws(&mut rng));
                let p = AddParams {
                    shift,
                    mult_a: I32s(&ma),
                    mult_b: I32s(&mb),
                    bias: I32s(&bias),
                    relu: round % 2 == 0 && bits_o != 1,
                };
                let want: Vec<u8> = (0..a.len())
                    .map(|k| add_code(qa.centred(a[k]), qb.centred(b[k]), &p, k % c, &qo))
                    .collect();
                let mut got = vec![7u8; a.len()];
                add_rows(&a, &b, &qa, &qb, &p, &qo, c, &mut got);
                assert_eq!(got, want, "shift {shift} bits {bits_a} {bits_b} {bits_o}");
                for ops in RowOps::variants() {
                    let mut got = vec![7u8; a.len()];
                    (ops.add_rows)(&a, &b, &qa, &qb, &p, &qo, c, &mut got);
                    assert_eq!(
                        got, want,
                        "native: shift {shift} bits {bits_a} {bits_b} {bits_o}"
                    );
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 7 * 4 * 12);
}

/// The 32-bit lanes of [`requant`] (`requant_lanes32`) take exactly the parameters where
/// they are exact: at each bound of [`lanes32_fit`], just inside and just outside it and at
/// the extremes (raw zero points of `i32::MIN` / `i32::MAX`, shifts of 32, 15 and 48, which
/// overflow the lanes), the driver's requantization equals the reference on accumulators
/// and per-channel parameters across the i32 range. (Output zero points are codes, as
/// everywhere: the reference's clamp needs them inside the code range.)
#[test]
fn requant_lanes32_at_its_bounds() {
    let mut rng = crate::testutil::Rng(41);
    let wide = |rng: &mut crate::testutil::Rng| -> i32 {
        match rng.below(4) {
            0 => [i32::MIN, i32::MAX, 0, -1][rng.below(4) as usize],
            1 => rng.next() as i32 >> rng.below(31),
            _ => rng.next() as i32,
        }
    };
    let big = 1i32 << 30;
    // (raw shift, raw zero point, affine shift, output zero point, output bits)
    let mut cases = vec![];
    for s1 in [32u8, 33, 34, 62] {
        cases.push((s1, 3, 24, 5, 8u8));
    }
    for zp1 in [big, -big, big + 1, -big - 1, i32::MAX, i32::MIN] {
        cases.push((36, zp1, 0, 0, 8));
    }
    for s2 in [15u8, 16, 17, 46, 47, 48, 62] {
        cases.push((36, 7, s2, 3, 8));
        cases.push((36, 7, s2, 0, 1));
    }
    for zp_raw in [-1, 0, 255, 256, -70_000, 70_000] {
        cases.push((35, zp_raw, 25, 9, 8));
    }
    for zp2 in [0, 255] {
        cases.push((35, 4, 25, zp2, 8));
    }
    let cout = 67;
    for (s1, zp1, s2, zp2, out_bits) in cases {
        for round in 0..20 {
            let acc: Vec<i32> = (0..3 * cout).map(|_| wide(&mut rng)).collect();
            let mult: Vec<i32> = (0..cout).map(|_| wide(&mut rng)).collect();
            let bias: Vec<i32> = (0..cout).map(|_| wide(&mut rng)).collect();
            let (mult, bias) = (i32_bytes(&mult), i32_bytes(&bias));
            let raw = RawQuant {
                mult: wide(&mut rng),
                shift: s1,
                zero_point: zp1,
                bits: 8,
                scale: 1.0,
            };
            let aff = ChannelAffine {
                shift: s2,
                mult: I32s(&mult),
                bias: I32s(&bias),
                relu: round % 2 == 0,
            };
            let aff = (s2 != 0).then_some(&aff);
            let outq = QParams {
                scale: 1.0,
                zp: zp2,
                bits: out_bits,
            };
            let mut want = vec![7u8; acc.len()];
            requant_ref(&raw, aff, &outq, cout, &acc, &mut want);
            let mut got = vec![7u8; acc.len()];
            requant(&raw, aff, &outq, cout, &acc, &mut got);
            assert_eq!(
                got, want,
                "s1 {s1} zp1 {zp1} s2 {s2} zp2 {zp2} bits {out_bits}"
            );
            for ops in RowOps::variants() {
                let mut got = vec![7u8; acc.len()];
                (ops.requant)(&raw, aff, &outq, cout, &acc, &mut got);
                assert_eq!(got, want, "native: s1 {s1} zp1 {zp1} s2 {s2} zp2 {zp2}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]
    /// The blocked residual add against the element-wise one, bit for bit.
    #[test]
    fn add_rows_matches_add_code(
        c in prop_oneof![1usize..=9, 60usize..=70, 127usize..=130],
        npx in 1usize..=4,
        seed in prop::collection::vec(i32_wide(), 3 * 130 + 2),
        codes in prop::collection::vec(any::<u8>(), 2 * 130 * 4),
        shift in shift(),
        (bits_a, bits_b, bits_o) in (bits(), bits(), bits()),
        (za, zb, zo) in (0u32..256, 0u32..256, 0u32..256),
        relu in any::<bool>(),
    ) {
        let n = npx * c;
        let q = |bits: u8, z: u32| QParams {
            scale: 1.0,
            zp: if bits == 1 { 0 } else { (z % (1 << bits)) as i32 },
            bits,
        };
        let (qa, qb, qo) = (q(bits_a, za), q(bits_b, zb), q(bits_o, zo));
        let mask = |bits: u8, v: u8| if bits == 8 { v } else { v & ((1 << bits) - 1) };
        let a: Vec<u8> = codes[..n].iter().map(|&v| mask(bits_a, v)).collect();
        let b: Vec<u8> = codes[n..2 * n].iter().map(|&v| mask(bits_b, v)).collect();
        // Multipliers small enough for the format's i64 arithmetic never to overflow.
        let small: Vec<i32> = seed[..3 * c].iter().map(|v| v >> 8).collect();
        let (ma, mb, bias) = (
            i32_bytes(&small[..c]),
            i32_bytes(&small[c..2 * c]),
            i32_bytes(&small[2 * c..3 * c]),
        );
        let p = AddParams {
            shift,
            mult_a: I32s(&ma),
            mult_b: I32s(&mb),
            bias: I32s(&bias),
            relu: relu && bits_o != 1,
        };
        let want: Vec<u8> = (0..n)
            .map(|k| add_code(qa.centred(a[k]), qb.centred(b[k]), &p, k % c, &qo))
            .collect();
        let mut got = vec![0u8; n];
        add_rows(&a, &b, &qa, &qb, &p, &qo, c, &mut got);
        prop_assert_eq!(&got, &want);
        for ops in RowOps::variants() {
            let mut got = vec![0u8; n];
            (ops.add_rows)(&a, &b, &qa, &qb, &p, &qo, c, &mut got);
            prop_assert_eq!(&got, &want);
        }
        // The Cortex-M4's 32-bit variant (the test's factors fit i32).
        let mut got = vec![9u8; n];
        prop_assert!(add_rows_m4(&a, &b, &qa, &qb, &p, &qo, c, &mut got));
        prop_assert_eq!(&got, &want);
    }
}

/// The Cortex-M4's 32-bit residual add takes a channel only when twice both its
/// multipliers fit `i32` (`|m| <= 2^30`, `-2^30` included); otherwise it refuses the rows
/// (returns false, output untouched) and the caller runs the 64-bit add.
#[test]
fn add_rows_m4_refuses_multipliers_whose_double_leaves_i32() {
    let q = QParams {
        scale: 1.0,
        zp: 0,
        bits: 8,
    };
    let (a, b) = ([3u8, 200], [7u8, 100]);
    for (ma, mb, takes) in [
        ([1, 1 << 20], [2, -(1 << 30)], true),
        ([1, (1 << 30) - 1], [2, 3], true),
        ([1, 1 << 30], [2, 3], false),
        ([1, 2], [1 << 30, 3], false),
        ([i32::MIN, 2], [1, 3], false),
        ([1, 2], [3, i32::MAX], false),
    ] {
        let (mab, mbb, bias) = (i32_bytes(&ma), i32_bytes(&mb), i32_bytes(&[0, 0]));
        let p = AddParams {
            shift: 40,
            mult_a: I32s(&mab),
            mult_b: I32s(&mbb),
            bias: I32s(&bias),
            relu: false,
        };
        let mut got = [9u8; 2];
        assert_eq!(
            add_rows_m4(&a, &b, &q, &q, &p, &q, 2, &mut got),
            takes,
            "{ma:?} {mb:?}"
        );
        if takes {
            let want: Vec<u8> = (0..2)
                .map(|k| add_code(q.centred(a[k]), q.centred(b[k]), &p, k, &q))
                .collect();
            assert_eq!(got.to_vec(), want);
        } else {
            assert_eq!(got, [9; 2], "refused rows are left as they were");
        }
    }
}

/// Accumulator and multiplier extremes with shifts 1 and 62, every output width.
#[test]
fn requant_extremes() {
    let vals = [i32::MIN, i32::MIN + 1, -1, 0, 1, i32::MAX - 1, i32::MAX];
    let acc: Vec<i32> = vals.iter().flat_map(|&a| vals.map(|_| a)).collect();
    let cout = vals.len();
    for &rm in &vals {
        for (s1, s2) in [(1u8, 1u8), (1, 62), (62, 1), (62, 62), (31, 33)] {
            for out_bits in [1u8, 2, 4, 8] {
                for relu in [false, true] {
                    for rb in [2u8, 8] {
                        let raw = RawQuant {
                            mult: rm,
                            shift: s1,
                            zero_point: (1 << (rb - 1)) - 1,
                            bits: rb,
                            scale: 1.0,
                        };
                        let mult = i32_bytes(&vals);
                        let bias = i32_bytes(&vals.map(|v| v.wrapping_neg()));
                        let aff = ChannelAffine {
                            shift: s2,
                            mult: I32s(&mult),
                            bias: I32s(&bias),
                            relu,
                        };
                        let outq = QParams {
                            scale: 1.0,
                            zp: (1 << out_bits) / 2,
                            bits: out_bits,
                        };
                        for a in [None, Some(&aff)] {
                            let mut want = vec![0u8; acc.len()];
                            requant_ref(&raw, a, &outq, cout, &acc, &mut want);
                            let mut got = vec![0u8; acc.len()];
                            requant(&raw, a, &outq, cout, &acc, &mut got);
                            assert_eq!(got, want);
                            for ops in RowOps::variants() {
                                (ops.requant)(&raw, a, &outq, cout, &acc, &mut got);
                                assert_eq!(got, want);
                            }
                            requant_m4(&raw, a, &outq, cout, &acc, &mut got);
                            assert_eq!(got, want);
                        }
                    }
                }
            }
        }
    }
}

/// The trained models' requantization parameters (stage 1 shifts of 34-37, stage 2 shifts
/// of 24-25, zero points of 8-bit codes) take the 32-bit lanes, and the lanes refuse what
/// their doc comment excludes: a stage-1 shift below 33, a stage-2 shift outside 16-47, a
/// stage-1 zero point past `2^30`, and with stage 2 a raw zero point outside the codes.
#[test]
fn requant_lanes32_takes_the_trained_models_parameters() {
    let raw = |shift: u8, zero_point: i32, bits: u8| RawQuant {
        mult: 1_500_000_000,
        shift,
        zero_point,
        bits,
        scale: 1.0,
    };
    let aff = |shift: u8| ChannelAffine {
        shift,
        mult: I32s(&[]),
        bias: I32s(&[]),
        relu: true,
    };
    for shift in 34..=37 {
        assert!(lanes32_fit(&raw(shift, 130, 8), None));
        for s2 in [24, 25] {
            assert!(lanes32_fit(&raw(shift, 130, 8), Some(&aff(s2))));
        }
    }
    assert!(lanes32_fit(&raw(33, 1 << 30, 8), None));
    assert!(lanes32_fit(&raw(33, -(1 << 30), 8), None));
    assert!(lanes32_fit(&raw(62, 255, 8), Some(&aff(16))));
    assert!(lanes32_fit(&raw(62, 0, 8), Some(&aff(47))));
    assert!(lanes32_fit(&raw(40, 15, 4), Some(&aff(20))));
    assert!(!lanes32_fit(&raw(32, 0, 8), None));
    assert!(!lanes32_fit(&raw(33, (1 << 30) + 1, 8), None));
    assert!(!lanes32_fit(&raw(33, -(1 << 30) - 1, 8), None));
    assert!(!lanes32_fit(&raw(36, 130, 8), Some(&aff(15))));
    assert!(!lanes32_fit(&raw(36, 130, 8), Some(&aff(48))));
    assert!(!lanes32_fit(&raw(36, 256, 8), Some(&aff(24))));
    assert!(!lanes32_fit(&raw(36, -1, 8), Some(&aff(24))));
    assert!(!lanes32_fit(&raw(36, 16, 4), Some(&aff(24))));
}

/// `acc` and `dst` of different lengths: the whole pixels both hold are written, as by
/// the element-wise reference (which stops at the shorter one), the rest is untouched and
/// nothing panics.
#[test]
fn requant_stops_at_the_shorter_buffer() {
    // The 64-bit path (shifts 16 and 4) and the 32-bit lanes (shifts 35 and 20).
    for (s1, m1, s2) in [(16, 12345, 4), (35, 1_500_000_000, 20)] {
        requant_stops_at_the_shorter_buffer_with(s1, m1, s2);
    }
}

fn requant_stops_at_the_shorter_buffer_with(s1: u8, m1: i32, s2: u8) {
    assert_eq!(
        lanes32_fit(
            &RawQuant {
                shift: s1,
                zero_point: 8,
                bits: 4,
                mult: 0,
                scale: 1.0
            },
            None
        ),
        s1 >= 33
    );
    let cout = 3;
    let acc: Vec<i32> = (0..4 * cout as i32).map(|i| i * 1000 - 5000).collect();
    let (mult, bias) = (i32_bytes(&[100, -200, 300]), i32_bytes(&[5, 0, -5]));
    let raw = RawQuant {
        mult: m1,
        shift: s1,
        zero_point: 8,
        bits: 4,
        scale: 1.0,
    };
    let aff = ChannelAffine {
        shift: s2,
        mult: I32s(&mult),
        bias: I32s(&bias),
        relu: false,
    };
    let outq = QParams {
        scale: 1.0,
        zp: 2,
        bits: 4,
    };
    // (pixels of acc, pixels of dst)
    for (na, nd) in [(4, 2), (2, 4)] {
        let acc = &acc[..na * cout];
        let mut want = vec![99u8; nd * cout];
        requant_ref(&raw, Some(&aff), &outq, cout, acc, &mut want);
        assert_eq!(
            want.iter().filter(|&&v| v == 99).count(),
            (nd - na.min(nd)) * cout
        );
        let mut got = vec![99u8; nd * cout];
        requant(&raw, Some(&aff), &outq, cout, acc, &mut got);
        assert_eq!(got, want, "{na} {nd}");
        // And the variant the CPU's plans use (SIMD where there is one).
        for ops in RowOps::variants() {
            let mut got = vec![99u8; nd * cout];
            (ops.requant)(&raw, Some(&aff), &outq, cout, acc, &mut got);
            assert_eq!(got, want, "native {na} {nd}");
        }
        // And the Cortex-M4's 32-bit variant.
        let mut got = vec![99u8; nd * cout];
        requant_m4(&raw, Some(&aff), &outq, cout, acc, &mut got);
        assert_eq!(got, want, "m4 {na} {nd}");
    }
}

#[test]
fn round_shift_is_half_up() {
    assert_eq!(round_shift(5, 1), 3); // 2.5 -> 3
    assert_eq!(round_shift(-5, 1), -2); // -2.5 -> -2 (half up)
    assert_eq!(round_shift(-6, 2), -1); // -1.5 -> -1
    assert_eq!(round_shift(7, 2), 2); // 1.75 -> 2
}

#[test]
fn floor_matches_std() {
    // Past 2^23 every f32 is an integer; past 2^31 it does not fit the i32 the small
    // values go through.
    for x in [
        -2.5f32,
        -2.0,
        -0.1,
        0.0,
        0.4,
        0.5,
        1.0,
        1e7,
        -1e7,
        123.999,
        8_388_607.5,
        -8_388_607.5,
        3e9,
        -3e9,
        1e30,
        f32::MAX,
        f32::MIN,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ] {
        assert_eq!(libm_floor(x), x.floor(), "{x}");
    }
    assert!(libm_floor(f32::NAN).is_nan());
}

/// The real value of a code is `scale * centred` (section 4 of docs/FORMAT.md): `q - zp`,
/// or `2q - 1` for a sign.
#[test]
fn real_is_scale_times_centred_code() {
    let q4 = QParams {
        scale: 0.5,
        zp: 3,
        bits: 4,
    };
    for (code, real) in [(0u8, -1.5f32), (2, -0.5), (3, 0.0), (4, 0.5), (15, 6.0)] {
        assert_eq!(q4.real(code), real, "code {code}");
    }
    let q1 = QParams {
        scale: 0.25,
        zp: 0,
        bits: 1,
    };
    assert_eq!((q1.real(0), q1.real(1)), (-0.25, 0.25));
    let q8 = QParams {
        scale: 1.0 / 64.0,
        zp: 128,
        bits: 8,
    };
    assert_eq!(
        (q8.real(0), q8.real(128), q8.real(255)),
        (-2.0, 0.0, 127.0 / 64.0)
    );
}

/// The float engine's quantizer: `zp + round_half_up(x / scale)` clamped to the codes
/// (at the zero point with ReLU), the sign for 1 bit, NaN to the zero point.
#[test]
fn quantize_rounds_half_up_and_clamps() {
    let q4 = QParams {
        scale: 0.5,
        zp: 3,
        bits: 4,
    };
    let cases = [
        (0.0f32, 3u8),
        (0.2499, 3),
        (0.25, 4), // half a step: up
        (-0.25, 3),
        (-0.2501, 2),
        (1.0, 5),
        (-1.5, 0),
        (-1.76, 0), // below the lowest code
        (5.9, 15),
        (6.0, 15),
        (1e30, 15),
        (-1e30, 0),
        (f32::INFINITY, 15),
        (f32::NEG_INFINITY, 0),
        (f32::NAN, 3),
    ];
    for (x, code) in cases {
        assert_eq!(q4.quantize(x, false), code, "{x}");
    }
    // With ReLU nothing goes below the zero point.
    assert_eq!(q4.quantize(-1.0, true), 3);
    assert_eq!(q4.quantize(1.0, true), 5);
    let q1 = QParams {
        scale: 0.25,
        zp: 0,
        bits: 1,
    };
    for (x, code) in [(0.0f32, 1u8), (3.0, 1), (-0.1, 1), (-0.13, 0), (-3.0, 0)] {
        assert_eq!(q1.quantize(x, false), code, "sign of {x}");
    }
}

/// `quantize(real(q)) == q` for every code of every width: the float engine's
/// fake-quantization leaves values on the grid where they are.
#[test]
fn quantize_inverts_real_for_every_code() {
    for (bits, zp, scale) in [
        (1u8, 0, 0.3f32),
        (2, 1, 0.7),
        (4, 8, 0.05),
        (8, 128, 1.0 / 64.0),
    ] {
        let q = QParams { scale, zp, bits };
        for code in 0..=q.qmax() as u8 {
            assert_eq!(
                q.quantize(q.real(code), false),
                code,
                "{bits} bits, code {code}"
            );
        }
    }
}

#[test]
fn sign_and_clamp() {
    let q1 = QParams {
        scale: 1.0,
        zp: 0,
        bits: 1,
    };
    assert_eq!(q1.clamp_code(0, false), 1);
    assert_eq!(q1.clamp_code(-1, false), 0);
    let q4 = QParams {
        scale: 1.0,
        zp: 3,
        bits: 4,
    };
    assert_eq!(q4.clamp_code(-5, true), 3);
    assert_eq!(q4.clamp_code(-5, false), 0);
    assert_eq!(q4.clamp_code(100, false), 15);
    assert_eq!(q4.centred(5), 2);
    assert_eq!(q1.centred(0), -1);
}
