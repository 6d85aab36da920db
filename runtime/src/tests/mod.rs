//! Crate-level tests: a hand-worked conv and whole models across kernels and engines, here;
//! the planner's memory bounds in `memory.rs`; every error path in `errors.rs` (the kernel
//! tests are in `kernels/tests/`).

mod errors;
mod memory;

use slb_format::{
    f32_bytes, i32_bytes, pack_codes, DType, Layer, ModelBuilder, OwnedAffine, OwnedConv,
    OwnedInput, OwnedLayer, OwnedRequant, RawQuant, Shape, Unary,
};

use crate::kernels::tests::{algo_kernel, kernel_exact};
use crate::kernels::{reference, Algo, ConvShape, KernelKind};
use crate::quant::QParams;
use crate::testutil::{quant, resnet, Builder, Op1, Rng};
use crate::{run, run_observed, CostModel, Engine, Error, LayerEvent, Model, Plan, PlanOptions};

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

/// `run_observed` reports every layer, start then end, in the model's order, on both engines,
/// and its logits are `run`'s; a failing run reports no end for the layer that fails.
#[test]
fn run_observed_reports_each_layer_in_order() {
    let bytes = resnet(8, 8, 1, 1, 8, 17);
    let model = Model::parse(&bytes).unwrap();
    let mut rng = Rng(9);
    let image: Vec<u8> = (0..3 * 8 * 8).map(|_| rng.next() as u8).collect();
    let n = model.layers.len() as u16;
    let want: Vec<LayerEvent> = (0..n)
        .flat_map(|l| [LayerEvent::Start(l), LayerEvent::End(l)])
        .collect();
    for engine in [Engine::Packed, Engine::Float] {
        let plan = Plan::new(&model, engine).unwrap();
        let classes = plan.output_len;
        let mut arena = vec![0u8; plan.arena_bytes()];
        let (mut plain, mut observed) = (vec![0f32; classes], vec![0f32; classes]);
        run(&model, &plan, &mut arena, &image, &mut plain).unwrap();
        let mut seen = Vec::new();
        run_observed(&model, &plan, &mut arena, &image, &mut observed, &mut |e| {
            seen.push(e)
        })
        .unwrap();
        assert_eq!(seen, want, "{engine:?}");
        assert_eq!(plain, observed, "{engine:?}");
    }
    // A plan for another model fails before any layer runs: nothing reported.
    let hand = hand_model();
    let other = Model::parse(&hand).unwrap();
    let plan = Plan::new(&other, Engine::Packed).unwrap();
    let mut arena = vec![0u8; plan.arena_bytes().max(1)];
    let mut logits = vec![0f32; plan.output_len];
    let mut seen = Vec::new();
    let image = vec![0u8; plan.input_len];
    assert!(
        run_observed(&model, &plan, &mut arena, &image, &mut logits, &mut |e| {
            seen.push(e)
        })
        .is_err()
    );
    assert!(seen.is_empty(), "{seen:?}");
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
