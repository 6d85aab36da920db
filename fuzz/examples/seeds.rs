//! Writes the seed corpus of the fuzz targets: small synthetic models (`slb::synth`) at every
//! bit width, plus a hand-built model with every layer kind.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds -- fuzz/seeds`

#[path = "../../src/synth.rs"]
#[allow(dead_code)]
mod synth;

use slb_format::*;
use synth::{single_conv, ConvGeom, Quant};

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "fuzz/seeds".into());
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
        put(&format!("conv3x3-w{wb}a{ab}"), single_conv(g, q).expect("conv"));
        let g = ConvGeom {
            groups: 2,
            ..ConvGeom::square(4, 6, 5, 3, 2)
        };
        put(&format!("conv-grouped-w{wb}a{ab}"), single_conv(g, q).expect("conv"));
        let g = ConvGeom::square(9, 2, 3, 1, 1);
        put(&format!("conv1x1-w{wb}a{ab}"), single_conv(g, q).expect("conv"));
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
    let lut: Vec<u8> = (0..2 * 256).map(|i| (i % 256) as u8).collect();
    let mean = f32_bytes(&[0.5, 0.5]);
    let std = f32_bytes(&[0.25, 0.25]);
    let c0 = pack_codes(&[0, 1, 2, 3], 2, [1, 1], 2, 2).expect("pack");
    let c1 = pack_codes(&[1, 0, 0, 1], 2, [1, 1], 2, 1).expect("pack");
    let m2 = i32_bytes(&[300, 310]);
    let b2 = i32_bytes(&[10, -20]);
    let d8 = [1u8, 255, 2, 254];
    let s8 = f32_bytes(&[0.5, 0.25]);
    let bias = f32_bytes(&[0.0, 1.0]);
    let wf = f32_bytes(&[1.0, -1.0, 0.5, 0.25]);
    let q4 = q(0.1, 0, 4);
    let tensors = [
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
    let raw = |mult| RawQuant {
        mult,
        shift: 12,
        zero_point: 128,
        bits: 8,
        scale: 0.05,
    };
    let conv = |input, output, codes, weight_bits, affine| {
        Layer::Conv(Conv {
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
            requant: Requant {
                raw: raw(999),
                affine,
            },
        })
    };
    let aff = ChannelAffine {
        shift: 8,
        mult: I32s(&m2),
        bias: I32s(&b2),
        relu: true,
    };
    let pool = |input, output, k, s, p| Pool {
        input,
        output,
        kernel: [k, k],
        stride: [s, s],
        padding: [p, p],
    };
    let layers = [
        conv(0, 1, &c0[..], 2, Some(aff)),
        conv(1, 2, &c1[..], 1, None),
        Layer::Add(Add {
            a: 1,
            b: 2,
            output: 3,
            params: AddParams {
                shift: 10,
                mult_a: I32s(&m2),
                mult_b: I32s(&m2),
                bias: I32s(&b2),
                relu: true,
            },
        }),
        Layer::MaxPool(pool(3, 4, 2, 1, 0)),
        Layer::AvgPool(pool(4, 5, 3, 1, 1)),
        Layer::Relu(Unary {
            input: 5,
            output: 6,
        }),
        Layer::GlobalAvgPool(Unary {
            input: 6,
            output: 7,
        }),
        Layer::Flatten(Unary {
            input: 7,
            output: 8,
        }),
        Layer::Dense(Dense {
            input: 8,
            output: 9,
            weights: DenseWeights::Int8 {
                values: &d8,
                scale: F32s(&s8),
            },
            bias: F32s(&bias),
        }),
        Layer::GlobalAvgPool(Unary {
            input: 6,
            output: 10,
        }),
        Layer::Dense(Dense {
            input: 10,
            output: 11,
            weights: DenseWeights::F32(F32s(&wf)),
            bias: F32s(&bias),
        }),
    ];
    encode(&ModelSpec {
        name: "every layer",
        input: InputSpec {
            shape: Shape::new(2, 3, 3),
            mean: F32s(&mean),
            std: F32s(&std),
            classes: "yes\nno",
            tensor: 0,
            lut: &lut,
        },
        tensors: &tensors,
        layers: &layers,
        output: 11,
    })
    .expect("every-layer model is valid")
}
