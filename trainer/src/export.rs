//! Export of a trained network to the `slb-format` model file: argmax weight codes packed as
//! bit planes, BatchNorm folded into per-channel integer requantization, activation scales and
//! zero points, the float dense layer, the input normalisation (as a look-up table) and the
//! class names. The arithmetic is docs/DESIGN.md's.

use slb_format::{
    encode, f32_bytes, i32_bytes, pack_codes, AddParams, ChannelAffine, Conv, DType, Dense,
    DenseWeights, F32s, I32s, InputSpec, Layer, Model, ModelSpec, Pool, RawQuant, Requant, Shape,
    TensorDesc, Unary,
};
use tch::{nn, Device, Kind, Tensor};

use crate::data::{Augment, DeviceData};
use crate::error::{Error, Result};
use crate::nn::net::{Ctx, Net, QConv, Stage};
use crate::nn::{ActQuant, QuantMode};
use crate::train::{build, net_config, Checkpoint};

/// BatchNorm epsilon (tch's default, used by every BatchNorm of the networks).
pub const BN_EPS: f64 = 1e-5;

/// What an export produced, for messages and tests.
#[derive(Debug)]
pub struct Exported {
    /// The model file bytes (already parsed back once by `encode`).
    pub bytes: Vec<u8>,
    /// Whether the 8-bit ranges were calibrated here (activation quantization was off in
    /// training).
    pub calibrated: bool,
    /// Number of convolutions written.
    pub convs: usize,
}

/// Largest shift in 1..=62 with every `|v| * 2^shift` below 2^31.
pub fn pick_shift(values: &[f64]) -> Result<u8> {
    let m = values.iter().fold(0.0f64, |a, v| a.max(v.abs()));
    if !m.is_finite() {
        return Err(Error::Export("non-finite requantization parameter".into()));
    }
    let mut s = 62u8;
    while s > 1 && (m * 2f64.powi(s as i32)).round() >= 2147483647.0 {
        s -= 1;
    }
    if (m * 2f64.powi(s as i32)).round() >= 2147483647.0 {
        return Err(Error::Export(format!(
            "requantization multiplier {m} too large for 32-bit fixed point"
        )));
    }
    Ok(s)
}

/// For a 1-bit (sign) output the stored affine only needs the right sign, but the format takes
/// the sign of the *rounded* value, so values in `[-0.5, 0)` output codes would read as
/// non-negative. Scaling the whole affine by a large power of two (the largest that still
/// fits 32-bit fixed point, at most 2^20) shrinks that band to nothing. 1 for other outputs.
pub fn sign_gain(values: &[f64], out_bits: u8) -> f64 {
    if out_bits != 1 {
        return 1.0;
    }
    let m = values.iter().fold(0.0f64, |a, v| a.max(v.abs()));
    let mut k = 20;
    while k > 0 && m * 2f64.powi(k) >= 2f64.powi(29) {
        k -= 1;
    }
    2f64.powi(k)
}

fn fixed(values: &[f64], shift: u8) -> Vec<i32> {
    let f = 2f64.powi(shift as i32);
    values.iter().map(|v| (v * f).round() as i32).collect()
}

fn f64s(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap_or_default()
}

/// BatchNorm's eval affine `a = gamma / sqrt(var + eps)`, `b = beta - mean * a`.
pub fn bn_affine(bn: &nn::BatchNorm) -> (Vec<f64>, Vec<f64>) {
    let mean = f64s(&bn.running_mean);
    let var = f64s(&bn.running_var);
    let gamma = bn
        .ws
        .as_ref()
        .map(f64s)
        .unwrap_or_else(|| vec![1.0; mean.len()]);
    let beta = bn
        .bs
        .as_ref()
        .map(f64s)
        .unwrap_or_else(|| vec![0.0; mean.len()]);
    let a: Vec<f64> = gamma
        .iter()
        .zip(&var)
        .map(|(g, v)| (*g as f32 / ((*v as f32 + BN_EPS as f32).sqrt())) as f64)
        .collect();
    let b = beta
        .iter()
        .zip(&mean)
        .zip(&a)
        .map(|((b, m), a)| b - m * a)
        .collect();
    (a, b)
}

fn dtype(q: &ActQuant) -> DType {
    let (scale, zero_point) = q.qparams();
    DType::Quant {
        scale,
        zero_point,
        bits: q.bits(),
    }
}

/// `(scale, zero point, bits)` of a quantized dtype.
fn qp(d: DType) -> (f64, i32, u8) {
    match d {
        DType::Quant {
            scale,
            zero_point,
            bits,
        } => (scale as f64, zero_point, bits),
        DType::F32 => (1.0, 0, 32),
    }
}

enum Owned {
    Conv {
        input: u16,
        output: u16,
        conv: ConvGeom,
        codes: Vec<u8>,
        raw: RawQuant,
        affine: Option<(u8, Vec<u8>, Vec<u8>, bool)>,
    },
    MaxPool(Pool),
    Gap(Unary),
    Flatten(Unary),
    Add {
        a: u16,
        b: u16,
        output: u16,
        shift: u8,
        ma: Vec<u8>,
        mb: Vec<u8>,
        bias: Vec<u8>,
        relu: bool,
    },
    Dense {
        input: u16,
        output: u16,
        w: Vec<u8>,
        b: Vec<u8>,
    },
}

struct ConvGeom {
    out: u32,
    cin: u32,
    k: u16,
    stride: u16,
    pad: u16,
    groups: u32,
    bits: u8,
}

struct Builder {
    tensors: Vec<TensorDesc>,
    layers: Vec<Owned>,
}

fn u16_id(n: usize) -> Result<u16> {
    u16::try_from(n).map_err(|_| Error::Export("too many tensors".into()))
}

impl Builder {
    fn tensor(&mut self, shape: Shape, dtype: DType) -> Result<u16> {
        self.tensors.push(TensorDesc { shape, dtype });
        u16_id(self.tensors.len() - 1)
    }

    /// Conv + stage 1 into `raw` codes; with `next`, stage 2 (BN, ReLU, next node) too.
    fn conv(&mut self, input: u16, c: &QConv, next: Option<(&ActQuant, bool)>) -> Result<u16> {
        let in_desc = self.tensors[input as usize];
        let (s_in, _, _) = qp(in_desc.dtype);
        let cv = &c.conv;
        let wb = cv.bits;
        let (s_raw_f, zp_raw) = c.raw.qparams();
        let s_raw = s_raw_f as f64;
        let m1 = s_in / ((((1u32 << wb) - 1) as f64) * s_raw);
        let sh1 = pick_shift(&[m1])?;
        let raw = RawQuant {
            mult: fixed(&[m1], sh1)[0],
            shift: sh1,
            zero_point: zp_raw,
            bits: 8,
            scale: s_raw_f,
        };
        let geom = ConvGeom {
            out: cv.out_channels as u32,
            cin: cv.in_channels as u32,
            k: cv.kernel as u16,
            stride: cv.stride as u16,
            pad: cv.padding as u16,
            groups: cv.groups as u32,
            bits: wb,
        };
        let od = |size: u32| (size + 2 * geom.pad as u32 - geom.k as u32) / geom.stride as u32 + 1;
        let shape = Shape::new(geom.out, od(in_desc.shape.h), od(in_desc.shape.w));
        // Codes in OHWI order.
        let codes = Vec::<u8>::try_from(
            c.conv
                .logits
                .argmax(-1, false)
                .permute([0, 2, 3, 1])
                .contiguous()
                .flatten(0, -1)
                .to_kind(Kind::Uint8),
        )
        .map_err(Error::Torch)?;
        let packed = pack_codes(
            &codes,
            geom.out,
            [geom.k, geom.k],
            geom.cin / geom.groups,
            wb,
        )?;
        let (affine, out_dtype) = match next {
            None => (
                None,
                DType::Quant {
                    scale: s_raw_f,
                    zero_point: zp_raw,
                    bits: 8,
                },
            ),
            Some((q, relu)) => {
                let od = dtype(q);
                let (s_out, _, _) = qp(od);
                let (a, b) = bn_affine(&c.bn);
                let mut mult: Vec<f64> = a.iter().map(|a| a * s_raw / s_out).collect();
                let mut bias: Vec<f64> = b.iter().map(|b| b / s_out).collect();
                let all: Vec<f64> = mult.iter().chain(&bias).copied().collect();
                let g = sign_gain(&all, q.bits());
                mult.iter_mut().chain(bias.iter_mut()).for_each(|v| *v *= g);
                let all: Vec<f64> = mult.iter().chain(&bias).copied().collect();
                let sh = pick_shift(&all)?;
                (
                    Some((
                        sh,
                        i32_bytes(&fixed(&mult, sh)),
                        i32_bytes(&fixed(&bias, sh)),
                        relu && q.allows_relu(),
                    )),
                    od,
                )
            }
        };
        let output = self.tensor(shape, out_dtype)?;
        self.layers.push(Owned::Conv {
            input,
            output,
            conv: geom,
            codes: packed,
            raw,
            affine,
        });
        Ok(output)
    }
}

/// Builds the model file of a network whose activation ranges are set.
pub fn export_net(
    net: &Net,
    name: &str,
    classes: &[String],
    aug: &Augment,
    image_size: i64,
) -> Result<Vec<u8>> {
    let hw = image_size as u32;
    let mut bld = Builder {
        tensors: Vec::new(),
        layers: Vec::new(),
    };
    let relu = net.relu();
    let x0 = bld.tensor(Shape::new(3, hw, hw), dtype(&net.input))?;
    let mut x = x0;
    for s in &net.stages {
        x = match s {
            Stage::Conv { conv, q } => bld.conv(x, conv, Some((q, relu)))?,
            Stage::MaxPool { k, s, p } => {
                let d = bld.tensors[x as usize];
                let pool = Pool {
                    input: x,
                    output: 0,
                    kernel: [*k as u16; 2],
                    stride: [*s as u16; 2],
                    padding: [*p as u16; 2],
                };
                let sh = pool
                    .output_shape(d.shape)
                    .ok_or_else(|| Error::Export("pool window does not fit".into()))?;
                let output = bld.tensor(sh, d.dtype)?;
                bld.layers.push(Owned::MaxPool(Pool { output, ..pool }));
                output
            }
            Stage::Block(b) => {
                let h = bld.conv(x, &b.conv1, Some((&b.q1, relu)))?;
                let r2 = bld.conv(h, &b.conv2, None)?;
                let out_dtype = dtype(&b.out);
                let (s_out, _, _) = qp(out_dtype);
                let (a2, b2) = bn_affine(&b.conv2.bn);
                let (s_r2, _, _) = qp(bld.tensors[r2 as usize].dtype);
                let ma: Vec<f64> = a2.iter().map(|a| a * s_r2 / s_out).collect();
                let mut bias: Vec<f64> = b2.iter().map(|b| b / s_out).collect();
                let (sb, mb) = match &b.down {
                    Some(d) => {
                        let rd = bld.conv(x, d, None)?;
                        let (ad, bd) = bn_affine(&d.bn);
                        let (s_rd, _, _) = qp(bld.tensors[rd as usize].dtype);
                        for (acc, v) in bias.iter_mut().zip(&bd) {
                            *acc += v / s_out;
                        }
                        (
                            rd,
                            ad.iter().map(|a| a * s_rd / s_out).collect::<Vec<f64>>(),
                        )
                    }
                    None => {
                        // Add inputs are centred codes (`q - zp`, or `2q - 1` for a sign
                        // tensor), so the identity's real value is `s_x` per centred code.
                        let (s_x, _, _) = qp(bld.tensors[x as usize].dtype);
                        (x, vec![s_x / s_out; ma.len()])
                    }
                };
                let (mut ma, mut mb) = (ma, mb);
                let all: Vec<f64> = ma.iter().chain(&mb).chain(&bias).copied().collect();
                let g = sign_gain(&all, b.out.bits());
                for v in ma.iter_mut().chain(mb.iter_mut()).chain(bias.iter_mut()) {
                    *v *= g;
                }
                let all: Vec<f64> = ma.iter().chain(&mb).chain(&bias).copied().collect();
                let shift = pick_shift(&all)?;
                let shape = bld.tensors[r2 as usize].shape;
                let output = bld.tensor(shape, out_dtype)?;
                bld.layers.push(Owned::Add {
                    a: r2,
                    b: sb,
                    output,
                    shift,
                    ma: i32_bytes(&fixed(&ma, shift)),
                    mb: i32_bytes(&fixed(&mb, shift)),
                    bias: i32_bytes(&fixed(&bias, shift)),
                    relu: relu && b.out.allows_relu(),
                });
                output
            }
        };
    }
    let d = bld.tensors[x as usize];
    let feat = if net.flatten {
        let n = d.shape.c * d.shape.h * d.shape.w;
        let out = bld.tensor(Shape::new(n, 1, 1), d.dtype)?;
        bld.layers.push(Owned::Flatten(Unary {
            input: x,
            output: out,
        }));
        out
    } else {
        let out = bld.tensor(Shape::new(d.shape.c, 1, 1), DType::F32)?;
        bld.layers.push(Owned::Gap(Unary {
            input: x,
            output: out,
        }));
        out
    };
    let w: Vec<f32> = Vec::<f32>::try_from(net.dense.ws.to_kind(Kind::Float).flatten(0, -1))
        .map_err(Error::Torch)?;
    let b: Vec<f32> = match &net.dense.bs {
        Some(b) => Vec::<f32>::try_from(b.to_kind(Kind::Float)).map_err(Error::Torch)?,
        None => vec![0.0; net.cfg.num_classes as usize],
    };
    let logits = bld.tensor(Shape::new(net.cfg.num_classes as u32, 1, 1), DType::F32)?;
    bld.layers.push(Owned::Dense {
        input: feat,
        output: logits,
        w: f32_bytes(&w),
        b: f32_bytes(&b),
    });
    let lut = input_lut(net, aug)?;
    let layers: Vec<Layer<'_>> = bld
        .layers
        .iter()
        .map(|l| match l {
            Owned::Conv {
                input,
                output,
                conv,
                codes,
                raw,
                affine,
            } => Layer::Conv(Conv {
                input: *input,
                output: *output,
                out_channels: conv.out,
                in_channels: conv.cin,
                kernel: [conv.k; 2],
                stride: [conv.stride; 2],
                padding: [conv.pad; 2],
                groups: conv.groups,
                weight_bits: conv.bits,
                codes,
                requant: Requant {
                    raw: *raw,
                    affine: affine.as_ref().map(|(shift, m, b, relu)| ChannelAffine {
                        shift: *shift,
                        mult: I32s(m),
                        bias: I32s(b),
                        relu: *relu,
                    }),
                },
            }),
            Owned::MaxPool(p) => Layer::MaxPool(*p),
            Owned::Gap(u) => Layer::GlobalAvgPool(*u),
            Owned::Flatten(u) => Layer::Flatten(*u),
            Owned::Add {
                a,
                b,
                output,
                shift,
                ma,
                mb,
                bias,
                relu,
            } => Layer::Add(slb_format::Add {
                a: *a,
                b: *b,
                output: *output,
                params: AddParams {
                    shift: *shift,
                    mult_a: I32s(ma),
                    mult_b: I32s(mb),
                    bias: I32s(bias),
                    relu: *relu,
                },
            }),
            Owned::Dense {
                input,
                output,
                w,
                b,
            } => Layer::Dense(Dense {
                input: *input,
                output: *output,
                weights: DenseWeights::F32(F32s(w)),
                bias: F32s(b),
            }),
        })
        .collect();
    let mean = f32_bytes(&aug.mean);
    let std = f32_bytes(&aug.std);
    let class_text = classes.join("\n");
    let spec = ModelSpec {
        name,
        input: InputSpec {
            shape: Shape::new(3, hw, hw),
            mean: F32s(&mean),
            std: F32s(&std),
            classes: &class_text,
            tensor: x0,
            lut: &lut,
        },
        tensors: &bld.tensors,
        layers: &layers,
        output: logits,
    };
    let bytes = encode(&spec)?;
    Model::parse(&bytes)?;
    Ok(bytes)
}

/// The input look-up table: `lut[c * 256 + v]` is the input node's code of pixel value `v` in
/// channel `c`, computed with the trainer's own normalisation and fake-quant ops.
pub fn input_lut(net: &Net, aug: &Augment) -> Result<Vec<u8>> {
    let px: Vec<u8> = (0..=255u8).flat_map(|v| [v, v, v]).collect();
    let img = Tensor::from_slice(&px).view([1, 1, 256, 3]);
    let plain = Augment {
        resize: None,
        ..*aug
    };
    let x = plain.eval(&img.to_device(net.dense.ws.device()));
    let mode = QuantMode {
        observe: false,
        quantize: true,
        ema: false,
    };
    let y = tch::no_grad(|| net.input.forward(&x, false, mode));
    let (s, zp) = net.input.qparams();
    let codes = (y.to_device(Device::Cpu) / s as f64).round() + zp as f64;
    let codes = codes.clamp(0.0, 255.0).to_kind(Kind::Uint8).flatten(0, -1);
    Vec::<u8>::try_from(codes).map_err(Error::Torch)
}

/// Calibrates the 8-bit ranges of a network trained without activation quantization: one
/// forward pass over `images` (u8 NHWC) with hard weights, BatchNorm in eval mode, every node
/// observing its batch range and quantizing with it.
pub fn calibrate(net: &Net, images: &Tensor, aug: &Augment) {
    let ctx = Ctx {
        train: false,
        t: 1.0,
        hard: true,
        q: QuantMode {
            observe: true,
            quantize: true,
            ema: false,
        },
        amp: false,
    };
    tch::no_grad(|| {
        let _ = net.forward(&aug.eval(images), &ctx);
    });
}

/// Loads a checkpoint onto the CPU and rebuilds its network.
pub fn load_net(ck: &Checkpoint) -> Result<(nn::VarStore, Net)> {
    let mut cfg = ck.meta.config.clone();
    cfg.has_trained_epoch = Some(0);
    let algo = cfg.algorithm()?;
    let vs = nn::VarStore::new(Device::Cpu);
    let net = build(
        &algo,
        &vs,
        net_config(&cfg, ck.meta.classes.len() as i64, ck.meta.image_size),
        cfg.float_weights,
    );
    ck.restore(&vs)?;
    Ok((vs, net))
}

/// The augmentation (normalisation, resize) a checkpoint's run used.
pub fn augment_of(ck: &Checkpoint) -> Augment {
    Augment {
        pad: 0,
        flip: false,
        resize: ck.meta.config.resize,
        ..Augment::cifar()
    }
}

/// Exports a checkpoint. `calib` supplies training data when the 8-bit ranges were not trained
/// (enable_act_quant = false); its first `calibration_batches * batch_size` images are used.
pub fn export_checkpoint(ck: &Checkpoint, calib: Option<&DeviceData>) -> Result<Exported> {
    if ck.meta.config.float_weights {
        return Err(Error::Export(
            "this is a float-weight baseline (float_weights = true): it has no codes to pack"
                .into(),
        ));
    }
    let (_vs, net) = load_net(ck)?;
    let aug = augment_of(ck);
    let mut calibrated = false;
    if !ck.meta.ranges_valid {
        let data = calib.ok_or_else(|| {
            Error::Export(
                "the network was trained without activation quantization: its 8-bit ranges \
                 must be calibrated on training images (pass --data)"
                    .into(),
            )
        })?;
        let n = (ck.meta.config.calibration_batches.max(1) * ck.meta.config.batch_size)
            .min(data.len() as i64);
        let imgs = data.images().narrow(0, 0, n).to_device(Device::Cpu);
        calibrate(&net, &imgs, &aug);
        calibrated = true;
    }
    let c = &ck.meta.config;
    let name = format!(
        "{:?} W{}A{} (SLB, epoch {})",
        c.model,
        c.weight_quant_dtype.bits(),
        c.act_quant_dtype.bits(),
        ck.meta.epoch
    )
    .to_lowercase();
    let bytes = export_net(&net, &name, &ck.meta.classes, &aug, ck.meta.image_size)?;
    Ok(Exported {
        bytes,
        calibrated,
        convs: net.convs().len(),
    })
}
