//! Shared pieces: a prepared model ready to run, MAC counts, random images.

use slb::format::{Layer, Model};
use slb::runtime::{prepare, run, Engine, Plan, PlanOptions};

/// A parsed model with its plan and a prepared arena, for one engine.
pub struct Ready<'a> {
    pub model: Model<'a>,
    pub plan: Plan,
    pub arena: Vec<u8>,
    pub image: Vec<u8>,
    pub logits: Vec<f32>,
}

impl<'a> Ready<'a> {
    /// Parses `bytes`, plans for `engine` with `opts`, prepares the weights and makes a
    /// deterministic random image.
    pub fn new(bytes: &'a [u8], engine: Engine, opts: PlanOptions) -> Ready<'a> {
        let model = Model::parse(bytes).expect("synthetic model parses");
        let plan = Plan::with_options(&model, engine, opts).expect("plan");
        let mut arena = vec![0u8; plan.arena_bytes()];
        prepare(&model, &plan, &mut arena).expect("prepare");
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let image = (0..plan.input_len())
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 24) as u8
            })
            .collect();
        let logits = vec![0f32; plan.output_len()];
        Ready {
            model,
            plan,
            arena,
            image,
            logits,
        }
    }

    /// One inference.
    pub fn run(&mut self) {
        run(
            &self.model,
            &self.plan,
            &mut self.arena,
            &self.image,
            &mut self.logits,
        )
        .expect("run");
    }
}

/// A criterion routine that builds its model (with `make`) the first time it runs, so that
/// cases a filter skips cost nothing, then times one inference per iteration.
pub fn lazy_run(
    make: impl Fn() -> Vec<u8>,
    engine: Engine,
) -> impl FnMut(&mut criterion::Bencher<'_, crate::benchmarks::cputime::CpuTime>) {
    lazy_run_with(make, engine, PlanOptions::default())
}

/// [`lazy_run`] with any plan options.
pub fn lazy_run_with(
    make: impl Fn() -> Vec<u8>,
    engine: Engine,
    opts: PlanOptions,
) -> impl FnMut(&mut criterion::Bencher<'_, crate::benchmarks::cputime::CpuTime>) {
    let mut ready: Option<Ready<'static>> = None;
    move |b| {
        let r = ready.get_or_insert_with(|| {
            // The benchmark process keeps every model it builds until it exits.
            let bytes: &'static [u8] = Box::leak(make().into_boxed_slice());
            Ready::new(bytes, engine, opts)
        });
        b.iter(|| r.run())
    }
}

/// Multiply-accumulates of every conv of a model (dense layers excluded).
pub fn conv_macs(model: &Model<'_>) -> u64 {
    model
        .layers
        .iter()
        .filter_map(|l| match l {
            Layer::Conv(c) => {
                let input = model.tensor(c.input)?.shape;
                Some(c.macs(c.output_shape(input)?))
            }
            _ => None,
        })
        .sum()
}

/// Bytes of the packed conv weight codes, and of the same weights as `f32`.
pub fn conv_weight_bytes(model: &Model<'_>) -> (usize, usize) {
    model
        .layers
        .iter()
        .filter_map(|l| match l {
            Layer::Conv(c) => {
                let n = c.out_channels as usize
                    * c.in_per_group() as usize
                    * c.kernel[0] as usize
                    * c.kernel[1] as usize;
                Some((c.codes.len(), 4 * n))
            }
            _ => None,
        })
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}
