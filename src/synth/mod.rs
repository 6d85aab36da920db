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

mod net;
#[cfg(test)]
mod tests;

use net::{Net, Stage2};

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
