//! Crate-level tests: a hand-worked conv, whole models across kernels, the planner's bound and
//! every error path (the kernel tests are in `kernels/tests/`).

use slb_format::{
    f32_bytes, i32_bytes, pack_codes, DType, Layer, ModelBuilder, OwnedAffine, OwnedConv,
    OwnedInput, OwnedLayer, OwnedRequant, RawQuant, Shape, Site, Unary,
};

use crate::kernels::tests::{algo_kernel, kernel_exact};
use crate::kernels::{reference, Algo, ConvShape, KernelKind};
use crate::quant::QParams;
use crate::testutil::{quant, resnet, Builder, Op1, Rng};
use crate::{run, CostModel, Engine, Error, Model, Plan, PlanOptions};

/// The hand-worked model: a 2x2 one-channel 4-bit image, one 3x3 W2 conv (stride 1, pad 1)
/// with both requantization stages, then a global average pool to f32.
fn hand_model() -> Vec<u8> {
    // Weight codes k (W2, numerator 2k - 3):
    //   k   = [0 1 2 | 3 0 1 | 2 3 0]  ->  num = [-3 -1 1 | 3 -3 -1 | 1 3 -3]
    let codes = [0u8, 1, 2, 3, 0, 1, 2, 3, 0];
    let input = OwnedInput {
        shape: Shape::new(1, 2, 2),
        mean: f32_bytes(&[0.0]),
        std: f32_bytes(&[1.0]),
        classes: String::new(),
        tensor: 0,
        // Identity LUT clamped to 15: pixel v -> code min(v, 15).
        lut: (0..256).map(|v: u32| v.min(15) as u8).collect(),
    };
    let mut m = ModelBuilder::new("hand", input);
    let x = m.tensor(Shape::new(1, 2, 2), quant(4, 2, 0.5)).unwrap();
    let y = m.tensor(Shape::new(1, 2, 2), quant(4, 3, 1.0)).unwrap();
    let pooled = m.tensor(Shape::new(1, 1, 1), DType::F32).unwrap();
    m.layer(OwnedLayer::Conv(OwnedConv {
        input: x,
        output: y,
        out_channels: 1,
        in_channels: 1,
        kernel: [3, 3],
        stride: [1, 1],
        padding: [1, 1],
        groups: 1,
        weight_bits: 2,
        codes: pack_codes(&codes, 1, [3, 3], 1, 2).unwrap(),
        requant: OwnedRequant {
            raw: RawQuant {
                mult: 1,
                shift: 2,
                zero_point: 128,
                bits: 8,
                scale: 0.1,
            },
            affine: Some(OwnedAffine {
                shift: 3,
                mult: i32_bytes(&[5]),
                bias: i32_bytes(&[3]),
                relu: false,
            }),
        },
    }));
    m.layer(OwnedLayer::GlobalAvgPool(Unary {
        input: y,
        output: pooled,
    }));
    m.output = pooled;
    m.build().unwrap()
}

#[test]
fn hand_worked_conv() {
    // Image [[5, 0], [3, 7]] -> codes (zp 2) -> centred [[3, -2], [1, 5]].
    // Output (oy, ox) sees input (oy + ky - 1, ox + kx - 1); out-of-range taps are padding (0).
    //   (0,0): taps (1,1),(1,2),(2,1),(2,2): 3*-3 + -2*-1 + 1*3 + 5*-3   = -9+2+3-15  = -19
    //   (0,1): taps (1,0),(1,1),(2,0),(2,1): 3*3 + -2*-3 + 1*1 + 5*3     =  9+6+1+15  =  31
    //   (1,0): taps (0,1),(0,2),(1,1),(1,2): 3*-1 + -2*1 + 1*-3 + 5*-1   = -3-2-3-5   = -13
    //   (1,1): taps (0,0),(0,1),(1,0),(1,1): 3*-3 + -2*-1 + 1*3 + 5*-3   = -19
    // Stage 1 (mult 1, shift 2, zp 128): round_half_up(acc / 4):
    //   -19/4 = -4.75 -> -5 -> 123;  31/4 = 7.75 -> 8 -> 136;  -13/4 = -3.25 -> -3 -> 125
    // Stage 2 (mult 5, bias 3, shift 3, zp_out 3, no ReLU): v = (q - 128) * 5 + 3:
    //   123: -22 -> -2.75 -> -3 -> 0;  136: 43 -> 5.375 -> 5 -> 8;  125: -12 -> -1.5 -> -1 -> 2
    // Output codes [0, 8, 2, 0], real values (scale 1, zp 3) [-3, 5, -1, -3]; mean -0.5.
    let bytes = hand_model();
    let model = Model::parse(&bytes).unwrap();
    let image = [5u8, 0, 3, 7];
    let Layer::Conv(conv) = model.layers.get(0).unwrap() else {
        panic!()
    };
    let s = ConvShape::of(&conv, 2, 2, 4).unwrap();
    let inq = QParams {
        scale: 0.5,
        zp: 2,
        bits: 4,
    };
    let mut acc = [0i32; 4];
    reference::conv_acc(&conv, &s, &inq, &image, &mut acc);
    assert_eq!(acc, [-19, 31, -13, -19]);
    for algo in [Algo::Reference, Algo::Int8Dot, Algo::BitSerial] {
        let mut got = [0i32; 4];
        assert!(kernel_exact(
            algo_kernel(algo).as_ref(),
            &conv,
            &s,
            &inq,
            &image,
            &mut got,
            1
        ));
        assert_eq!(got, acc, "{algo:?}");
        let plan = Plan::with_options(
            &model,
            Engine::Packed,
            PlanOptions {
                force: Some(algo),
                portable_only: true,
                ..PlanOptions::default()
            },
        )
        .unwrap();
        let mut arena = vec![0u8; plan.arena_bytes()];
        let mut logits = [0f32; 1];
        run(&model, &plan, &mut arena, &image, &mut logits).unwrap();
        assert_eq!(logits, [-0.5], "{algo:?}");
        // The conv's output codes, read back from the arena.
        let t = plan.tensors[1];
        let pad = arena.as_ptr().align_offset(crate::arena::ALIGN);
        let base = pad + crate::arena::HEADER + plan.weights_bytes + t.offset;
        assert_eq!(&arena[base..base + 4], &[0, 8, 2, 0], "{algo:?}");
    }
    // The float engine computes the same graph: raw acc_real = acc * 0.5 / 3, raw code =
    // 128 + round(acc_real / 0.1) = 128 + round(acc / 0.6): -19/0.6 = -31.7 -> 96, ... these
    // differ from the fixed-point stage 1 (which here approximates 1/0.6 by 1/4), so only
    // check that it runs and is finite.
    let plan = Plan::new(&model, Engine::Float).unwrap();
    assert!(matches!(
        plan.kernel(0),
        Some(KernelKind::Float | KernelKind::FloatAvx2)
    ));
    let mut arena = vec![0u8; plan.arena_bytes()];
    let mut logits = [0f32; 1];
    run(&model, &plan, &mut arena, &image, &mut logits).unwrap();
    assert!(logits[0].is_finite());
}

/// Runs a model with every forced algorithm and checks bit-exact agreement of the logits.
fn all_algos_agree(bytes: &[u8], image: &[u8]) -> Vec<f32> {
    let model = Model::parse(bytes).unwrap();
    let want = {
        let plan = Plan::with_options(
            &model,
            Engine::Packed,
            PlanOptions {
                force: Some(Algo::Reference),
                portable_only: true,
                ..PlanOptions::default()
            },
        )
        .unwrap();
        let mut arena = vec![0u8; plan.arena_bytes()];
        let mut logits = vec![0f32; plan.output_len()];
        run(&model, &plan, &mut arena, image, &mut logits).unwrap();
        logits
    };
    let mut opts: Vec<PlanOptions> = vec![PlanOptions::default()];
    for a in [Algo::Int8Dot, Algo::BitSerial] {
        opts.push(PlanOptions {
            force: Some(a),
            portable_only: true,
            ..PlanOptions::default()
        });
        opts.push(PlanOptions {
            force: Some(a),
            portable_only: false,
            ..PlanOptions::default()
        });
    }
    for o in opts {
        let plan = Plan::with_options(&model, Engine::Packed, o).unwrap();
        let mut arena = vec![0u8; plan.arena_bytes()];
        let mut logits = vec![0f32; plan.output_len()];
        run(&model, &plan, &mut arena, image, &mut logits).unwrap();
        assert_eq!(logits, want, "{o:?}");
        // Second run reuses the prepared weights.
        let mut again = vec![0f32; plan.output_len()];
        run(&model, &plan, &mut arena, image, &mut again).unwrap();
        assert_eq!(again, want);
    }
    want
}

/// `PlanOptions::kernel` runs every conv the named kernel fits with it and the others by the
/// default rule, with the logits of the default plan; a kernel this CPU or build lacks is an
/// error naming it, at the first conv it fits.
#[test]
fn plan_option_kernel_runs_the_convs_it_fits_with_that_kernel() {
    for (wbits, abits) in [(1u8, 1u8), (1, 8), (2, 4)] {
        let bytes = resnet(8, 8, 1, wbits, abits, 3 + u64::from(wbits * 10 + abits));
        let model = Model::parse(&bytes).unwrap();
        let mut rng = Rng(9);
        let image: Vec<u8> = (0..3 * 8 * 8).map(|_| rng.next() as u8).collect();
        let default = Plan::new(&model, Engine::Packed).unwrap();
        let logits = |plan: &Plan| {
            let mut arena = vec![0u8; plan.arena_bytes()];
            let mut out = vec![0f32; plan.output_len()];
            run(&model, plan, &mut arena, &image, &mut out).unwrap();
            out
        };
        let want = logits(&default);
        let mut used = 0;
        for kind in KernelKind::ALL {
            let opts = PlanOptions {
                kernel: Some(kind),
                ..PlanOptions::default()
            };
            let fits: Vec<bool> = model
                .layers
                .iter()
                .map(|l| match l {
                    slb_format::Layer::Conv(c) => {
                        let s = crate::plan::conv_shape(&c, &default.tensors).unwrap();
                        crate::kernels::kind_fits(kind, &s)
                    }
                    _ => false,
                })
                .collect();
            let available =
                kind == KernelKind::Reference || crate::kernels::by_kind(kind).is_some();
            match Plan::with_options(&model, Engine::Packed, opts) {
                Ok(plan) => {
                    assert!(available || !fits.contains(&true), "{kind:?}");
                    for (i, &f) in fits.iter().enumerate() {
                        let want_kind = if f { Some(kind) } else { default.kernel(i) };
                        assert_eq!(plan.kernel(i), want_kind, "{kind:?} layer {i}");
                    }
                    assert_eq!(logits(&plan), want, "{kind:?} W{wbits}A{abits}");
                    used += usize::from(fits.contains(&true));
                }
                Err(Error::KernelUnavailable { layer, kernel }) => {
                    assert!(!available, "{kind:?}");
                    assert_eq!(kernel, kind.name());
                    assert_eq!(fits.iter().position(|&f| f), Some(usize::from(layer)));
                }
                Err(e) => panic!("{kind:?}: {e}"),
            }
        }
        // At least the portable kernels and the reference ran every model.
        assert!(used >= 3, "W{wbits}A{abits}: {used} kernels used");
    }
}

#[test]
fn small_resnets_agree_across_kernels() {
    for (wbits, abits) in [(1u8, 1u8), (1, 2), (2, 4), (4, 8), (1, 8)] {
        let bytes = resnet(8, 8, 1, wbits, abits, 7 + u64::from(wbits * 10 + abits));
        let mut rng = Rng(5);
        let image: Vec<u8> = (0..3 * 8 * 8).map(|_| rng.next() as u8).collect();
        let logits = all_algos_agree(&bytes, &image);
        assert!(logits.iter().all(|v| v.is_finite()));
    }
}

#[test]
fn every_layer_type_runs_and_agrees() {
    // A graph with pools (padded and not), relu, flatten, int8 dense, groups and a 1-bit tensor.
    let mut b = Builder::new(3, 9, 9, 8, 100, 11);
    let x = b.conv(0, 8, 3, 1, 1, 1, 2, 4, true, true);
    let x = b.pool(x, 3, 2, 1, true);
    let y = b.conv(x, 8, 3, 1, 1, 2, 1, 1, true, false);
    let y = b.conv(y, 8, 1, 1, 0, 1, 1, 4, true, true);
    let x = b.add(x, y, 4, false);
    let x = b.unary(x, Op1::Relu);
    let x = b.pool(x, 2, 2, 1, false);
    let g = b.unary(x, Op1::Gap);
    let x = b.unary(g, Op1::Flatten);
    let _ = b.dense(x, 5, true);
    let bytes = b.finish();
    let mut rng = Rng(3);
    let image: Vec<u8> = (0..3 * 9 * 9).map(|_| rng.next() as u8).collect();
    all_algos_agree(&bytes, &image);
    // And the float engine agrees on the winning class for most random images.
    let model = Model::parse(&bytes).unwrap();
    let plan = Plan::new(&model, Engine::Float).unwrap();
    let mut arena = vec![0u8; plan.arena_bytes()];
    let mut logits = vec![0f32; 5];
    run(&model, &plan, &mut arena, &image, &mut logits).unwrap();
    assert!(logits.iter().all(|v| v.is_finite()));
}

#[test]
fn float_engine_tracks_packed_on_f32_free_graph() {
    // Relu/flatten/dense on an f32 input tensor: both engines compute in f32 and must agree
    // to rounding.
    let mut b = Builder::new(2, 3, 3, 0, 0, 4);
    let x = b.unary(0, Op1::Relu);
    let x = b.pool(x, 2, 1, 0, true);
    let x = b.pool(x, 2, 1, 1, false);
    let x = b.unary(x, Op1::Flatten);
    let _ = b.dense(x, 4, false);
    let bytes = b.finish();
    let model = Model::parse(&bytes).unwrap();
    let image: Vec<u8> = (0..18).map(|i| (i * 13) as u8).collect();
    let mut outs = vec![];
    for e in [Engine::Packed, Engine::Float] {
        let plan = Plan::new(&model, e).unwrap();
        let mut arena = vec![0u8; plan.arena_bytes()];
        let mut logits = vec![0f32; 4];
        run(&model, &plan, &mut arena, &image, &mut logits).unwrap();
        outs.push(logits);
    }
    for (a, b) in outs[0].iter().zip(&outs[1]) {
        assert!((a - b).abs() <= 1e-4 * (1.0 + a.abs()), "{outs:?}");
    }
}

#[test]
fn float_engine_agrees_with_packed_mostly() {
    // Fake-quantized float execution of a W4A8 ResNet: same class on most images.
    let bytes = resnet(8, 8, 1, 4, 8, 21);
    let model = Model::parse(&bytes).unwrap();
    let pp = Plan::new(&model, Engine::Packed).unwrap();
    let fp = Plan::new(&model, Engine::Float).unwrap();
    let mut pa = vec![0u8; pp.arena_bytes()];
    let mut fa = vec![0u8; fp.arena_bytes()];
    let mut rng = Rng(17);
    let mut same = 0;
    let n = 10;
    for _ in 0..n {
        let image: Vec<u8> = (0..3 * 64).map(|_| rng.next() as u8).collect();
        let (mut l1, mut l2) = (vec![0f32; 10], vec![0f32; 10]);
        run(&model, &pp, &mut pa, &image, &mut l1).unwrap();
        run(&model, &fp, &mut fa, &image, &mut l2).unwrap();
        let am = |l: &[f32]| {
            l.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0
        };
        same += usize::from(am(&l1) == am(&l2));
    }
    assert!(same >= n * 6 / 10, "float and packed agree on {same}/{n}");
}

#[test]
fn arena_within_1_1x_of_lower_bound_on_resnet_shapes() {
    for (width, hw, blocks) in [(16u32, 32u32, 2usize), (8, 16, 3), (64, 32, 2)] {
        let bytes = resnet(width, hw, blocks, 1, 2, 3);
        let model = Model::parse(&bytes).unwrap();
        for e in [Engine::Packed, Engine::Float] {
            let plan = Plan::new(&model, e).unwrap();
            let (peak, low) = (plan.activation_peak_bytes(), plan.activation_lower_bound());
            println!("resnet w{width} {hw}x{hw} b{blocks} {e:?}: peak {peak} lower bound {low} ratio {:.3}", peak as f64 / low as f64);
            assert!(peak >= low);
            assert!(peak as f64 <= 1.1 * low as f64, "{peak} vs {low}");
        }
    }
}

#[test]
fn tensors_alive_together_never_overlap() {
    let bytes = resnet(8, 16, 2, 2, 4, 9);
    let model = Model::parse(&bytes).unwrap();
    let plan = Plan::new(&model, Engine::Packed).unwrap();
    let t = &plan.tensors;
    for (i, a) in t.iter().enumerate() {
        for b in t.iter().skip(i + 1) {
            if a.bytes == 0 || b.bytes == 0 || a.last < b.first || b.last < a.first {
                continue;
            }
            assert!(
                a.offset + a.bytes <= b.offset || b.offset + b.bytes <= a.offset,
                "{a:?} {b:?}"
            );
        }
        assert!(a.offset + a.bytes <= plan.activation_peak_bytes());
    }
}

#[test]
fn error_paths() {
    let bytes = hand_model();
    let model = Model::parse(&bytes).unwrap();
    let plan = Plan::new(&model, Engine::Packed).unwrap();
    let mut arena = vec![0u8; plan.arena_bytes()];
    let mut logits = [0f32; 1];
    let img = [1u8, 2, 3, 4];
    // Short arena (also one byte short).
    let n = plan.arena_bytes();
    assert_eq!(
        run(&model, &plan, &mut arena[..n - 1], &img, &mut logits),
        Err(Error::ArenaTooSmall {
            needed: n,
            got: n - 1
        })
    );
    assert!(matches!(
        run(&model, &plan, &mut [], &img, &mut logits),
        Err(Error::ArenaTooSmall { .. })
    ));
    // Wrong image and output sizes.
    assert_eq!(
        run(&model, &plan, &mut arena, &img[..3], &mut logits),
        Err(Error::InputSize {
            expected: 4,
            got: 3
        })
    );
    assert_eq!(
        run(&model, &plan, &mut arena, &img, &mut [0f32; 2]),
        Err(Error::OutputSize {
            expected: 1,
            got: 2
        })
    );
    // A plan made for another model.
    let bytes = resnet(4, 4, 1, 1, 1, 1);
    let other = Model::parse(&bytes).unwrap();
    let oplan = Plan::new(&other, Engine::Packed).unwrap();
    let mut oarena = vec![0u8; oplan.arena_bytes().max(n)];
    let oimg = vec![0u8; oplan.input_len()];
    let mut ologits = vec![0f32; oplan.output_len()];
    assert!(matches!(
        run(&model, &oplan, &mut oarena, &oimg, &mut ologits),
        Err(Error::PlanMismatch { .. })
    ));
    // XNOR forced on a W2A4 layer.
    assert_eq!(
        Plan::with_options(
            &model,
            Engine::Packed,
            PlanOptions {
                force: Some(Algo::Xnor),
                portable_only: false,
                ..PlanOptions::default()
            }
        )
        .err(),
        Some(Error::KernelUnavailable {
            layer: 0,
            kernel: "xnor (needs 1-bit weights and activations)"
        })
    );
    // Format errors convert.
    let e: Error = Model::parse(&bytes[..10]).unwrap_err().into();
    assert!(matches!(e, Error::Format(_)));
    assert!(format!("{e}").contains("invalid model"));
    // Too many layers: a chain of 300 ReLUs.
    let mut b = Builder::new(1, 1, 1, 4, 0, 1);
    let mut x = 0;
    for _ in 0..300 {
        x = b.unary(x, Op1::Relu);
    }
    let g = b.unary(x, Op1::GapF32);
    let _ = g;
    let bytes = b.finish();
    let big = Model::parse(&bytes).unwrap();
    assert_eq!(
        Plan::new(&big, Engine::Packed).err(),
        Some(Error::TooManyLayers)
    );
    // Every error displays something.
    for e in [
        Error::TooManyLayers,
        Error::Pin,
        Error::Overflow { what: "x" },
        Error::PlanMismatch {
            layer: Site::Layer(3),
        },
    ] {
        assert!(!format!("{e}").is_empty());
    }
}

#[cfg(feature = "embedded-hal")]
#[test]
fn busy_pin_goes_high_then_low() {
    use crate::run_with_busy_pin;
    use core::convert::Infallible;
    use embedded_hal::digital::{ErrorType, OutputPin};
    #[derive(Default)]
    struct Pin(Vec<bool>);
    impl ErrorType for Pin {
        type Error = Infallible;
    }
    impl OutputPin for Pin {
        fn set_low(&mut self) -> Result<(), Infallible> {
            self.0.push(false);
            Ok(())
        }
        fn set_high(&mut self) -> Result<(), Infallible> {
            self.0.push(true);
            Ok(())
        }
    }
    let bytes = hand_model();
    let model = Model::parse(&bytes).unwrap();
    let plan = Plan::new(&model, Engine::Packed).unwrap();
    let mut arena = vec![0u8; plan.arena_bytes()];
    let mut logits = [0f32; 1];
    let mut pin = Pin::default();
    run_with_busy_pin(
        &model,
        &plan,
        &mut arena,
        &[5, 0, 3, 7],
        &mut logits,
        &mut pin,
    )
    .unwrap();
    assert_eq!(pin.0, [true, false]);
    assert_eq!(logits, [-0.5]);
    // Low again after an error too.
    let mut pin = Pin::default();
    assert!(run_with_busy_pin(&model, &plan, &mut arena, &[5], &mut logits, &mut pin).is_err());
    assert_eq!(pin.0, [true, false]);
}

#[test]
fn explicit_prepare_and_unaligned_arena() {
    let bytes = hand_model();
    let model = Model::parse(&bytes).unwrap();
    let plan = Plan::new(&model, Engine::Packed).unwrap();
    // An arena starting at every offset 0..64 of a buffer works (alignment slack).
    let mut buf = vec![0u8; plan.arena_bytes() + 64];
    for off in [0usize, 1, 7, 33, 63] {
        let arena = &mut buf[off..off + plan.arena_bytes()];
        crate::prepare(&model, &plan, arena).unwrap();
        let mut logits = [0f32; 1];
        run(&model, &plan, arena, &[5, 0, 3, 7], &mut logits).unwrap();
        assert_eq!(logits, [-0.5]);
    }
}

#[test]
fn default_kernel_choice() {
    // Portable costs (deterministic on every machine): the 3-channel 8-bit first layer -> int8
    // dot; W1A1 -> XNOR; W1A2 (2 plane pairs) -> bit-serial; W2A4 (8 pairs) -> int8 dot.
    let portable = PlanOptions::for_board(CostModel::Desktop);
    let algo = |plan: &Plan, l: usize| plan.kernel(l).and_then(|k| k.algo());
    for (wbits, abits, want) in [
        (1u8, 1u8, Algo::Xnor),
        (1, 2, Algo::BitSerial),
        (2, 4, Algo::Int8Dot),
        (4, 8, Algo::Int8Dot),
    ] {
        let bytes = resnet(64, 8, 1, wbits, abits, 2);
        let model = Model::parse(&bytes).unwrap();
        let plan = Plan::with_options(&model, Engine::Packed, portable).unwrap();
        assert_eq!(algo(&plan, 0), Some(Algo::Int8Dot));
        assert_eq!(algo(&plan, 1), Some(want), "W{wbits}A{abits}");
        assert_eq!(plan.kernel(plan.layers() - 1), None); // dense
                                                          // With SIMD available the choice may differ, but it is always a kernel that fits.
        let plan = Plan::new(&model, Engine::Packed).unwrap();
        let k = plan.kernel(1).unwrap();
        assert!(
            k.algo() != Some(Algo::Xnor) || (wbits, abits) == (1, 1),
            "{k:?}"
        );
    }
}

#[test]
fn float_conv_matches_its_reference() {
    // The float engine's direct conv (prepared weights, axpy order) against the plain loop nest.
    for (cin_g, groups, k, stride, pad) in [
        (3u32, 1u32, 3u16, 1u16, 1u16),
        (33, 2, 3, 2, 2),
        (64, 1, 1, 1, 0),
        (5, 3, 2, 2, 1),
    ] {
        let mut b = Builder::new(cin_g * groups, 5, 6, 4, 3, u64::from(cin_g));
        let y = b.conv(0, 6 * groups, k, stride, pad, groups, 2, 4, true, false);
        b.unary(y, Op1::GapF32);
        let bytes = b.finish();
        let model = Model::parse(&bytes).unwrap();
        let Layer::Conv(conv) = model.layers.get(0).unwrap() else {
            panic!()
        };
        let s = ConvShape::of(&conv, 5, 6, 4).unwrap();
        let mut w = vec![0f32; s.cout * s.taps()];
        crate::float::prepare_conv(&conv, &s, bytemuck::cast_slice_mut(&mut w)).unwrap();
        let mut rng = Rng(9);
        let x: Vec<f32> = (0..5 * 6 * s.c)
            .map(|_| rng.below(100) as f32 / 10.0 - 5.0)
            .collect();
        let n = s.oh * s.ow * s.cout;
        let (mut got, mut want) = (vec![0f32; n], vec![0f32; n]);
        reference::conv_f32(&conv, &s, &x, &mut want);
        for kind in [KernelKind::Float, crate::kernels::float_kind(false)] {
            crate::float::conv_f32_with(kind, &s, &x, &w, &mut got);
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-3 * (1.0 + w.abs()),
                    "{kind:?}: {g} vs {w}"
                );
            }
        }
    }
}

#[test]
fn plan_is_small_enough_for_a_microcontroller_stack() {
    // 256 layers + 256 tensors; on 32-bit targets usize fields are half as wide.
    let size = core::mem::size_of::<Plan>();
    println!("size_of::<Plan>() = {size} bytes");
    assert!(size <= 24 * 1024, "{size}");
}

#[test]
fn never_panics_on_short_or_dirty_buffers() {
    let bytes = resnet(8, 8, 1, 1, 2, 13);
    let model = Model::parse(&bytes).unwrap();
    let plan = Plan::new(&model, Engine::Packed).unwrap();
    let n = plan.arena_bytes();
    let image = vec![7u8; plan.input_len()];
    let mut logits = vec![0f32; plan.output_len()];
    // Every short arena length in a coarse sweep is an error, never a panic.
    let mut arena = vec![0xA5u8; n];
    for len in (0..n).step_by(n / 97 + 1) {
        assert!(matches!(
            run(&model, &plan, &mut arena[..len], &image, &mut logits),
            Err(Error::ArenaTooSmall { .. })
        ));
    }
    // Garbage in the arena (header included) is re-prepared; weights scribbled over after
    // preparation give garbage logits but no panic.
    run(&model, &plan, &mut arena, &image, &mut logits).unwrap();
    let want = logits.clone();
    let pad = arena.as_ptr().align_offset(crate::arena::ALIGN);
    let w0 = pad + crate::arena::HEADER;
    for b in &mut arena[w0..w0 + plan.weights_bytes()] {
        *b = 0xFF;
    }
    run(&model, &plan, &mut arena, &image, &mut logits).unwrap();
    crate::prepare(&model, &plan, &mut arena).unwrap();
    run(&model, &plan, &mut arena, &image, &mut logits).unwrap();
    assert_eq!(logits, want);
    // Empty and oversized images and outputs.
    for len in [0, 1, plan.input_len() - 1, plan.input_len() + 1] {
        let img = vec![0u8; len];
        assert!(matches!(
            run(&model, &plan, &mut arena, &img, &mut logits),
            Err(Error::InputSize { .. })
        ));
    }
    assert!(matches!(
        run(&model, &plan, &mut arena, &image, &mut []),
        Err(Error::OutputSize { .. })
    ));
}

/// A plan holds at most `MAX_TENSORS` (256) tensors: a model with exactly 256 plans and
/// runs, one with 257 is refused (before any table overflows).
#[test]
fn plan_holds_at_most_256_tensors() {
    let model_with = |n: usize| {
        let mut b = Builder::new(2, 3, 3, 0, 0, 4);
        let x = b.unary(0, Op1::GapF32);
        let _ = b.unary(x, Op1::Relu);
        while b.model.tensors.len() < n {
            b.tensor(Shape::new(1, 1, 1), DType::F32);
        }
        b.finish()
    };
    let bytes = model_with(crate::plan::MAX_TENSORS);
    let m = Model::parse(&bytes).unwrap();
    assert_eq!(m.tensors.len(), 256);
    for e in [Engine::Packed, Engine::Float] {
        let plan = Plan::new(&m, e).unwrap();
        let mut arena = vec![0u8; plan.arena_bytes()];
        let mut logits = [0f32; 2];
        run(&m, &plan, &mut arena, &[0u8; 18], &mut logits).unwrap();
        assert!(logits.iter().all(|v| v.is_finite()));
    }
    let bytes = model_with(crate::plan::MAX_TENSORS + 1);
    let m = Model::parse(&bytes).unwrap();
    for e in [Engine::Packed, Engine::Float] {
        assert_eq!(Plan::new(&m, e).unwrap_err(), Error::TooManyLayers);
    }
}

#[test]
fn fit_trades_speed_for_a_smaller_arena() {
    let bytes = resnet(32, 8, 1, 1, 8, 3);
    let model = Model::parse(&bytes).unwrap();
    let opts = PlanOptions::for_board(CostModel::Desktop);
    let convs: Vec<usize> = (0..model.layers.len())
        .filter(|&i| matches!(model.layers.get(i), Some(slb_format::Layer::Conv(_))))
        .collect();
    let in_place = |p: &Plan| {
        convs
            .iter()
            .filter(|&&i| {
                matches!(
                    p.kernel(i),
                    Some(
                        KernelKind::BitSerialInPlace
                            | KernelKind::XnorInPlace
                            | KernelKind::Int8DotInPlace
                    )
                )
            })
            .count()
    };
    let fast = Plan::with_options(&model, Engine::Packed, opts).unwrap();
    assert_eq!(in_place(&fast), 0);
    // Generous limit: the default plan.
    let p = Plan::fit(&model, Engine::Packed, opts, usize::MAX).unwrap();
    assert_eq!(p.arena_bytes(), fast.arena_bytes());
    // One byte less: some convs (not all) read their codes in place.
    let some = Plan::fit(&model, Engine::Packed, opts, fast.arena_bytes() - 1).unwrap();
    assert!(some.arena_bytes() < fast.arena_bytes());
    let n = in_place(&some);
    assert!(
        n >= 1 && n < convs.len(),
        "{n} of {} convs in place",
        convs.len()
    );
    // The smallest plan: every conv in place, only the driver's small tables as weights.
    let mut tight = some.arena_bytes();
    let all = loop {
        match Plan::fit(&model, Engine::Packed, opts, tight - 1) {
            Ok(p) => tight = p.arena_bytes(),
            Err(Error::ArenaTooSmall { needed, got }) => {
                assert_eq!(got, tight - 1);
                assert_eq!(needed, tight);
                break Plan::fit(&model, Engine::Packed, opts, tight).unwrap();
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    assert_eq!(in_place(&all), convs.len());
    assert!(
        all.weights_bytes() * 8 < fast.weights_bytes(),
        "{} vs {}",
        all.weights_bytes(),
        fast.weights_bytes()
    );
    // A8 convs read their codes in place through the int8 dot (cheaper than 8 bit planes).
    assert_eq!(all.kernel(1), Some(KernelKind::Int8DotInPlace));
    // Same logits either way.
    let image = vec![3u8; fast.input_len()];
    let mut outs = vec![];
    for plan in [&fast, &some, &all] {
        let mut arena = vec![0u8; plan.arena_bytes()];
        let mut logits = vec![0f32; plan.output_len()];
        run(&model, plan, &mut arena, &image, &mut logits).unwrap();
        outs.push(logits);
    }
    assert_eq!(outs[0], outs[1]);
    assert_eq!(outs[0], outs[2]);
    // Too small for anything.
    assert!(matches!(
        Plan::fit(&model, Engine::Packed, opts, 100),
        Err(Error::ArenaTooSmall { got: 100, .. })
    ));
}

#[test]
fn cortex_m4_costs_read_codes_in_place() {
    // On a Cortex-M4 the int8 dot runs fewer instructions reading the model's codes in place
    // than from prepared weights, so its table's default plan keeps no weights in the arena for
    // A8 networks; on 1-bit weights (the sign-weight sums) it also beats prepared XNOR, so
    // W1A1 reads its codes in place too (keeping only the per-tap corrections of 1-bit
    // activations); the desktop table never picks an in-place kernel. Both plans give the same
    // logits.
    let m4 = PlanOptions::for_board(CostModel::CortexM4);
    let desktop = PlanOptions::for_board(CostModel::Desktop);
    assert_eq!(PlanOptions::default().costs, CostModel::Desktop); // this host is no Cortex-M
    for (wbits, abits, want) in [
        (1u8, 8u8, KernelKind::Int8DotInPlace),
        (4, 8, KernelKind::Int8DotInPlace),
        (1, 1, KernelKind::Int8DotInPlace),
    ] {
        let bytes = resnet(64, 8, 1, wbits, abits, 2);
        let model = Model::parse(&bytes).unwrap();
        let a = Plan::with_options(&model, Engine::Packed, m4).unwrap();
        let b = Plan::with_options(&model, Engine::Packed, desktop).unwrap();
        assert_eq!(
            a.kernel(0),
            Some(KernelKind::Int8DotInPlace),
            "the 8-bit stem"
        );
        assert_eq!(a.kernel(1), Some(want), "W{wbits}A{abits}");
        let kinds = |p: &Plan| {
            (0..p.layers())
                .filter_map(|i| p.kernel(i))
                .collect::<Vec<_>>()
        };
        assert!(
            kinds(&b).iter().all(|k| !matches!(
                k,
                KernelKind::Int8DotInPlace | KernelKind::XnorInPlace | KernelKind::BitSerialInPlace
            )),
            "{:?}",
            kinds(&b)
        );
        let shrinks = if abits == 8 { 8 } else { 1 };
        assert!(
            a.weights_bytes() * shrinks < b.weights_bytes(),
            "W{wbits}A{abits}: {} vs {}",
            a.weights_bytes(),
            b.weights_bytes()
        );
        // `fit` with room to spare returns the table's default plan.
        let f = Plan::fit(&model, Engine::Packed, m4, usize::MAX).unwrap();
        assert_eq!(kinds(&f), kinds(&a));
        let image: Vec<u8> = (0..a.input_len()).map(|i| (i * 37 % 251) as u8).collect();
        let mut outs = vec![];
        for plan in [&a, &b] {
            let mut arena = vec![0u8; plan.arena_bytes()];
            let mut logits = vec![0f32; plan.output_len()];
            run(&model, plan, &mut arena, &image, &mut logits).unwrap();
            outs.push(logits);
        }
        assert_eq!(outs[0], outs[1], "W{wbits}A{abits}");
    }
}

/// A chain `input (3x8x8, 8 bits) -> 3x3 conv to 16 channels -> 1x1 conv to 32 -> global
/// average pool to f32 -> dense to 10`, tensors 0 to 4 in that order; with `dead_relu`, a relu
/// of tensor 2 after the dense layer that nothing reads (tensor 5), the dense output staying
/// the model's output.
fn chain_model(dead_relu: bool) -> Vec<u8> {
    let mut b = Builder::new(3, 8, 8, 8, 128, 21);
    let c0 = b.conv(0, 16, 3, 1, 1, 1, 2, 8, false, false);
    let c1 = b.conv(c0, 32, 1, 1, 0, 1, 2, 8, false, false);
    let g = b.unary(c1, Op1::GapF32);
    let out = b.dense(g, 10, false);
    if dead_relu {
        b.unary(c1, Op1::Relu);
    }
    b.model.output = out;
    b.model.build().unwrap()
}

/// Each tensor lives from the step of the layer that writes it (step `i + 1` for layer `i`,
/// 0 for the input) to that of its last reader, the output to step `layers + 1` (read back);
/// in the packed engine a quantized tensor takes one byte an element, four in the float
/// engine (f32 tensors four in both); the activation lower bound is the most bytes alive at
/// one step.
#[test]
fn tensors_live_from_writer_to_last_reader_at_their_engines_size() {
    let bytes = chain_model(false);
    let model = Model::parse(&bytes).unwrap();
    let lifetimes = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)];
    for (engine, sizes, lower) in [
        (Engine::Packed, [192, 1024, 2048, 128, 40], 1024 + 2048),
        (Engine::Float, [768, 4096, 8192, 128, 40], 4096 + 8192),
    ] {
        let plan = Plan::new(&model, engine).unwrap();
        let got: Vec<(u16, u16, usize)> = plan
            .tensors
            .iter()
            .map(|t| (t.first, t.last, t.bytes))
            .collect();
        let want: Vec<(u16, u16, usize)> = lifetimes
            .iter()
            .zip(sizes)
            .map(|(&(f, l), b)| (f, l, b))
            .collect();
        assert_eq!(got, want, "{engine:?}");
        // The peak is at step 2 (the second conv: its input and output), not at the last steps.
        assert_eq!(plan.activation_lower_bound(), lower, "{engine:?}");
    }
}

/// The output is read back after every layer has run, so a layer after the one that writes it
/// (here a relu nobody reads, whose 2 KiB could otherwise reuse the logits' bytes) leaves the
/// logits as they are.
#[test]
fn the_output_survives_the_layers_after_it() {
    let mut rng = Rng(17);
    let image: Vec<u8> = (0..3 * 8 * 8).map(|_| rng.next() as u8).collect();
    let logits = |bytes: &[u8]| {
        let model = Model::parse(bytes).unwrap();
        let plan = Plan::new(&model, Engine::Packed).unwrap();
        let mut arena = vec![0u8; plan.arena_bytes()];
        let mut out = vec![0f32; plan.output_len()];
        run(&model, &plan, &mut arena, &image, &mut out).unwrap();
        out
    };
    let want = logits(&chain_model(false));
    assert_eq!(want.len(), 10);
    assert!(want.iter().any(|&v| v != 0.0), "{want:?}");
    assert_eq!(logits(&chain_model(true)), want);
}

/// A byte kernel's scratch: the zero-padded input (`hp * wp * c` bytes, none for a conv
/// without padding; padded on one axis only, still the whole padded image) and the
/// accumulators of as many output rows as fit 16 KiB (`ACC_CHUNK`, at least one row), each
/// rounded up to 64 bytes; the plan's scratch is the largest layer's, and the arena is the
/// 64-byte header, the weights, the activations, the scratch and 63 bytes of alignment slack.
/// Every conv also runs, bit for bit as the reference, with every kernel.
#[test]
fn conv_scratch_is_the_padded_input_and_16_kib_of_accumulator_rows() {
    let mut b = Builder::new(16, 16, 16, 8, 128, 23);
    // (kernel, padding): rows of 16 (or 14) pixels x 64 channels x 4 bytes of accumulators.
    let convs = [
        ([1, 1], [0, 0]),
        ([3, 3], [1, 1]),
        ([3, 3], [1, 0]),
        ([3, 3], [0, 1]),
    ];
    let mut outs = Vec::new();
    for (k, pad) in convs {
        outs.push(b.conv_hw(0, 64, k, [1, 1], pad, 1, 2, 8, false, false));
    }
    let g = b.unary(outs[2], Op1::GapF32);
    b.dense(g, 3, false);
    let bytes = b.finish();
    let model = Model::parse(&bytes).unwrap();
    let opts = PlanOptions {
        force: Some(Algo::Int8Dot),
        portable_only: true,
        ..PlanOptions::default()
    };
    let plan = Plan::with_options(&model, Engine::Packed, opts).unwrap();
    // (rows a call, padded input bytes, accumulator bytes)
    let want = [
        (4, 0, 4 * 16 * 64 * 4),
        (4, 18 * 18 * 16, 4 * 16 * 64 * 4),
        (4, 18 * 16 * 16, 4 * 14 * 64 * 4),
        (4, 16 * 18 * 16, 4 * 16 * 64 * 4),
    ];
    for (i, &(rows, input, acc)) in want.iter().enumerate() {
        let l = &plan.layers[i];
        assert_eq!(l.kernel, Some(KernelKind::Int8Dot));
        assert_eq!(l.rows, rows, "conv {i}");
        assert_eq!(l.scratch as usize, input + acc, "conv {i}");
    }
    assert_eq!(plan.scratch_bytes(), 18 * 18 * 16 + 4 * 16 * 64 * 4);
    assert_eq!(
        plan.arena_bytes(),
        64 + plan.weights_bytes() + plan.activation_peak_bytes() + plan.scratch_bytes() + 63
    );
    let mut rng = Rng(29);
    let image: Vec<u8> = (0..16 * 16 * 16).map(|_| rng.next() as u8).collect();
    all_algos_agree(&bytes, &image);
}
