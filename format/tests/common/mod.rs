//! A small model that uses every layer kind, and a way to build broken variants of it.
#![allow(dead_code)]

use slb_format::*;

/// Owned buffers of the tiny model.
pub struct Tiny {
    pub lut: Vec<u8>,
    pub mean: Vec<u8>,
    pub std: Vec<u8>,
    pub codes0: Vec<u8>,
    pub codes1: Vec<u8>,
    pub aff_mult: Vec<u8>,
    pub aff_bias: Vec<u8>,
    pub add_ma: Vec<u8>,
    pub add_mb: Vec<u8>,
    pub add_b: Vec<u8>,
    pub d8_values: Vec<u8>,
    pub d8_scale: Vec<u8>,
    pub d8_bias: Vec<u8>,
    pub df_w: Vec<u8>,
    pub df_bias: Vec<u8>,
}

/// Test shorthand over [`ModelBuilder`].
pub trait Edit {
    /// The conv at layer `i` (panics if it is not a conv: test set-up error).
    fn conv(&mut self, i: usize) -> &mut OwnedConv;
}

impl Edit for ModelBuilder {
    fn conv(&mut self, i: usize) -> &mut OwnedConv {
        let op = self.layers[i].as_layer().op_name();
        self.conv_mut(i)
            .unwrap_or_else(|| panic!("layer {i} is {op}"))
    }
}

pub fn q(scale: f32, zero_point: i32, bits: u8) -> DType {
    DType::Quant {
        scale,
        zero_point,
        bits,
    }
}

pub fn t(c: u32, h: u32, w: u32, dtype: DType) -> TensorDesc {
    TensorDesc {
        shape: Shape::new(c, h, w),
        dtype,
    }
}

/// Deterministic small pseudo-random codes.
pub fn codes(n: usize, bits: u8, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761).wrapping_add(12345);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 7) as u8 & ((1u8 << bits) - 1)
        })
        .collect()
}

impl Tiny {
    pub fn new() -> Self {
        let c0 = codes(4 * 3 * 3 * 3, 2, 1);
        let c1 = codes(4 * 2, 1, 2);
        Tiny {
            lut: (0..3 * 256).map(|i| (i % 256) as u8).collect(),
            mean: f32_bytes(&[0.49, 0.48, 0.45]),
            std: f32_bytes(&[0.25, 0.24, 0.26]),
            codes0: pack_codes(&c0, 4, [3, 3], 3, 2).unwrap(),
            codes1: pack_codes(&c1, 4, [1, 1], 2, 1).unwrap(),
            aff_mult: i32_bytes(&[300, 310, -320, 330]),
            aff_bias: i32_bytes(&[10, -20, 30, -40]),
            add_ma: i32_bytes(&[256, 250, 260, 255]),
            add_mb: i32_bytes(&[128, 120, 130, 125]),
            add_b: i32_bytes(&[0, 5, -5, 1]),
            d8_values: (0..12).map(|i| (i as i8 * 10 - 60) as u8).collect(),
            d8_scale: f32_bytes(&[0.01, 0.02, 0.03]),
            d8_bias: f32_bytes(&[0.1, -0.2, 0.3]),
            df_w: f32_bytes(&(0..12).map(|i| i as f32 * 0.125 - 0.5).collect::<Vec<_>>()),
            df_bias: f32_bytes(&[1.0, 2.0, 3.0]),
        }
    }

    pub fn parts(&self) -> ModelBuilder {
        let q4 = q(0.1, 0, 4);
        let q8raw = q(0.05, 128, 8);
        let tensors = vec![
            t(3, 4, 4, q(1.0 / 64.0, 128, 8)), // 0 input
            t(4, 4, 4, q4),                    // 1 conv0
            t(4, 4, 4, q8raw),                 // 2 conv1 (raw codes)
            t(4, 4, 4, q4),                    // 3 add
            t(4, 2, 2, q4),                    // 4 maxpool
            t(4, 2, 2, q4),                    // 5 avgpool
            t(4, 2, 2, q4),                    // 6 relu
            t(4, 1, 1, q4),                    // 7 gap (codes)
            t(4, 1, 1, q4),                    // 8 flatten
            t(3, 1, 1, DType::F32),            // 9 dense int8
            t(4, 1, 1, DType::F32),            // 10 gap (f32)
            t(3, 1, 1, DType::F32),            // 11 dense f32 = output
        ];
        let layers = vec![
            OwnedLayer::Conv(OwnedConv {
                input: 0,
                output: 1,
                out_channels: 4,
                in_channels: 3,
                kernel: [3, 3],
                stride: [1, 1],
                padding: [1, 1],
                groups: 1,
                weight_bits: 2,
                codes: self.codes0.clone(),
                requant: OwnedRequant {
                    raw: RawQuant {
                        mult: 1234,
                        shift: 16,
                        zero_point: 128,
                        bits: 8,
                        scale: 0.05,
                    },
                    affine: Some(OwnedAffine {
                        shift: 8,
                        mult: self.aff_mult.clone(),
                        bias: self.aff_bias.clone(),
                        relu: true,
                    }),
                },
            }),
            OwnedLayer::Conv(OwnedConv {
                input: 1,
                output: 2,
                out_channels: 4,
                in_channels: 4,
                kernel: [1, 1],
                stride: [1, 1],
                padding: [0, 0],
                groups: 2,
                weight_bits: 1,
                codes: self.codes1.clone(),
                requant: OwnedRequant {
                    raw: RawQuant {
                        mult: 999,
                        shift: 12,
                        zero_point: 128,
                        bits: 8,
                        scale: 0.05,
                    },
                    affine: None,
                },
            }),
            OwnedLayer::Add(OwnedAdd {
                a: 1,
                b: 2,
                output: 3,
                params: OwnedAddParams {
                    shift: 10,
                    mult_a: self.add_ma.clone(),
                    mult_b: self.add_mb.clone(),
                    bias: self.add_b.clone(),
                    relu: true,
                },
            }),
            OwnedLayer::MaxPool(Pool {
                input: 3,
                output: 4,
                kernel: [2, 2],
                stride: [2, 2],
                padding: [0, 0],
            }),
            OwnedLayer::AvgPool(Pool {
                input: 4,
                output: 5,
                kernel: [3, 3],
                stride: [1, 1],
                padding: [1, 1],
            }),
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
                    values: self.d8_values.clone(),
                    scale: self.d8_scale.clone(),
                },
                bias: self.d8_bias.clone(),
            }),
            OwnedLayer::GlobalAvgPool(Unary {
                input: 6,
                output: 10,
            }),
            OwnedLayer::Dense(OwnedDense {
                input: 10,
                output: 11,
                weights: OwnedDenseWeights::F32(self.df_w.clone()),
                bias: self.df_bias.clone(),
            }),
        ];
        ModelBuilder {
            name: "tiny: every layer kind".into(),
            input: OwnedInput {
                shape: Shape::new(3, 4, 4),
                mean: self.mean.clone(),
                std: self.std.clone(),
                classes: "cat\ndog\nbird".into(),
                tensor: 0,
                lut: self.lut.clone(),
            },
            tensors,
            layers,
            output: 11,
        }
    }

    /// The valid file.
    pub fn bytes(&self) -> Vec<u8> {
        self.parts().build().expect("the tiny model is valid")
    }

    /// A variant of the tiny model, encoded without validation.
    pub fn mutated(&self, edit: impl FnOnce(&mut ModelBuilder)) -> Vec<u8> {
        let mut p = self.parts();
        edit(&mut p);
        p.build_unchecked().expect("encodes")
    }
}

/// The crate's parser, the one entry the malformed-input tests go through.
pub fn parse(b: &[u8]) -> Result<Model<'_>> {
    Model::parse(b)
}

/// Rewrites the header's payload length and the CRC after editing a file's payload.
pub fn reseal(mut b: Vec<u8>) -> Vec<u8> {
    let n = b.len() - HEADER_LEN - TRAILER_LEN;
    b[8..12].copy_from_slice(&(n as u32).to_le_bytes());
    let crc = crc32fast_hash(&b[HEADER_LEN..HEADER_LEN + n]);
    let end = b.len();
    b[end - 4..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// CRC-32 (IEEE), bitwise, so the tests do not trust the crate's own checksum call.
pub fn crc32fast_hash(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
