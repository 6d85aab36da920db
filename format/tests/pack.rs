//! Weight-code bit layout: pinned with one-hot codes, padding bits zero, random round trips.

mod common;

use proptest::prelude::*;
use slb_format::*;

/// A conv carrying `codes` (only the fields `CodeReader` reads matter).
fn conv(codes: &[u8], out: u32, kernel: [u16; 2], ipg: u32, bits: u8) -> Conv<'_> {
    Conv {
        input: 0,
        output: 1,
        out_channels: out,
        in_channels: ipg,
        kernel,
        stride: [1, 1],
        padding: [0, 0],
        groups: 1,
        weight_bits: bits,
        codes,
        requant: Requant {
            raw: RawQuant {
                mult: 1,
                shift: 1,
                zero_point: 0,
                bits: 8,
                scale: 1.0,
            },
            affine: None,
        },
    }
}

#[test]
fn one_hot_bit_order() {
    // 11 channels: two bytes per plane row, five padding bits in the second.
    let ipg = 11u32;
    for bits in [1u8, 2, 4] {
        let row = 2usize;
        assert_eq!(row_bytes(ipg), row);
        for pos in 0..2usize {
            for i in 0..ipg as usize {
                for p in 0..bits as usize {
                    // Two positions (out 0 and out 1), one code set to the single bit `p`.
                    let mut codes = vec![0u8; 2 * ipg as usize];
                    codes[pos * ipg as usize + i] = 1 << p;
                    let packed = pack_codes(&codes, 2, [1, 1], ipg, bits).unwrap();
                    assert_eq!(packed.len(), 2 * bits as usize * row);
                    let mut expected = vec![0u8; packed.len()];
                    expected[(pos * bits as usize + p) * row + i / 8] = 1 << (i % 8);
                    assert_eq!(
                        packed, expected,
                        "bits {bits} pos {pos} channel {i} plane {p}"
                    );
                    let r = CodeReader::new(&conv(&packed, 2, [1, 1], ipg, bits));
                    assert_eq!(r.code(pos, 0, 0, i), 1 << p);
                    assert_eq!(r.row_offset(pos, 0, 0), pos * bits as usize * row);
                }
            }
        }
    }
}

#[test]
fn worked_example_matches_docs() {
    // docs/FORMAT.md: 2-bit codes of out 0 at one kernel position, channels 0..=9.
    let codes = [0u8, 1, 2, 3, 3, 2, 1, 0, 1, 3];
    let packed = pack_codes(&codes, 1, [1, 1], 10, 2).unwrap();
    // plane 0 (low bits): channels 1,3,4,6,8,9 -> 0b0101_1010, 0b0000_0011
    // plane 1 (high bits): channels 2,3,4,5,9 -> 0b0011_1100, 0b0000_0010
    assert_eq!(packed, [0x5a, 0x03, 0x3c, 0x02]);
    let r = CodeReader::new(&conv(&packed, 1, [1, 1], 10, 2));
    let nums: Vec<i32> = (0..10).map(|i| r.numerator(0, 0, 0, i)).collect();
    assert_eq!(nums, [-3, -1, 1, 3, 3, 1, -1, -3, -1, 3]);
    assert_eq!(r.plane_row(0, 0, 0, 1), [0x3c, 0x02]);
}

#[test]
fn padding_bits_are_zero() {
    for bits in [1u8, 2, 4] {
        let max = (1u8 << bits) - 1;
        for ipg in [1u32, 7, 8, 9, 31, 33] {
            let codes = vec![max; 3 * 2 * 2 * ipg as usize];
            let packed = pack_codes(&codes, 3, [2, 2], ipg, bits).unwrap();
            let row = row_bytes(ipg);
            for r in packed.chunks(row) {
                for (j, &byte) in r.iter().enumerate() {
                    let valid = (ipg as usize - j * 8).min(8);
                    let mask = if valid == 8 { 0xff } else { (1u8 << valid) - 1 };
                    assert_eq!(byte, mask, "bits {bits} ipg {ipg} byte {j}");
                }
            }
        }
    }
}

#[test]
fn numerators_are_the_slb_levels() {
    for (bits, levels) in [
        (1u8, vec![-1, 1]),
        (2, vec![-3, -1, 1, 3]),
        (4, (0..16).map(|k| 2 * k - 15).collect()),
    ] {
        let n = levels.len();
        let codes: Vec<u8> = (0..n as u8).collect();
        let packed = pack_codes(&codes, 1, [1, 1], n as u32, bits).unwrap();
        let r = CodeReader::new(&conv(&packed, 1, [1, 1], n as u32, bits));
        let got: Vec<i32> = (0..n).map(|i| r.numerator(0, 0, 0, i)).collect();
        assert_eq!(got, levels);
    }
}

#[test]
fn pack_rejects_bad_input() {
    assert!(matches!(
        pack_codes(&[0, 1], 1, [1, 1], 3, 1),
        Err(Error::Length { .. })
    ));
    assert!(matches!(
        pack_codes(&[0, 2], 1, [1, 1], 2, 1),
        Err(Error::BadBits { .. })
    ));
    for bits in [0u8, 3, 8, 255] {
        assert!(matches!(
            pack_codes(&[0], 1, [1, 1], 1, bits),
            Err(Error::BadBits { .. })
        ));
    }
    assert!(matches!(
        pack_codes(&[], u32::MAX, [u16::MAX, u16::MAX], u32::MAX, 4),
        Err(Error::Overflow { .. }) | Err(Error::Length { .. })
    ));
}

fn shape_and_codes() -> impl Strategy<Value = (u32, [u16; 2], u32, u8, Vec<u8>)> {
    (
        1u32..5,
        1u16..4,
        1u16..4,
        1u32..70,
        prop::sample::select(vec![1u8, 2, 4]),
    )
        .prop_flat_map(|(out, kh, kw, ipg, bits)| {
            let n = (out * kh as u32 * kw as u32 * ipg) as usize;
            (
                Just(out),
                Just([kh, kw]),
                Just(ipg),
                Just(bits),
                prop::collection::vec(0u8..(1 << bits), n),
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn pack_round_trip((out, kernel, ipg, bits, codes) in shape_and_codes()) {
        let packed = pack_codes(&codes, out, kernel, ipg, bits).unwrap();
        prop_assert_eq!(Some(packed.len()), packed_len(out, kernel, ipg, bits));
        let r = CodeReader::new(&conv(&packed, out, kernel, ipg, bits));
        let mut it = codes.iter();
        for o in 0..out as usize {
            for ky in 0..kernel[0] as usize {
                for kx in 0..kernel[1] as usize {
                    for i in 0..ipg as usize {
                        let k = *it.next().unwrap();
                        prop_assert_eq!(r.code(o, ky, kx, i), k);
                        prop_assert_eq!(
                            r.numerator(o, ky, kx, i),
                            2 * k as i32 - ((1 << bits) - 1)
                        );
                    }
                    // Padding bits of every plane row are zero.
                    for p in 0..bits as usize {
                        let row = r.plane_row(o, ky, kx, p);
                        let last = row[row.len() - 1];
                        let used = ipg as usize - (row.len() - 1) * 8;
                        if used < 8 {
                            prop_assert_eq!(last >> used, 0);
                        }
                    }
                }
            }
        }
    }
}
