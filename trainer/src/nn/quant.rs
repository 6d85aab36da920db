//! SLB weights and activation fake quantization.

use tch::{nn, Kind, Tensor};

/// SLB's discrete weight values for `bits` (1, 2 or 4): `(2k - (2^b - 1)) / (2^b - 1)`.
pub fn w_list(bits: u8) -> Vec<f32> {
    let n = 1i32 << bits;
    let d = (n - 1) as f32;
    (0..n).map(|k| (2 * k - (n - 1)) as f32 / d).collect()
}

/// The relaxed weight `sum_last_axis(softmax(A * T) * w_list)` of logits `A`
/// (`[.., 2^bits]`): scale, softmax, product and sum, one kernel each.
pub fn relaxed_weight(logits: &Tensor, t: f64, bits: u8) -> Tensor {
    let wl = Tensor::from_slice(&w_list(bits))
        .to_device(logits.device())
        .to_kind(logits.kind());
    relaxed_weight_with(logits, t, &wl)
}

/// [`relaxed_weight`] with the value table `wl` already on the logits' device (no host copy
/// inside a training step).
pub fn relaxed_weight_with(logits: &Tensor, t: f64, wl: &Tensor) -> Tensor {
    expected_value((logits * t).softmax(-1, logits.kind()), wl)
}

/// `sum_last_axis(p * wl)`: an elementwise product and a reduction over the short last axis
/// (a matrix-vector product there ran as a slow skinny cuBLAS gemv: 0.3 ms per step on the
/// H100 for ResNet-18).
fn expected_value(p: Tensor, wl: &Tensor) -> Tensor {
    let kind = p.kind();
    (p * wl).sum_dim_intlist(-1, false, kind)
}

/// [`relaxed_weight_with`] with the temperature a (0-dimensional) tensor on the logits' device,
/// so that a recorded CUDA graph reads its current value. Equal bit for bit to the scalar form
/// (libtorch multiplies an f32 tensor by a scalar in f32).
pub fn relaxed_weight_scaled(logits: &Tensor, t: &Tensor, wl: &Tensor) -> Tensor {
    expected_value((logits * t).softmax(-1, logits.kind()), wl)
}

/// The argmax codes `k` of logits `A` (`[.., 2^bits]` -> `[..]`, int64).
pub fn argmax_codes(logits: &Tensor) -> Tensor {
    logits.argmax(-1, false)
}

/// The hard weight `w_list[argmax(A)]` (no gradient reaches the logits).
pub fn hard_weight(logits: &Tensor, bits: u8) -> Tensor {
    let d = ((1i64 << bits) - 1) as f64;
    argmax_codes(logits).to_kind(logits.kind()) * (2.0 / d) - 1.0
}

/// A convolution whose weights are SLB logits.
#[derive(Debug)]
pub struct SlbConv {
    /// Logits `[out, in/groups, kh, kw, 2^bits]`.
    pub logits: Tensor,
    /// Weight bits (1, 2, 4).
    pub bits: u8,
    /// Output channels.
    pub out_channels: i64,
    /// Input channels (all groups).
    pub in_channels: i64,
    /// Kernel size (square).
    pub kernel: i64,
    /// Stride.
    pub stride: i64,
    /// Padding.
    pub padding: i64,
    /// Groups.
    pub groups: i64,
    /// `w_list(bits)` on the logits' device.
    pub wl: Tensor,
}

impl SlbConv {
    /// A new SLB conv under `p` (variable `logits`), He-normal fan_out initialised
    /// (`std = sqrt(2 / (out * kh * kw * 2^bits))`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        p: nn::Path,
        in_channels: i64,
        out_channels: i64,
        kernel: i64,
        stride: i64,
        padding: i64,
        groups: i64,
        bits: u8,
    ) -> SlbConv {
        // bits == 0: a plain float conv (the float baseline), weight `[out, in/groups, kh, kw]`.
        let n = if bits == 0 { 1 } else { 1i64 << bits };
        let fan_out = (out_channels * kernel * kernel * n) as f64;
        let std = (2.0 / fan_out).sqrt();
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: std,
        };
        let shape = [out_channels, in_channels / groups, kernel, kernel, n];
        let logits = if bits == 0 {
            p.var("weight", &shape[..4], init)
        } else {
            p.var("logits", &shape, init)
        };
        let wl = if bits == 0 {
            Tensor::zeros([0], (Kind::Float, p.device()))
        } else {
            Tensor::from_slice(&w_list(bits)).to_device(p.device())
        };
        SlbConv {
            logits,
            wl,
            bits,
            out_channels,
            in_channels,
            kernel,
            stride,
            padding,
            groups,
        }
    }

    /// The weight for a temperature: relaxed unless `hard`.
    pub fn weight(&self, t: f64, hard: bool) -> Tensor {
        if self.bits == 0 {
            self.logits.shallow_clone()
        } else if hard {
            hard_weight(&self.logits, self.bits)
        } else {
            relaxed_weight_with(&self.logits, t, &self.wl)
        }
    }

    /// The convolution with a given weight.
    pub fn conv(&self, x: &Tensor, w: &Tensor) -> Tensor {
        x.conv2d(
            w,
            None::<Tensor>,
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            self.groups,
        )
    }
}

/// How an activation node quantizes.
#[derive(Debug)]
pub enum ActKind {
    /// Golden Stick's node: 8-bit asymmetric per tensor, range from the batch min/max (or an EMA
    /// of it), stored in `min`/`max` buffers (shape `[1]`).
    MinMax {
        /// Running minimum (buffer).
        min: Tensor,
        /// Running maximum (buffer).
        max: Tensor,
        /// Working scale of libtorch's fused observer (`[1]`, f32; not checkpointed: always
        /// recomputed from `min`/`max`).
        scale: Tensor,
        /// Working zero point of the fused observer (`[1]`, i32).
        zp: Tensor,
        /// Constant 1 (`[1]`, i64): libtorch's "fake quant enabled" flag, a tensor so that
        /// nothing is read back to the host.
        on: Tensor,
    },
    /// 1 bit: `scale * sign(x)` (sign(0) = +1), gradient straight through where |x| <= 1.
    Sign {
        /// Learned positive scale (`[1]`).
        scale: Tensor,
    },
    /// 2 or 4 bits after ReLU: clip at a learned `alpha`, `2^b - 1` uniform steps, straight
    /// through inside the range (PACT).
    Clip {
        /// Learned clip (`[1]`).
        alpha: Tensor,
        /// Bits (2 or 4).
        bits: u8,
    },
}

/// What a forward pass does with the activation nodes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuantMode {
    /// Update the min/max ranges from this batch.
    pub observe: bool,
    /// Fake-quantize (otherwise pass through; learned nodes always quantize).
    pub quantize: bool,
    /// EMA range update (decay 0.999) instead of the batch range.
    pub ema: bool,
    /// Use the fused CUDA kernels for the 8-bit nodes on CUDA tensors (`nn::fused`; the
    /// libtorch ops otherwise, with the same results).
    pub fused: bool,
}

/// An activation quantization node.
#[derive(Debug)]
pub struct ActQuant {
    /// Its kind and state.
    pub kind: ActKind,
}

/// `x` with its dimensions permuted into memory order (a view, no copy): contiguous for a
/// channels-last activation, so that a reduction over all elements reads memory as it lies
/// instead of copying to NCHW first (what libtorch's all-element reductions do with a
/// non-contiguous input).
pub fn memory_order(x: &Tensor) -> Tensor {
    if x.is_contiguous() {
        return x.shallow_clone();
    }
    let strides = x.stride();
    let mut dims: Vec<i64> = (0..strides.len() as i64).collect();
    dims.sort_by_key(|&d| std::cmp::Reverse(strides[d as usize]));
    x.permute(&dims)
}

/// The affine parameters `(scale, zero_point)` of a min/max range, as tensors (no host sync):
/// `scale = (max - min) / 255`, `zp = clamp(round(-min / scale), 0, 255)`.
pub fn minmax_qparams(min: &Tensor, max: &Tensor, bits: u8) -> (Tensor, Tensor) {
    let qmax = ((1i64 << bits) - 1) as f64;
    let (min, max) = (min.clamp_max(0.0), max.clamp_min(0.0));
    let scale = ((&max - &min) / qmax).clamp_min(f32::EPSILON as f64);
    let zp = (-min / &scale).round().clamp(0.0, qmax);
    (scale, zp)
}

/// Fake quantization exactly as SLB.md: nudged range `[-zp*s, (qmax - zp)*s]`,
/// `round((clamp(x) - nmin) / s) * s + nmin`, gradient straight through inside the range.
/// Uses libtorch's fused op with tensor qparams; the result has `x`'s dtype (f32, or bf16
/// under mixed precision, where the op computes in f32 and rounds the result once).
pub fn fake_quant(x: &Tensor, scale: &Tensor, zp: &Tensor, bits: u8) -> Tensor {
    let qmax = (1i64 << bits) - 1;
    x.fake_quantize_per_tensor_affine_tensor_qparams(
        &scale.to_kind(Kind::Float),
        &zp.to_kind(Kind::Int),
        0,
        qmax,
    )
}

impl ActQuant {
    /// An 8-bit min/max node with buffers `min`, `max` under `p` (initial range [-6, 6]).
    pub fn minmax(p: &nn::Path) -> ActQuant {
        let mut min = p.zeros_no_train("min", &[1]);
        let mut max = p.zeros_no_train("max", &[1]);
        tch::no_grad(|| {
            let _ = min.fill_(-6.0);
            let _ = max.fill_(6.0);
        });
        let dev = p.device();
        ActQuant {
            kind: ActKind::MinMax {
                min,
                max,
                scale: Tensor::full([1], 12.0 / 255.0, (Kind::Float, dev)),
                zp: Tensor::full([1], 128, (Kind::Int, dev)),
                on: Tensor::ones([1], (Kind::Int64, dev)),
            },
        }
    }

    /// A node of `bits` (1: sign, 2/4: learned clip, 8: min/max).
    pub fn new(p: &nn::Path, bits: u8) -> ActQuant {
        match bits {
            1 => ActQuant {
                kind: ActKind::Sign {
                    scale: p.var("scale", &[1], nn::Init::Const(1.0)),
                },
            },
            2 | 4 => ActQuant {
                kind: ActKind::Clip {
                    alpha: p.var("alpha", &[1], nn::Init::Const(3.0)),
                    bits,
                },
            },
            _ => ActQuant::minmax(p),
        }
    }

    /// Bits of the node's codes.
    pub fn bits(&self) -> u8 {
        match self.kind {
            ActKind::MinMax { .. } => 8,
            ActKind::Sign { .. } => 1,
            ActKind::Clip { bits, .. } => bits,
        }
    }

    /// Whether a ReLU may precede the node (not for a sign).
    pub fn allows_relu(&self) -> bool {
        !matches!(self.kind, ActKind::Sign { .. })
    }

    /// Applies the node (and the ReLU before it when `relu` and the node is not a sign).
    pub fn forward(&self, x: &Tensor, relu: bool, mode: QuantMode) -> Tensor {
        match &self.kind {
            ActKind::MinMax {
                min,
                max,
                scale,
                zp,
                on,
            } => {
                // The fused kernels (one pass forward, one backward) on a CUDA tensor when the
                // run enabled them; `None` from them means the libtorch ops below.
                let fused = mode.fused && x.device().is_cuda();
                let relu_of = |x: &Tensor| if relu { x.relu() } else { x.shallow_clone() };
                if mode.observe {
                    // The batch range in one pass over `x` (any dtype, any strides), then
                    // libtorch's fused observer on that 2-element range: the min/max update
                    // (averaging constant 1, or the EMA) and the nudged qparams, on the device.
                    // The fused op on `x` itself would first copy a channels-last `x` to NCHW
                    // and accepts only f32; so would `aminmax` on `x` (measured on the H100:
                    // 37 copies, 4 ms of a 20 ms step), hence the memory-order view. The range
                    // of relu(x) is the range of x clamped at 0 (exactly), so the ReLU is not
                    // applied for it.
                    let (lo, hi) = tch::no_grad(|| memory_order(x).aminmax(None, false));
                    let mut range = Tensor::stack(&[lo, hi], 0).to_kind(Kind::Float);
                    if relu {
                        range = range.clamp_min(0.0);
                    }
                    let c = if mode.ema { 0.001 } else { 1.0 };
                    let _ = range.fused_moving_avg_obs_fake_quant(
                        on, on, min, max, scale, zp, c, 0, 255, 0, false, false,
                    );
                    if !mode.quantize {
                        return relu_of(x);
                    }
                    if fused {
                        if let Some(y) = super::fused::fake_quant(x, scale, zp, 255, relu) {
                            return y;
                        }
                    }
                    // The fused op's own fake quant (one pass, f32 or bf16), whose backward
                    // is the straight-through mask.
                    return relu_of(x)
                        .internal_fake_quantize_per_tensor_affine_cachemask_tensor_qparams(
                            scale, zp, on, 0, 255,
                        )
                        .0;
                }
                if !mode.quantize {
                    return relu_of(x);
                }
                let (s, zp) = minmax_qparams(min, max, 8);
                if fused {
                    let (s, zp) = (s.to_kind(Kind::Float), zp.to_kind(Kind::Int));
                    if let Some(y) = super::fused::fake_quant(x, &s, &zp, 255, relu) {
                        return y;
                    }
                }
                fake_quant(&relu_of(x), &s, &zp, 8)
            }
            ActKind::Sign { scale } => {
                let xc = x.clamp(-1.0, 1.0);
                let sign = x.ge(0.0).to_kind(xc.kind()) * 2.0 - 1.0;
                let ste = &xc + (sign - &xc).detach();
                ste * scale.abs()
            }
            ActKind::Clip { alpha, bits } => {
                let qmax = ((1i64 << bits) - 1) as f64;
                let y = x.relu() - (x - alpha).relu();
                let s = (alpha.abs() / qmax).clamp_min(1e-8);
                let q = (&y / &s).round() * &s;
                &y + (q - &y).detach()
            }
        }
    }

    /// The node's quantization parameters `(scale, zero_point)` as host numbers (export).
    /// For a sign node the scale is the learned magnitude and the zero point 0.
    pub fn qparams(&self) -> (f32, i32) {
        match &self.kind {
            ActKind::MinMax { min, max, .. } => {
                let (s, zp) = minmax_qparams(min, max, 8);
                (s.double_value(&[0]) as f32, zp.double_value(&[0]) as i32)
            }
            ActKind::Sign { scale } => (scale.abs().clamp_min(1e-8).double_value(&[0]) as f32, 0),
            ActKind::Clip { alpha, bits } => {
                let qmax = ((1i64 << bits) - 1) as f64;
                let s = (alpha.abs().double_value(&[0]) / qmax).max(1e-8);
                (s as f32, 0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.flatten(0, -1).to_kind(Kind::Float)).unwrap()
    }

    #[test]
    fn w_lists() {
        assert_eq!(w_list(1), vec![-1.0, 1.0]);
        let w2 = w_list(2);
        assert!((w2[1] + 1.0 / 3.0).abs() < 1e-7 && (w2[2] - 1.0 / 3.0).abs() < 1e-7);
        let w4 = w_list(4);
        assert_eq!(w4.len(), 16);
        assert!((w4[0] + 1.0).abs() < 1e-7 && (w4[8] - 1.0 / 15.0).abs() < 1e-7);
        assert!(w4.iter().all(|&w| w != 0.0));
    }

    #[test]
    fn relaxed_weight_by_hand() {
        // 1 bit, logits (0, ln 3): softmax = (1/4, 3/4), W = -1/4 + 3/4 = 0.5.
        let a = Tensor::from_slice(&[0.0f32, 3f32.ln()]).reshape([1, 1, 1, 1, 2]);
        assert!((vals(&relaxed_weight(&a, 1.0, 1))[0] - 0.5).abs() < 1e-6);
        // T = 2: softmax(0, 2 ln 3) = (1/10, 9/10), W = 0.8.
        assert!((vals(&relaxed_weight(&a, 2.0, 1))[0] - 0.8).abs() < 1e-6);
        // 2 bits, logits (0, 0, ln 2, 0): p = (1/5, 1/5, 2/5, 1/5);
        // W = -1/5 - 1/15 + 2/15 + 1/5 = 1/15.
        let a = Tensor::from_slice(&[0.0f32, 0.0, 2f32.ln(), 0.0]).reshape([1, 1, 1, 1, 4]);
        assert!((vals(&relaxed_weight(&a, 1.0, 2))[0] - 1.0 / 15.0).abs() < 1e-6);
        // 4 bits, uniform logits: W = mean of w_list = 0.
        let a = Tensor::zeros([2, 1, 1, 1, 16], (Kind::Float, tch::Device::Cpu));
        assert!(vals(&relaxed_weight(&a, 5.0, 4))
            .iter()
            .all(|w| w.abs() < 1e-6));
    }

    #[test]
    fn relaxed_tends_to_hard_and_hard_is_argmax() {
        tch::manual_seed(1);
        for bits in [1u8, 2, 4] {
            let a = Tensor::randn([4, 3, 3, 3, 1 << bits], (Kind::Float, tch::Device::Cpu));
            let hard = vals(&hard_weight(&a, bits));
            let codes = Vec::<i64>::try_from(argmax_codes(&a).flatten(0, -1)).unwrap();
            let wl = w_list(bits);
            for (h, k) in hard.iter().zip(&codes) {
                assert!((h - wl[*k as usize]).abs() < 1e-6);
            }
            let soft = vals(&relaxed_weight(&a, 1e4, bits));
            let close = soft
                .iter()
                .zip(&hard)
                .filter(|(s, h)| (*s - *h).abs() < 1e-3)
                .count();
            assert!(
                close >= hard.len() - 2,
                "bits {bits}: {close}/{}",
                hard.len()
            );
        }
    }

    #[test]
    fn conv_init_is_he_fan_out() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let c = SlbConv::new(vs.root(), 64, 64, 3, 1, 1, 1, 1);
        assert_eq!(c.logits.size(), vec![64, 64, 3, 3, 2]);
        let std = c.logits.std(true).double_value(&[]);
        let want = (2.0f64 / (64.0 * 9.0 * 2.0)).sqrt();
        assert!((std / want - 1.0).abs() < 0.05, "{std} vs {want}");
        let g = SlbConv::new(vs.root().sub("g"), 8, 16, 3, 1, 1, 4, 2);
        assert_eq!(g.logits.size(), vec![16, 2, 3, 3, 4]);
        let x = Tensor::ones([1, 8, 5, 5], (Kind::Float, tch::Device::Cpu));
        assert_eq!(g.conv(&x, &g.weight(1.0, true)).size(), vec![1, 16, 5, 5]);
    }

    /// SLB.md's formula, evaluated in f64.
    fn formula(x: f64, min: f64, max: f64) -> f64 {
        let (min, max) = (min.min(0.0), max.max(0.0));
        let s = (max - min) / 255.0;
        let zp = (-min / s).round().clamp(0.0, 255.0);
        let (nmin, nmax) = (-zp * s, (255.0 - zp) * s);
        ((x.clamp(nmin, nmax) - nmin) / s).round() * s + nmin
    }

    #[test]
    fn minmax_fake_quant_matches_formula_and_ste() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let q = ActQuant::minmax(&vs.root());
        let xs: Vec<f32> = (0..200).map(|i| -1.3 + i as f32 * 0.0173).collect();
        let x = Tensor::from_slice(&xs).set_requires_grad(true);
        let mode = QuantMode {
            observe: true,
            quantize: true,
            ema: false,
            fused: false,
        };
        let y = q.forward(&x, false, mode);
        let (mn, mx) = (-1.3f64, xs[199] as f64);
        for (xi, yi) in xs.iter().zip(vals(&y)) {
            let want = formula(*xi as f64, mn, mx);
            assert!((yi as f64 - want).abs() < 1e-5, "x {xi}: {yi} vs {want}");
        }
        // Gradient: straight through inside the nudged range (the whole batch here).
        y.sum(Kind::Float).backward();
        let g = vals(&x.grad());
        assert!(g.iter().all(|&g| g == 1.0));
        // Frozen range [-1.3, 1.5] in eval: values outside are clamped, gradient zero there.
        let x2 = Tensor::from_slice(&[-5.0f32, 0.3, 9.0]).set_requires_grad(true);
        let eval = QuantMode {
            observe: false,
            quantize: true,
            ema: false,
            fused: false,
        };
        let y2 = q.forward(&x2, false, eval);
        let v2 = vals(&y2);
        for (xi, yi) in [-5.0, 0.3, 9.0].iter().zip(&v2) {
            assert!((*yi as f64 - formula(*xi, mn, mx)).abs() < 1e-5);
        }
        y2.sum(Kind::Float).backward();
        assert_eq!(vals(&x2.grad()), vec![0.0, 1.0, 0.0]);
        // Range always includes 0; ReLU applied first.
        let y3 = q.forward(&Tensor::from_slice(&[0.5f32, 2.0]), true, mode);
        let (s, zp) = q.qparams();
        assert_eq!(zp, 0);
        assert!((s - 2.0 / 255.0).abs() < 1e-7);
        assert!((vals(&y3)[0] as f64 - formula(0.5, 0.0, 2.0)).abs() < 1e-6);
        // Pass-through before the quant delay; EMA update.
        let y4 = q.forward(
            &Tensor::from_slice(&[0.123f32]),
            false,
            QuantMode {
                observe: true,
                quantize: false,
                ema: true,
                fused: false,
            },
        );
        assert_eq!(vals(&y4), vec![0.123]);
        if let ActKind::MinMax { max, .. } = &q.kind {
            let want = 2.0 + (0.123 - 2.0) * 0.001;
            assert!((max.double_value(&[0]) - want).abs() < 1e-6);
        }
    }

    #[test]
    fn low_bit_nodes() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let sign = ActQuant::new(&vs.root().sub("s"), 1);
        let x = Tensor::from_slice(&[-0.5f32, 0.0, 0.2, 3.0]).set_requires_grad(true);
        let m = QuantMode {
            observe: true,
            quantize: true,
            ema: false,
            fused: false,
        };
        let y = sign.forward(&x, true, m);
        assert_eq!(vals(&y), vec![-1.0, 1.0, 1.0, 1.0]);
        y.sum(Kind::Float).backward();
        assert_eq!(vals(&x.grad()), vec![1.0, 1.0, 1.0, 0.0]);
        let clip = ActQuant::new(&vs.root().sub("c"), 2);
        let x = Tensor::from_slice(&[-1.0f32, 0.4, 0.6, 2.2, 7.0]).set_requires_grad(true);
        let y = clip.forward(&x, true, m);
        // alpha 3, step 1: codes 0, 0, 1, 2, 3.
        assert_eq!(vals(&y), vec![0.0, 0.0, 1.0, 2.0, 3.0]);
        y.sum(Kind::Float).backward();
        assert_eq!(vals(&x.grad()), vec![0.0, 1.0, 1.0, 1.0, 0.0]);
        if let ActKind::Clip { alpha, .. } = &clip.kind {
            assert_eq!(alpha.grad().double_value(&[0]), 1.0);
        }
        assert_eq!(clip.qparams(), (1.0, 0));
    }

    #[test]
    fn memory_order_views_channels_last_without_copying() {
        let x = Tensor::randn([2, 3, 4, 5], (Kind::Float, tch::Device::Cpu));
        let cl = x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
        assert!(!cl.is_contiguous());
        let v = memory_order(&cl);
        assert!(v.is_contiguous());
        assert_eq!(v.data_ptr(), cl.data_ptr());
        let (a, b) = (cl.aminmax(None, false), v.aminmax(None, false));
        assert!(a.0.equal(&b.0) && a.1.equal(&b.1));
        // A contiguous tensor is returned as it is.
        assert_eq!(memory_order(&x).size(), x.size());
    }
}
