//! The validation rules of `docs/FORMAT.md` section 6, each at its boundary: the last value a rule
//! accepts parses, the first it refuses gives the rule's own error. (`malformed.rs` and
//! `malformed_graph.rs` have one test per class of malformed input; these tests pin where each
//! limit lies, which a check that only fires on far-off values would not.)

mod common;

use common::*;
use slb_format::*;

const MODEL: Site = Site::Model;
/// The id of a tensor appended to `Tiny`'s twelve (`with_unused_tensor`, `tensors.push`).
const APPENDED: Site = Site::Tensor(12);

fn parse(b: &[u8]) -> Result<Model<'_>> {
    Model::parse(b)
}

/// The tiny model with one more tensor that no layer reads or writes (allowed), so that only
/// rule 3 looks at its dtype.
fn with_unused_tensor(tiny: &Tiny, dtype: DType) -> Vec<u8> {
    tiny.mutated(|p| p.tensors.push(t(2, 3, 5, dtype)))
}

/// A three-layer model around one conv reading the tiny model's 3x4x4 8-bit input: the conv
/// (no affine stage, so its output tensor holds the raw quantization), global average pooling
/// to F32 and nothing else; the pooled tensor `[out_channels, 1, 1]` is the output.
fn one_conv(tiny: &Tiny, conv: Conv<'_>, out_hw: (u32, u32)) -> Vec<u8> {
    let r = conv.requant.raw;
    tiny.mutated(|p| {
        let input = p.tensors[0];
        p.tensors = vec![
            input,
            t(
                conv.out_channels,
                out_hw.0,
                out_hw.1,
                q(r.scale, r.zero_point, r.bits),
            ),
            t(conv.out_channels, 1, 1, DType::F32),
        ];
        let mut c = conv;
        c.input = 0;
        c.output = 1;
        p.layers = vec![
            OwnedLayer::Conv(c.into()),
            OwnedLayer::GlobalAvgPool(Unary {
                input: 1,
                output: 2,
            }),
        ];
        p.input.classes = String::new();
        p.output = 2;
    })
}

/// A depthwise 1-bit conv over the 3 input channels (`in_per_group` 1) with the given kernel and
/// padding, stride 1; `codes` must be its packed length.
fn depthwise<'c>(codes: &'c [u8], kernel: [u16; 2], padding: [u16; 2]) -> Conv<'c> {
    Conv {
        input: 0,
        output: 1,
        out_channels: 3,
        in_channels: 3,
        kernel,
        stride: [1, 1],
        padding,
        groups: 3,
        weight_bits: 1,
        codes,
        requant: Requant {
            raw: RawQuant {
                mult: 1000,
                shift: 20,
                zero_point: 8,
                bits: 4,
                scale: 0.5,
            },
            affine: None,
        },
    }
}

#[test]
fn rule2_at_most_1024_tensors() {
    let tiny = Tiny::new();
    let with_tensors = |n: usize| {
        tiny.mutated(|p| {
            while p.tensors.len() < n {
                p.tensors.push(t(1, 1, 1, DType::F32));
            }
        })
    };
    let b = with_tensors(MAX_TENSORS);
    assert_eq!(parse(&b).unwrap().tensors.len(), 1024);
    assert_eq!(
        parse(&with_tensors(MAX_TENSORS + 1)).unwrap_err(),
        Error::InvalidParam {
            layer: MODEL,
            what: "tensor count (more than 1024)"
        }
    );
}

#[test]
fn rule2_at_most_1024_layers() {
    let tiny = Tiny::new();
    // 1025 layers: refused by count before any of them is looked at (the extra ones repeat the
    // dense layer, which would also write its output twice).
    let b = tiny.mutated(|p| {
        let dense = p.layers[10].clone();
        while p.layers.len() <= MAX_LAYERS {
            p.layers.push(dense.clone());
        }
    });
    assert_eq!(
        parse(&b).unwrap_err(),
        Error::InvalidParam {
            layer: MODEL,
            what: "layer count (more than 1024)"
        }
    );
}

#[test]
fn rule3_tensor_scale_finite_and_positive() {
    let tiny = Tiny::new();
    for scale in [
        0.0,
        -0.0,
        -1.0,
        -f32::MIN_POSITIVE,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ] {
        assert_eq!(
            parse(&with_unused_tensor(&tiny, q(scale, 0, 4))).unwrap_err(),
            Error::InvalidParam {
                layer: APPENDED,
                what: "tensor scale (must be finite and positive)"
            },
            "scale {scale}"
        );
    }
    // The smallest positive (subnormal) and the largest finite scale are valid.
    for scale in [f32::from_bits(1), f32::MIN_POSITIVE, 1.0, f32::MAX] {
        parse(&with_unused_tensor(&tiny, q(scale, 0, 4))).unwrap();
    }
}

#[test]
fn rule3_tensor_zero_point_in_code_range() {
    let tiny = Tiny::new();
    let refused = Error::InvalidParam {
        layer: APPENDED,
        what: "tensor zero point (outside the code range)",
    };
    for bits in [2u8, 4, 8] {
        let qmax = (1i32 << bits) - 1;
        for zp in [0, 1, qmax / 2, qmax] {
            parse(&with_unused_tensor(&tiny, q(0.1, zp, bits)))
                .unwrap_or_else(|e| panic!("{bits} bits, zero point {zp}: {e:?}"));
        }
        for zp in [-1, qmax + 1, i32::MIN, i32::MAX] {
            assert_eq!(
                parse(&with_unused_tensor(&tiny, q(0.1, zp, bits))).unwrap_err(),
                refused,
                "{bits} bits, zero point {zp}"
            );
        }
    }
    // A sign (1 bit) has no zero point: it must be 0.
    parse(&with_unused_tensor(&tiny, q(0.1, 0, 1))).unwrap();
    for zp in [1, -1] {
        assert_eq!(
            parse(&with_unused_tensor(&tiny, q(0.1, zp, 1))).unwrap_err(),
            refused,
            "1 bit, zero point {zp}"
        );
    }
}

#[test]
fn rule6_groups_divide_both_channel_counts() {
    let tiny = Tiny::new();
    let refused = Error::InvalidParam {
        layer: Site::Layer(0),
        what: "groups (must divide both channel counts)",
    };
    let codes3 = vec![0u8; 3];
    let codes4 = vec![0u8; 4];
    // Depthwise (3 groups of 1 channel in, 1 out) is valid.
    parse(&one_conv(&tiny, depthwise(&codes3, [1, 1], [0, 0]), (4, 4))).unwrap();
    // 3 groups: divide the 3 input channels, not 4 output channels.
    let mut c = depthwise(&codes4, [1, 1], [0, 0]);
    c.out_channels = 4;
    assert_eq!(parse(&one_conv(&tiny, c, (4, 4))).unwrap_err(), refused);
    // 2 groups: divide the 4 output channels, not the 3 input channels.
    c.groups = 2;
    assert_eq!(parse(&one_conv(&tiny, c, (4, 4))).unwrap_err(), refused);
    // Neither channel count may be 0 (even though 0 is a multiple of every group count).
    let b = tiny.mutated(|p| p.conv(0).out_channels = 0);
    assert_eq!(parse(&b).unwrap_err(), refused);
    let b = tiny.mutated(|p| p.conv(0).in_channels = 0);
    assert_eq!(parse(&b).unwrap_err(), refused);
}

#[test]
fn rule6_accumulator_fits_i32() {
    // |acc| <= in_per_group * kh * kw * 15 * 255 must be <= 2^31 - 1, i.e. at most 561,433
    // terms per output. Depthwise (one input channel per group) with a kernel of exactly that
    // many positions (619 x 907) parses; 561,435 positions (15 x 37,429) do not. (561,434 =
    // 2 x 280,717 is no kernel: 280,717 is a prime above 65,535.)
    let tiny = Tiny::new();
    assert_eq!(i32::MAX as u64 / (15 * 255), 561_433);
    assert_eq!(619 * 907, 561_433);
    assert_eq!(15 * 37_429, 561_435);
    // Padding so the kernel just fits the 4x4 input and the output is 2x2.
    let fit = |k: u16| (k - 3) / 2;
    let codes = vec![0u8; 3 * 561_435];
    let k = [619, 907];
    let ok = depthwise(&codes[..3 * 561_433], k, [fit(k[0]), fit(k[1])]);
    let m = one_conv(&tiny, ok, (2, 2));
    let parsed = parse(&m).unwrap();
    match parsed.layers.get(0) {
        Some(Layer::Conv(c)) => assert_eq!(c.macs(Shape::new(3, 2, 2)), 12 * 561_433),
        other => panic!("{other:?}"),
    }
    let k = [15, 37_429];
    let big = depthwise(&codes, k, [fit(k[0]), fit(k[1])]);
    assert_eq!(
        parse(&one_conv(&tiny, big, (2, 2))).unwrap_err(),
        Error::Overflow {
            layer: Site::Layer(0),
            what: "accumulator (kernel too large for 32 bits)"
        }
    );
}

#[test]
fn rule6_requantization_shift_1_to_62() {
    let tiny = Tiny::new();
    let refused = Error::InvalidParam {
        layer: Site::Layer(0),
        what: "requantization shift (must be 1..=62)",
    };
    for shift in [1u8, 62] {
        parse(&tiny.mutated(|p| p.conv(0).requant.raw.shift = shift)).unwrap();
        parse(&tiny.mutated(|p| {
            if let Some(a) = &mut p.conv(0).requant.affine {
                a.shift = shift
            }
        }))
        .unwrap();
    }
    for shift in [0u8, 63] {
        let b = tiny.mutated(|p| p.conv(0).requant.raw.shift = shift);
        assert_eq!(parse(&b).unwrap_err(), refused, "raw shift {shift}");
        let b = tiny.mutated(|p| {
            if let Some(a) = &mut p.conv(0).requant.affine {
                a.shift = shift
            }
        });
        assert_eq!(parse(&b).unwrap_err(), refused, "affine shift {shift}");
    }
}

#[test]
fn rule6_raw_zero_point_in_range_and_scale_positive() {
    let tiny = Tiny::new();
    let refused = Error::InvalidParam {
        layer: Site::Layer(0),
        what: "raw output quantization",
    };
    // Conv 0 has an affine stage, so its raw quantization is free of its output tensor's.
    let raw = |edit: fn(&mut RawQuant)| tiny.mutated(|p| edit(&mut p.conv(0).requant.raw));
    for b in [
        raw(|r| r.scale = 0.0),
        raw(|r| r.scale = -0.0),
        raw(|r| r.scale = -0.5),
        raw(|r| r.scale = f32::INFINITY),
        raw(|r| r.scale = f32::NAN),
        raw(|r| r.zero_point = -1),
        raw(|r| r.zero_point = 256),
        raw(|r| {
            r.bits = 2;
            r.zero_point = 4;
        }),
    ] {
        assert_eq!(parse(&b).unwrap_err(), refused);
    }
    for b in [
        raw(|r| r.scale = f32::from_bits(1)),
        raw(|r| r.zero_point = 0),
        raw(|r| r.zero_point = 255),
        raw(|r| {
            r.bits = 2;
            r.zero_point = 3;
        }),
    ] {
        parse(&b).unwrap();
    }
}

#[test]
fn rule8_pool_padding_at_most_half_the_window_per_axis() {
    let tiny = Tiny::new();
    // Layer 4 average-pools the 4x2x2 tensor 4 into the 4x2x2 tensor 5.
    let pool = |kernel: [u16; 2], stride: [u16; 2], padding: [u16; 2]| {
        tiny.mutated(|p| {
            p.layers[4] = OwnedLayer::AvgPool(Pool {
                input: 4,
                output: 5,
                kernel,
                stride,
                padding,
            })
        })
    };
    // Padding of exactly half the window, on each axis: (2 + 2 - 2) / 2 + 1 = 2.
    parse(&pool([2, 2], [2, 2], [1, 1])).unwrap();
    // Odd windows: 3 -> padding 1 is at most half; (2 + 2 - 3) / 1 + 1 = 2.
    parse(&pool([3, 3], [1, 1], [1, 1])).unwrap();
    let refused = Error::InvalidParam {
        layer: Site::Layer(4),
        what: "pool padding (more than half the window)",
    };
    // One more than half, on one axis at a time.
    for (kernel, padding) in [
        ([2, 2], [2, 1]),
        ([2, 2], [1, 2]),
        ([3, 4], [2, 2]),
        ([4, 3], [2, 2]),
        ([1, 1], [0, 1]),
    ] {
        assert_eq!(
            parse(&pool(kernel, [1, 1], padding)).unwrap_err(),
            refused,
            "kernel {kernel:?} padding {padding:?}"
        );
    }
}

#[test]
fn rule11_output_is_f32_k_by_1_by_1() {
    let tiny = Tiny::new();
    // An F32 input, max-pooled by a window of (kh, kw) with the same stride: 3 x 4/kh x 4/kw.
    let pooled = |kernel: [u16; 2]| {
        tiny.mutated(|p| {
            p.tensors = vec![
                t(3, 4, 4, DType::F32),
                t(3, 4 / kernel[0] as u32, 4 / kernel[1] as u32, DType::F32),
            ];
            p.input.lut = Vec::new();
            p.layers = vec![OwnedLayer::MaxPool(Pool {
                input: 0,
                output: 1,
                kernel,
                stride: kernel,
                padding: [0, 0],
            })];
            p.output = 1;
        })
    };
    let m = pooled([4, 4]);
    assert_eq!(
        parse(&m).unwrap().tensor(1).unwrap().shape,
        Shape::new(3, 1, 1)
    );
    // [3, 1, 4] and [3, 4, 1]: one spatial dimension is not 1.
    assert_eq!(parse(&pooled([4, 1])).unwrap_err(), Error::BadOutput);
    assert_eq!(parse(&pooled([1, 4])).unwrap_err(), Error::BadOutput);
}

#[test]
fn rule3_tensor_at_most_2_pow_30_minus_1_elements() {
    let tiny = Tiny::new();
    let tensor_size = Error::Overflow {
        layer: APPENDED,
        what: "tensor size",
    };
    // 2^30 elements (four bytes each: 4 GiB) is one too many for a tensor.
    for shape in [(1 << 30, 1, 1), (1, 1 << 15, 1 << 15), (1 << 29, 1, 2)] {
        let b = tiny.mutated(|p| p.tensors.push(t(shape.0, shape.1, shape.2, DType::F32)));
        assert_eq!(parse(&b).unwrap_err(), tensor_size, "{shape:?}");
    }
    // 2^30 - 1 elements is a valid tensor by itself (4 * (2^30 - 1) = 2^32 - 4 bytes), so it is
    // the total over all tensors, with the model's other tensors, that overflows.
    let b = tiny.mutated(|p| p.tensors.push(t(3, 357_913_941, 1, DType::F32)));
    assert_eq!(
        parse(&b).unwrap_err(),
        Error::Overflow {
            layer: MODEL,
            what: "total tensor size"
        }
    );
}

#[test]
fn rule6_kernel_and_stride_non_zero() {
    let tiny = Tiny::new();
    let refused = Error::InvalidParam {
        layer: Site::Layer(0),
        what: "kernel or stride (zero)",
    };
    for (kernel, stride) in [
        ([3, 3], [0, 1]),
        ([3, 3], [1, 0]),
        ([0, 3], [1, 1]),
        ([3, 0], [1, 1]),
    ] {
        let b = tiny.mutated(|p| {
            p.conv(0).kernel = kernel;
            p.conv(0).stride = stride;
        });
        assert_eq!(parse(&b).unwrap_err(), refused, "{kernel:?} {stride:?}");
    }
}

#[test]
fn rule8_pool_kernel_and_stride_non_zero() {
    let tiny = Tiny::new();
    let refused = Error::InvalidParam {
        layer: Site::Layer(3),
        what: "pool kernel or stride (zero)",
    };
    for (kernel, stride) in [
        ([2, 2], [0, 2]),
        ([2, 2], [2, 0]),
        ([0, 2], [2, 2]),
        ([2, 0], [2, 2]),
    ] {
        let b = tiny.mutated(|p| {
            p.layers[3] = OwnedLayer::MaxPool(Pool {
                input: 3,
                output: 4,
                kernel,
                stride,
                padding: [0, 0],
            })
        });
        assert_eq!(parse(&b).unwrap_err(), refused, "{kernel:?} {stride:?}");
    }
}

/// Section 4: output size `floor((H + 2*padding - kernel) / stride) + 1` per axis, for convs
/// and pools alike; `None` where the kernel does not fit the padded input or a kernel or stride
/// is zero (never a division by zero: `output_shape` is public and takes any values).
#[test]
fn section4_output_size_formula() {
    let pool = |kernel: [u16; 2], stride: [u16; 2], padding: [u16; 2]| Pool {
        input: 0,
        output: 1,
        kernel,
        stride,
        padding,
    };
    let input = Shape::new(5, 7, 10);
    for (k, s, p) in [
        ([3, 3], [1, 1], [1, 1]),
        ([3, 2], [2, 3], [0, 1]),
        ([7, 10], [1, 1], [0, 0]),
        ([9, 1], [4, 4], [1, 0]),
    ] {
        let want = |axis: usize, size: u32| {
            (size + 2 * p[axis] as u32 - k[axis] as u32) / s[axis] as u32 + 1
        };
        let got = pool(k, s, p).output_shape(input).unwrap();
        assert_eq!(
            got,
            Shape::new(5, want(0, 7), want(1, 10)),
            "{k:?} {s:?} {p:?}"
        );
    }
    assert_eq!(pool([8, 1], [1, 1], [0, 0]).output_shape(input), None);
    assert_eq!(pool([1, 13], [1, 1], [1, 1]).output_shape(input), None);
    for (k, s) in [
        ([0, 1], [1, 1]),
        ([1, 0], [1, 1]),
        ([1, 1], [0, 1]),
        ([1, 1], [1, 0]),
    ] {
        assert_eq!(pool(k, s, [0, 0]).output_shape(input), None, "{k:?} {s:?}");
        let tiny = Tiny::new();
        let mut parts = tiny.parts();
        let c = parts.conv(0);
        c.kernel = k;
        c.stride = s;
        assert_eq!(c.as_conv().output_shape(input), None, "{k:?} {s:?}");
    }
}
