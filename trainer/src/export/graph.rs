//! The graph walk of export: a network's stages become the model file's tensors and layers
//! ([`Graph`]), each conv with its packed weight codes and, through [`super::fold`], its
//! fixed-point requantization; then the layers borrowed for the encoder ([`Graph::layers`]).

use slb_format::{
    f32_bytes, i32_bytes, pack_codes, AddParams, ChannelAffine, Conv, DType, Dense, DenseWeights,
    F32s, I32s, Layer, Pool, RawQuant, Requant, Shape, TensorDesc, Unary,
};
use tch::{nn, Kind};

use super::fold::{add_fold, bn_fold, conv_affine, raw_requant, Skip};
use crate::error::{Error, Result};
use crate::nn::net::{Block, Net, QConv, Stage};
use crate::nn::ActQuant;

/// A layer of the model file, owning its parameter bytes (a [`Layer`] borrows them).
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

/// The model file's tensors and layers, built by walking a network.
pub(super) struct Graph {
    /// Tensor descriptions, by id.
    pub(super) tensors: Vec<TensorDesc>,
    layers: Vec<Owned>,
}

fn u16_id(n: usize) -> Result<u16> {
    u16::try_from(n).map_err(|_| Error::Export("too many tensors".into()))
}

fn f64s(t: &tch::Tensor) -> Vec<f64> {
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
    bn_fold(&gamma, &beta, &mean, &var)
}

/// The dtype of an activation node's output.
pub(super) fn dtype(q: &ActQuant) -> DType {
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

impl Graph {
    /// The graph of `net` reading its input node at `image_size`: the ids of the input and the
    /// logits tensors, and the graph.
    pub(super) fn of(net: &Net, image_size: u32) -> Result<(u16, u16, Graph)> {
        let mut g = Graph {
            tensors: Vec::new(),
            layers: Vec::new(),
        };
        let relu = net.relu();
        let x0 = g.tensor(Shape::new(3, image_size, image_size), dtype(&net.input))?;
        let mut x = x0;
        for s in &net.stages {
            x = match s {
                Stage::Conv { conv, q } => g.conv(x, conv, Some((q, relu)))?,
                Stage::MaxPool { k, s, p } => g.max_pool(x, *k, *s, *p)?,
                Stage::Block(b) => g.block(x, b, relu)?,
            };
        }
        let logits = g.head(net, x)?;
        Ok((x0, logits, g))
    }

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
        let raw = raw_requant(s_in, wb, s_raw_f, zp_raw)?;
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
                let f = conv_affine(&a, &b, s_raw_f as f64, s_out, q.bits())?;
                let relu = relu && q.allows_relu();
                let affine = (f.shift, i32_bytes(&f.mult), i32_bytes(&f.bias), relu);
                (Some(affine), od)
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

    /// A max pool of window `k`, stride `s`, padding `p`.
    fn max_pool(&mut self, x: u16, k: i64, s: i64, p: i64) -> Result<u16> {
        let d = self.tensors[x as usize];
        let pool = Pool {
            input: x,
            output: 0,
            kernel: [k as u16; 2],
            stride: [s as u16; 2],
            padding: [p as u16; 2],
        };
        let sh = pool
            .output_shape(d.shape)
            .ok_or_else(|| Error::Export("pool window does not fit".into()))?;
        let output = self.tensor(sh, d.dtype)?;
        self.layers.push(Owned::MaxPool(Pool { output, ..pool }));
        Ok(output)
    }

    /// A residual block: two convs (the second stopping at its `raw` codes), the downsample
    /// conv if any, and the add that folds both BatchNorms into the output node.
    fn block(&mut self, x: u16, b: &Block, relu: bool) -> Result<u16> {
        let h = self.conv(x, &b.conv1, Some((&b.q1, relu)))?;
        let r2 = self.conv(h, &b.conv2, None)?;
        let out_dtype = dtype(&b.out);
        let (s_out, _, _) = qp(out_dtype);
        let (a2, b2) = bn_affine(&b.conv2.bn);
        let (s_r2, _, _) = qp(self.tensors[r2 as usize].dtype);
        let (skip, down) = match &b.down {
            Some(d) => {
                let rd = self.conv(x, d, None)?;
                let (s_rd, _, _) = qp(self.tensors[rd as usize].dtype);
                (rd, Some((bn_affine(&d.bn), s_rd)))
            }
            None => (x, None),
        };
        let skip_fold = match &down {
            Some(((ad, bd), s_rd)) => Skip::Down {
                a: ad,
                b: bd,
                s: *s_rd,
            },
            // Add inputs are centred codes (`q - zp`, or `2q - 1` for a sign tensor), so the
            // identity's real value is `s_x` per centred code.
            None => Skip::Identity {
                s: qp(self.tensors[x as usize].dtype).0,
            },
        };
        let f = add_fold(&a2, &b2, s_r2, skip_fold, s_out, b.out.bits())?;
        let shape = self.tensors[r2 as usize].shape;
        let output = self.tensor(shape, out_dtype)?;
        self.layers.push(Owned::Add {
            a: r2,
            b: skip,
            output,
            shift: f.shift,
            ma: i32_bytes(&f.mult_a),
            mb: i32_bytes(&f.mult_b),
            bias: i32_bytes(&f.bias),
            relu: relu && b.out.allows_relu(),
        });
        Ok(output)
    }

    /// The head: flatten (VGG) or global average pool, then the float dense layer.
    fn head(&mut self, net: &Net, x: u16) -> Result<u16> {
        let d = self.tensors[x as usize];
        let feat = if net.flatten {
            let n = d.shape.c * d.shape.h * d.shape.w;
            let out = self.tensor(Shape::new(n, 1, 1), d.dtype)?;
            self.layers.push(Owned::Flatten(Unary {
                input: x,
                output: out,
            }));
            out
        } else {
            let out = self.tensor(Shape::new(d.shape.c, 1, 1), DType::F32)?;
            self.layers.push(Owned::Gap(Unary {
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
        let logits = self.tensor(Shape::new(net.cfg.num_classes as u32, 1, 1), DType::F32)?;
        self.layers.push(Owned::Dense {
            input: feat,
            output: logits,
            w: f32_bytes(&w),
            b: f32_bytes(&b),
        });
        Ok(logits)
    }

    /// The layers, borrowing their parameters, for [`slb_format::encode`].
    pub(super) fn layers(&self) -> Vec<Layer<'_>> {
        self.layers.iter().map(Owned::layer).collect()
    }
}

impl Owned {
    fn layer(&self) -> Layer<'_> {
        match self {
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
        }
    }
}
