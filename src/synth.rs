//! Deterministic synthetic model files: the CIFAR architectures of the SLB paper with random
//! packed weights, for benchmarks, runtime tests, the Cortex-M example and fuzz seeds.
//!
//! Every generator returns a complete, validated model file (built with
//! `slb_format::ModelBuilder`, which parses it back before returning). The same [`Quant`] (bit widths and seed) always gives the same bytes.
//!
//! The graph follows `docs/DESIGN.md`: the image becomes an 8-bit tensor through a per-channel
//! lookup table; a conv runs stage 1 (the raw 8-bit fake-quant) and stage 2 (BatchNorm, ReLU and
//! the next quantizer) into an activation tensor of `act_bits`; in a residual block the last conv
//! and the 1x1 downsample stop after stage 1 and the `Add` applies their BatchNorm, the ReLU and
//! the quantizer. Global average pooling yields `F32` features and a float dense layer the
//! logits. With 1-bit activations, tensors are signs and no ReLU is applied.
//!
//! Weights are uniform random codes. The requantization parameters are not random: they are
//! chosen from the second moments of the layer's inputs and weights so that the raw codes have a
//! standard deviation of about 40 (of the 8-bit range's 128 either side of the zero point) and
//! each activation tensor's pre-clamp values are roughly normal with mean `0.25 * qmax` and
//! standard deviation `0.35 * qmax`: about a quarter of the codes are zero after the ReLU (more
//! at 2 bits, where rounding sends everything below 0.5 to zero), about 2% saturate and the rest
//! spread over the code range; sign activations are about half ones. (With random weights this holds on
//! random images; a trained network's statistics differ, which does not matter for speed or
//! fidelity tests.)

use slb_format::{
    f32_bytes, i32_bytes, pack_codes, DType, Error, ModelBuilder, OwnedAdd, OwnedAddParams,
    OwnedAffine, OwnedConv, OwnedDense, OwnedDenseWeights, OwnedInput, OwnedLayer, OwnedRequant,
    Pool, RawQuant, Result, Shape, Site, TensorDesc, Unary,
};

/// Bit widths and seed of a synthetic model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quant {
    /// Weight code width: 1, 2 or 4.
    pub weight_bits: u8,
    /// Activation width: 1, 2, 4 or 8 (the network input stays 8-bit).
    pub act_bits: u8,
    /// Seed of the random weights.
    pub seed: u64,
}

impl Quant {
    /// Weight bits, activation bits, seed.
    pub const fn new(weight_bits: u8, act_bits: u8, seed: u64) -> Self {
        Quant {
            weight_bits,
            act_bits,
            seed,
        }
    }

    fn check(&self) -> Result<()> {
        if !matches!(self.weight_bits, 1 | 2 | 4) {
            return Err(Error::BadBits {
                layer: Site::Model,
                what: "weight",
                bits: self.weight_bits,
            });
        }
        if !matches!(self.act_bits, 1 | 2 | 4 | 8) {
            return Err(Error::BadBits {
                layer: Site::Model,
                what: "activation",
                bits: self.act_bits,
            });
        }
        Ok(())
    }
}

/// The networks [`build`] knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// ResNet-18 for CIFAR: 3x3 stem, no max pooling, stages of 64/128/256/512 channels with
    /// two basic blocks each, 1x1 downsample convs, 10 classes.
    ResNet18Cifar,
    /// ResNet-20: 3x3 stem, stages of 16/32/64 channels with three basic blocks each.
    ResNet20,
    /// VGG-small: conv 128, 128, max pool, 256, 256, max pool, 512, 512, max pool, dense.
    VggSmall,
}

impl Arch {
    /// Every architecture.
    pub const ALL: [Arch; 3] = [Arch::ResNet18Cifar, Arch::ResNet20, Arch::VggSmall];

    /// The architecture named `name` (as [`Arch::name`] spells it).
    pub fn from_name(name: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Short lower-case name (`resnet18`, `resnet20`, `vgg-small`).
    pub fn name(&self) -> &'static str {
        match self {
            Arch::ResNet18Cifar => "resnet18",
            Arch::ResNet20 => "resnet20",
            Arch::VggSmall => "vgg-small",
        }
    }
}

/// Builds the model file of `arch`.
pub fn build(arch: Arch, q: Quant) -> Result<Vec<u8>> {
    match arch {
        Arch::ResNet18Cifar => resnet18_cifar(q),
        Arch::ResNet20 => resnet20(q),
        Arch::VggSmall => vgg_small(q),
    }
}

/// ResNet-18 for CIFAR-10 (3x32x32 input, 10 logits).
pub fn resnet18_cifar(q: Quant) -> Result<Vec<u8>> {
    resnet(q, "resnet18-cifar", &[64, 128, 256, 512], 2)
}

/// ResNet-20 for CIFAR-10 (3x32x32 input, 10 logits).
pub fn resnet20(q: Quant) -> Result<Vec<u8>> {
    resnet(q, "resnet20", &[16, 32, 64], 3)
}

/// VGG-small for CIFAR-10 (3x32x32 input, 10 logits), the network of the SLB paper's CIFAR
/// table: every conv 3x3 with BatchNorm and ReLU, max pooling after each pair.
pub fn vgg_small(q: Quant) -> Result<Vec<u8>> {
    q.check()?;
    let mut n = Net::new(q, Shape::new(3, 32, 32), 8);
    let mut x = n.input;
    for (i, &c) in [128u32, 128, 256, 256, 512, 512].iter().enumerate() {
        x = n.conv(x, c, 3, 1, 1, 1, true)?;
        if i % 2 == 1 {
            x = n.maxpool(x)?;
        }
    }
    let f = n.flatten(x)?;
    let logits = n.dense(f, 10)?;
    let name = format!("vgg-small {}", n.tag());
    n.finish(name, CIFAR10, logits)
}

/// Geometry of [`single_conv`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    /// Input channels.
    pub in_channels: u32,
    /// Output channels.
    pub out_channels: u32,
    /// Input height.
    pub height: u32,
    /// Input width.
    pub width: u32,
    /// Kernel (height, width).
    pub kernel: [u16; 2],
    /// Stride (height, width).
    pub stride: [u16; 2],
    /// Padding (height, width).
    pub padding: [u16; 2],
    /// Groups.
    pub groups: u32,
}

impl ConvGeom {
    /// A square `k`x`k` conv, stride `s`, "same" padding `k / 2`, one group.
    pub const fn square(in_channels: u32, out_channels: u32, size: u32, k: u16, s: u16) -> Self {
        ConvGeom {
            in_channels,
            out_channels,
            height: size,
            width: size,
            kernel: [k, k],
            stride: [s, s],
            padding: [k / 2, k / 2],
            groups: 1,
        }
    }
}

/// One quantized conv (both requantization stages, ReLU unless the activations are 1-bit)
/// followed by global average pooling to `F32`, the model's output. Unlike the networks, the
/// conv's input tensor has `act_bits` (the lookup table quantizes the image straight to them),
/// so that the conv runs the kernel of the requested bit widths.
pub fn single_conv(g: ConvGeom, q: Quant) -> Result<Vec<u8>> {
    q.check()?;
    let bad = |what| Error::InvalidParam {
        layer: Site::Model,
        what,
    };
    if g.in_channels == 0
        || g.out_channels == 0
        || g.in_channels.checked_rem(g.groups) != Some(0)
        || g.out_channels.checked_rem(g.groups) != Some(0)
    {
        return Err(bad("conv groups (must divide both channel counts)"));
    }
    let input = Shape::new(g.in_channels, g.height, g.width);
    check_shape(input)?;
    let mut n = Net::new(q, input, q.act_bits);
    let y = n.conv_full(
        n.input,
        g.out_channels,
        g.kernel,
        g.stride,
        g.padding,
        g.groups,
        Stage2::Act,
    )?;
    let pooled = n.gap(y)?;
    let name = format!(
        "conv {}x{}x{} -> {} k{}x{} s{}x{} p{}x{} g{} {}",
        g.in_channels,
        g.height,
        g.width,
        g.out_channels,
        g.kernel[0],
        g.kernel[1],
        g.stride[0],
        g.stride[1],
        g.padding[0],
        g.padding[1],
        g.groups,
        n.tag()
    );
    n.finish(name, "", pooled)
}

const CIFAR10: &str = "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck";
const CIFAR_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
const CIFAR_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];

/// Target standard deviation of raw (8-bit, zero point 128) codes.
const RAW_STD: f64 = 40.0;
/// Target pre-clamp mean and standard deviation of activation codes, in units of `qmax`.
const ACT_MEAN: f64 = 0.25;
const ACT_STD: f64 = 0.35;
/// Shifts of the fixed-point multipliers.
const RAW_SHIFT: u8 = 24;
const AFFINE_SHIFT: u8 = 16;

fn resnet(q: Quant, name: &str, widths: &[u32], blocks: usize) -> Result<Vec<u8>> {
    q.check()?;
    let mut n = Net::new(q, Shape::new(3, 32, 32), 8);
    let mut x = n.conv(n.input, widths[0], 3, 1, 1, 1, true)?;
    for (s, &c) in widths.iter().enumerate() {
        for b in 0..blocks {
            let stride = if s > 0 && b == 0 { 2 } else { 1 };
            x = n.basic_block(x, c, stride)?;
        }
    }
    let f = n.gap(x)?;
    let logits = n.dense(f, 10)?;
    let name = format!("{name} {}", n.tag());
    n.finish(name, CIFAR10, logits)
}

fn check_shape(s: Shape) -> Result<()> {
    match s.elements() {
        Some(0) => Err(Error::InvalidParam {
            layer: Site::Model,
            what: "tensor shape (a dimension is zero)",
        }),
        Some(e) if e <= u32::MAX / 4 => Ok(()),
        _ => Err(Error::Overflow {
            layer: Site::Model,
            what: "tensor size",
        }),
    }
}

/// SplitMix64: small, deterministic, good enough for weights.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What stage 2 of a conv produces.
#[derive(Clone, Copy, PartialEq)]
enum Stage2 {
    /// BatchNorm, ReLU (not for 1-bit) and the activation quantizer.
    Act,
    /// Nothing: the output tensor holds the raw codes (the block's `Add` applies the BN).
    Raw,
}

/// Second moments of a tensor's centred codes (`q - zp`, or `2q - 1` for 1 bit), assumed for
/// calibration.
#[derive(Clone, Copy)]
struct Stats {
    mean: f64,
    m2: f64,
}

impl Stats {
    fn var(&self) -> f64 {
        (self.m2 - self.mean * self.mean).max(0.0)
    }
}

/// A network under construction.
struct Net {
    q: Quant,
    rng: Rng,
    /// The model file's tensors and layers (named and given its output by [`Net::finish`]).
    model: ModelBuilder,
    /// Assumed statistics of each tensor, by id.
    stats: Vec<Stats>,
    input: u16,
}

impl Net {
    /// The image of `shape` becomes tensor 0 with `bits` through a lookup table.
    fn new(q: Quant, shape: Shape, bits: u8) -> Net {
        let c = shape.c as usize;
        let (mean, std): (Vec<f32>, Vec<f32>) = if c == 3 {
            (CIFAR_MEAN.to_vec(), CIFAR_STD.to_vec())
        } else {
            (vec![0.5; c], vec![0.25; c])
        };
        // Normalised values span about +-2 (uniform pixels) to +-4 (outliers) standard units.
        let (scale, zp) = match bits {
            1 => (1.0f32, 0i32),
            8 => (1.0 / 32.0, 128),
            b => (2.5 / (1 << (b - 1)) as f32, 1 << (b - 1)),
        };
        let qmax = (1i32 << bits) - 1;
        let mut lut = Vec::with_capacity(c * 256);
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for ch in 0..c {
            for v in 0..256 {
                let x = (v as f32 / 255.0 - mean[ch]) / std[ch];
                let code = if bits == 1 {
                    i32::from(x >= 0.0)
                } else {
                    (zp + (x / scale + 0.5).floor() as i32).clamp(0, qmax)
                };
                lut.push(code as u8);
                let centred = if bits == 1 { 2 * code - 1 } else { code - zp } as f64;
                s1 += centred;
                s2 += centred * centred;
            }
        }
        let count = (c * 256) as f64;
        let dtype = DType::Quant {
            scale,
            zero_point: zp,
            bits,
        };
        let input = OwnedInput {
            shape,
            mean: f32_bytes(&mean),
            std: f32_bytes(&std),
            classes: String::new(),
            tensor: 0,
            lut,
        };
        let mut model = ModelBuilder::new("", input);
        model.tensors.push(TensorDesc { shape, dtype });
        Net {
            q,
            rng: Rng(q.seed ^ 0x5EED_5EED_5EED_5EED),
            model,
            stats: vec![Stats {
                mean: s1 / count,
                m2: s2 / count,
            }],
            input: 0,
        }
    }

    fn tag(&self) -> String {
        format!(
            "W{}A{} seed {} (synthetic)",
            self.q.weight_bits, self.q.act_bits, self.q.seed
        )
    }

    fn add_tensor(&mut self, shape: Shape, dtype: DType, stats: Stats) -> Result<u16> {
        check_shape(shape)?;
        let id = self.model.tensor(shape, dtype)?;
        self.stats.push(stats);
        Ok(id)
    }

    fn shape(&self, t: u16) -> Shape {
        self.model.tensors[t as usize].shape
    }

    fn scale(&self, t: u16) -> f32 {
        match self.model.tensors[t as usize].dtype {
            DType::Quant { scale, .. } => scale,
            DType::F32 => 1.0,
        }
    }

    fn qmax(&self) -> f64 {
        ((1u32 << self.q.act_bits) - 1) as f64
    }

    fn sign_acts(&self) -> bool {
        self.q.act_bits == 1
    }

    /// Mean and standard deviation of the pre-clamp output (`v / 2^shift`), in output codes.
    /// A sign output is 1 when `round(v) >= 0`, i.e. `v >= -0.5`: centring it there gives
    /// half ones.
    fn target(&self) -> (f64, f64) {
        if self.sign_acts() {
            (-0.5, 1.0)
        } else {
            let qm = self.qmax();
            (ACT_MEAN * qm, ACT_STD * qm)
        }
    }

    /// Statistics of an activation tensor produced to the design target.
    fn act_stats(&self) -> Stats {
        if self.sign_acts() {
            return Stats { mean: 0.0, m2: 1.0 };
        }
        // Rectified N(ACT_MEAN, ACT_STD) in units of qmax (clipping at qmax ignored).
        let (mu, sd) = (ACT_MEAN, ACT_STD);
        let z = mu / sd;
        let (cdf, pdf) = (
            normal_cdf(z),
            (-z * z / 2.0).exp() / (2.0 * core::f64::consts::PI).sqrt(),
        );
        let qm = self.qmax();
        Stats {
            mean: (mu * cdf + sd * pdf) * qm,
            m2: ((mu * mu + sd * sd) * cdf + mu * sd * pdf) * qm * qm,
        }
    }

    /// A fresh activation dtype: `act_bits`, zero point 0, a random scale such that the codes
    /// span a real range of 2 to 6 (a sign is +-1 to +-3), as a trained network's would.
    fn act_dtype(&mut self, scale: Option<f32>) -> DType {
        let range = self.qmax().max(2.0);
        let scale = scale.unwrap_or_else(|| (self.rng.uniform(2.0, 6.0) / range) as f32);
        DType::Quant {
            scale,
            zero_point: 0,
            bits: self.q.act_bits,
        }
    }

    /// A `k`x`k` conv with "same"-style padding.
    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        x: u16,
        out_c: u32,
        k: u16,
        s: u16,
        p: u16,
        g: u32,
        act: bool,
    ) -> Result<u16> {
        let stage2 = if act { Stage2::Act } else { Stage2::Raw };
        self.conv_full(x, out_c, [k, k], [s, s], [p, p], g, stage2)
    }

    #[allow(clippy::too_many_arguments)]
    fn conv_full(
        &mut self,
        x: u16,
        out_c: u32,
        kernel: [u16; 2],
        stride: [u16; 2],
        padding: [u16; 2],
        groups: u32,
        stage2: Stage2,
    ) -> Result<u16> {
        let wb = self.q.weight_bits;
        let in_shape = self.shape(x);
        let ipg = in_shape.c / groups;
        let mut conv = OwnedConv {
            input: x,
            output: 0,
            out_channels: out_c,
            in_channels: in_shape.c,
            kernel,
            stride,
            padding,
            groups,
            weight_bits: wb,
            codes: Vec::new(),
            requant: OwnedRequant {
                raw: RawQuant {
                    mult: 0,
                    shift: RAW_SHIFT,
                    zero_point: 128,
                    bits: 8,
                    scale: 1.0,
                },
                affine: None,
            },
        };
        let out_shape = conv
            .as_conv()
            .output_shape(in_shape)
            .ok_or(Error::InvalidParam {
                layer: Site::Model,
                what: "conv kernel (larger than the padded input)",
            })?;
        check_shape(out_shape)?;
        let n = slb_format::packed_len(out_c, kernel, ipg, wb).ok_or(Error::Overflow {
            layer: Site::Model,
            what: "packed weight size",
        })?;
        let count = out_c as usize * kernel[0] as usize * kernel[1] as usize * ipg as usize;
        // Uniform codes; consume the random stream in whole u64s, 16 codes at a time.
        let mut codes = Vec::with_capacity(count);
        let mask = (1u64 << wb) - 1;
        while codes.len() < count {
            let mut r = self.rng.next();
            for _ in 0..16.min(count - codes.len()) {
                codes.push((r & mask) as u8);
                r >>= 4;
            }
        }
        conv.codes = pack_codes(&codes, out_c, kernel, ipg, wb)?;
        debug_assert_eq!(conv.codes.len(), n);

        // Stage 1: acc has variance terms * E[w^2] * E[x^2] (zero-mean weights), w the odd
        // numerator with E[w^2] = (L^2 - 1) / 3 for L = 2^wb levels. Raw std -> RAW_STD.
        let levels = (1u64 << wb) as f64;
        let w2 = (levels * levels - 1.0) / 3.0;
        let terms = ipg as f64 * kernel[0] as f64 * kernel[1] as f64;
        let sigma_acc = (terms * w2 * self.stats[x as usize].m2).sqrt().max(1.0);
        let r = RAW_STD / sigma_acc;
        let mult = (r * (1u64 << RAW_SHIFT) as f64)
            .round()
            .clamp(1.0, i32::MAX as f64) as i32;
        // mult / 2^shift = scale_in / ((2^wb - 1) * raw_scale)
        let r_fixed = mult as f64 / (1u64 << RAW_SHIFT) as f64;
        let raw_scale = (self.scale(x) as f64 / ((levels - 1.0) * r_fixed)) as f32;
        conv.requant.raw.mult = mult;
        conv.requant.raw.scale = raw_scale;

        let (out_dtype, stats, affine) = match stage2 {
            Stage2::Raw => (
                DType::Quant {
                    scale: raw_scale,
                    zero_point: 128,
                    bits: 8,
                },
                Stats {
                    mean: 0.0,
                    m2: RAW_STD * RAW_STD,
                },
                None,
            ),
            Stage2::Act => {
                let dtype = self.act_dtype(None);
                let (mut m, b) = self.affine(out_c, &[RAW_STD])?;
                let affine = OwnedAffine {
                    shift: AFFINE_SHIFT,
                    mult: m.remove(0),
                    bias: b,
                    relu: !self.sign_acts(),
                };
                (dtype, self.act_stats(), Some(affine))
            }
        };
        let y = self.add_tensor(out_shape, out_dtype, stats)?;
        conv.output = y;
        conv.requant.affine = affine;
        self.model.layer(OwnedLayer::Conv(conv));
        Ok(y)
    }

    /// Per-channel multipliers (one array per input, whose codes have standard deviation
    /// `sds[i]`) and biases, so that the sum hits the activation target.
    fn affine(&mut self, channels: u32, sds: &[f64]) -> Result<(Vec<Vec<u8>>, Vec<u8>)> {
        let (target_mean, target_sd) = self.target();
        let per_input_sd = target_sd / (sds.len() as f64).sqrt();
        let one = (1u64 << AFFINE_SHIFT) as f64;
        let mut mults = vec![Vec::with_capacity(channels as usize); sds.len()];
        let mut bias = Vec::with_capacity(channels as usize);
        for _ in 0..channels {
            for (m, sd) in mults.iter_mut().zip(sds) {
                let g = per_input_sd / sd.max(1e-9) * self.rng.uniform(0.8, 1.25);
                m.push(fixed(g * one)?);
            }
            let beta = target_mean + target_sd * self.rng.uniform(-0.1, 0.1);
            bias.push(fixed(beta * one)?);
        }
        Ok((
            mults.iter().map(|m| i32_bytes(m)).collect(),
            i32_bytes(&bias),
        ))
    }

    /// A basic residual block: conv3x3 (stage 1+2), conv3x3 (stage 1), shortcut (identity or
    /// 1x1 downsample conv, stage 1), add (BN of the branches, ReLU, quantizer).
    fn basic_block(&mut self, x: u16, out_c: u32, stride: u16) -> Result<u16> {
        let h = self.conv(x, out_c, 3, stride, 1, 1, true)?;
        let r = self.conv(h, out_c, 3, 1, 1, 1, false)?;
        let in_c = self.shape(x).c;
        let shape = self.shape(r);
        let one = (1u64 << AFFINE_SHIFT) as f64;
        let relu = !self.sign_acts();
        if stride != 1 || in_c != out_c {
            let d = self.conv(x, out_c, 1, stride, 0, 1, false)?;
            let (mut m, bias) = self.affine(out_c, &[RAW_STD, RAW_STD])?;
            let (mb, ma) = (m.remove(1), m.remove(0));
            let dtype = self.act_dtype(None);
            let stats = self.act_stats();
            let y = self.add_tensor(shape, dtype, stats)?;
            self.add(r, d, y, [ma, mb, bias], relu);
            return Ok(y);
        }
        // Identity shortcut: x enters with the real factor s_x / s_y = k, the branch adds the
        // rest of the spread, the bias the rest of the mean.
        let xs = self.stats[x as usize];
        let (target_mean, target_sd) = self.target();
        let k = 0.6 * target_sd / xs.var().sqrt().max(1e-9);
        let k = if self.sign_acts() { 0.7 } else { k };
        let branch_sd = (target_sd * target_sd - k * k * xs.var())
            .max(0.25 * target_sd * target_sd)
            .sqrt();
        let y_scale = (self.scale(x) as f64 / k) as f32;
        let mut ma = Vec::with_capacity(out_c as usize);
        let mut bias = Vec::with_capacity(out_c as usize);
        for _ in 0..out_c {
            ma.push(fixed(
                branch_sd / RAW_STD * self.rng.uniform(0.8, 1.25) * one,
            )?);
            let beta = target_mean - k * xs.mean + target_sd * self.rng.uniform(-0.1, 0.1);
            bias.push(fixed(beta * one)?);
        }
        let mb = vec![fixed(k * one)?; out_c as usize];
        let dtype = self.act_dtype(Some(y_scale));
        let stats = self.act_stats();
        let y = self.add_tensor(shape, dtype, stats)?;
        let params = [i32_bytes(&ma), i32_bytes(&mb), i32_bytes(&bias)];
        self.add(r, x, y, params, relu);
        Ok(y)
    }

    /// The `Add` layer `output = a + b` with `[mult_a, mult_b, bias]` (bytes).
    fn add(&mut self, a: u16, b: u16, output: u16, params: [Vec<u8>; 3], relu: bool) {
        let [mult_a, mult_b, bias] = params;
        self.model.layer(OwnedLayer::Add(OwnedAdd {
            a,
            b,
            output,
            params: OwnedAddParams {
                shift: AFFINE_SHIFT,
                mult_a,
                mult_b,
                bias,
                relu,
            },
        }));
    }

    fn maxpool(&mut self, x: u16) -> Result<u16> {
        let p = Pool {
            input: x,
            output: 0,
            kernel: [2, 2],
            stride: [2, 2],
            padding: [0, 0],
        };
        let shape = p.output_shape(self.shape(x)).ok_or(Error::InvalidParam {
            layer: Site::Model,
            what: "pool window",
        })?;
        // The max of four: larger codes (for signs, mostly +1).
        let s = self.stats[x as usize];
        let stats = if self.sign_acts() {
            Stats {
                mean: 0.875,
                m2: 1.0,
            }
        } else {
            Stats {
                mean: s.mean * 1.8,
                m2: s.m2 * 2.4,
            }
        };
        let dtype = self.model.tensors[x as usize].dtype;
        let y = self.add_tensor(shape, dtype, stats)?;
        self.model
            .layer(OwnedLayer::MaxPool(Pool { output: y, ..p }));
        Ok(y)
    }

    fn gap(&mut self, x: u16) -> Result<u16> {
        let c = self.shape(x).c;
        let y = self.add_tensor(
            Shape::new(c, 1, 1),
            DType::F32,
            Stats { mean: 0.0, m2: 1.0 },
        )?;
        self.model.layer(OwnedLayer::GlobalAvgPool(Unary {
            input: x,
            output: y,
        }));
        Ok(y)
    }

    fn flatten(&mut self, x: u16) -> Result<u16> {
        let s = self.shape(x);
        let n = s.elements().unwrap_or(0);
        let dtype = self.model.tensors[x as usize].dtype;
        let stats = self.stats[x as usize];
        let y = self.add_tensor(Shape::new(n, 1, 1), dtype, stats)?;
        self.model.layer(OwnedLayer::Flatten(Unary {
            input: x,
            output: y,
        }));
        Ok(y)
    }

    /// Float dense layer with uniform weights of variance `1 / in` (so logits are of order 1).
    fn dense(&mut self, x: u16, out: u32) -> Result<u16> {
        let inf = self.shape(x).elements().unwrap_or(0) as usize;
        let a = (3.0 / inf.max(1) as f64).sqrt();
        let w: Vec<f32> = (0..inf * out as usize)
            .map(|_| self.rng.uniform(-a, a) as f32)
            .collect();
        let bias: Vec<f32> = (0..out)
            .map(|_| self.rng.uniform(-0.1, 0.1) as f32)
            .collect();
        let y = self.add_tensor(
            Shape::new(out, 1, 1),
            DType::F32,
            Stats { mean: 0.0, m2: 1.0 },
        )?;
        self.model.layer(OwnedLayer::Dense(OwnedDense {
            input: x,
            output: y,
            weights: OwnedDenseWeights::F32(f32_bytes(&w)),
            bias: f32_bytes(&bias),
        }));
        Ok(y)
    }

    fn finish(mut self, name: String, classes: &str, output: u16) -> Result<Vec<u8>> {
        self.model.name = name;
        self.model.input.classes = classes.into();
        self.model.input.tensor = self.input;
        self.model.output = output;
        self.model.build()
    }
}

/// A fixed-point value as `i32`, or an error if it does not fit.
fn fixed(v: f64) -> Result<i32> {
    let r = v.round();
    if r.is_finite() && r >= i32::MIN as f64 && r <= i32::MAX as f64 {
        Ok(r as i32)
    } else {
        Err(Error::Overflow {
            layer: Site::Model,
            what: "synthetic requantization multiplier",
        })
    }
}

/// Standard normal CDF (Abramowitz-Stegun 7.1.26 on erf; error below 1.5e-7).
fn normal_cdf(z: f64) -> f64 {
    let x = z.abs() / core::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-x * x).exp();
    if z >= 0.0 {
        0.5 * (1.0 + erf)
    } else {
        0.5 * (1.0 - erf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slb_format::{CodeReader, Conv, DenseWeights, Layer, Model};

    fn convs<'a>(m: &Model<'a>) -> Vec<Conv<'a>> {
        m.layers
            .iter()
            .filter_map(|l| match l {
                Layer::Conv(c) => Some(c),
                _ => None,
            })
            .collect()
    }

    fn params(m: &Model<'_>) -> u64 {
        convs(m)
            .iter()
            .map(|c| {
                c.out_channels as u64
                    * c.in_per_group() as u64
                    * c.kernel[0] as u64
                    * c.kernel[1] as u64
            })
            .sum()
    }

    fn code_bytes(m: &Model<'_>) -> usize {
        convs(m).iter().map(|c| c.codes.len()).sum()
    }

    #[test]
    fn every_model_parses_for_every_width() {
        // Every weight width and every activation width, not every pair (debug builds).
        for arch in [Arch::ResNet20, Arch::VggSmall] {
            for (wb, ab) in [(1, 1), (2, 2), (4, 4), (1, 8), (4, 2)] {
                {
                    let b = build(arch, Quant::new(wb, ab, 3)).unwrap();
                    let m = Model::parse(&b).unwrap();
                    assert_eq!(m.input.num_classes(), 10, "{arch:?}");
                    let out = m.tensor(m.output).unwrap();
                    assert_eq!(out.shape, Shape::new(10, 1, 1));
                    // The first conv reads the 8-bit image tensor; the others act_bits.
                    let cs = convs(&m);
                    for (i, c) in cs.iter().enumerate() {
                        assert_eq!(c.weight_bits, wb);
                        let bits = match m.tensor(c.input).unwrap().dtype {
                            DType::Quant { bits, .. } => bits,
                            DType::F32 => 0,
                        };
                        if i == 0 {
                            assert_eq!(bits, 8);
                        } else if c.requant.affine.is_some() || bits != 8 {
                            assert_eq!(bits, ab, "{arch:?} conv {i}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn resnet18_sizes() {
        let b = resnet18_cifar(Quant::new(1, 2, 0)).unwrap();
        let m = Model::parse(&b).unwrap();
        let cs = convs(&m);
        // Stem + 16 block convs + 3 downsamples.
        assert_eq!(cs.len(), 20);
        // 3*64*9 + 2*2*64*64*9 + (64*128*9 + 3*128*128*9 + 64*128) + ... : 11,159,232 weights.
        assert_eq!(params(&m), 11_159_232);
        // W1: params / 8 bytes, except the stem whose 3 input channels fill one byte per row.
        assert_eq!(code_bytes(&m), (11_159_232 - 3 * 64 * 9) / 8 + 64 * 9);
        let adds = m
            .layers
            .iter()
            .filter(|l| matches!(l, Layer::Add(_)))
            .count();
        assert_eq!(adds, 8);
        // W4 quadruples the codes.
        let b4 = resnet18_cifar(Quant::new(4, 4, 0)).unwrap();
        assert_eq!(code_bytes(&Model::parse(&b4).unwrap()), 4 * code_bytes(&m));
    }

    #[test]
    fn resnet20_and_vgg_sizes() {
        let m20 = resnet20(Quant::new(2, 2, 1)).unwrap();
        let m = Model::parse(&m20).unwrap();
        // ResNet-20: 0.27 M conv weights (with 1x1 downsamples: 16*32 + 32*64 more).
        let expected: u64 = 3 * 16 * 9
            + 6 * 16 * 16 * 9
            + (16 * 32 * 9 + 5 * 32 * 32 * 9 + 16 * 32)
            + (32 * 64 * 9 + 5 * 64 * 64 * 9 + 32 * 64);
        assert_eq!(params(&m), expected);
        assert_eq!(convs(&m).len(), 21);
        let v = vgg_small(Quant::new(1, 1, 1)).unwrap();
        let m = Model::parse(&v).unwrap();
        let expected: u64 = 3 * 128 * 9
            + 128 * 128 * 9
            + 128 * 256 * 9
            + 256 * 256 * 9
            + 256 * 512 * 9
            + 512 * 512 * 9;
        assert_eq!(params(&m), expected);
        let last = m.layers.get(m.layers.len() - 1).unwrap();
        let Layer::Dense(d) = last else {
            panic!("last layer is {}", last.op_name())
        };
        assert_eq!(d.bias.len(), 10);
        let DenseWeights::F32(w) = d.weights else {
            panic!("float classifier")
        };
        assert_eq!(w.len(), 512 * 4 * 4 * 10);
    }

    #[test]
    fn deterministic_and_seeded() {
        let a = resnet20(Quant::new(1, 1, 7)).unwrap();
        assert_eq!(a, resnet20(Quant::new(1, 1, 7)).unwrap());
        assert_ne!(a, resnet20(Quant::new(1, 1, 8)).unwrap());
    }

    #[test]
    fn bad_parameters_are_errors() {
        assert!(matches!(
            resnet20(Quant::new(3, 2, 0)),
            Err(Error::BadBits { .. })
        ));
        assert!(matches!(
            vgg_small(Quant::new(1, 0, 0)),
            Err(Error::BadBits { .. })
        ));
        let mut g = ConvGeom::square(8, 8, 4, 3, 1);
        g.groups = 3;
        assert!(single_conv(g, Quant::new(1, 1, 0)).is_err());
        g.groups = 0;
        assert!(single_conv(g, Quant::new(1, 1, 0)).is_err());
        let g = ConvGeom::square(8, 8, 2, 5, 1);
        assert!(single_conv(
            ConvGeom {
                padding: [0, 0],
                ..g
            },
            Quant::new(1, 1, 0)
        )
        .is_err());
        let g = ConvGeom::square(u32::MAX, 8, 1 << 16, 1, 1);
        assert!(matches!(
            single_conv(g, Quant::new(1, 1, 0)),
            Err(Error::Overflow { .. })
        ));
    }

    /// Naive integer evaluation of a single-conv model's conv (stage 1 and 2), on a random
    /// image, per `docs/FORMAT.md`.
    fn eval_single_conv(bytes: &[u8], seed: u64) -> (Vec<u8>, u8) {
        let m = Model::parse(bytes).unwrap();
        let Layer::Conv(c) = m.layers.get(0).unwrap() else {
            panic!("conv first")
        };
        let tin = m.tensor(c.input).unwrap();
        let tout = m.tensor(c.output).unwrap();
        let (
            DType::Quant {
                zero_point: zin,
                bits: bin,
                ..
            },
            DType::Quant {
                zero_point: zout,
                bits: bout,
                ..
            },
        ) = (tin.dtype, tout.dtype)
        else {
            panic!("quantized")
        };
        let centred = |q: u8| {
            if bin == 1 {
                2 * q as i64 - 1
            } else {
                q as i64 - zin as i64
            }
        };
        let s = tin.shape;
        let mut rng = Rng(seed);
        // HWC image -> CHW codes through the LUT.
        let mut x = vec![0u8; s.elements().unwrap() as usize];
        for h in 0..s.h as usize {
            for w in 0..s.w as usize {
                for ch in 0..s.c as usize {
                    let v = (rng.next() >> 56) as usize;
                    x[(ch * s.h as usize + h) * s.w as usize + w] = m.input.lut[ch * 256 + v];
                }
            }
        }
        let r = CodeReader::new(&c);
        let o = tout.shape;
        let aff = c.requant.affine.unwrap();
        let rs = |v: i64, sh: u8| (v + (1i64 << (sh - 1))) >> sh;
        let qmax = (1i64 << bout) - 1;
        let ipg = c.in_per_group() as usize;
        let opg = (c.out_channels / c.groups) as usize;
        let mut y = Vec::new();
        for oc in 0..o.c as usize {
            let g = oc / opg;
            for oy in 0..o.h as i64 {
                for ox in 0..o.w as i64 {
                    let mut acc = 0i64;
                    for ky in 0..c.kernel[0] as i64 {
                        for kx in 0..c.kernel[1] as i64 {
                            let iy = oy * c.stride[0] as i64 + ky - c.padding[0] as i64;
                            let ix = ox * c.stride[1] as i64 + kx - c.padding[1] as i64;
                            if iy < 0 || ix < 0 || iy >= s.h as i64 || ix >= s.w as i64 {
                                continue;
                            }
                            for i in 0..ipg {
                                let ch = g * ipg + i;
                                let q = x[(ch * s.h as usize + iy as usize) * s.w as usize
                                    + ix as usize];
                                acc += r.numerator(oc, ky as usize, kx as usize, i) as i64
                                    * centred(q);
                            }
                        }
                    }
                    let raw = c.requant.raw;
                    let q_raw = (raw.zero_point as i64 + rs(acc * raw.mult as i64, raw.shift))
                        .clamp(0, (1 << raw.bits) - 1);
                    let v = (q_raw - raw.zero_point as i64) * aff.mult.get(oc).unwrap() as i64
                        + aff.bias.get(oc).unwrap() as i64;
                    let t = rs(v, aff.shift);
                    let q = if bout == 1 {
                        (t >= 0) as i64
                    } else {
                        let lo = if aff.relu { zout as i64 } else { 0 };
                        (zout as i64 + t).clamp(lo, qmax)
                    };
                    y.push(q as u8);
                }
            }
        }
        (y, bout)
    }

    #[test]
    fn single_conv_outputs_spread_over_the_code_range() {
        for (geom, wb, ab) in [
            (ConvGeom::square(64, 32, 8, 3, 1), 1, 2),
            (ConvGeom::square(32, 16, 8, 3, 2), 2, 4),
            (ConvGeom::square(16, 16, 6, 1, 1), 4, 8),
            (ConvGeom::square(64, 64, 6, 3, 1), 1, 1),
            (
                ConvGeom {
                    groups: 4,
                    ..ConvGeom::square(32, 32, 6, 3, 1)
                },
                2,
                2,
            ),
        ] {
            let b = single_conv(geom, Quant::new(wb, ab, 11)).unwrap();
            let (y, bits) = eval_single_conv(&b, 5);
            let qmax = (1usize << bits) - 1;
            let mut hist = vec![0usize; qmax + 1];
            for &q in &y {
                hist[q as usize] += 1;
            }
            let n = y.len() as f64;
            let frac = |k: usize| hist[k] as f64 / n;
            let used = hist.iter().filter(|&&h| h > 0).count();
            let ctx = format!("{geom:?} W{wb}A{ab}: {hist:?}");
            if bits == 1 {
                assert!((0.2..0.8).contains(&frac(1)), "{ctx}");
            } else {
                assert!(frac(0) < 0.6, "vanishing: {ctx}");
                assert!(frac(qmax) < 0.15, "saturating: {ctx}");
                assert!(used * 2 > qmax.min(64), "narrow: {ctx}");
            }
        }
    }
}
