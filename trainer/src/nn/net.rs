//! The four networks (ResNet18 with the ImageNet or the CIFAR stem, ResNet20, VGG-small), built
//! directly with SLB convolutions and the activation nodes of docs/DESIGN.md.

use serde::{Deserialize, Serialize};
use tch::{nn, nn::ModuleT, Tensor};

use super::quant::{ActQuant, QuantMode, SlbConv};

/// Network architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// ResNet18 with the ImageNet stem (7x7/2 conv + 3x3/2 max pool), Golden Stick's network.
    Resnet18Imagenet,
    /// ResNet18 with a CIFAR stem (3x3/1 conv, no max pool).
    Resnet18Cifar,
    /// ResNet20 (He et al.'s CIFAR network; 1x1 conv downsample shortcuts).
    Resnet20,
    /// VGG-small: (2x128C3)-MP2-(2x256C3)-MP2-(2x512C3)-MP2-FC.
    VggSmall,
}

impl Arch {
    /// The base width of the published network (64, 64, 16, 128).
    pub fn default_width(self) -> i64 {
        match self {
            Arch::Resnet18Imagenet | Arch::Resnet18Cifar => 64,
            Arch::Resnet20 => 16,
            Arch::VggSmall => 128,
        }
    }
}

/// Architecture and its sizes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NetConfig {
    /// Architecture.
    pub arch: Arch,
    /// Classes of the final dense layer.
    pub num_classes: i64,
    /// Base width (first stage's channels); the published network's with [`Arch::default_width`].
    pub width: i64,
    /// Input image side (pixels), needed by VGG-small's flattening dense layer.
    pub image_size: i64,
}

/// A quantized conv unit: SLB conv, 8-bit raw-output node, BatchNorm (its output is float; what
/// follows decides ReLU and the next node).
#[derive(Debug)]
pub struct QConv {
    /// The SLB convolution.
    pub conv: SlbConv,
    /// SLB's output node on the raw conv output (8 bits).
    pub raw: ActQuant,
    /// BatchNorm after the raw node.
    pub bn: nn::BatchNorm,
}

/// One forward pass's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ctx {
    /// BatchNorm uses (and updates) batch statistics.
    pub train: bool,
    /// Temperature.
    pub t: f64,
    /// Hard (argmax) weights.
    pub hard: bool,
    /// Activation nodes.
    pub q: QuantMode,
    /// Convolutions in bfloat16 (CUDA mixed precision).
    pub amp: bool,
}

impl QConv {
    fn new(p: &nn::Path, cin: i64, cout: i64, k: i64, stride: i64, pad: i64, bits: u8) -> QConv {
        QConv {
            conv: SlbConv::new(p / "conv", cin, cout, k, stride, pad, 1, bits),
            raw: ActQuant::minmax(&(p / "raw")),
            bn: nn::batch_norm2d(p / "bn", cout, Default::default()),
        }
    }

    /// The conv's weight for `ctx` (relaxed or hard; bf16 under mixed precision). A network
    /// computes all of its weights at once instead ([`Net::conv_weights`]).
    pub fn weight(&self, ctx: &Ctx) -> Tensor {
        let w = self.conv.weight(ctx.t, ctx.hard);
        if ctx.amp {
            w.to_kind(tch::Kind::BFloat16)
        } else {
            w
        }
    }

    /// Raw conv output after its node (before BatchNorm).
    pub fn raw_forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        self.raw_forward_with(x, &self.weight(ctx), ctx)
    }

    /// [`QConv::raw_forward`] with the weight `w` given (as [`QConv::weight`] makes it).
    pub fn raw_forward_with(&self, x: &Tensor, w: &Tensor, ctx: &Ctx) -> Tensor {
        // Under mixed precision the output stays bf16 from here on: the node, BatchNorm (f32
        // statistics and affine parameters on a bf16 input, as libtorch's autocast runs it),
        // ReLU and the residual adds all read and write half the bytes, and the next conv's
        // cast is a no-op. The head averages in f32 ([`Net::forward`]).
        let x = if ctx.amp {
            x.to_kind(tch::Kind::BFloat16)
        } else {
            x.shallow_clone()
        };
        self.raw.forward(&self.conv.conv(&x, w), false, ctx.q)
    }

    /// BatchNorm of the raw node's output.
    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        self.forward_with(x, &self.weight(ctx), ctx)
    }

    /// [`QConv::forward`] with the weight `w` given.
    pub fn forward_with(&self, x: &Tensor, w: &Tensor, ctx: &Ctx) -> Tensor {
        self.bn
            .forward_t(&self.raw_forward_with(x, w, ctx), ctx.train)
    }
}

/// A basic residual block: conv1-BN-ReLU-node, conv2-BN, plus the shortcut (identity on the
/// quantized input, or a 1x1 conv + BN), ReLU, output node.
#[derive(Debug)]
pub struct Block {
    /// First conv.
    pub conv1: QConv,
    /// Node after BN1 + ReLU (the tensor conv2 reads).
    pub q1: ActQuant,
    /// Second conv.
    pub conv2: QConv,
    /// Downsample shortcut, when the shape changes.
    pub down: Option<QConv>,
    /// Node on the block output.
    pub out: ActQuant,
}

/// One stage of a network, in execution order.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // a network holds a few dozen stages; boxing buys nothing
pub enum Stage {
    /// Conv unit followed by ReLU and an activation node.
    Conv {
        /// The conv unit.
        conv: QConv,
        /// Its output node.
        q: ActQuant,
    },
    /// Max pooling on the (quantized) tensor.
    MaxPool {
        /// Window.
        k: i64,
        /// Stride.
        s: i64,
        /// Padding.
        p: i64,
    },
    /// Residual block.
    Block(Box<Block>),
}

/// An SLB network.
#[derive(Debug)]
pub struct Net {
    /// Its configuration.
    pub cfg: NetConfig,
    /// Weight bits.
    pub weight_bits: u8,
    /// Activation bits of the nodes between convs.
    pub act_bits: u8,
    /// The image input node (8 bits, on the normalised image).
    pub input: ActQuant,
    /// The stages.
    pub stages: Vec<Stage>,
    /// Flatten (VGG-small) instead of global average pooling before the dense layer.
    pub flatten: bool,
    /// The float dense classifier.
    pub dense: nn::Linear,
    /// The temperature the relaxed weights use, as a device scalar (f32), and the value it
    /// holds. A replayed CUDA graph reads the scalar, so one capture serves every epoch of
    /// the temperature schedule; see [`Net::set_temperature`].
    temperature: (Tensor, std::cell::Cell<f64>),
}

impl Net {
    /// Builds the network under `p` with SLB convs of `weight_bits` and activation nodes of
    /// `act_bits` (1: sign without ReLU, 2/4: learned clip, 8: min/max).
    pub fn new(p: &nn::Path, cfg: NetConfig, weight_bits: u8, act_bits: u8) -> Net {
        let w = cfg.width;
        let wb = weight_bits;
        let mut stages = Vec::new();
        let mut n = 0usize;
        let mut next = |prefix: &str| {
            n += 1;
            format!("{prefix}{n}")
        };
        let conv_stage = |p: &nn::Path, name: String, cin, cout, k, s, pad| {
            let sp = p / name.as_str();
            Stage::Conv {
                conv: QConv::new(&sp, cin, cout, k, s, pad, wb),
                q: ActQuant::new(&(&sp / "act"), act_bits),
            }
        };
        let block = |p: &nn::Path, name: String, cin: i64, cout: i64, stride: i64| {
            let bp = p / name.as_str();
            Stage::Block(Box::new(Block {
                conv1: QConv::new(&(&bp / "c1"), cin, cout, 3, stride, 1, wb),
                q1: ActQuant::new(&(&bp / "act1"), act_bits),
                conv2: QConv::new(&(&bp / "c2"), cout, cout, 3, 1, 1, wb),
                down: (stride != 1 || cin != cout)
                    .then(|| QConv::new(&(&bp / "down"), cin, cout, 1, stride, 0, wb)),
                out: ActQuant::new(&(&bp / "act"), act_bits),
            }))
        };
        let feat;
        let mut flatten = false;
        match cfg.arch {
            Arch::Resnet18Imagenet | Arch::Resnet18Cifar => {
                if cfg.arch == Arch::Resnet18Imagenet {
                    stages.push(conv_stage(p, "stem".into(), 3, w, 7, 2, 3));
                    stages.push(Stage::MaxPool { k: 3, s: 2, p: 1 });
                } else {
                    stages.push(conv_stage(p, "stem".into(), 3, w, 3, 1, 1));
                }
                let mut cin = w;
                for (i, mult) in [1, 2, 4, 8].into_iter().enumerate() {
                    for j in 0..2 {
                        let stride = if i > 0 && j == 0 { 2 } else { 1 };
                        stages.push(block(p, next("block"), cin, w * mult, stride));
                        cin = w * mult;
                    }
                }
                feat = cin;
            }
            Arch::Resnet20 => {
                stages.push(conv_stage(p, "stem".into(), 3, w, 3, 1, 1));
                let mut cin = w;
                for (i, mult) in [1, 2, 4].into_iter().enumerate() {
                    for j in 0..3 {
                        let stride = if i > 0 && j == 0 { 2 } else { 1 };
                        stages.push(block(p, next("block"), cin, w * mult, stride));
                        cin = w * mult;
                    }
                }
                feat = cin;
            }
            Arch::VggSmall => {
                let mut cin = 3;
                for mult in [1, 2, 4] {
                    for _ in 0..2 {
                        stages.push(conv_stage(p, next("conv"), cin, w * mult, 3, 1, 1));
                        cin = w * mult;
                    }
                    stages.push(Stage::MaxPool { k: 2, s: 2, p: 0 });
                }
                let side = cfg.image_size / 8;
                feat = cin * side * side;
                flatten = true;
            }
        }
        let dense = nn::linear(
            p / "dense",
            feat,
            cfg.num_classes,
            nn::LinearConfig {
                ws_init: nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.01,
                },
                bs_init: Some(nn::Init::Const(0.0)),
                bias: true,
            },
        );
        Net {
            cfg,
            weight_bits,
            act_bits,
            input: ActQuant::minmax(&(p / "input")),
            stages,
            flatten,
            dense,
            temperature: (
                Tensor::ones([], (tch::Kind::Float, p.device())),
                std::cell::Cell::new(1.0),
            ),
        }
    }

    /// Makes the device temperature `t` (a no-op when it already is). [`Net::conv_weights`]
    /// calls it with the context's temperature; a caller replaying a captured forward pass,
    /// which runs no host code, calls it before each replay.
    pub fn set_temperature(&self, t: f64) {
        if self.temperature.1.get() != t {
            let mut d = self.temperature.0.shallow_clone();
            let _ = d.fill_(t as f32 as f64);
            self.temperature.1.set(t);
        }
    }

    /// ReLU before the activation nodes (not with sign activations).
    pub fn relu(&self) -> bool {
        self.act_bits != 1
    }

    /// The weights of every conv ([`Net::convs`] order) for `ctx`, as [`QConv::weight`] makes
    /// them but computed in one expression over all the logits: one concatenation, one
    /// relaxed (or argmax) weight and one cast for the network instead of a few kernels per
    /// conv, forward and backward. The results are views into that one tensor.
    pub fn conv_weights(&self, ctx: &Ctx) -> Vec<Tensor> {
        let convs = self.convs();
        if !ctx.amp && self.weight_bits == 0 {
            return convs.iter().map(|c| c.weight(ctx)).collect();
        }
        let n = if self.weight_bits == 0 {
            1
        } else {
            1i64 << self.weight_bits
        };
        let parts: Vec<Tensor> = convs
            .iter()
            .map(|c| c.conv.logits.reshape([-1, n]))
            .collect();
        let all = Tensor::cat(&parts, 0);
        let w = if self.weight_bits == 0 {
            all.reshape([-1])
        } else if ctx.hard {
            super::quant::hard_weight(&all, self.weight_bits)
        } else {
            self.set_temperature(ctx.t);
            super::quant::relaxed_weight_scaled(&all, &self.temperature.0, &convs[0].conv.wl)
        };
        let w = if ctx.amp {
            w.to_kind(tch::Kind::BFloat16)
        } else {
            w
        };
        let sizes: Vec<i64> = parts.iter().map(|p| p.size()[0]).collect();
        w.split_with_sizes(&sizes, 0)
            .into_iter()
            .zip(&convs)
            .map(|(w, c)| {
                // [out, in/groups, kh, kw] (the logits have a last axis of 2^bits).
                w.view(&c.conv.logits.size()[..4])
            })
            .collect()
    }

    /// The quantized feature map before the head.
    pub fn features(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let relu = self.relu();
        let weights = self.conv_weights(ctx);
        let mut w = weights.iter();
        // `conv_weights` has one weight per conv in `convs()` order, the order used here.
        let mut next = || w.next().expect("one weight per conv");
        let mut x = self.input.forward(x, false, ctx.q);
        for s in &self.stages {
            x = match s {
                Stage::Conv { conv, q } => {
                    q.forward(&conv.forward_with(&x, next(), ctx), relu, ctx.q)
                }
                Stage::MaxPool { k, s, p } => {
                    x.max_pool2d([*k, *k], [*s, *s], [*p, *p], [1, 1], false)
                }
                Stage::Block(b) => {
                    let h =
                        b.q1.forward(&b.conv1.forward_with(&x, next(), ctx), relu, ctx.q);
                    let main = b.conv2.forward_with(&h, next(), ctx);
                    let short = match &b.down {
                        Some(d) => d.forward_with(&x, next(), ctx),
                        None => x.shallow_clone(),
                    };
                    b.out.forward(&(main + short), relu, ctx.q)
                }
            };
        }
        x
    }

    /// Logits for a normalised float NCHW batch.
    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let f = self.features(x, ctx);
        let f = if self.flatten {
            f.flatten(1, -1)
        } else {
            f.mean_dim([2i64, 3].as_slice(), false, tch::Kind::Float)
        };
        // The dense layer is f32 (its input is bf16 under mixed precision).
        f.to_kind(tch::Kind::Float).apply(&self.dense)
    }

    /// Every SLB conv, in execution order (block order conv1, conv2, downsample).
    pub fn convs(&self) -> Vec<&QConv> {
        let mut v = Vec::new();
        for s in &self.stages {
            match s {
                Stage::Conv { conv, .. } => v.push(conv),
                Stage::Block(b) => {
                    v.push(&b.conv1);
                    v.push(&b.conv2);
                    if let Some(d) = &b.down {
                        v.push(d);
                    }
                }
                Stage::MaxPool { .. } => {}
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// A training context: soft weights at `t`, nodes observing and quantizing.
    fn train_ctx(t: f64, hard: bool, amp: bool) -> Ctx {
        Ctx {
            train: true,
            t,
            hard,
            q: QuantMode {
                observe: true,
                quantize: true,
                ema: false,
                fused: false,
            },
            amp,
        }
    }

    fn count(arch: Arch, width: i64, size: i64) -> (usize, Vec<i64>) {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = NetConfig {
            arch,
            num_classes: 10,
            width,
            image_size: size,
        };
        let net = Net::new(&vs.root(), cfg, 1, 8);
        let x = Tensor::randn([2, 3, size, size], (Kind::Float, Device::Cpu));
        (
            net.convs().len(),
            net.forward(&x, &train_ctx(1.0, false, false)).size(),
        )
    }

    #[test]
    fn shapes_and_conv_counts() {
        // ResNet18: stem + 16 block convs + 3 downsamples = 20 SLB convs.
        assert_eq!(count(Arch::Resnet18Cifar, 8, 32), (20, vec![2, 10]));
        assert_eq!(count(Arch::Resnet18Imagenet, 8, 64), (20, vec![2, 10]));
        // ResNet20: stem + 18 + 2 downsamples.
        assert_eq!(count(Arch::Resnet20, 4, 32), (21, vec![2, 10]));
        assert_eq!(count(Arch::VggSmall, 8, 32), (6, vec![2, 10]));
    }

    /// Mixed precision keeps activations bf16 from the first conv to the head: the raw node,
    /// BatchNorm, ReLU, the activation nodes and the residual adds all run on bf16 (CPU
    /// kernels here; the same ops on CUDA), the logits are f32 and every variable gets a
    /// finite gradient.
    #[test]
    fn mixed_precision_is_bf16_end_to_end() {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = NetConfig {
            arch: Arch::Resnet18Cifar,
            num_classes: 10,
            width: 8,
            image_size: 16,
        };
        let net = Net::new(&vs.root(), cfg, 1, 8);
        let ctx = |amp| train_ctx(1.0, false, amp);
        let x = Tensor::randn([4, 3, 16, 16], (Kind::Float, Device::Cpu));
        let first = &net.convs()[0];
        let raw = first.raw_forward(&net.input.forward(&x, false, ctx(true).q), &ctx(true));
        assert_eq!(raw.kind(), Kind::BFloat16);
        assert_eq!(first.forward(&x, &ctx(true)).kind(), Kind::BFloat16);
        assert_eq!(net.features(&x, &ctx(true)).kind(), Kind::BFloat16);
        let logits = net.forward(&x, &ctx(true));
        assert_eq!(logits.kind(), Kind::Float);
        let reference = net.forward(&x, &ctx(false));
        // Same network, bf16 vs f32 activations: close, not equal.
        let diff = (&logits - &reference).abs().max().double_value(&[]);
        let scale = reference.abs().max().double_value(&[]);
        assert!(
            diff.is_finite() && diff > 0.0 && diff < 0.25 * scale.max(1e-3),
            "{diff} vs {scale}"
        );
        logits.square().sum(Kind::Float).backward();
        for (name, v) in vs.trainable_variables().iter().enumerate() {
            let g = v.grad();
            assert!(g.defined(), "variable {name} has no gradient");
            assert!(g.isfinite().all().int64_value(&[]) == 1, "variable {name}");
        }
    }

    /// The batched weights equal each conv's own, bit for bit: relaxed, hard, f32 and bf16,
    /// SLB and float convs.
    #[test]
    fn batched_conv_weights_equal_per_conv_weights() {
        for bits in [0u8, 1, 2, 4] {
            let vs = nn::VarStore::new(Device::Cpu);
            let cfg = NetConfig {
                arch: Arch::Resnet20,
                num_classes: 10,
                width: 4,
                image_size: 16,
            };
            let net = Net::new(&vs.root(), cfg, bits, 8);
            for (hard, amp) in [(false, false), (true, false), (false, true), (true, true)] {
                let ctx = train_ctx(2.5, hard, amp);
                let batched = net.conv_weights(&ctx);
                let convs = net.convs();
                assert_eq!(batched.len(), convs.len());
                for (w, c) in batched.iter().zip(&convs) {
                    let own = c.weight(&ctx);
                    assert_eq!(w.size(), own.size());
                    assert_eq!(w.kind(), own.kind());
                    assert!(w.equal(&own), "bits {bits} hard {hard} amp {amp}");
                }
            }
        }
    }
}
