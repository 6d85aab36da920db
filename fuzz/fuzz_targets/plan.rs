//! The runtime's planner (both engines, `Plan::new` and `Plan::fit` into half the arena) on
//! every model that parses, and runs when the arena is small.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slb_format::Model;
use slb_runtime::{run, Engine, Plan, PlanOptions};

use slb_fuzz::{resealed, walk};

/// Models needing more arena than this are planned but not run (fuzzing speed).
const RUN_LIMIT: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Some(b) = resealed(data) else {
        return;
    };
    let Ok(m) = Model::parse(&b) else {
        return;
    };
    walk(&m);
    for engine in [Engine::Packed, Engine::Float] {
        let Ok(plan) = Plan::new(&m, engine) else {
            continue;
        };
        let _ = (plan.activation_peak_bytes(), plan.weights_bytes(), plan.layers());
        if plan.arena_bytes() > RUN_LIMIT || plan.input_len() > RUN_LIMIT {
            continue;
        }
        let mut arena = vec![0u8; plan.arena_bytes()];
        let image: Vec<u8> = (0..plan.input_len()).map(|i| (i * 37 + data.len()) as u8).collect();
        let mut logits = vec![0f32; plan.output_len()];
        let _ = run(&m, &plan, &mut arena, &image, &mut logits);
        // A second run reuses the prepared weights.
        let _ = run(&m, &plan, &mut arena, &image, &mut logits);
        // `Plan::fit` into half that arena: convs move to the in-place kernels, which read the
        // codes from the model's bytes.
        if let Ok(small) = Plan::fit(&m, engine, PlanOptions::default(), plan.arena_bytes() / 2) {
            let mut arena = vec![0u8; small.arena_bytes()];
            let _ = run(&m, &small, &mut arena, &image, &mut logits);
        }
    }
});
