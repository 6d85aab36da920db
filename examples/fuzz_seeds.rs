//! Writes the seed corpus of the fuzz targets: small synthetic models (`slb::synth`) at every
//! bit width, plus a hand-built model with every layer kind.
//!
//! `cargo run --example fuzz_seeds -- fuzz/seeds`

use slb::format::*;
use slb::synth::{single_conv, ConvGeom, Quant};

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/seeds".into());
    std::fs::create_dir_all(&dir).expect("create seed dir");
    let mut n = 0;
    let mut put = |name: &str, bytes: Vec<u8>| {
        Model::parse(&bytes).expect("seed parses");
        std::fs::write(format!("{dir}/{name}.slbm"), bytes).expect("write seed");
        n += 1;
    };
    for (wb, ab) in [(1, 1), (1, 2), (2, 4), (4, 8), (2, 1)] {
        let q = Quant::new(wb, ab, 1);
        let g = ConvGeom::square(3, 4, 4, 3, 1);
        put(
            &format!("conv3x3-w{wb}a{ab}"),
            single_conv(g, q).expect("conv"),
        );
        let g = ConvGeom {
            groups: 2,
            ..ConvGeom::square(4, 6, 5, 3, 2)
        };
        put(
            &format!("conv-grouped-w{wb}a{ab}"),
            single_conv(g, q).expect("conv"),
        );
        let g = ConvGeom::square(9, 2, 3, 1, 1);
        put(
            &format!("conv1x1-w{wb}a{ab}"),
            single_conv(g, q).expect("conv"),
        );
    }
    put("every-layer", every_layer());
    eprintln!("{n} seeds in {dir}");
}

/// Conv (stage 1+2), conv (stage 1), add, max pool, avg pool, relu, GAP to codes, flatten,
/// int8 dense, GAP to F32, float dense.
fn every_layer() -> Vec<u8> {
    let q = |scale: f32, zero_point: i32, bits: u8| DType::Quant {
        scale,
        zero_point,
        bits,
    };
    let t = |c, h, w, dtype| TensorDesc {
        shape: Shape::new(c, h, w),
        dtype,
    };
    let input = OwnedInput {
        shape: Shape::new(2, 3, 3),
        mean: f32_bytes(&[0.5, 0.5]),
        std: f32_bytes(&[0.25, 0.25]),
        classes: "yes\nno".into(),
        tensor: 0,
        lut: (0..2 * 256).map(|i| (i % 256) as u8).collect(),
    };
    let mut m = ModelBuilder::new("every layer", input);
    let m2 = i32_bytes(&[300, 310]);
    let b2 = i32_bytes(&[10, -20]);
    let bias = f32_bytes(&[0.0, 1.0]);
    let q4 = q(0.1, 0, 4);
    m.tensors = vec![
        t(2, 3, 3, q(1.0 / 32.0, 128, 8)),
        t(2, 3, 3, q4),
        t(2, 3, 3, q(0.05, 128, 8)),
        t(2, 3, 3, q4),
        t(2, 2, 2, q4),
        t(2, 2, 2, q4),
        t(2, 2, 2, q4),
        t(2, 1, 1, q4),
        t(2, 1, 1, q4),
        t(2, 1, 1, DType::F32),
        t(2, 1, 1, DType::F32),
        t(2, 1, 1, DType::F32),
    ];
    let conv = |input, output, codes, weight_bits, affine| {
        OwnedLayer::Conv(OwnedConv {
            input,
            output,
            out_channels: 2,
            in_channels: 2,
            kernel: [1, 1],
            stride: [1, 1],
            padding: [0, 0],
            groups: 1,
            weight_bits,
            codes,
            requant: OwnedRequant {
                raw: RawQuant {
                    mult: 999,
                    shift: 12,
                    zero_point: 128,
                    bits: 8,
                    scale: 0.05,
                },
                affine,
            },
        })
    };
    let aff = OwnedAffine {
        shift: 8,
        mult: m2.clone(),
        bias: b2.clone(),
        relu: true,
    };
    let pool = |input, output, k, s, p| Pool {
        input,
        output,
        kernel: [k, k],
        stride: [s, s],
        padding: [p, p],
    };
    let c0 = pack_codes(&[0, 1, 2, 3], 2, [1, 1], 2, 2).expect("pack");
    let c1 = pack_codes(&[1, 0, 0, 1], 2, [1, 1], 2, 1).expect("pack");
    m.layers = vec![
        conv(0, 1, c0, 2, Some(aff)),
        conv(1, 2, c1, 1, None),
        OwnedLayer::Add(OwnedAdd {
            a: 1,
            b: 2,
            output: 3,
            params: OwnedAddParams {
                shift: 10,
                mult_a: m2.clone(),
                mult_b: m2,
                bias: b2,
                relu: true,
            },
        }),
        OwnedLayer::MaxPool(pool(3, 4, 2, 1, 0)),
        OwnedLayer::AvgPool(pool(4, 5, 3, 1, 1)),
        OwnedLayer::Relu(Unary {
            input: 5,
            output: 6,
        }),
        OwnedLayer::GlobalAvgPool(Unary {
            input: 6,
            output: 7,
        }),
        OwnedLayer::Flatten(Unary {
            input: 7,
            output: 8,
        }),
        OwnedLayer::Dense(OwnedDense {
            input: 8,
            output: 9,
            weights: OwnedDenseWeights::Int8 {
                values: vec![1, 255, 2, 254],
                scale: f32_bytes(&[0.5, 0.25]),
            },
            bias: bias.clone(),
        }),
        OwnedLayer::GlobalAvgPool(Unary {
            input: 6,
            output: 10,
        }),
        OwnedLayer::Dense(OwnedDense {
            input: 10,
            output: 11,
            weights: OwnedDenseWeights::F32(f32_bytes(&[1.0, -1.0, 0.5, 0.25])),
            bias,
        }),
    ];
    m.output = 11;
    m.build().expect("every-layer model is valid")
}
