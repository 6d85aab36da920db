//! The planner's own tests: the board names and what they force, and `Plan::fit`'s
//! order and sequence (the rest of the planner is tested through whole models, `crate::tests`).

use super::*;

#[test]
fn plan_choices_round_trip_by_name_and_plan_as_named() {
    for name in PlanChoice::NAMES {
        let c = PlanChoice::from_name(name).unwrap();
        assert_eq!(c.name(), name);
    }
    // The algorithm each name forces (a board's host-side test plans with it).
    let forced = PlanChoice::NAMES.map(|n| PlanChoice::from_name(n).unwrap().force());
    assert_eq!(
        forced,
        [
            None,
            None,
            Some(Algo::BitSerial),
            Some(Algo::Int8Dot),
            Some(Algo::Reference)
        ]
    );
    assert_eq!(PlanChoice::Force(Algo::Xnor).force(), Some(Algo::Xnor));
    assert_eq!(PlanChoice::from_name("xnor"), None);
    assert_eq!(PlanChoice::from_name("Default"), None);
    assert_eq!(PlanChoice::Force(Algo::Xnor).name(), "xnor");
    let bytes = crate::testutil::resnet(16, 8, 1, 1, 8, 3);
    let model = Model::parse(&bytes).unwrap();
    let opts = PlanOptions::default();
    let by_name = |n: &str, arena: usize| {
        Plan::with_choice(
            &model,
            Engine::Packed,
            PlanChoice::from_name(n).unwrap(),
            opts,
            arena,
        )
    };
    let default = Plan::with_options(&model, Engine::Packed, opts).unwrap();
    assert_eq!(
        by_name("default", 0).unwrap().arena_bytes(),
        default.arena_bytes()
    );
    let forced = by_name("bitserial", 0).unwrap();
    for i in 0..forced.layers() {
        if let Some(k) = forced.kernel(i) {
            assert!(k.name().starts_with("bitserial"), "layer {i}: {}", k.name());
        }
    }
    // `fit` is held to the arena it is given; the others are not.
    let floor = match Plan::fit(&model, Engine::Packed, opts, 0) {
        Err(Error::ArenaTooSmall { needed, .. }) => needed,
        other => panic!("{other:?}"),
    };
    assert!(by_name("fit", floor).unwrap().arena_bytes() <= floor);
    assert!(by_name("fit", floor - 1).is_err());
}

/// `Plan::fit` moves first the conv that frees the most weight bytes per unit of added run
/// time, where the run time is the cost per output times the number of outputs
/// (`oh * ow * cout`), not the conv with the most bytes. Two W1A8 1x1 convs on one 64-channel
/// 4x1 input, both going from the prepared int8 dot (64 bytes a filter) to the in-place one
/// (0 bytes, 60 cost units more per output): A, 1 filter at stride 4 (1 output), frees 64
/// bytes for 60 units; B, 256 filters (4 x 256 outputs), frees 16,384 bytes for 61,440
/// units, a quarter of A's ratio. Ranked by `oh + ow * cout` or `oh * ow + cout` outputs
/// instead, B would go first.
#[test]
fn fit_moves_first_the_conv_freeing_most_bytes_per_added_run_time() {
    use crate::testutil::{Builder, Op1};
    let mut b = Builder::new(64, 4, 1, 8, 128, 7);
    let a = b.conv(0, 1, 1, 4, 0, 1, 1, 8, false, false);
    let conv_b = b.conv(0, 256, 1, 1, 0, 1, 1, 8, false, false);
    assert_eq!(b.shape(a), slb_format::Shape::new(1, 1, 1));
    assert_eq!(b.shape(conv_b), slb_format::Shape::new(256, 4, 1));
    let g = b.unary(a, Op1::GapF32);
    b.dense(g, 2, false);
    let bytes = b.finish();
    let model = Model::parse(&bytes).unwrap();
    let opts = PlanOptions::for_board(CostModel::Desktop);
    let (layer_a, layer_b) = (0, 1);
    let build = |moved: &[usize]| {
        let mut set = LayerSet::default();
        for &li in moved {
            set.insert(li);
        }
        Plan::build(&model, Engine::Packed, opts, &set).unwrap()
    };
    let default = build(&[]);
    let a_moved = build(&[layer_a]);
    let both_moved = build(&[layer_a, layer_b]);
    assert_eq!(default.kernel(layer_a), Some(KernelKind::Int8Dot));
    assert_eq!(default.kernel(layer_b), Some(KernelKind::Int8Dot));
    assert_eq!(default.layers[layer_a].w_len, 64);
    assert_eq!(default.layers[layer_b].w_len, 16_384);
    assert!(a_moved.arena_bytes() < default.arena_bytes());
    // One byte short of the default plan: moving A is enough, and A goes first although B
    // would free 256 times as much.
    let fit = Plan::fit(&model, Engine::Packed, opts, default.arena_bytes() - 1).unwrap();
    assert_eq!(fit.kernel(layer_a), Some(KernelKind::Int8DotInPlace));
    assert_eq!(fit.kernel(layer_b), Some(KernelKind::Int8Dot));
    assert_eq!(fit.arena_bytes(), a_moved.arena_bytes());
    // One byte short of that: B moves too.
    let fit = Plan::fit(&model, Engine::Packed, opts, a_moved.arena_bytes() - 1).unwrap();
    assert_eq!(fit.kernel(layer_a), Some(KernelKind::Int8DotInPlace));
    assert_eq!(fit.kernel(layer_b), Some(KernelKind::Int8DotInPlace));
    assert_eq!(fit.arena_bytes(), both_moved.arena_bytes());
}

/// With a kernel named (`PlanOptions::kernel`), `Plan::fit` moves no conv, not even one
/// the named kernel cannot run: the plan is the one asked for, or `ArenaTooSmall` with its
/// arena. (The two W1A8 1x1 convs above; portable XNOR runs W1A1 convs only, so both keep
/// the default kernel, and without a kernel named, one byte less than their arena fits by
/// moving A.)
#[test]
fn fit_moves_nothing_when_a_kernel_is_named() {
    use crate::testutil::{Builder, Op1};
    let mut b = Builder::new(64, 4, 1, 8, 128, 7);
    let a = b.conv(0, 1, 1, 4, 0, 1, 1, 8, false, false);
    b.conv(0, 256, 1, 1, 0, 1, 1, 8, false, false);
    let g = b.unary(a, Op1::GapF32);
    b.dense(g, 2, false);
    let bytes = b.finish();
    let model = Model::parse(&bytes).unwrap();
    let free = PlanOptions::for_board(CostModel::Desktop);
    let named = PlanOptions {
        kernel: Some(KernelKind::Xnor),
        ..free
    };
    let plan = Plan::with_options(&model, Engine::Packed, named).unwrap();
    assert_eq!(plan.kernel(0), Some(KernelKind::Int8Dot));
    assert_eq!(plan.kernel(1), Some(KernelKind::Int8Dot));
    let need = plan.arena_bytes();
    match Plan::fit(&model, Engine::Packed, named, need - 1) {
        Err(Error::ArenaTooSmall { needed, got }) => {
            assert_eq!((needed, got), (need, need - 1))
        }
        other => panic!(
            "expected ArenaTooSmall, got {:?}",
            other.map(|p| p.arena_bytes())
        ),
    }
    let fit = Plan::fit(&model, Engine::Packed, free, need - 1).unwrap();
    assert_eq!(fit.kernel(0), Some(KernelKind::Int8DotInPlace));
}

/// `Plan::fit` follows its documented greedy sequence: from the default plan, move (to the
/// kernel with the smallest prepared weights) the conv that frees the most weight bytes
/// per unit of added estimated run time (cost per output times outputs; the first of
/// equals), then the next, ...; return the first plan of the sequence that fits. The
/// sequence is rebuilt here from that rule with exact fractions, and `fit` is asked for
/// the arena of each of its plans.
#[test]
fn fit_follows_the_documented_greedy_sequence() {
    let bytes = crate::testutil::resnet(32, 8, 1, 1, 8, 3);
    let model = Model::parse(&bytes).unwrap();
    let opts = PlanOptions::for_board(CostModel::Desktop);
    let mut moved = LayerSet::default();
    let mut seq = std::vec![Plan::build(&model, Engine::Packed, opts, &moved).unwrap()];
    loop {
        let plan = seq.last().unwrap();
        // (freed bytes, added cost, layer)
        let mut best: Option<(u64, u64, usize)> = None;
        for (li, layer) in model.layers.iter().enumerate() {
            let Layer::Conv(conv) = layer else { continue };
            if moved.contains(li) {
                continue;
            }
            let s = conv_shape(&conv, &plan.tensors).unwrap();
            let to = kernels::smallest_kernel(&s, true, opts.costs).unwrap();
            let from_len = u64::from(plan.layers[li].w_len);
            let to_len = (to.prepared_len)(&s) as u64;
            if to_len >= from_len {
                continue;
            }
            let now = plan.layers[li].kernel.unwrap();
            let per_output = kernels::cost(to.kind, &s, opts.costs)
                .saturating_sub(kernels::cost(now, &s, opts.costs));
            let added = (per_output * (s.oh * s.ow * s.cout) as u64).max(1);
            let freed = from_len - to_len;
            if best.is_none_or(|(f, a, _)| {
                u128::from(freed) * u128::from(a) > u128::from(f) * u128::from(added)
            }) {
                best = Some((freed, added, li));
            }
        }
        let Some((_, _, li)) = best else { break };
        moved.insert(li);
        seq.push(Plan::build(&model, Engine::Packed, opts, &moved).unwrap());
    }
    assert!(seq.len() >= 4, "{} plans", seq.len());
    let kernels_of = |p: &Plan| {
        (0..p.layers())
            .map(|i| p.kernel(i))
            .collect::<std::vec::Vec<_>>()
    };
    for (k, p) in seq.iter().enumerate() {
        let want = seq
            .iter()
            .find(|q| q.arena_bytes() <= p.arena_bytes())
            .unwrap();
        let got = Plan::fit(&model, Engine::Packed, opts, p.arena_bytes()).unwrap();
        assert_eq!(
            kernels_of(&got),
            kernels_of(want),
            "plan {k} of the sequence"
        );
        assert_eq!(got.arena_bytes(), want.arena_bytes());
    }
}
