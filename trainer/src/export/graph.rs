//! The graph walk of export: a network's stages become the model file's tensors and layers
//! ([`Graph`], on a [`ModelBuilder`]), each conv with its packed weight codes and, through
//! [`super::fold`], its fixed-point requantization.

use slb_format::{
    f32_bytes, i32_bytes, pack_codes, DType, ModelBuilder, OwnedAdd, OwnedAddParams, OwnedAffine,
    OwnedConv, OwnedDense, OwnedDenseWeights, OwnedLayer, OwnedRequant, Pool, Shape, Unary,
};
use tch::{nn, Kind};

use super::fold::{add_fold, bn_fold, conv_affine, raw_requant, Skip};
use crate::error::{Error, Result};
use crate::nn::net::{Block, Net, QConv, Stage};
use crate::nn::ActQuant;

/// The model under construction while the walk appends tensors and layers to it.
pub(super) struct Graph<'m> {
    model: &'m mut ModelBuilder,
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

impl<'m> Graph<'m> {
    /// Appends the graph of `net` reading its input node at `image_size` to `model` (which
    /// holds the input specification) and points the input and the output at their tensors.
    pub(super) fn walk(net: &Net, image_size: u32, model: &'m mut ModelBuilder) -> Result<()> {
        let mut g = Graph { model };
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
        g.model.input.tensor = x0;
        g.model.output = logits;
        Ok(())
    }

    fn tensor(&mut self, shape: Shape, dtype: DType) -> Result<u16> {
        Ok(self.model.tensor(shape, dtype)?)
    }

    fn desc(&self, id: u16) -> slb_format::TensorDesc {
        self.model.tensors[id as usize]
    }

    /// Conv + stage 1 into `raw` codes; with `next`, stage 2 (BN, ReLU, next node) too.
    fn conv(&mut self, input: u16, c: &QConv, next: Option<(&ActQuant, bool)>) -> Result<u16> {
        let in_desc = self.desc(input);
        let (s_in, _, _) = qp(in_desc.dtype);
        let cv = &c.conv;
        let wb = cv.bits;
        let (s_raw_f, zp_raw) = c.raw.qparams();
        let raw = raw_requant(s_in, wb, s_raw_f, zp_raw)?;
        let (out, cin, groups) = (
            cv.out_channels as u32,
            cv.in_channels as u32,
            cv.groups as u32,
        );
        let (k, stride, pad) = (cv.kernel as u16, cv.stride as u16, cv.padding as u16);
        let od = |size: u32| (size + 2 * pad as u32 - k as u32) / stride as u32 + 1;
        let shape = Shape::new(out, od(in_desc.shape.h), od(in_desc.shape.w));
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
        let packed = pack_codes(&codes, out, [k, k], cin / groups, wb)?;
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
                let affine = OwnedAffine {
                    shift: f.shift,
                    mult: i32_bytes(&f.mult),
                    bias: i32_bytes(&f.bias),
                    relu,
                };
                (Some(affine), od)
            }
        };
        let output = self.tensor(shape, out_dtype)?;
        self.model.layer(OwnedLayer::Conv(OwnedConv {
            input,
            output,
            out_channels: out,
            in_channels: cin,
            kernel: [k; 2],
            stride: [stride; 2],
            padding: [pad; 2],
            groups,
            weight_bits: wb,
            codes: packed,
            requant: OwnedRequant { raw, affine },
        }));
        Ok(output)
    }

    /// A max pool of window `k`, stride `s`, padding `p`.
    fn max_pool(&mut self, x: u16, k: i64, s: i64, p: i64) -> Result<u16> {
        let d = self.desc(x);
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
        self.model
            .layer(OwnedLayer::MaxPool(Pool { output, ..pool }));
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
        let (s_r2, _, _) = qp(self.desc(r2).dtype);
        let (skip, down) = match &b.down {
            Some(d) => {
                let rd = self.conv(x, d, None)?;
                let (s_rd, _, _) = qp(self.desc(rd).dtype);
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
                s: qp(self.desc(x).dtype).0,
            },
        };
        let f = add_fold(&a2, &b2, s_r2, skip_fold, s_out, b.out.bits())?;
        let shape = self.desc(r2).shape;
        let output = self.tensor(shape, out_dtype)?;
        self.model.layer(OwnedLayer::Add(OwnedAdd {
            a: r2,
            b: skip,
            output,
            params: OwnedAddParams {
                shift: f.shift,
                mult_a: i32_bytes(&f.mult_a),
                mult_b: i32_bytes(&f.mult_b),
                bias: i32_bytes(&f.bias),
                relu: relu && b.out.allows_relu(),
            },
        }));
        Ok(output)
    }

    /// The head: flatten (VGG) or global average pool, then the float dense layer.
    fn head(&mut self, net: &Net, x: u16) -> Result<u16> {
        let d = self.desc(x);
        let feat = if net.flatten {
            let n = d.shape.c * d.shape.h * d.shape.w;
            let out = self.tensor(Shape::new(n, 1, 1), d.dtype)?;
            self.model.layer(OwnedLayer::Flatten(Unary {
                input: x,
                output: out,
            }));
            out
        } else {
            let out = self.tensor(Shape::new(d.shape.c, 1, 1), DType::F32)?;
            self.model.layer(OwnedLayer::GlobalAvgPool(Unary {
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
        self.model.layer(OwnedLayer::Dense(OwnedDense {
            input: feat,
            output: logits,
            weights: OwnedDenseWeights::F32(f32_bytes(&w)),
            bias: f32_bytes(&b),
        }));
        Ok(logits)
    }
}
