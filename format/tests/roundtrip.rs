//! Encode -> parse round trips and the pinned bytes of a tiny model.

mod common;

use common::*;
use slb_format::*;

#[test]
fn round_trip_every_field() {
    let tiny = Tiny::new();
    let parts = tiny.parts();
    let bytes = tiny.bytes();
    let m = Model::parse(&bytes).unwrap();
    assert_eq!(m.name, parts.name);
    assert_eq!(m.version, VERSION);
    assert_eq!(m.output, parts.output);
    assert_eq!(m.input, parts.input.as_spec());
    assert_eq!(m.input.num_classes(), 3);
    assert_eq!(
        m.input.class_names().collect::<Vec<_>>(),
        ["cat", "dog", "bird"]
    );
    assert_eq!(m.tensors.len(), parts.tensors.len());
    assert_eq!(m.tensors.iter().collect::<Vec<_>>(), parts.tensors);
    assert_eq!(m.layers.len(), parts.layers.len());
    let layers: Vec<Layer<'_>> = parts.layers.iter().map(OwnedLayer::as_layer).collect();
    assert_eq!(m.layers.iter().collect::<Vec<_>>(), layers);
    for (i, t) in parts.tensors.iter().enumerate() {
        assert_eq!(m.tensor(i as u16).as_ref(), Some(t));
        assert_eq!(m.tensors.get(i).as_ref(), Some(t));
    }
    assert_eq!(m.tensor(parts.tensors.len() as u16), None);
    assert_eq!(m.layers.get(parts.layers.len()), None);
    // Borrowed arrays point into the file, not into a copy.
    let Layer::Conv(c) = m.layers.get(0).unwrap() else {
        panic!("layer 0 is a conv")
    };
    let range = bytes.as_ptr_range();
    assert!(range.contains(&c.codes.as_ptr()));
    // Typed accessors of borrowed arrays.
    let aff = c.requant.affine.unwrap();
    assert_eq!(aff.mult.len(), 4);
    assert_eq!(aff.mult.get(2), Some(-320));
    assert_eq!(aff.mult.get(4), None);
    assert_eq!(aff.bias.iter().collect::<Vec<_>>(), [10, -20, 30, -40]);
    assert_eq!(m.input.mean.get(1), Some(0.48));
    // Building the parsed model again gives the same bytes.
    let again = ModelBuilder::from_model(&m);
    assert_eq!(again, parts);
    assert_eq!(again.build().unwrap(), bytes);
}

/// The tensor and layer tables iterate their records in order, and each iterator's
/// `size_hint` bounds what is left (the upper bound exactly: every record of a parsed model
/// decodes). A parsed model's tables are never empty (its output is written by a layer).
#[test]
fn record_tables_iterate_with_exact_upper_bound() {
    let tiny = Tiny::new();
    let parts = tiny.parts();
    let bytes = tiny.bytes();
    let m = Model::parse(&bytes).unwrap();
    assert!(!m.tensors.is_empty());
    assert!(!m.layers.is_empty());
    let mut it = m.layers.iter();
    for (i, want) in parts.layers.iter().enumerate() {
        let left = parts.layers.len() - i;
        let (lo, hi) = it.size_hint();
        assert!(lo <= left, "{lo} > {left}");
        assert_eq!(hi, Some(left), "before layer {i}");
        assert_eq!(it.next(), Some(want.as_layer()));
    }
    assert_eq!(it.size_hint(), (0, Some(0)));
    assert_eq!(it.next(), None);
    let mut it = m.tensors.iter();
    assert_eq!(it.size_hint().1, Some(12));
    it.nth(4);
    assert_eq!(it.size_hint().1, Some(7));
    assert_eq!(it.count(), 7);
}

#[test]
fn layer_accessors() {
    let tiny = Tiny::new();
    let p = tiny.parts();
    let layers: Vec<Layer<'_>> = p.layers.iter().map(OwnedLayer::as_layer).collect();
    let names: Vec<_> = layers.iter().map(|l| l.op_name()).collect();
    assert_eq!(
        names,
        [
            "conv",
            "conv",
            "add",
            "maxpool",
            "avgpool",
            "relu",
            "global_avgpool",
            "flatten",
            "dense",
            "global_avgpool",
            "dense"
        ]
    );
    assert_eq!(layers[2].inputs(), [Some(1), Some(2)]);
    assert_eq!(layers[2].output(), 3);
    assert_eq!(p.layers[2].output(), 3);
    assert_eq!(layers[0].inputs(), [Some(0), None]);
    let Layer::Conv(c) = layers[0] else {
        unreachable!()
    };
    let out = c.output_shape(Shape::new(3, 4, 4)).unwrap();
    assert_eq!(out, Shape::new(4, 4, 4));
    assert_eq!(c.macs(out), 4 * 16 * 3 * 9);
    assert_eq!(c.in_per_group(), 3);
    assert_eq!(q(1.0, 0, 4).qmax(), Some(15));
    assert_eq!(DType::F32.qmax(), None);
}

/// A model small enough to pin byte for byte: 8-bit 1x2x2 input (identity LUT), a 1x1 conv to
/// two 2-bit channels with 1-bit weights and no affine stage, global average pooling to F32 and
/// a float dense layer to two logits.
fn golden_model() -> Vec<u8> {
    let codes = pack_codes(&[1, 0], 2, [1, 1], 1, 1).unwrap();
    assert_eq!(codes, [0x01, 0x00]);
    let input = OwnedInput {
        shape: Shape::new(1, 2, 2),
        mean: f32_bytes(&[0.5]),
        std: f32_bytes(&[0.25]),
        classes: "a\nb".into(),
        tensor: 0,
        lut: (0..=255).collect(),
    };
    let mut m = ModelBuilder::new("g", input);
    m.tensors = vec![
        t(1, 2, 2, q(0.5, 128, 8)),
        t(2, 2, 2, q(1.0, 1, 2)),
        t(2, 1, 1, DType::F32),
        t(2, 1, 1, DType::F32),
    ];
    m.layers = vec![
        OwnedLayer::Conv(OwnedConv {
            input: 0,
            output: 1,
            out_channels: 2,
            in_channels: 1,
            kernel: [1, 1],
            stride: [1, 1],
            padding: [0, 0],
            groups: 1,
            weight_bits: 1,
            codes,
            requant: OwnedRequant {
                raw: RawQuant {
                    mult: 3,
                    shift: 2,
                    zero_point: 1,
                    bits: 2,
                    scale: 1.0,
                },
                affine: None,
            },
        }),
        OwnedLayer::GlobalAvgPool(Unary {
            input: 1,
            output: 2,
        }),
        OwnedLayer::Dense(OwnedDense {
            input: 2,
            output: 3,
            weights: OwnedDenseWeights::F32(f32_bytes(&[1.0, 0.0, 0.0, -1.0])),
            bias: f32_bytes(&[0.0, 0.5]),
        }),
    ];
    m.output = 3;
    m.build().unwrap()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn golden_bytes() {
    let bytes = golden_model();
    // Header: magic, version 1, flags 0, payload length (LE).
    let n = bytes.len() - HEADER_LEN - TRAILER_LEN;
    assert_eq!(&bytes[..8], b"SLBM\x01\x00\x00\x00");
    assert_eq!(bytes[8..12], (n as u32).to_le_bytes());
    // Payload, split at its fields (postcard: varint lengths, then bytes).
    let lut_hex: String = (0..=255u8).map(|x| format!("{x:02x}")).collect();
    let expected = [
        "534c424d01000000",                  // magic, version 1, flags 0
        "72010000",                          // payload length 370
        "0167",                              // name "g"
        "010202",                            // input shape c=1, h=2, w=2
        "040000003f",                        // mean [0.5]
        "040000803e",                        // std [0.25]
        "03610a62",                          // classes "a\nb"
        "00",                                // input tensor 0
        "8002",                              // lut length 256 (varint)
        &lut_hex,                            // identity LUT
        "04",                                // tensor count
        "1d",                                // tensor table: 29 bytes
        "010202",                            // t0 shape
        "000000003f800208", // t0 Quant{scale 0.5, zero point 128 (zigzag 256), bits 8}
        "020202",           // t1 shape
        "000000803f0202",   // t1 Quant{scale 1.0, zero point 1 (zigzag 2), bits 2}
        "02010101",         // t2 shape, F32
        "02010101",         // t3 shape, F32
        "03",               // layer count
        "3a",               // layer table: 58 bytes
        "00",               // Layer::Conv
        "0001",             // input 0, output 1
        "0201",             // out_channels 2, in_channels 1
        "010101010000",     // kernel, stride, padding
        "0101",             // groups 1, weight bits 1
        "020100",           // codes [0x01, 0x00]
        "060202020000803f", // raw: mult 3 (zigzag 6), shift 2, zp 1 (zigzag 2), bits 2, scale 1.0
        "00",               // affine: None
        "040102",           // Layer::GlobalAvgPool(1 -> 2)
        "01",               // Layer::Dense
        "0203",             // input 2, output 3
        "00",               // DenseWeights::F32
        "10",               // 16 bytes
        "0000803f00000000 00000000000080bf", // weights [1, 0, 0, -1]
        "08",               // bias: 8 bytes
        "000000000000003f", // [0.0, 0.5]
        "03",               // output tensor 3
    ]
    .concat()
    .replace(' ', "");
    let crc = crc_hex(&bytes);
    assert_eq!(hex(&bytes), expected + &crc);
    // The CRC itself is pinned too.
    assert_eq!(crc, "7a04c37e");
    let m = Model::parse(&bytes).unwrap();
    assert_eq!(m.name, "g");
    assert_eq!(m.layers.len(), 3);
}

fn crc_hex(bytes: &[u8]) -> String {
    hex(&bytes[bytes.len() - 4..])
}

/// The fuzz seeds (`fuzz/seeds`, written by `examples/fuzz_seeds.rs` from `slb::synth`) and any
/// input kept as a fuzz regression (`fuzz/regressions`) go through the parser: seeds parse,
/// regressions return (they once panicked).
#[test]
fn fuzz_seeds_and_regressions() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut seeds = 0;
    for entry in std::fs::read_dir(root.join("seeds")).expect("fuzz/seeds") {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        Model::parse(&bytes).expect("seed parses");
        seeds += 1;
    }
    assert!(seeds >= 10, "{seeds} seeds");
    if let Ok(dir) = std::fs::read_dir(root.join("regressions")) {
        for entry in dir {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let _ = Model::parse(&bytes);
        }
    }
}
