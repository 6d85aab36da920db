//! The planner: kernel choice per layer, prepared-weight sizes, tensor lifetimes and arena
//! offsets, all computed before anything runs, in fixed-capacity (`heapless`) tables.

use bitvec::array::BitArray;
use heapless::Vec;
use slb_format::{DType, Layer, Model, Site};

pub use crate::arena::MAX_TENSORS;
use crate::arena::{add, align, mul, place, TensorSlot, ALIGN, HEADER};
use crate::kernels::{self, Algo, ConvShape, CostModel, KernelKind, RowOps};
use crate::quant::{self, QParams};
use crate::{Error, Result};

/// Most layers a [`Plan`] holds.
pub const MAX_LAYERS: usize = 256;

/// Which executor runs the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// Integer codes between layers, packed popcount / int8 kernels.
    Packed,
    /// `f32` between layers and dequantized `f32` weights (the comparison point). Tensors that
    /// the model quantizes are fake-quantized (rounded to their codes' real values), so the
    /// float engine computes the same graph as the packed one up to float rounding.
    Float,
}

/// How a model's kernels are chosen, by the names a board program and its host-side test share
/// (`SLB_ALGOS` of the Cortex-M example): the runtime's own choice, [`Plan::fit`]'s, or one
/// algorithm family forced on every conv.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanChoice {
    /// `default`: the runtime's choice per layer ([`Plan::with_options`]).
    Default,
    /// `fit`: the default kernels if their plan fits the arena, else the kernels with the
    /// smallest prepared weights ([`Plan::fit`]).
    Fit,
    /// `bitserial`, `int8dot`, `reference`: every conv on this algorithm family.
    Force(Algo),
}

impl PlanChoice {
    /// Every choice's name, in the order a board program runs them.
    pub const NAMES: [&'static str; 5] = ["default", "fit", "bitserial", "int8dot", "reference"];

    /// The choice named `name` (one of [`PlanChoice::NAMES`]).
    pub fn from_name(name: &str) -> Option<PlanChoice> {
        Some(match name {
            "default" => PlanChoice::Default,
            "fit" => PlanChoice::Fit,
            "bitserial" => PlanChoice::Force(Algo::BitSerial),
            "int8dot" => PlanChoice::Force(Algo::Int8Dot),
            "reference" => PlanChoice::Force(Algo::Reference),
            _ => return None,
        })
    }

    /// The algorithm family forced on every conv, if any.
    pub fn force(self) -> Option<Algo> {
        match self {
            PlanChoice::Force(a) => Some(a),
            PlanChoice::Default | PlanChoice::Fit => None,
        }
    }

    /// The choice's name (`xnor` for a forced XNOR, which has no board name).
    pub fn name(self) -> &'static str {
        match self {
            PlanChoice::Default => "default",
            PlanChoice::Fit => "fit",
            PlanChoice::Force(Algo::BitSerial) => "bitserial",
            PlanChoice::Force(Algo::Int8Dot) => "int8dot",
            PlanChoice::Force(Algo::Reference) => "reference",
            PlanChoice::Force(Algo::Xnor) => "xnor",
        }
    }
}

/// Options for [`Plan::with_options`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanOptions {
    /// Run every conv with this algorithm instead of the default rule (an error where it
    /// cannot run a layer, e.g. [`Algo::Xnor`] on a 2-bit layer).
    pub force: Option<Algo>,
    /// Run every conv this kernel can run (its algorithm and shape fit) with it, ahead of
    /// `force` and the default rule, which choose for the others; an error at the first such
    /// conv when this CPU lacks the kernel. For measuring one kernel against another on the
    /// same layer (`benches/`, group `kernel`).
    pub kernel: Option<KernelKind>,
    /// Use the portable kernels only (no SIMD), e.g. to measure the SIMD speed-up.
    pub portable_only: bool,
    /// The kernel cost table the default choice and [`Plan::fit`] rank kernels by
    /// ([`CostModel::native`] by default: the table of the CPU this runs on). A host that plans
    /// for a microcontroller (to size its arena, or to check it bit for bit) sets
    /// [`CostModel::CortexM4`] and `portable_only`.
    pub costs: CostModel,
}

impl Default for PlanOptions {
    /// The default kernel rule, SIMD where the CPU has it, the cost table of the CPU this runs
    /// on ([`CostModel::native`]).
    fn default() -> Self {
        PlanOptions {
            force: None,
            kernel: None,
            portable_only: false,
            costs: CostModel::native(),
        }
    }
}

impl PlanOptions {
    /// What a microcontroller of this table plans (portable kernels, its costs), for a host
    /// that must plan exactly as the board does.
    pub const fn for_board(costs: CostModel) -> PlanOptions {
        PlanOptions {
            force: None,
            kernel: None,
            portable_only: true,
            costs,
        }
    }
}

/// A layer's plan, kept small (u32 sizes: a plan is often on a microcontroller's stack).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct LayerPlan {
    pub kernel: Option<KernelKind>,
    pub conv: bool,
    /// Kernel's prepared weights, relative to the weights region.
    pub w_off: u32,
    pub w_len: u32,
    /// Driver's per-conv tables (wsum or border sums), relative to the weights region.
    pub aux_off: u32,
    pub aux_len: u32,
    /// Output rows per kernel call.
    pub rows: u32,
    /// Scratch bytes this layer needs.
    pub scratch: u32,
}

impl LayerPlan {
    /// The prepared weights' range in the weights region.
    pub fn w(&self) -> core::ops::Range<usize> {
        self.w_off as usize..self.w_off as usize + self.w_len as usize
    }
    /// The driver tables' range in the weights region.
    pub fn aux(&self) -> core::ops::Range<usize> {
        self.aux_off as usize..self.aux_off as usize + self.aux_len as usize
    }
}

fn small(n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::Overflow {
        what: "arena size (more than 4 GiB)",
    })
}

/// The geometry of a conv layer given the plan's tensors.
pub(crate) fn conv_shape(conv: &slb_format::Conv<'_>, tensors: &[TensorSlot]) -> Option<ConvShape> {
    let inp = tensors.get(conv.input as usize)?;
    let s = ConvShape::of(
        conv,
        inp.shape.h as usize,
        inp.shape.w as usize,
        inp.q?.bits,
    )?;
    let out = tensors.get(conv.output as usize)?;
    if (s.cout, s.oh, s.ow)
        != (
            out.shape.c as usize,
            out.shape.h as usize,
            out.shape.w as usize,
        )
    {
        return None;
    }
    Some(s)
}

/// Everything [`crate::run`] needs to know before it runs: which kernel each conv uses, where
/// each tensor lives in the arena and how big the arena is. No allocation: fixed-capacity
/// tables of [`MAX_LAYERS`] layers and [`MAX_TENSORS`] tensors.
#[derive(Clone, Debug)]
pub struct Plan {
    pub(crate) engine: Engine,
    pub(crate) tensors: Vec<TensorSlot, MAX_TENSORS>,
    pub(crate) layers: Vec<LayerPlan, MAX_LAYERS>,
    pub(crate) weights_bytes: usize,
    pub(crate) act_bytes: usize,
    pub(crate) act_lower: usize,
    pub(crate) scratch_bytes: usize,
    pub(crate) output_len: usize,
    pub(crate) input_len: usize,
    /// The drivers' requantization, residual add and bit packer for this CPU (portable with
    /// [`PlanOptions::portable_only`]), chosen once here.
    pub(crate) ops: RowOps,
}

/// A set of layer indices (below [`MAX_LAYERS`]): the convs [`Plan::fit`] gives the kernel
/// with the smallest prepared weights. Indices past [`MAX_LAYERS`] are never members (a plan
/// rejects such models before this matters).
#[derive(Clone, Copy, Default)]
struct LayerSet(BitArray<[u32; MAX_LAYERS / 32]>);

impl LayerSet {
    fn contains(&self, i: usize) -> bool {
        self.0.get(i).is_some_and(|b| *b)
    }
    fn insert(&mut self, i: usize) {
        if let Some(mut b) = self.0.get_mut(i) {
            *b = true;
        }
    }
}

impl Plan {
    /// Plans `model` for `engine` with the default kernel choice.
    pub fn new(model: &Model<'_>, engine: Engine) -> Result<Plan> {
        Plan::with_options(model, engine, PlanOptions::default())
    }

    /// Plans `model` for `engine` with explicit options.
    pub fn with_options(model: &Model<'_>, engine: Engine, opts: PlanOptions) -> Result<Plan> {
        Plan::build(model, engine, opts, &LayerSet::default())
    }

    /// Plans `model` as `choice` says, with `opts` otherwise (`max_arena`: the arena
    /// [`PlanChoice::Fit`] must fit; the other choices ignore it).
    pub fn with_choice(
        model: &Model<'_>,
        engine: Engine,
        choice: PlanChoice,
        opts: PlanOptions,
        max_arena: usize,
    ) -> Result<Plan> {
        match choice {
            PlanChoice::Default => Plan::with_options(model, engine, opts),
            PlanChoice::Fit => Plan::fit(model, engine, opts, max_arena),
            PlanChoice::Force(algo) => Plan::with_options(
                model,
                engine,
                PlanOptions {
                    force: Some(algo),
                    ..opts
                },
            ),
        }
    }

    /// Plans like [`Plan::with_options`] and, if the arena would need more than `max_arena`
    /// bytes, moves convs (none when an algorithm is forced or a kernel named) one at a time to
    /// the kernel with the smallest prepared weights until the arena fits: the in-place bit
    /// kernels (`*/in-place`), which read the packed codes from the model's bytes (flash on a
    /// microcontroller) and keep no weights in the arena, at some cost in speed (and a bit-plane
    /// copy of the layer's input as scratch). The conv moved next is the one that frees the
    /// most weight bytes per unit of added estimated run time, so layers with large weights and
    /// few outputs go first. For a microcontroller's fixed arena. [`Error::ArenaTooSmall`] if
    /// no plan of that sequence fits; its `needed` is the smallest arena among them, which
    /// `fit` then meets (the sequence does not depend on `max_arena`).
    // Not inlined: its frame (the current plan, the next one and the result, ~50 KB on a
    // 32-bit target) would otherwise sit in every caller's, `with_choice`'s default path too.
    #[inline(never)]
    pub fn fit(
        model: &Model<'_>,
        engine: Engine,
        opts: PlanOptions,
        max_arena: usize,
    ) -> Result<Plan> {
        let mut moved = LayerSet::default();
        let mut plan = Plan::build(model, engine, opts, &moved)?;
        if plan.arena_bytes() <= max_arena {
            return Ok(plan);
        }
        let mut smallest = plan.arena_bytes();
        // Only packed convs without a forced algorithm or kernel can move.
        let movable = engine == Engine::Packed && opts.force.is_none() && opts.kernel.is_none();
        loop {
            // (freed bytes per unit of added cost, layer)
            let mut best: Option<(u64, usize)> = None;
            for (li, layer) in model.layers.iter().enumerate() {
                let Layer::Conv(conv) = layer else { continue };
                if !movable || moved.contains(li) {
                    continue;
                }
                let now = plan.layers[li];
                let Some(s) = conv_shape(&conv, &plan.tensors) else {
                    continue;
                };
                // The kernel with the smallest prepared weights (what `build` gives a moved
                // conv).
                let Some(to) = kernels::smallest_kernel(&s, opts.portable_only, opts.costs) else {
                    continue;
                };
                let to_w_len = (to.prepared_len)(&s) as u64;
                if to_w_len >= u64::from(now.w_len) {
                    continue;
                }
                let freed = u64::from(now.w_len) - to_w_len;
                let outputs = (s.oh * s.ow * s.cout) as u64;
                let before = now.kernel.map_or(0, |k| kernels::cost(k, &s, opts.costs));
                let added = kernels::cost(to.kind, &s, opts.costs)
                    .saturating_sub(before)
                    .saturating_mul(outputs)
                    .max(1);
                let score = freed.saturating_mul(1 << 20) / added;
                if best.is_none_or(|(b, _)| score > b) {
                    best = Some((score, li));
                }
            }
            let Some((_, li)) = best else {
                return Err(Error::ArenaTooSmall {
                    needed: smallest,
                    got: max_arena,
                });
            };
            moved.insert(li);
            plan = Plan::build(model, engine, opts, &moved)?;
            if plan.arena_bytes() <= max_arena {
                return Ok(plan);
            }
            smallest = smallest.min(plan.arena_bytes());
        }
    }

    // Never inlined: `fit` calls it twice, and inlined copies would each keep their own large
    // stack slots in `fit`'s frame on a microcontroller.
    #[inline(never)]
    fn build(
        model: &Model<'_>,
        engine: Engine,
        opts: PlanOptions,
        in_place: &LayerSet,
    ) -> Result<Plan> {
        if model.layers.len() > MAX_LAYERS || model.tensors.len() > MAX_TENSORS {
            return Err(Error::TooManyLayers);
        }
        let nl = model.layers.len();
        let mut tensors = tensor_slots(model, engine)?;
        // Layers: kernels, prepared weights, scratch.
        let mut layers: Vec<LayerPlan, MAX_LAYERS> = Vec::new();
        let mut weights = 0usize;
        let mut scratch = 0usize;
        for (i, layer) in model.layers.iter().enumerate() {
            let mut lp = LayerPlan {
                kernel: None,
                conv: false,
                w_off: 0,
                w_len: 0,
                aux_off: 0,
                aux_len: 0,
                rows: 0,
                scratch: 0,
            };
            if let Layer::Conv(conv) = &layer {
                let c = conv_plan(conv, i, &tensors, engine, opts, in_place)?;
                lp.conv = true;
                lp.kernel = Some(c.kernel);
                lp.w_off = small(weights)?;
                lp.w_len = small(c.w_len)?;
                weights = add(weights, align(c.w_len)?)?;
                lp.aux_off = small(weights)?;
                lp.aux_len = small(c.aux_len)?;
                weights = add(weights, align(c.aux_len)?)?;
                lp.rows = small(c.rows)?;
                lp.scratch = small(c.scratch)?;
                scratch = scratch.max(align(c.scratch)?);
            }
            layers.push(lp).map_err(|_| Error::TooManyLayers)?;
        }

        let (act_bytes, act_lower) = place(&mut tensors, nl + 2)?;
        let ot = tensors
            .get(model.output as usize)
            .ok_or(Error::PlanMismatch { layer: Site::Model })?;
        let output_len = ot.shape.elements().unwrap_or(0) as usize;
        let s = model.input.shape;
        let input_len = mul(mul(s.c as usize, s.h as usize)?, s.w as usize)?;
        let plan = Plan {
            engine,
            tensors,
            layers,
            weights_bytes: weights,
            act_bytes,
            act_lower,
            scratch_bytes: scratch,
            output_len,
            input_len,
            ops: if opts.portable_only {
                RowOps::PORTABLE
            } else {
                RowOps::native()
            },
        };
        // The whole arena fits 32-bit offsets.
        small(plan.arena_bytes())?;
        Ok(plan)
    }

    /// Bytes of the arena [`crate::run`] needs: a 64-byte header, the prepared weights, the
    /// activations and the largest layer's scratch, plus 63 bytes of alignment slack.
    pub fn arena_bytes(&self) -> usize {
        ALIGN - 1 + HEADER + self.weights_bytes + self.act_bytes + self.scratch_bytes
    }

    /// Bytes of the activation region: tensors are placed at offsets such that tensors alive at
    /// the same time never overlap. See [`Plan::activation_lower_bound`].
    pub fn activation_peak_bytes(&self) -> usize {
        self.act_bytes
    }

    /// The smallest possible activation region for this graph: the largest sum of the sizes
    /// of tensors alive at one step. [`Plan::activation_peak_bytes`] is at least this.
    pub fn activation_lower_bound(&self) -> usize {
        self.act_lower
    }

    /// Bytes of prepared (unpacked or re-laid-out) weights kept in the arena.
    pub fn weights_bytes(&self) -> usize {
        self.weights_bytes
    }

    /// Bytes of per-layer scratch (padded inputs, accumulator chunks), shared by all layers.
    pub fn scratch_bytes(&self) -> usize {
        self.scratch_bytes
    }

    /// The kernel chosen for layer `layer` (`None` for non-conv layers or past the end).
    pub fn kernel(&self, layer: usize) -> Option<KernelKind> {
        self.layers.get(layer).and_then(|l| l.kernel)
    }

    /// The engine this plan is for.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Number of logits [`crate::run`] writes.
    pub fn output_len(&self) -> usize {
        self.output_len
    }

    /// Bytes of the input image (`H * W * C`).
    pub fn input_len(&self) -> usize {
        self.input_len
    }

    /// Number of layers planned.
    pub fn layers(&self) -> usize {
        self.layers.len()
    }
}

/// One slot per tensor of `model` (bytes by `engine`: a code byte per element for quantized
/// tensors in the packed engine, four bytes otherwise) with its lifetime in steps (step 0 the
/// input, step `i + 1` layer `i`, step `layers + 1` the output read back); a tensor no layer
/// writes and that is not the input takes no bytes.
fn tensor_slots(model: &Model<'_>, engine: Engine) -> Result<Vec<TensorSlot, MAX_TENSORS>> {
    let nl = model.layers.len();
    let mut tensors: Vec<TensorSlot, MAX_TENSORS> = Vec::new();
    for t in model.tensors.iter() {
        let elems = t.shape.elements().ok_or(Error::Overflow {
            what: "tensor size",
        })? as usize;
        let per = match (engine, t.dtype) {
            (Engine::Packed, DType::Quant { .. }) => 1,
            _ => 4,
        };
        tensors
            .push(TensorSlot {
                offset: 0,
                bytes: mul(elems, per)?,
                first: u16::MAX,
                last: 0,
                shape: t.shape,
                q: QParams::of(&t.dtype),
            })
            .map_err(|_| Error::TooManyLayers)?;
    }
    tensors
        .get_mut(model.input.tensor as usize)
        .ok_or(Error::PlanMismatch { layer: Site::Model })?
        .first = 0;
    for (i, layer) in model.layers.iter().enumerate() {
        let step = (i + 1) as u16;
        for t in layer.inputs().into_iter().flatten() {
            if let Some(s) = tensors.get_mut(t as usize) {
                s.last = s.last.max(step);
            }
        }
        if let Some(s) = tensors.get_mut(layer.output() as usize) {
            s.first = step;
            s.last = s.last.max(step);
        }
    }
    if let Some(s) = tensors.get_mut(model.output as usize) {
        s.last = nl as u16 + 1;
    }
    for s in tensors.iter_mut() {
        if s.first == u16::MAX {
            s.bytes = 0;
            s.first = 0;
        }
        s.last = s.last.max(s.first);
    }
    Ok(tensors)
}

/// What a conv layer needs: its kernel, prepared weight and auxiliary bytes, output rows per
/// call and scratch bytes.
struct ConvPlan {
    kernel: KernelKind,
    w_len: usize,
    aux_len: usize,
    rows: usize,
    scratch: usize,
}

/// The plan of conv layer `i` (`conv`, reading a tensor of `tensors`) in `engine`: its kernel
/// as `opts` and `in_place` choose it, and the bytes that kernel needs.
/// Bytes of a conv kernel's staged input, at the start of the layer's scratch: the padded
/// HWC bytes (none without padding: the kernel reads the layer's input), the padded bit
/// planes, or the tables of a table lookup (its own length). The planner sizes the scratch
/// with it and the executor cuts it there.
pub(crate) fn staged_input_bytes(run: &kernels::Run, s: &ConvShape) -> Result<usize> {
    match run {
        kernels::Run::Bytes(_) => {
            if s.ph == 0 && s.pw == 0 {
                Ok(0)
            } else {
                mul(mul(s.hp, s.wp)?, s.c)
            }
        }
        kernels::Run::Bits(_) => mul(
            mul(s.hp, s.wp)?,
            mul(kernels::portable::bit_pixel_words(s), 8)?,
        ),
        kernels::Run::Tables(t) => mul((t.len)(s), 2),
    }
}

fn conv_plan(
    conv: &slb_format::Conv<'_>,
    i: usize,
    tensors: &[TensorSlot],
    engine: Engine,
    opts: PlanOptions,
    in_place: &LayerSet,
) -> Result<ConvPlan> {
    let li = i as u16;
    let inp = tensors
        .get(conv.input as usize)
        .ok_or(Error::PlanMismatch {
            layer: Site::Layer(li),
        })?;
    let abits = inp.q.map(|q| q.bits).ok_or(Error::Unsupported {
        layer: Site::Layer(li),
        what: "conv on an f32 tensor",
    })?;
    let s = ConvShape::of(conv, inp.shape.h as usize, inp.shape.w as usize, abits).ok_or(
        Error::Unsupported {
            layer: Site::Layer(li),
            what: "conv geometry",
        },
    )?;
    let row_acc = mul(mul(s.ow, s.cout)?, 4)?;
    // Output rows a call: as many as the kernel's accumulator chunk holds, at least one.
    let rows_of = |kind| (kernels::acc_chunk(kind) / row_acc.max(1)).clamp(1, s.oh);
    if engine == Engine::Float {
        let kernel = kernels::float_kind(opts.portable_only);
        return Ok(ConvPlan {
            kernel,
            w_len: mul(mul(s.cout, s.taps())?, 4)?,
            aux_len: 0,
            rows: rows_of(kernel),
            scratch: 0,
        });
    }
    let k = match (opts.kernel, opts.force) {
        (Some(KernelKind::Reference), _) => None,
        (Some(kind), _) if kernels::kind_fits(kind, &s) => {
            Some(kernels::by_kind(kind).ok_or(Error::KernelUnavailable {
                layer: li,
                kernel: kind.name(),
            })?)
        }
        (_, None) if in_place.contains(i) => {
            kernels::smallest_kernel(&s, opts.portable_only, opts.costs)
        }
        (_, None) => kernels::default_kernel(&s, opts.portable_only, opts.costs),
        (_, Some(algo)) => forced_kernel(algo, &s, opts, li)?,
    };
    let Some(k) = k else {
        // The reference loop nest: all rows at once, its accumulators in the scratch.
        return Ok(ConvPlan {
            kernel: KernelKind::Reference,
            w_len: 0,
            aux_len: 0,
            rows: s.oh,
            scratch: mul(mul(s.oh, s.ow)?, mul(s.cout, 4)?)?,
        });
    };
    // The correction table, then the thresholds of a step requantization.
    let outq = tensors.get(conv.output as usize).and_then(|t| t.q);
    let steps = outq.and_then(|q| quant::step_count(conv.requant.affine.as_ref(), &q));
    let correction = s
        .correction_len()
        .ok_or(Error::Overflow { what: "arena size" })?;
    let aux_len = add(
        correction,
        match steps {
            Some(n) => mul(s.cout, quant::step_bytes(n))?,
            None => 0,
        },
    )?;
    let rows = rows_of(k.kind);
    // The staged input and the accumulators of `rows` rows.
    let input = staged_input_bytes(&k.run, &s)?;
    Ok(ConvPlan {
        kernel: k.kind,
        w_len: (k.prepared_len)(&s),
        aux_len,
        rows,
        scratch: add(align(input)?, mul(rows, row_acc)?)?,
    })
}

/// The kernel of algorithm `algo` forced on conv layer `li` of shape `s` (`None`: the
/// reference loop nest), or the error that it cannot run the layer.
fn forced_kernel(
    algo: Algo,
    s: &ConvShape,
    opts: PlanOptions,
    li: u16,
) -> Result<Option<kernels::ConvKernel>> {
    if !kernels::algo_fits(algo, s) {
        return Err(Error::KernelUnavailable {
            layer: li,
            kernel: match algo {
                Algo::Xnor => "xnor (needs 1-bit weights and activations)",
                _ => "forced kernel",
            },
        });
    }
    Ok(if algo == Algo::Reference {
        None
    } else if opts.portable_only {
        kernels::portable::kernel(algo)
    } else {
        kernels::select(algo, s, opts.costs)
    })
}

#[cfg(test)]
mod tests;
