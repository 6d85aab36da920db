//! The planner's memory: the arena against its lower bound, tensor lifetimes and placement,
//! the scratch of a conv, the plan's own size and table bounds, and `Plan::fit`.

use slb_format::{DType, Shape};

use super::all_algos_agree;
use crate::kernels::{Algo, KernelKind};
use crate::testutil::{resnet, Builder, Op1, Rng};
use crate::{run, CostModel, Engine, Error, Model, Plan, PlanOptions};

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
fn plan_is_small_enough_for_a_microcontroller_stack() {
    // 256 layers + 256 tensors; on 32-bit targets usize fields are half as wide.
    let size = core::mem::size_of::<Plan>();
    println!("size_of::<Plan>() = {size} bytes");
    assert!(size <= 24 * 1024, "{size}");
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
    assert_ne!(PlanOptions::default().costs, CostModel::CortexM4); // this host is no Cortex-M
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

/// A step requantization's tables fill the driver tables' region the plan made for them,
/// exactly: after `prepare` over an arena of a fill byte, the last `cout` bytes of every such
/// conv's region are flip bytes (0 or 0xff), none left at the fill.
#[test]
fn step_tables_fill_their_planned_region() {
    use crate::arena::{ALIGN, HEADER};
    use crate::quant::{self, QParams};
    for (wbits, abits) in [(1u8, 1u8), (1, 2), (2, 2)] {
        let bytes = resnet(8, 8, 1, wbits, abits, 5);
        let model = Model::parse(&bytes).unwrap();
        let plan = Plan::new(&model, Engine::Packed).unwrap();
        let mut arena = vec![0xAAu8; plan.arena_bytes()];
        crate::prepare(&model, &plan, &mut arena).unwrap();
        let at = arena.as_ptr().align_offset(ALIGN) + HEADER;
        let weights = &arena[at..at + plan.weights_bytes()];
        let mut seen = 0;
        for (i, layer) in model.layers.iter().enumerate() {
            let slb_format::Layer::Conv(conv) = layer else {
                continue;
            };
            let outq = model
                .tensor(conv.output)
                .and_then(|t| QParams::of(&t.dtype));
            if outq
                .and_then(|q| quant::step_count(conv.requant.affine.as_ref(), &q))
                .is_none()
            {
                continue;
            }
            let aux = &weights[plan.layers[i].aux()];
            let flip = &aux[aux.len() - conv.out_channels as usize..];
            assert!(
                flip.iter().all(|&f| f == 0 || f == 0xff),
                "W{wbits}A{abits} layer {i}: {flip:?}"
            );
            seen += 1;
        }
        assert!(seen > 0, "W{wbits}A{abits}: no step requantization");
    }
}
