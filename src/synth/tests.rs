//! The synthetic models' tests: shapes, determinism, the requantization's statistics.

use super::net::Rng;
use super::*;
use slb_format::{CodeReader, Conv, DenseWeights, Layer, Model};

fn convs<'a>(m: &Model<'a>) -> Vec<Conv<'a>> {
    m.layers
        .iter()
        .filter_map(|l| match l {
            Layer::Conv(c) => Some(c),
            _ => None,
        })
        .collect()
}

fn params(m: &Model<'_>) -> u64 {
    convs(m)
        .iter()
        .map(|c| {
            c.out_channels as u64
                * c.in_per_group() as u64
                * c.kernel[0] as u64
                * c.kernel[1] as u64
        })
        .sum()
}

fn code_bytes(m: &Model<'_>) -> usize {
    convs(m).iter().map(|c| c.codes.len()).sum()
}

#[test]
fn every_model_parses_for_every_width() {
    // Every weight width and every activation width, not every pair (debug builds).
    for arch in [Arch::ResNet20, Arch::VggSmall] {
        for (wb, ab) in [(1, 1), (2, 2), (4, 4), (1, 8), (4, 2)] {
            {
                let b = build(arch, Quant::new(wb, ab, 3)).unwrap();
                let m = Model::parse(&b).unwrap();
                assert_eq!(m.input.num_classes(), 10, "{arch:?}");
                let out = m.tensor(m.output).unwrap();
                assert_eq!(out.shape, Shape::new(10, 1, 1));
                // The first conv reads the 8-bit image tensor; the others act_bits.
                let cs = convs(&m);
                for (i, c) in cs.iter().enumerate() {
                    assert_eq!(c.weight_bits, wb);
                    let bits = match m.tensor(c.input).unwrap().dtype {
                        DType::Quant { bits, .. } => bits,
                        DType::F32 => 0,
                    };
                    if i == 0 {
                        assert_eq!(bits, 8);
                    } else if c.requant.affine.is_some() || bits != 8 {
                        assert_eq!(bits, ab, "{arch:?} conv {i}");
                    }
                }
            }
        }
    }
}

#[test]
fn resnet18_sizes() {
    let b = resnet18_cifar(Quant::new(1, 2, 0)).unwrap();
    let m = Model::parse(&b).unwrap();
    let cs = convs(&m);
    // Stem + 16 block convs + 3 downsamples.
    assert_eq!(cs.len(), 20);
    // 3*64*9 + 2*2*64*64*9 + (64*128*9 + 3*128*128*9 + 64*128) + ... : 11,159,232 weights.
    assert_eq!(params(&m), 11_159_232);
    // W1: params / 8 bytes, except the stem whose 3 input channels fill one byte per row.
    assert_eq!(code_bytes(&m), (11_159_232 - 3 * 64 * 9) / 8 + 64 * 9);
    let adds = m
        .layers
        .iter()
        .filter(|l| matches!(l, Layer::Add(_)))
        .count();
    assert_eq!(adds, 8);
    // W4 quadruples the codes.
    let b4 = resnet18_cifar(Quant::new(4, 4, 0)).unwrap();
    assert_eq!(code_bytes(&Model::parse(&b4).unwrap()), 4 * code_bytes(&m));
}

#[test]
fn resnet20_and_vgg_sizes() {
    let m20 = resnet20(Quant::new(2, 2, 1)).unwrap();
    let m = Model::parse(&m20).unwrap();
    // ResNet-20: 0.27 M conv weights (with 1x1 downsamples: 16*32 + 32*64 more).
    let expected: u64 = 3 * 16 * 9
        + 6 * 16 * 16 * 9
        + (16 * 32 * 9 + 5 * 32 * 32 * 9 + 16 * 32)
        + (32 * 64 * 9 + 5 * 64 * 64 * 9 + 32 * 64);
    assert_eq!(params(&m), expected);
    assert_eq!(convs(&m).len(), 21);
    let v = vgg_small(Quant::new(1, 1, 1)).unwrap();
    let m = Model::parse(&v).unwrap();
    let expected: u64 =
        3 * 128 * 9 + 128 * 128 * 9 + 128 * 256 * 9 + 256 * 256 * 9 + 256 * 512 * 9 + 512 * 512 * 9;
    assert_eq!(params(&m), expected);
    let last = m.layers.get(m.layers.len() - 1).unwrap();
    let Layer::Dense(d) = last else {
        panic!("last layer is {}", last.op_name())
    };
    assert_eq!(d.bias.len(), 10);
    let DenseWeights::F32(w) = d.weights else {
        panic!("float classifier")
    };
    assert_eq!(w.len(), 512 * 4 * 4 * 10);
}

#[test]
fn deterministic_and_seeded() {
    let a = resnet20(Quant::new(1, 1, 7)).unwrap();
    assert_eq!(a, resnet20(Quant::new(1, 1, 7)).unwrap());
    assert_ne!(a, resnet20(Quant::new(1, 1, 8)).unwrap());
}

#[test]
fn bad_parameters_are_errors() {
    assert!(matches!(
        resnet20(Quant::new(3, 2, 0)),
        Err(Error::BadBits { .. })
    ));
    assert!(matches!(
        vgg_small(Quant::new(1, 0, 0)),
        Err(Error::BadBits { .. })
    ));
    let mut g = ConvGeom::square(8, 8, 4, 3, 1);
    g.groups = 3;
    assert!(single_conv(g, Quant::new(1, 1, 0)).is_err());
    g.groups = 0;
    assert!(single_conv(g, Quant::new(1, 1, 0)).is_err());
    let g = ConvGeom::square(8, 8, 2, 5, 1);
    assert!(single_conv(
        ConvGeom {
            padding: [0, 0],
            ..g
        },
        Quant::new(1, 1, 0)
    )
    .is_err());
    let g = ConvGeom::square(u32::MAX, 8, 1 << 16, 1, 1);
    assert!(matches!(
        single_conv(g, Quant::new(1, 1, 0)),
        Err(Error::Overflow { .. })
    ));
}

/// Naive integer evaluation of a single-conv model's conv (stage 1 and 2), on a random
/// image, per `docs/FORMAT.md`.
fn eval_single_conv(bytes: &[u8], seed: u64) -> (Vec<u8>, u8) {
    let m = Model::parse(bytes).unwrap();
    let Layer::Conv(c) = m.layers.get(0).unwrap() else {
        panic!("conv first")
    };
    let tin = m.tensor(c.input).unwrap();
    let tout = m.tensor(c.output).unwrap();
    let (
        DType::Quant {
            zero_point: zin,
            bits: bin,
            ..
        },
        DType::Quant {
            zero_point: zout,
            bits: bout,
            ..
        },
    ) = (tin.dtype, tout.dtype)
    else {
        panic!("quantized")
    };
    let centred = |q: u8| {
        if bin == 1 {
            2 * q as i64 - 1
        } else {
            q as i64 - zin as i64
        }
    };
    let s = tin.shape;
    let mut rng = Rng(seed);
    // HWC image -> CHW codes through the LUT.
    let mut x = vec![0u8; s.elements().unwrap() as usize];
    for h in 0..s.h as usize {
        for w in 0..s.w as usize {
            for ch in 0..s.c as usize {
                let v = (rng.next() >> 56) as usize;
                x[(ch * s.h as usize + h) * s.w as usize + w] = m.input.lut[ch * 256 + v];
            }
        }
    }
    let r = CodeReader::new(&c);
    let o = tout.shape;
    let aff = c.requant.affine.unwrap();
    let rs = |v: i64, sh: u8| (v + (1i64 << (sh - 1))) >> sh;
    let qmax = (1i64 << bout) - 1;
    let ipg = c.in_per_group() as usize;
    let opg = (c.out_channels / c.groups) as usize;
    let mut y = Vec::new();
    for oc in 0..o.c as usize {
        let g = oc / opg;
        for oy in 0..o.h as i64 {
            for ox in 0..o.w as i64 {
                let mut acc = 0i64;
                for ky in 0..c.kernel[0] as i64 {
                    for kx in 0..c.kernel[1] as i64 {
                        let iy = oy * c.stride[0] as i64 + ky - c.padding[0] as i64;
                        let ix = ox * c.stride[1] as i64 + kx - c.padding[1] as i64;
                        if iy < 0 || ix < 0 || iy >= s.h as i64 || ix >= s.w as i64 {
                            continue;
                        }
                        for i in 0..ipg {
                            let ch = g * ipg + i;
                            let q =
                                x[(ch * s.h as usize + iy as usize) * s.w as usize + ix as usize];
                            acc += r.numerator(oc, ky as usize, kx as usize, i) as i64 * centred(q);
                        }
                    }
                }
                let raw = c.requant.raw;
                let q_raw = (raw.zero_point as i64 + rs(acc * raw.mult as i64, raw.shift))
                    .clamp(0, (1 << raw.bits) - 1);
                let v = (q_raw - raw.zero_point as i64) * aff.mult.get(oc).unwrap() as i64
                    + aff.bias.get(oc).unwrap() as i64;
                let t = rs(v, aff.shift);
                let q = if bout == 1 {
                    (t >= 0) as i64
                } else {
                    let lo = if aff.relu { zout as i64 } else { 0 };
                    (zout as i64 + t).clamp(lo, qmax)
                };
                y.push(q as u8);
            }
        }
    }
    (y, bout)
}

#[test]
fn single_conv_outputs_spread_over_the_code_range() {
    for (geom, wb, ab) in [
        (ConvGeom::square(64, 32, 8, 3, 1), 1, 2),
        (ConvGeom::square(32, 16, 8, 3, 2), 2, 4),
        (ConvGeom::square(16, 16, 6, 1, 1), 4, 8),
        (ConvGeom::square(64, 64, 6, 3, 1), 1, 1),
        (
            ConvGeom {
                groups: 4,
                ..ConvGeom::square(32, 32, 6, 3, 1)
            },
            2,
            2,
        ),
    ] {
        let b = single_conv(geom, Quant::new(wb, ab, 11)).unwrap();
        let (y, bits) = eval_single_conv(&b, 5);
        let qmax = (1usize << bits) - 1;
        let mut hist = vec![0usize; qmax + 1];
        for &q in &y {
            hist[q as usize] += 1;
        }
        let n = y.len() as f64;
        let frac = |k: usize| hist[k] as f64 / n;
        let used = hist.iter().filter(|&&h| h > 0).count();
        let ctx = format!("{geom:?} W{wb}A{ab}: {hist:?}");
        if bits == 1 {
            assert!((0.2..0.8).contains(&frac(1)), "{ctx}");
        } else {
            assert!(frac(0) < 0.6, "vanishing: {ctx}");
            assert!(frac(qmax) < 0.15, "saturating: {ctx}");
            assert!(used * 2 > qmax.min(64), "narrow: {ctx}");
        }
    }
}
