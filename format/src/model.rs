//! The model description: tensors, layers and their parameters.

use core::marker::PhantomData;

use serde::{Deserialize, Serialize};

/// A tensor's shape: channels, height, width (batch 1, stored channel-major in the file's
/// semantics; runtimes may lay it out as they like).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Channels.
    pub c: u32,
    /// Height.
    pub h: u32,
    /// Width.
    pub w: u32,
}

impl Shape {
    /// A shape from its three dimensions.
    pub const fn new(c: u32, h: u32, w: u32) -> Self {
        Shape { c, h, w }
    }

    /// Number of elements, or `None` if it overflows `u32`.
    pub fn elements(&self) -> Option<u32> {
        self.c.checked_mul(self.h)?.checked_mul(self.w)
    }
}

/// How a tensor's elements are stored.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub enum DType {
    /// Quantized activation codes, one per element, `bits` in {1, 2, 4, 8}.
    /// Real value: `scale * (q - zero_point)` (bits 2, 4, 8) or `scale * (2q - 1)` (bits 1).
    Quant {
        /// Step between adjacent codes (> 0, finite).
        scale: f32,
        /// The code that stands for real 0 (in `0..2^bits`; 0 for 1 bit).
        zero_point: i32,
        /// Code width.
        bits: u8,
    },
    /// 32-bit float values (the logits, pooled features before the float dense layer).
    F32,
}

impl DType {
    /// Largest code of a quantized dtype (`2^bits - 1`), `None` for F32.
    pub fn qmax(&self) -> Option<i32> {
        match *self {
            // Never panics, even for a width a parsed model cannot have.
            DType::Quant { bits, .. } => Some(
                1i32.checked_shl(u32::from(bits))
                    .map_or(i32::MAX, |v| v.wrapping_sub(1)),
            ),
            DType::F32 => None,
        }
    }
}

/// One tensor of the graph. Tensors are numbered by their position in the file.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct TensorDesc {
    /// Shape (C, H, W).
    pub shape: Shape,
    /// Element type.
    pub dtype: DType,
}

/// A little-endian `f32` array borrowed from the file (unaligned; read with [`F32s::get`]).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(transparent)]
pub struct F32s<'a>(#[serde(borrow)] pub &'a [u8]);

/// A little-endian `i32` array borrowed from the file (unaligned; read with [`I32s::get`]).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(transparent)]
pub struct I32s<'a>(#[serde(borrow)] pub &'a [u8]);

macro_rules! le_array {
    ($name:ident, $t:ty) => {
        impl<'a> $name<'a> {
            /// Number of elements (the byte length must be a multiple of 4; validated on parse).
            pub fn len(&self) -> usize {
                self.0.len() / 4
            }
            /// True when empty.
            pub fn is_empty(&self) -> bool {
                self.0.len() < 4
            }
            /// Element `i`, or `None` past the end.
            pub fn get(&self, i: usize) -> Option<$t> {
                let b = self
                    .0
                    .get(i.checked_mul(4)?..i.checked_mul(4)?.checked_add(4)?)?;
                Some(<$t>::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            /// All elements in order.
            pub fn iter(&self) -> impl Iterator<Item = $t> + 'a {
                self.0
                    .chunks_exact(4)
                    .map(|b| <$t>::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
        }
    };
}
le_array!(F32s, f32);
le_array!(I32s, i32);

/// The network's input: an 8-bit image, HWC byte order (as decoded from a JPEG/PNG), and how it
/// becomes the first tensor.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct InputSpec<'a> {
    /// Image shape (channels, height, width).
    pub shape: Shape,
    /// Per-channel mean, in units of `pixel / 255`.
    #[serde(borrow)]
    pub mean: F32s<'a>,
    /// Per-channel standard deviation, in units of `pixel / 255`.
    #[serde(borrow)]
    pub std: F32s<'a>,
    /// Class names, one per line (`'\n'`-separated), in label order.
    pub classes: &'a str,
    /// The tensor the image becomes (same shape). Quantized tensors are filled through `lut`;
    /// F32 tensors with `(pixel / 255 - mean) / std`.
    pub tensor: u16,
    /// For a quantized input tensor: `C * 256` codes, `lut[c * 256 + v]` being the code of pixel
    /// value `v` in channel `c` (normalisation and quantization folded, computed by the
    /// exporter exactly as the trainer does). Empty for an F32 input tensor.
    pub lut: &'a [u8],
}

impl<'a> InputSpec<'a> {
    /// The class names in label order.
    pub fn class_names(&self) -> impl Iterator<Item = &'a str> + 'a {
        self.classes.split('\n')
    }

    /// Number of class names.
    pub fn num_classes(&self) -> usize {
        if self.classes.is_empty() {
            0
        } else {
            self.class_names().count()
        }
    }
}

/// Stage 1 of a convolution's requantization: SLB's fake-quant node on the raw (pre-BatchNorm)
/// conv output, per tensor.
///
/// With `acc = sum((2k - (2^wb - 1)) * (q_in - zp_in))` (1-bit inputs: `(2q_in - 1)`, padded
/// positions contributing 0), the raw code is
/// `q_raw = clamp(zero_point + round_shift(acc * mult, shift), 0, 2^bits - 1)` where
/// `round_shift(v, s) = (v + 2^(s-1)) >> s` on 64-bit integers (round half up).
/// `mult / 2^shift` approximates `scale_in / ((2^wb - 1) * scale)`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct RawQuant {
    /// Fixed-point multiplier.
    pub mult: i32,
    /// Right shift, 1..=62.
    pub shift: u8,
    /// Zero point of the raw codes.
    pub zero_point: i32,
    /// Bits of the raw codes (2, 4 or 8).
    pub bits: u8,
    /// Real step of the raw codes (for float executors and inspection).
    pub scale: f32,
}

/// Stage 2: a per-channel integer affine map from codes to the output tensor's codes, with
/// BatchNorm and the next quantizer folded in.
///
/// `v = (q - zp_q) * mult[c] + bias[c]`, `q_out = clamp(zp_out + round_shift(v, shift), lo, qmax)`
/// where `lo = zp_out` with `relu` (and 0 without). For a 1-bit output tensor the result is the
/// sign instead: `q_out = 1` if `round_shift(v, shift) >= 0` else `0` (before ReLU, which a sign
/// output may not have).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct ChannelAffine<'a> {
    /// Right shift, 1..=62.
    pub shift: u8,
    /// Per-channel multiplier.
    #[serde(borrow)]
    pub mult: I32s<'a>,
    /// Per-channel bias, in units of `2^-shift` output codes.
    #[serde(borrow)]
    pub bias: I32s<'a>,
    /// Clamp at the output zero point (ReLU).
    pub relu: bool,
}

/// How a convolution's accumulator becomes its output tensor.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct Requant<'a> {
    /// The raw-output fake-quant.
    pub raw: RawQuant,
    /// BatchNorm (+ ReLU) into the output tensor's codes. `None`: the output tensor holds the
    /// raw codes themselves (its dtype must then equal the raw quantization).
    #[serde(borrow)]
    pub affine: Option<ChannelAffine<'a>>,
}

/// A quantized 2-D convolution with packed 1/2/4-bit SLB weight codes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct Conv<'a> {
    /// Input tensor (quantized).
    pub input: u16,
    /// Output tensor (quantized).
    pub output: u16,
    /// Output channels.
    pub out_channels: u32,
    /// Input channels (all groups).
    pub in_channels: u32,
    /// Kernel height and width.
    pub kernel: [u16; 2],
    /// Stride (height, width), >= 1.
    pub stride: [u16; 2],
    /// Zero padding (height, width), symmetric; padded positions hold real 0.
    pub padding: [u16; 2],
    /// Groups; divides both channel counts.
    pub groups: u32,
    /// Weight code width: 1, 2 or 4.
    pub weight_bits: u8,
    /// Packed codes, layout in [`crate::CodeReader`].
    #[serde(borrow)]
    pub codes: &'a [u8],
    /// Requantization.
    #[serde(borrow)]
    pub requant: Requant<'a>,
}

impl Conv<'_> {
    /// Input channels per group.
    pub fn in_per_group(&self) -> u32 {
        self.in_channels / self.groups.max(1)
    }

    /// The output shape for an input shape, or `None` if the kernel does not fit or a size
    /// overflows.
    pub fn output_shape(&self, input: Shape) -> Option<Shape> {
        let oh = out_dim(input.h, self.kernel[0], self.stride[0], self.padding[0])?;
        let ow = out_dim(input.w, self.kernel[1], self.stride[1], self.padding[1])?;
        Some(Shape::new(self.out_channels, oh, ow))
    }

    /// Multiply-accumulates of one inference (saturating at `u64::MAX` for absurd shapes).
    pub fn macs(&self, output: Shape) -> u64 {
        u64::from(output.elements().unwrap_or(0))
            .saturating_mul(u64::from(self.in_per_group()))
            .saturating_mul(u64::from(self.kernel[0]))
            .saturating_mul(u64::from(self.kernel[1]))
    }
}

pub(crate) fn out_dim(size: u32, k: u16, s: u16, p: u16) -> Option<u32> {
    if s == 0 || k == 0 {
        return None;
    }
    let padded = size.checked_add(2 * p as u32)?;
    let k = k as u32;
    if padded < k {
        return None;
    }
    Some((padded - k) / s as u32 + 1)
}

/// Weights of a dense (fully connected) layer, row-major `[out][in]`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub enum DenseWeights<'a> {
    /// Float weights.
    F32(#[serde(borrow)] F32s<'a>),
    /// Signed 8-bit weights with a per-output scale: `w = scale[o] * values[o][i]`.
    Int8 {
        /// The int8 values (as bytes).
        values: &'a [u8],
        /// Per-output scale.
        #[serde(borrow)]
        scale: F32s<'a>,
    },
}

/// A dense layer: `out[o] = bias[o] + sum_i w[o][i] * x[i]`, `x` the real values of the input
/// tensor (flattened C, H, W order); the output is F32.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct Dense<'a> {
    /// Input tensor (any dtype; flattened).
    pub input: u16,
    /// Output tensor (F32, shape `[out_features, 1, 1]`).
    pub output: u16,
    /// Weights.
    #[serde(borrow)]
    pub weights: DenseWeights<'a>,
    /// Per-output bias.
    #[serde(borrow)]
    pub bias: F32s<'a>,
}

/// Parameters of a max or average pooling window.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    /// Input tensor.
    pub input: u16,
    /// Output tensor (same dtype as the input).
    pub output: u16,
    /// Window height and width.
    pub kernel: [u16; 2],
    /// Stride.
    pub stride: [u16; 2],
    /// Padding. Max pooling ignores padded positions; average pooling counts them as real 0
    /// (PyTorch's `count_include_pad=True`) and rounds half up on codes.
    pub padding: [u16; 2],
}

impl Pool {
    /// The output shape for an input shape.
    pub fn output_shape(&self, input: Shape) -> Option<Shape> {
        let oh = out_dim(input.h, self.kernel[0], self.stride[0], self.padding[0])?;
        let ow = out_dim(input.w, self.kernel[1], self.stride[1], self.padding[1])?;
        Some(Shape::new(input.c, oh, ow))
    }
}

/// A one-input, one-output layer with no parameters.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unary {
    /// Input tensor.
    pub input: u16,
    /// Output tensor.
    pub output: u16,
}

/// Integer parameters of a residual add: both inputs pass through their own per-channel affine
/// (BatchNorm of the branch that ends in a conv, identity for a plain shortcut) and the sum is
/// quantized to the output tensor:
/// `v = (qa - zpa) * mult_a[c] + (qb - zpb) * mult_b[c] + bias[c]`,
/// `q = clamp(zp_out + round_shift(v, shift), lo, qmax)`, `lo = zp_out` with `relu`.
/// For a 1-bit input, `(q - zp)` is its centred value `2q - 1`; a 1-bit output is the sign,
/// `q = 1` if `round_shift(v, shift) >= 0` (as in [`ChannelAffine`]).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct AddParams<'a> {
    /// Right shift, 1..=62.
    pub shift: u8,
    /// Per-channel multiplier of input `a`.
    #[serde(borrow)]
    pub mult_a: I32s<'a>,
    /// Per-channel multiplier of input `b`.
    #[serde(borrow)]
    pub mult_b: I32s<'a>,
    /// Per-channel bias.
    #[serde(borrow)]
    pub bias: I32s<'a>,
    /// ReLU after the sum.
    pub relu: bool,
}

/// A residual add of two quantized tensors of the same shape into a quantized output.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct Add<'a> {
    /// First input.
    pub a: u16,
    /// Second input.
    pub b: u16,
    /// Output.
    pub output: u16,
    /// Arithmetic.
    #[serde(borrow)]
    pub params: AddParams<'a>,
}

/// One layer, in execution order.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub enum Layer<'a> {
    /// Quantized convolution.
    Conv(#[serde(borrow)] Conv<'a>),
    /// Dense layer to F32.
    Dense(#[serde(borrow)] Dense<'a>),
    /// Max pooling.
    MaxPool(Pool),
    /// Average pooling.
    AvgPool(Pool),
    /// Global average pooling to `[C, 1, 1]`; an F32 output holds the exact mean of the real
    /// values, a quantized one (same parameters as the input) the mean code rounded half up.
    GlobalAvgPool(Unary),
    /// Residual add.
    Add(#[serde(borrow)] Add<'a>),
    /// ReLU (codes clamp at the zero point; same dtype).
    Relu(Unary),
    /// Flatten `[C, H, W]` to `[C*H*W, 1, 1]`, same dtype and element order.
    Flatten(Unary),
}

impl Layer<'_> {
    /// Short lower-case name of the operation.
    pub fn op_name(&self) -> &'static str {
        match self {
            Layer::Conv(_) => "conv",
            Layer::Dense(_) => "dense",
            Layer::MaxPool(_) => "maxpool",
            Layer::AvgPool(_) => "avgpool",
            Layer::GlobalAvgPool(_) => "global_avgpool",
            Layer::Add(_) => "add",
            Layer::Relu(_) => "relu",
            Layer::Flatten(_) => "flatten",
        }
    }

    /// The tensors this layer reads (one or two).
    pub fn inputs(&self) -> [Option<u16>; 2] {
        match self {
            Layer::Conv(c) => [Some(c.input), None],
            Layer::Dense(d) => [Some(d.input), None],
            Layer::MaxPool(p) | Layer::AvgPool(p) => [Some(p.input), None],
            Layer::GlobalAvgPool(u) | Layer::Relu(u) | Layer::Flatten(u) => [Some(u.input), None],
            Layer::Add(a) => [Some(a.a), Some(a.b)],
        }
    }

    /// The tensor this layer writes.
    pub fn output(&self) -> u16 {
        match self {
            Layer::Conv(c) => c.output,
            Layer::Dense(d) => d.output,
            Layer::MaxPool(p) | Layer::AvgPool(p) => p.output,
            Layer::GlobalAvgPool(u) | Layer::Relu(u) | Layer::Flatten(u) => u.output,
            Layer::Add(a) => a.output,
        }
    }
}

/// The postcard payload. Tensors and layers are stored as byte blobs holding `count`
/// back-to-back postcard encodings, so that a reader needs no allocator and decodes them lazily.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub(crate) struct Payload<'a> {
    pub name: &'a str,
    #[serde(borrow)]
    pub input: InputSpec<'a>,
    pub tensor_count: u16,
    pub tensors: &'a [u8],
    pub layer_count: u16,
    pub layers: &'a [u8],
    pub output: u16,
}

/// A lazily decoded sequence of postcard records (the tensors or the layers of a [`Model`]).
/// Every record was decoded once by [`Model::parse`], so iteration cannot fail afterwards.
#[derive(Clone, Copy, Debug)]
pub struct Records<'a, T> {
    pub(crate) bytes: &'a [u8],
    pub(crate) count: u16,
    pub(crate) _t: PhantomData<T>,
}

impl<'a, T: Deserialize<'a>> Records<'a, T> {
    /// Number of records.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The records in order.
    pub fn iter(&self) -> RecordIter<'a, T> {
        RecordIter {
            rest: self.bytes,
            left: self.count,
            _t: PhantomData,
        }
    }

    /// Record `i` (a linear scan: cache it if you need random access in a hot loop).
    pub fn get(&self, i: usize) -> Option<T> {
        self.iter().nth(i)
    }
}

/// Iterator over [`Records`].
#[derive(Clone, Debug)]
pub struct RecordIter<'a, T> {
    rest: &'a [u8],
    left: u16,
    _t: PhantomData<T>,
}

impl<'a, T: Deserialize<'a>> Iterator for RecordIter<'a, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        if self.left == 0 {
            return None;
        }
        // Parsing already decoded every record; a failure here is impossible for a parsed model
        // and simply ends the iteration.
        match postcard::take_from_bytes::<T>(self.rest) {
            Ok((t, rest)) => {
                self.left -= 1;
                self.rest = rest;
                Some(t)
            }
            Err(_) => {
                self.left = 0;
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.left as usize))
    }
}

/// A parsed, fully validated model, borrowing from the file's bytes.
#[derive(Clone, Copy, Debug)]
pub struct Model<'a> {
    /// Free-form model name (architecture and quantization, as the exporter wrote it).
    pub name: &'a str,
    /// The input specification.
    pub input: InputSpec<'a>,
    /// The tensors, numbered from 0.
    pub tensors: Records<'a, TensorDesc>,
    /// The layers in execution order.
    pub layers: Records<'a, Layer<'a>>,
    /// The tensor holding the logits (F32, `[classes, 1, 1]`).
    pub output: u16,
    /// Format version the file was written with.
    pub version: u16,
}

impl<'a> Model<'a> {
    /// The tensor `id`.
    pub fn tensor(&self, id: u16) -> Option<TensorDesc> {
        self.tensors.get(id as usize)
    }
}
