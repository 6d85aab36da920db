//! `slb eval`: accuracy and speed of a model file on a dataset, with the host runtime.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::Serialize;
use slb_format::Model;
use slb_runtime::{Engine, Plan};

use crate::data::{self, Dataset, Split};

/// What `slb eval` measured.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Top-1 accuracy in percent.
    pub top1: f64,
    /// Top-5 accuracy in percent.
    pub top5: f64,
    /// Images evaluated.
    pub images: usize,
    /// Images per second over all threads.
    pub images_per_s: f64,
    /// Threads used (each inference is single-threaded).
    pub threads: usize,
    /// Engine name.
    pub engine: String,
    /// Kernel per layer (`None` for layers without a kernel choice).
    pub kernels: Vec<Option<String>>,
    /// Predicted class per image, in dataset order.
    #[serde(skip)]
    pub predictions: Vec<usize>,
}

/// Checks that a dataset fits a model's input and output, with one-line errors.
pub fn check_compatible(model: &Model<'_>, ds: &Dataset, data_path: &Path) -> Result<()> {
    let s = model.input.shape;
    if (ds.height, ds.width, 3) != (s.h as usize, s.w as usize, s.c as usize) {
        bail!(
            "{}: images are {}x{}x3 but the model expects {}x{}x{}",
            data_path.display(),
            ds.height,
            ds.width,
            s.h,
            s.w,
            s.c
        );
    }
    let out = model
        .tensor(model.output)
        .map(|t| t.shape.c as usize)
        .unwrap_or(0);
    if ds.classes.len() != out {
        bail!(
            "{}: the dataset has {} classes but the model predicts {}",
            data_path.display(),
            ds.classes.len(),
            out
        );
    }
    if let Some(bad) = ds.labels.iter().find(|&&l| l < 0 || l as usize >= out) {
        bail!(
            "{}: label {bad} is out of range for {out} classes",
            data_path.display()
        );
    }
    Ok(())
}

/// Runs the model over every image of `ds` with the given engine.
pub fn evaluate(model_bytes: &[u8], ds: &Dataset, engine: Engine) -> Result<EvalReport> {
    let model = Model::parse(model_bytes)?;
    let plan = Plan::new(&model, engine).context("cannot plan the model")?;
    let classes = model
        .tensor(model.output)
        .map(|t| t.shape.c as usize)
        .unwrap_or(0);
    let n = ds.len();
    let start = Instant::now();
    let results: Vec<Result<(usize, bool)>> = (0..n)
        .into_par_iter()
        .map_init(
            || (vec![0u8; plan.arena_bytes()], vec![0f32; classes]),
            |(arena, logits), i| {
                slb_runtime::run(&model, &plan, arena, ds.image(i), logits)
                    .map_err(|e| anyhow::anyhow!("image {i}: {e}"))?;
                let label = ds.labels[i] as usize;
                let pred = argmax(logits);
                let above = logits.iter().filter(|&&v| v > logits[label]).count();
                Ok((pred, above < 5))
            },
        )
        .collect();
    let secs = start.elapsed().as_secs_f64();
    let mut predictions = Vec::with_capacity(n);
    let (mut c1, mut c5) = (0usize, 0usize);
    for (i, r) in results.into_iter().enumerate() {
        let (pred, in5) = r?;
        c1 += (pred == ds.labels[i] as usize) as usize;
        c5 += in5 as usize;
        predictions.push(pred);
    }
    let kernels = (0..model.layers.len())
        .map(|i| plan.kernel(i).map(|k| k.name().to_string()))
        .collect();
    Ok(EvalReport {
        top1: 100.0 * c1 as f64 / n.max(1) as f64,
        top5: 100.0 * c5 as f64 / n.max(1) as f64,
        images: n,
        images_per_s: n as f64 / secs.max(1e-9),
        threads: rayon::current_num_threads(),
        engine: match engine {
            Engine::Packed => "packed".into(),
            Engine::Float => "float".into(),
        },
        kernels,
        predictions,
    })
}

/// Index of the largest logit (the first one on ties).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// The `slb eval` command: loads the model and the test split, evaluates, prints.
pub fn command(
    model_path: &Path,
    data_path: &Path,
    engine: Engine,
    json: bool,
    limit: Option<usize>,
    allow_class_mismatch: bool,
) -> Result<()> {
    let bytes = super::read_model_file(model_path)?;
    let model = Model::parse(&bytes)?;
    let mut ds = match limit {
        Some(per_class) => data::load_limited(data_path, Split::Test, Some(per_class)),
        None => data::load(data_path, Split::Test),
    }
    .with_context(|| format!("cannot load test images from {}", data_path.display()))?;
    // By name: a model that stores its class names is only scored on images of those classes,
    // each under the label the model gives it.
    if model.input.num_classes() > 0 {
        let names: Vec<String> = model.input.class_names().map(str::to_string).collect();
        let dropped = data::align_classes(
            &mut ds,
            &names,
            &format!(
                "test split of {} vs model {}",
                data_path.display(),
                model_path.display()
            ),
            allow_class_mismatch,
        )?;
        if !dropped.is_empty() {
            eprintln!(
                "warning: test images of classes the model lacks are left out: {}",
                dropped.join(", ")
            );
        }
    }
    check_compatible(&model, &ds, data_path)?;
    let r = evaluate(&bytes, &ds, engine)?;
    if json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    println!(
        "{}: {} engine, {} images: top-1 {:.2}%, top-5 {:.2}%, {:.0} images/s ({} threads, one inference per thread)",
        model_path.display(),
        r.engine,
        r.images,
        r.top1,
        r.top5,
        r.images_per_s,
        r.threads
    );
    for (i, (layer, k)) in model.layers.iter().zip(&r.kernels).enumerate() {
        if let Some(k) = k {
            println!("  layer {i:>3} {:<14} {k}", layer.op_name());
        }
    }
    Ok(())
}
