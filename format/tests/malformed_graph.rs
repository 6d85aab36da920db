//! One test per class of malformed model inside a well-formed container: bits and quantization
//! parameters out of range, conv geometry, packed lengths, shapes that do not chain, tensor ids
//! and their order, overflowing sizes, the output. Each returns its typed error, none panics.

mod common;

use common::*;
use slb_format::*;

#[test]
fn bits_out_of_range() {
    let tiny = Tiny::new();
    for wb in [0u8, 3, 8, 255] {
        let b = tiny.mutated(|p| p.conv(0).weight_bits = wb);
        assert_eq!(
            parse(&b).unwrap_err(),
            Error::BadBits {
                layer: Site::Layer(0),
                what: "weight",
                bits: wb
            }
        );
    }
    for ab in [0u8, 3, 5, 16, 32, 255] {
        let b = tiny.mutated(|p| p.tensors[3] = t(4, 4, 4, q(0.1, 0, ab)));
        assert_eq!(
            parse(&b).unwrap_err(),
            Error::BadBits {
                layer: Site::Tensor(3),
                what: "activation",
                bits: ab
            }
        );
    }
    for rb in [0u8, 1, 3, 16, 255] {
        let b = tiny.mutated(|p| p.conv(0).requant.raw.bits = rb);
        assert_eq!(
            parse(&b).unwrap_err(),
            Error::BadBits {
                layer: Site::Layer(0),
                what: "raw output",
                bits: rb
            }
        );
    }
}

#[test]
fn quantization_params_out_of_range() {
    let tiny = Tiny::new();
    let bad = |e: Result<Model<'_>>| matches!(e, Err(Error::InvalidParam { .. }));
    for (scale, zp, bits) in [
        (0.0, 0, 4),
        (-1.0, 0, 4),
        (f32::NAN, 0, 4),
        (f32::INFINITY, 0, 4),
        (0.1, 16, 4),
        (0.1, -1, 4),
        (0.1, 1, 1),
    ] {
        let b = tiny.mutated(|p| p.tensors[6] = t(4, 2, 2, q(scale, zp, bits)));
        assert!(bad(parse(&b)), "{scale} {zp} {bits}");
    }
    for shift in [0u8, 63, 255] {
        let b = tiny.mutated(|p| p.conv(0).requant.raw.shift = shift);
        assert!(bad(parse(&b)), "raw shift {shift}");
        let b = tiny.mutated(|p| {
            if let Some(a) = &mut p.conv(0).requant.affine {
                a.shift = shift
            }
        });
        assert!(bad(parse(&b)), "affine shift {shift}");
    }
    let b = tiny.mutated(|p| p.conv(0).requant.raw.zero_point = 256);
    assert!(bad(parse(&b)));
    let b = tiny.mutated(|p| p.conv(0).requant.raw.scale = f32::NAN);
    assert!(bad(parse(&b)));
    // Without an affine stage the output tensor must hold the raw quantization exactly.
    let b = tiny.mutated(|p| p.conv(1).requant.raw.zero_point = 127);
    assert!(bad(parse(&b)));
    // ReLU into a sign output.
    let b = tiny.mutated(|p| p.tensors[1] = t(4, 4, 4, q(0.1, 0, 1)));
    assert!(bad(parse(&b)));
    // ReLU layer over a sign tensor.
    let b = tiny.mutated(|p| {
        if let Some(a) = &mut p.conv(0).requant.affine {
            a.relu = false;
        }
        p.tensors[1] = t(4, 4, 4, q(0.1, 0, 1));
        p.tensors.push(t(4, 4, 4, q(0.1, 0, 1)));
        p.layers.push(OwnedLayer::Relu(Unary {
            input: 1,
            output: 12,
        }));
    });
    assert_eq!(
        parse(&b).unwrap_err(),
        Error::InvalidParam {
            layer: Site::Layer(11),
            what: "ReLU of a 1-bit (sign) tensor"
        }
    );
    // Input normalisation.
    let zero_std = f32_bytes(&[0.25, 0.0, 0.25]);
    let b = tiny.mutated(|p| p.input.std = zero_std.clone());
    assert!(bad(parse(&b)));
    // Dense weights not finite.
    let nan_w = f32_bytes(&[f32::NAN; 12]);
    let b = tiny.mutated(|p| {
        if let OwnedLayer::Dense(d) = &mut p.layers[10] {
            d.weights = OwnedDenseWeights::F32(nan_w.clone());
        }
    });
    assert!(bad(parse(&b)));
    // LUT code above the tensor's bits.
    let lut4: Vec<u8> = vec![16; 3 * 256];
    let b = tiny.mutated(|p| {
        p.tensors[0] = t(3, 4, 4, q(0.1, 0, 4));
        p.input.lut = lut4.clone();
    });
    assert!(bad(parse(&b)));
}

#[test]
fn conv_geometry() {
    let tiny = Tiny::new();
    let bad = |e: Result<Model<'_>>| {
        matches!(
            e,
            Err(Error::InvalidParam {
                layer: Site::Layer(0),
                ..
            })
        )
    };
    assert!(bad(parse(&tiny.mutated(|p| p.conv(0).groups = 0))));
    assert!(bad(parse(&tiny.mutated(|p| p.conv(0).groups = 2))));
    assert!(bad(parse(&tiny.mutated(|p| p.conv(0).stride = [0, 1]))));
    assert!(bad(parse(&tiny.mutated(|p| p.conv(0).kernel = [0, 3]))));
    // A kernel larger than the padded input.
    assert!(bad(parse(&tiny.mutated(|p| {
        p.conv(0).kernel = [7, 7];
        p.conv(0).padding = [0, 0];
    }))));
}

#[test]
fn packed_length_off_by_one() {
    let tiny = Tiny::new();
    let n = tiny.codes0.len();
    assert_eq!(n, 4 * 9 * 2); // 4 outputs x 3x3 positions x 2 planes x 1 byte
    let longer = [tiny.codes0.clone(), vec![0]].concat();
    for codes in [&tiny.codes0[..n - 1], &longer[..]] {
        let b = tiny.mutated(|p| p.conv(0).codes = codes.to_vec());
        assert_eq!(
            parse(&b).unwrap_err(),
            Error::Length {
                layer: Site::Layer(0),
                what: "packed weight codes",
                expected: n,
                got: codes.len()
            }
        );
    }
    // A set bit past the input channels in a row's last byte (the spec says zero).
    let in_g = 3; // conv 0 reads the RGB input: one byte per plane row, bits 3..8 unused
    for bit in in_g..8 {
        let mut dirty = tiny.codes0.clone();
        dirty[n - 1] |= 1 << bit;
        let b = tiny.mutated(|p| p.conv(0).codes = dirty.clone());
        assert_eq!(
            parse(&b).unwrap_err(),
            Error::InvalidParam {
                layer: Site::Layer(0),
                what: "packed weight codes (bits past the input channels must be zero)"
            }
        );
    }
    let mut clean = tiny.codes0.clone();
    clean[n - 1] ^= (1 << in_g) - 1; // used bits may hold anything
    let b = tiny.mutated(|p| p.conv(0).codes = clean.clone());
    parse(&b).unwrap();
    // Other arrays: per-channel multipliers, add biases, dense weights, LUT, mean.
    let short = &tiny.aff_mult[..12];
    let b = tiny.mutated(|p| {
        if let Some(a) = &mut p.conv(0).requant.affine {
            a.mult = short.to_vec()
        }
    });
    assert!(matches!(
        parse(&b),
        Err(Error::Length {
            layer: Site::Layer(0),
            ..
        })
    ));
    let b = tiny.mutated(|p| {
        if let OwnedLayer::Add(a) = &mut p.layers[2] {
            a.params.bias = tiny.add_b[..15].to_vec();
        }
    });
    assert!(matches!(
        parse(&b),
        Err(Error::Length {
            layer: Site::Layer(2),
            ..
        })
    ));
    let b = tiny.mutated(|p| {
        if let OwnedLayer::Dense(d) = &mut p.layers[8] {
            d.weights = OwnedDenseWeights::Int8 {
                values: tiny.d8_values[..11].to_vec(),
                scale: tiny.d8_scale.clone(),
            };
        }
    });
    assert!(matches!(
        parse(&b),
        Err(Error::Length {
            layer: Site::Layer(8),
            ..
        })
    ));
    let b = tiny.mutated(|p| p.input.lut = tiny.lut[..767].to_vec());
    assert!(matches!(
        parse(&b),
        Err(Error::Length {
            layer: Site::Model,
            ..
        })
    ));
    let b = tiny.mutated(|p| p.input.mean = tiny.mean[..8].to_vec());
    assert!(matches!(
        parse(&b),
        Err(Error::Length {
            layer: Site::Model,
            ..
        })
    ));
}

#[test]
fn shapes_do_not_chain() {
    let tiny = Tiny::new();
    // Conv output tensor with the wrong spatial size.
    let b = tiny.mutated(|p| p.conv(0).stride = [2, 2]);
    assert_eq!(
        parse(&b).unwrap_err(),
        Error::ShapeMismatch {
            layer: Site::Layer(0),
            what: "conv output",
            expected: Shape::new(4, 2, 2),
            got: Shape::new(4, 4, 4)
        }
    );
    // Conv declaring other input channels than its input tensor has.
    let b = tiny.mutated(|p| p.conv(1).in_channels = 2);
    assert!(matches!(
        parse(&b),
        Err(Error::ShapeMismatch {
            layer: Site::Layer(1),
            what: "conv input",
            ..
        })
    ));
    // Add of tensors of different shapes.
    let b = tiny.mutated(|p| {
        if let OwnedLayer::Add(a) = &mut p.layers[2] {
            a.b = 0;
        }
    });
    assert!(matches!(
        parse(&b),
        Err(Error::ShapeMismatch {
            layer: Site::Layer(2),
            ..
        })
    ));
    // Pool, flatten, gap, dense outputs.
    let b = tiny.mutated(|p| p.tensors[4] = t(4, 3, 3, q(0.1, 0, 4)));
    assert!(matches!(
        parse(&b),
        Err(Error::ShapeMismatch {
            layer: Site::Layer(3),
            ..
        })
    ));
    let b = tiny.mutated(|p| p.tensors[8] = t(2, 2, 1, q(0.1, 0, 4)));
    assert!(matches!(
        parse(&b),
        Err(Error::ShapeMismatch {
            layer: Site::Layer(7),
            ..
        })
    ));
    let b = tiny.mutated(|p| p.tensors[10] = t(4, 2, 1, DType::F32));
    assert!(matches!(
        parse(&b),
        Err(Error::ShapeMismatch {
            layer: Site::Layer(9),
            ..
        })
    ));
    // Input spec and input tensor disagree.
    let b = tiny.mutated(|p| p.input.shape = Shape::new(3, 4, 5));
    assert!(matches!(
        parse(&b),
        Err(Error::ShapeMismatch {
            layer: Site::Model,
            ..
        })
    ));
    // Dense with the wrong number of weights for its input (a dense layer chains by length).
    let b = tiny.mutated(|p| {
        if let OwnedLayer::Dense(d) = &mut p.layers[10] {
            d.input = 7; // 4 inputs as well: still valid
        }
    });
    parse(&b).unwrap();
    let b = tiny.mutated(|p| {
        if let OwnedLayer::Dense(d) = &mut p.layers[10] {
            d.input = 6; // 16 inputs, weights for 4
        }
    });
    assert!(matches!(
        parse(&b),
        Err(Error::Length {
            layer: Site::Layer(10),
            ..
        })
    ));
    // Dtype mismatches: conv reading F32, pool changing dtype.
    let b = tiny.mutated(|p| p.tensors[5] = t(4, 2, 2, q(0.2, 0, 4)));
    assert!(matches!(
        parse(&b),
        Err(Error::InvalidParam {
            layer: Site::Layer(4),
            ..
        })
    ));
}

#[test]
fn unknown_tensor_id() {
    let tiny = Tiny::new();
    let b = tiny.mutated(|p| p.conv(1).input = 12);
    assert_eq!(
        parse(&b).unwrap_err(),
        Error::UnknownTensor {
            layer: Site::Layer(1),
            tensor: 12
        }
    );
    let b = tiny.mutated(|p| p.conv(1).output = u16::MAX);
    assert_eq!(
        parse(&b).unwrap_err(),
        Error::UnknownTensor {
            layer: Site::Layer(1),
            tensor: u16::MAX
        }
    );
    let b = tiny.mutated(|p| p.output = 40);
    assert_eq!(
        parse(&b).unwrap_err(),
        Error::UnknownTensor {
            layer: Site::Model,
            tensor: 40
        }
    );
    let b = tiny.mutated(|p| p.input.tensor = 1000);
    assert_eq!(
        parse(&b).unwrap_err(),
        Error::UnknownTensor {
            layer: Site::Model,
            tensor: 1000
        }
    );
}

#[test]
fn read_before_write() {
    let tiny = Tiny::new();
    // Swap the two convs: conv1 reads tensor 1 before conv0 writes it.
    let b = tiny.mutated(|p| p.layers.swap(0, 1));
    assert_eq!(
        parse(&b).unwrap_err(),
        Error::Dataflow {
            layer: Site::Layer(0),
            tensor: 1,
            what: "is read before it is written"
        }
    );
    // A layer reading its own output.
    let b = tiny.mutated(|p| {
        if let OwnedLayer::Relu(u) = &mut p.layers[5] {
            u.input = 6;
        }
    });
    assert!(matches!(
        parse(&b),
        Err(Error::Dataflow {
            layer: Site::Layer(5),
            tensor: 6,
            ..
        })
    ));
}

#[test]
fn written_twice() {
    let tiny = Tiny::new();
    // The input tensor counts as written by the image.
    let b = tiny.mutated(|p| {
        p.conv(1).output = 0;
    });
    assert!(matches!(
        parse(&b),
        Err(Error::Dataflow {
            layer: Site::Layer(1),
            tensor: 0,
            what: "is written twice"
        })
    ));
    let b = tiny.mutated(|p| {
        let l = p.layers[9].clone();
        p.layers.push(l);
    });
    assert_eq!(
        parse(&b).unwrap_err(),
        Error::Dataflow {
            layer: Site::Layer(11),
            tensor: 10,
            what: "is written twice"
        }
    );
}

#[test]
fn overflowing_sizes() {
    let tiny = Tiny::new();
    // Elements overflow u32.
    let b = tiny.mutated(|p| p.tensors[3] = t(u32::MAX, u32::MAX, 2, q(0.1, 0, 4)));
    assert!(matches!(parse(&b), Err(Error::Overflow { .. })));
    let b = tiny.mutated(|p| p.tensors[11] = t(65536, 65536, 1, DType::F32));
    assert!(matches!(parse(&b), Err(Error::Overflow { .. })));
    // Fits u32 elements but not four bytes each.
    let b = tiny.mutated(|p| p.tensors[11] = t(1 << 30, 2, 1, DType::F32));
    assert!(matches!(parse(&b), Err(Error::Overflow { .. })));
    // Each tensor is fine, all of them together are not.
    let b = tiny.mutated(|p| {
        for _ in 0..5 {
            p.tensors.push(t(1 << 28, 1, 1, DType::F32));
        }
    });
    assert_eq!(
        parse(&b).unwrap_err(),
        Error::Overflow {
            layer: Site::Model,
            what: "total tensor size"
        }
    );
    // Huge conv dimensions: no wrapping arithmetic; the shapes no longer chain.
    let b = tiny.mutated(|p| {
        let c = p.conv(0);
        c.kernel = [u16::MAX, u16::MAX];
        c.padding = [u16::MAX, u16::MAX];
    });
    assert_eq!(
        parse(&b).unwrap_err(),
        Error::ShapeMismatch {
            layer: Site::Layer(0),
            what: "conv output",
            expected: Shape::new(4, 65540, 65540),
            got: Shape::new(4, 4, 4)
        }
    );
    let b = tiny.mutated(|p| {
        p.tensors[1] = t(u32::MAX / 16, 4, 4, q(0.1, 0, 4));
    });
    assert!(matches!(parse(&b), Err(Error::Overflow { .. })));
    // Zero dimensions.
    let b = tiny.mutated(|p| p.tensors[9] = t(3, 0, 1, DType::F32));
    assert!(matches!(parse(&b), Err(Error::InvalidParam { .. })));
    // Pool padding near u16::MAX (used to overflow a u16 multiplication).
    let b = tiny.mutated(|p| {
        if let OwnedLayer::MaxPool(m) = &mut p.layers[3] {
            m.padding = [u16::MAX, u16::MAX];
            m.kernel = [u16::MAX, u16::MAX];
        }
    });
    assert_eq!(
        parse(&b).unwrap_err(),
        Error::InvalidParam {
            layer: Site::Layer(3),
            what: "pool padding (more than half the window)"
        }
    );
    // Too many tensors.
    let b = tiny.mutated(|p| {
        while p.tensors.len() <= MAX_TENSORS {
            p.tensors.push(t(1, 1, 1, DType::F32));
        }
    });
    assert!(matches!(parse(&b), Err(Error::InvalidParam { .. })));
}

#[test]
fn bad_output() {
    let tiny = Tiny::new();
    // Quantized output.
    let b = tiny.mutated(|p| p.output = 8);
    assert_eq!(parse(&b).unwrap_err(), Error::BadOutput);
    // Output never written.
    let b = tiny.mutated(|p| {
        p.tensors.push(t(3, 1, 1, DType::F32));
        p.output = 12;
    });
    assert_eq!(parse(&b).unwrap_err(), Error::BadOutput);
    // Output is the input tensor.
    let b = tiny.mutated(|p| {
        p.tensors[0] = t(3, 4, 4, DType::F32);
        p.input.lut = Vec::new();
        p.layers.clear();
        p.output = 0;
    });
    assert_eq!(parse(&b).unwrap_err(), Error::BadOutput);
    // Output not [C, 1, 1].
    let b = tiny.mutated(|p| {
        p.tensors[0] = t(3, 4, 4, DType::F32);
        p.tensors[11] = t(3, 4, 4, DType::F32);
        p.input.lut = Vec::new();
        p.layers = vec![OwnedLayer::Relu(Unary {
            input: 0,
            output: 11,
        })];
    });
    assert_eq!(parse(&b).unwrap_err(), Error::BadOutput);
    // Class names that do not match the logits.
    let b = tiny.mutated(|p| p.input.classes = "cat\ndog".into());
    assert!(matches!(parse(&b), Err(Error::InvalidParam { .. })));
}

#[test]
fn avgpool_padding_on_sign_tensor() {
    let tiny = Tiny::new();
    let dense = tiny.parts().layers[10].clone();
    let s = q(0.1, 0, 1);
    let with_pool = |kernel: [u16; 2], padding: [u16; 2]| {
        tiny.mutated(|p| {
            // conv0 without ReLU into a 1-bit tensor, max pool, average pool, GAP, dense.
            if let Some(a) = &mut p.conv(0).requant.affine {
                a.relu = false;
            }
            p.tensors[1] = t(4, 4, 4, s);
            p.tensors[4] = t(4, 2, 2, s);
            p.tensors[5] = t(4, 2, 2, s);
            p.layers = vec![
                p.layers[0].clone(),
                OwnedLayer::MaxPool(Pool {
                    input: 1,
                    output: 4,
                    kernel: [2, 2],
                    stride: [2, 2],
                    padding: [0, 0],
                }),
                OwnedLayer::AvgPool(Pool {
                    input: 4,
                    output: 5,
                    kernel,
                    stride: [1, 1],
                    padding,
                }),
                OwnedLayer::GlobalAvgPool(Unary {
                    input: 5,
                    output: 10,
                }),
                dense.clone(),
            ];
        })
    };
    parse(&with_pool([1, 1], [0, 0])).unwrap();
    assert_eq!(
        parse(&with_pool([3, 3], [1, 1])).unwrap_err(),
        Error::InvalidParam {
            layer: Site::Layer(2),
            what: "average pool padding on a 1-bit (sign) tensor"
        }
    );
}
