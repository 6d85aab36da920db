//! `slb bench`: packed runtime against float (the in-house float executor and libtorch's CPU
//! kernels running the same network), one thread each, measured side by side.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::SeedableRng;
use slb_format::{DType, DenseWeights, Layer, Model, Shape};
use slb_runtime::{Engine, Plan};
use tch::{Kind, Tensor};

/// Median seconds per call of `f`, measured for at least `budget` after one warm-up call.
pub fn time_it(budget: Duration, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed() < budget || samples.len() < 5 {
        let t = Instant::now();
        f()?;
        samples.push(t.elapsed().as_secs_f64());
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

fn real_of(d: DType) -> (f64, f64) {
    match d {
        DType::Quant {
            scale, zero_point, ..
        } => (scale as f64, zero_point as f64),
        DType::F32 => (1.0, 0.0),
    }
}

fn per_channel(v: impl Iterator<Item = i32>, k: f64) -> Tensor {
    let v: Vec<f32> = v.map(|x| (x as f64 * k) as f32).collect();
    Tensor::from_slice(&v).view([1, -1, 1, 1])
}

/// The model as a float libtorch graph (dequantized weights, activations kept in f32): what a
/// user would run instead of the packed model. Input: normalised NCHW f32.
pub struct TorchFloat {
    steps: Vec<Step>,
    input: usize,
    output: usize,
    tensors: usize,
}

enum Step {
    Conv {
        i: usize,
        o: usize,
        w: Tensor,
        stride: [i64; 2],
        pad: [i64; 2],
        groups: i64,
        scale: Tensor,
        bias: Option<Tensor>,
        relu: bool,
    },
    Add {
        a: usize,
        b: usize,
        o: usize,
        ka: Tensor,
        kb: Tensor,
        bias: Tensor,
        relu: bool,
    },
    MaxPool {
        i: usize,
        o: usize,
        k: [i64; 2],
        s: [i64; 2],
        p: [i64; 2],
    },
    AvgPool {
        i: usize,
        o: usize,
        k: [i64; 2],
        s: [i64; 2],
        p: [i64; 2],
    },
    Gap {
        i: usize,
        o: usize,
    },
    Relu {
        i: usize,
        o: usize,
    },
    Flatten {
        i: usize,
        o: usize,
    },
    Dense {
        i: usize,
        o: usize,
        w: Tensor,
        b: Tensor,
    },
}

impl TorchFloat {
    /// Builds the graph from a parsed model.
    pub fn new(model: &Model<'_>) -> Result<TorchFloat> {
        let mut steps = Vec::new();
        let td = |t: u16| model.tensor(t).context("tensor");
        for layer in model.layers.iter() {
            steps.push(match layer {
                Layer::Conv(c) => conv_step(model, &c)?,
                Layer::Add(a) => {
                    let k = 2f64.powi(-(a.params.shift as i32));
                    let (s_out, _) = real_of(td(a.output)?.dtype);
                    let (sa, _) = real_of(td(a.a)?.dtype);
                    let (sb, _) = real_of(td(a.b)?.dtype);
                    Step::Add {
                        a: a.a as usize,
                        b: a.b as usize,
                        o: a.output as usize,
                        ka: per_channel(a.params.mult_a.iter(), s_out * k / sa),
                        kb: per_channel(a.params.mult_b.iter(), s_out * k / sb),
                        bias: per_channel(a.params.bias.iter(), s_out * k),
                        relu: a.params.relu,
                    }
                }
                Layer::MaxPool(p) => Step::MaxPool {
                    i: p.input as usize,
                    o: p.output as usize,
                    k: k2(p.kernel),
                    s: k2(p.stride),
                    p: k2(p.padding),
                },
                Layer::AvgPool(p) => Step::AvgPool {
                    i: p.input as usize,
                    o: p.output as usize,
                    k: k2(p.kernel),
                    s: k2(p.stride),
                    p: k2(p.padding),
                },
                Layer::GlobalAvgPool(u) => Step::Gap {
                    i: u.input as usize,
                    o: u.output as usize,
                },
                Layer::Relu(u) => Step::Relu {
                    i: u.input as usize,
                    o: u.output as usize,
                },
                Layer::Flatten(u) => Step::Flatten {
                    i: u.input as usize,
                    o: u.output as usize,
                },
                Layer::Dense(d) => dense_step(model, &d)?,
            });
        }
        Ok(TorchFloat {
            steps,
            input: model.input.tensor as usize,
            output: model.output as usize,
            tensors: model.tensors.len(),
        })
    }

    /// Runs the graph on a normalised `[1, C, H, W]` input and returns the logits.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let _g = tch::no_grad_guard();
        let mut t: Vec<Option<Tensor>> = (0..self.tensors).map(|_| None).collect();
        t[self.input] = Some(x.shallow_clone());
        let get = |t: &Vec<Option<Tensor>>, i: usize| {
            t[i].as_ref().expect("validated dataflow").shallow_clone()
        };
        for s in &self.steps {
            let (o, v) = match s {
                Step::Conv {
                    i,
                    o,
                    w,
                    stride,
                    pad,
                    groups,
                    scale,
                    bias,
                    relu,
                } => {
                    let mut y =
                        get(&t, *i).conv2d(w, None::<Tensor>, stride, pad, [1, 1], *groups) * scale;
                    if let Some(b) = bias {
                        y += b;
                    }
                    (*o, if *relu { y.relu() } else { y })
                }
                Step::Add {
                    a,
                    b,
                    o,
                    ka,
                    kb,
                    bias,
                    relu,
                } => {
                    let y = get(&t, *a) * ka + get(&t, *b) * kb + bias;
                    (*o, if *relu { y.relu() } else { y })
                }
                Step::MaxPool { i, o, k, s, p } => {
                    (*o, get(&t, *i).max_pool2d(k, s, p, [1, 1], false))
                }
                Step::AvgPool { i, o, k, s, p } => (
                    *o,
                    get(&t, *i).avg_pool2d(k, s, p, false, true, None::<i64>),
                ),
                Step::Gap { i, o } => (*o, get(&t, *i).adaptive_avg_pool2d([1, 1])),
                Step::Relu { i, o } => (*o, get(&t, *i).relu()),
                Step::Flatten { i, o } => (*o, get(&t, *i).flatten(1, -1).view([1, -1, 1, 1])),
                Step::Dense { i, o, w, b } => (
                    *o,
                    get(&t, *i)
                        .view([1, -1])
                        .linear(w, Some(b))
                        .view([1, -1, 1, 1]),
                ),
            };
            t[o] = Some(v);
        }
        get(&t, self.output).view([-1])
    }
}

fn k2(v: [u16; 2]) -> [i64; 2] {
    [v[0] as i64, v[1] as i64]
}

/// A normalised input tensor for an image, as the trainer feeds it.
pub fn normalised(model: &Model<'_>, image: &[u8]) -> Tensor {
    let Shape { c, h, w } = model.input.shape;
    let (c, h, w) = (c as usize, h as usize, w as usize);
    let mut v = vec![0f32; c * h * w];
    for ch in 0..c {
        let (m, s) = (
            model.input.mean.get(ch).unwrap_or(0.0),
            model.input.std.get(ch).unwrap_or(1.0),
        );
        for p in 0..h * w {
            v[ch * h * w + p] = (image[p * c + ch] as f32 / 255.0 - m) / s;
        }
    }
    Tensor::from_slice(&v).view([1, c as i64, h as i64, w as i64])
}

/// Seconds per inference of the three engines on one image, one thread each.
#[derive(Debug, Clone, Copy)]
pub struct BenchReport {
    /// Packed runtime.
    pub packed_s: f64,
    /// In-house float executor (`None`: not timed).
    pub float_s: Option<f64>,
    /// libtorch CPU, float (`None`: not timed).
    pub torch_s: Option<f64>,
}

/// The input `slb bench` times: `image` (an encoded JPEG or PNG) decoded as `slb eval`'s
/// evaluation transform would (shorter side to the model's input side, centre crop; 3-channel
/// square inputs only), else a deterministic synthetic image.
pub fn bench_input(model: &Model<'_>, image: Option<&[u8]>) -> Result<Vec<u8>> {
    let s = model.input.shape;
    let n = (s.c * s.h * s.w) as usize;
    let Some(encoded) = image else {
        return Ok((0..n).map(|i| (i * 37 % 251) as u8).collect());
    };
    if s.c != 3 || s.h != s.w {
        anyhow::bail!(
            "--image needs a model with a square RGB input; this one takes {}x{}x{}",
            s.c,
            s.h,
            s.w
        );
    }
    let t = crate::data::Transform::Eval {
        side: s.h,
        resize: s.h,
    };
    let mut out = vec![0u8; n];
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    crate::data::decode_into(encoded, &t, &mut rng, &mut out)
        .map_err(|e| anyhow::anyhow!("the image: {e}"))?;
    Ok(out)
}

/// Times the engines on `image` (see [`bench_input`]; only the packed runtime if
/// `packed_only`).
pub fn bench(
    bytes: &[u8],
    budget: Duration,
    packed_only: bool,
    image: Option<&[u8]>,
) -> Result<BenchReport> {
    let model = Model::parse(bytes)?;
    let image = bench_input(&model, image)?;
    let classes = model.tensor(model.output).map_or(0, |t| t.shape.c as usize);
    let mut logits = vec![0f32; classes];
    let mut time_engine = |engine| -> Result<f64> {
        let plan = Plan::new(&model, engine)?;
        let mut arena = vec![0u8; plan.arena_bytes()];
        time_it(budget, || {
            slb_runtime::run(&model, &plan, &mut arena, &image, &mut logits).map_err(Into::into)
        })
    };
    let packed_s = time_engine(Engine::Packed)?;
    if packed_only {
        return Ok(BenchReport {
            packed_s,
            float_s: None,
            torch_s: None,
        });
    }
    let float_s = time_engine(Engine::Float)?;
    tch::set_num_threads(1);
    let net = TorchFloat::new(&model)?;
    let x = normalised(&model, &image);
    let torch_s = time_it(budget, || {
        let _ = net.forward(&x);
        Ok(())
    })?;
    Ok(BenchReport {
        packed_s,
        float_s: Some(float_s),
        torch_s: Some(torch_s),
    })
}

/// The `slb bench` command.
pub fn command(path: &Path, seconds: f64, packed_only: bool, image: Option<&Path>) -> Result<()> {
    let bytes = super::read_model_file(path)?;
    let encoded = image
        .map(|p| read_image_file(p).with_context(|| format!("image {}", p.display())))
        .transpose()?;
    let r = bench(
        &bytes,
        Duration::from_secs_f64(seconds),
        packed_only,
        encoded.as_deref(),
    )?;
    let on = image.map_or("a synthetic image".to_string(), |p| p.display().to_string());
    println!(
        "{} on {on} — one thread, median time per inference:",
        path.display()
    );
    println!("  packed runtime          {:>9.3} ms", r.packed_s * 1e3);
    let ratio = |float_s: f64| {
        let r = float_s / r.packed_s;
        if r >= 1.0 {
            format!("packed is {r:.2}x faster")
        } else {
            format!("packed is {:.2}x slower", 1.0 / r)
        }
    };
    if let Some(float_s) = r.float_s {
        println!(
            "  in-house float executor {:>9.3} ms   {}",
            float_s * 1e3,
            ratio(float_s)
        );
    }
    if let Some(torch_s) = r.torch_s {
        println!(
            "  libtorch CPU float      {:>9.3} ms   {}",
            torch_s * 1e3,
            ratio(torch_s)
        );
    }
    Ok(())
}

/// The bytes of an image file, refused above the loader's limit before they are read.
fn read_image_file(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let limit = crate::data::MAX_IMAGE_FILE_BYTES;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(limit + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        anyhow::bail!("larger than {limit} bytes");
    }
    Ok(bytes)
}

/// The float step of a conv: its weights as numerator / (2^bits - 1), the output's affine
/// requantization as a per-channel scale and bias in real units.
fn conv_step(model: &Model<'_>, c: &slb_format::Conv<'_>) -> Result<Step> {
    let td = |t: u16| model.tensor(t).context("tensor");
    let r = slb_format::CodeReader::new(c);
    let (kh, kw, cin) = (
        c.kernel[0] as usize,
        c.kernel[1] as usize,
        c.in_per_group() as usize,
    );
    let denom = ((1i32 << c.weight_bits) - 1) as f32;
    let mut w = vec![0f32; c.out_channels as usize * cin * kh * kw];
    for o in 0..c.out_channels as usize {
        for i in 0..cin {
            for y in 0..kh {
                for x in 0..kw {
                    w[((o * cin + i) * kh + y) * kw + x] = r.numerator(o, y, x, i) as f32 / denom;
                }
            }
        }
    }
    let w = Tensor::from_slice(&w).view([c.out_channels as i64, cin as i64, kh as i64, kw as i64]);
    let s_raw = c.requant.raw.scale as f64;
    let (s_out, _) = real_of(td(c.output)?.dtype);
    let (scale, bias, relu) = match c.requant.affine {
        Some(a) => {
            let k = 2f64.powi(-(a.shift as i32));
            (
                per_channel(a.mult.iter(), s_out * k / s_raw),
                Some(per_channel(a.bias.iter(), s_out * k)),
                a.relu,
            )
        }
        None => (
            Tensor::ones([1, 1, 1, 1], (Kind::Float, tch::Device::Cpu)),
            None,
            false,
        ),
    };
    Ok(Step::Conv {
        i: c.input as usize,
        o: c.output as usize,
        w,
        stride: [c.stride[0] as i64, c.stride[1] as i64],
        pad: [c.padding[0] as i64, c.padding[1] as i64],
        groups: c.groups as i64,
        scale,
        bias,
        relu,
    })
}

/// The float step of a dense layer: float weights, or int8 values times their row's scale.
fn dense_step(model: &Model<'_>, d: &slb_format::Dense<'_>) -> Result<Step> {
    let td = |t: u16| model.tensor(t).context("tensor");
    let outf = td(d.output)?.shape.c as i64;
    let w: Vec<f32> = match d.weights {
        DenseWeights::F32(w) => w.iter().collect(),
        DenseWeights::Int8 { values, scale } => {
            let inf = values.len() / outf as usize;
            values
                .iter()
                .enumerate()
                .map(|(j, &v)| v as i8 as f32 * scale.get(j / inf).unwrap_or(0.0))
                .collect()
        }
    };
    Ok(Step::Dense {
        i: d.input as usize,
        o: d.output as usize,
        w: Tensor::from_slice(&w).view([outf, -1]),
        b: Tensor::from_slice(&d.bias.iter().collect::<Vec<f32>>()),
    })
}
