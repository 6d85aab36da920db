//! The one way to write a model file (needs `alloc`): [`ModelBuilder`] owns the tensors and the
//! layers, each layer's parameter arrays in owned buffers ([`OwnedLayer`]), and
//! [`ModelBuilder::build`] encodes them and validates the file with [`Model::parse`]. The
//! trainer's export, the synthetic models, the tests and the fuzz seeds all build through it.

use alloc::string::String;
use alloc::vec::Vec;

use crate::encode::{encode_unchecked, ModelSpec};
use crate::{
    Add, AddParams, ChannelAffine, Conv, DType, Dense, DenseWeights, Error, F32s, I32s, InputSpec,
    Layer, Model, Pool, RawQuant, Requant, Result, Shape, Site, TensorDesc, Unary,
};

/// The owned form of [`InputSpec`]; arrays hold little-endian bytes, as in the file.
#[derive(Clone, Debug, PartialEq)]
pub struct OwnedInput {
    /// Image shape (channels, height, width).
    pub shape: Shape,
    /// Per-channel mean (`f32` bytes, see [`crate::f32_bytes`]).
    pub mean: Vec<u8>,
    /// Per-channel standard deviation (`f32` bytes).
    pub std: Vec<u8>,
    /// Class names, one per line.
    pub classes: String,
    /// The tensor the image becomes.
    pub tensor: u16,
    /// The look-up table of a quantized input tensor (`C * 256` codes; empty for F32).
    pub lut: Vec<u8>,
}

/// The owned form of [`ChannelAffine`] (stage 2 of a conv's requantization).
#[derive(Clone, Debug, PartialEq)]
pub struct OwnedAffine {
    /// Right shift.
    pub shift: u8,
    /// Per-channel multiplier (`i32` bytes, see [`crate::i32_bytes`]).
    pub mult: Vec<u8>,
    /// Per-channel bias (`i32` bytes).
    pub bias: Vec<u8>,
    /// Clamp at the output zero point.
    pub relu: bool,
}

/// The owned form of [`Requant`].
#[derive(Clone, Debug, PartialEq)]
pub struct OwnedRequant {
    /// Stage 1.
    pub raw: RawQuant,
    /// Stage 2, if any.
    pub affine: Option<OwnedAffine>,
}

/// The owned form of [`Conv`]: the same fields, the packed codes in a buffer of their own.
#[derive(Clone, Debug, PartialEq)]
pub struct OwnedConv {
    /// Input tensor.
    pub input: u16,
    /// Output tensor.
    pub output: u16,
    /// Output channels.
    pub out_channels: u32,
    /// Input channels (all groups).
    pub in_channels: u32,
    /// Kernel height and width.
    pub kernel: [u16; 2],
    /// Stride.
    pub stride: [u16; 2],
    /// Padding.
    pub padding: [u16; 2],
    /// Groups.
    pub groups: u32,
    /// Weight code width.
    pub weight_bits: u8,
    /// Packed codes (see [`crate::pack_codes`]).
    pub codes: Vec<u8>,
    /// Requantization.
    pub requant: OwnedRequant,
}

/// The owned form of [`DenseWeights`].
#[derive(Clone, Debug, PartialEq)]
pub enum OwnedDenseWeights {
    /// Float weights (`f32` bytes).
    F32(Vec<u8>),
    /// Signed 8-bit weights with a per-output scale.
    Int8 {
        /// The int8 values (as bytes).
        values: Vec<u8>,
        /// Per-output scale (`f32` bytes).
        scale: Vec<u8>,
    },
}

/// The owned form of [`Dense`].
#[derive(Clone, Debug, PartialEq)]
pub struct OwnedDense {
    /// Input tensor.
    pub input: u16,
    /// Output tensor.
    pub output: u16,
    /// Weights.
    pub weights: OwnedDenseWeights,
    /// Per-output bias (`f32` bytes).
    pub bias: Vec<u8>,
}

/// The owned form of [`AddParams`].
#[derive(Clone, Debug, PartialEq)]
pub struct OwnedAddParams {
    /// Right shift.
    pub shift: u8,
    /// Per-channel multiplier of input `a` (`i32` bytes).
    pub mult_a: Vec<u8>,
    /// Per-channel multiplier of input `b` (`i32` bytes).
    pub mult_b: Vec<u8>,
    /// Per-channel bias (`i32` bytes).
    pub bias: Vec<u8>,
    /// ReLU after the sum.
    pub relu: bool,
}

/// The owned form of [`Add`].
#[derive(Clone, Debug, PartialEq)]
pub struct OwnedAdd {
    /// First input.
    pub a: u16,
    /// Second input.
    pub b: u16,
    /// Output.
    pub output: u16,
    /// Arithmetic.
    pub params: OwnedAddParams,
}

/// The owned form of [`Layer`]; [`OwnedLayer::as_layer`] borrows it back.
#[derive(Clone, Debug, PartialEq)]
pub enum OwnedLayer {
    /// Quantized convolution.
    Conv(OwnedConv),
    /// Dense layer to F32.
    Dense(OwnedDense),
    /// Max pooling.
    MaxPool(Pool),
    /// Average pooling.
    AvgPool(Pool),
    /// Global average pooling.
    GlobalAvgPool(Unary),
    /// Residual add.
    Add(OwnedAdd),
    /// ReLU.
    Relu(Unary),
    /// Flatten.
    Flatten(Unary),
}

impl OwnedInput {
    /// The borrowed view.
    pub fn as_spec(&self) -> InputSpec<'_> {
        InputSpec {
            shape: self.shape,
            mean: F32s(&self.mean),
            std: F32s(&self.std),
            classes: &self.classes,
            tensor: self.tensor,
            lut: &self.lut,
        }
    }
}

impl From<InputSpec<'_>> for OwnedInput {
    fn from(i: InputSpec<'_>) -> Self {
        OwnedInput {
            shape: i.shape,
            mean: i.mean.0.into(),
            std: i.std.0.into(),
            classes: i.classes.into(),
            tensor: i.tensor,
            lut: i.lut.into(),
        }
    }
}

impl OwnedAffine {
    fn as_affine(&self) -> ChannelAffine<'_> {
        ChannelAffine {
            shift: self.shift,
            mult: I32s(&self.mult),
            bias: I32s(&self.bias),
            relu: self.relu,
        }
    }
}

impl OwnedConv {
    /// The borrowed view (for its geometry: [`Conv::output_shape`], [`Conv::in_per_group`]).
    pub fn as_conv(&self) -> Conv<'_> {
        Conv {
            input: self.input,
            output: self.output,
            out_channels: self.out_channels,
            in_channels: self.in_channels,
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
            groups: self.groups,
            weight_bits: self.weight_bits,
            codes: &self.codes,
            requant: Requant {
                raw: self.requant.raw,
                affine: self.requant.affine.as_ref().map(OwnedAffine::as_affine),
            },
        }
    }
}

impl From<Conv<'_>> for OwnedConv {
    fn from(c: Conv<'_>) -> Self {
        OwnedConv {
            input: c.input,
            output: c.output,
            out_channels: c.out_channels,
            in_channels: c.in_channels,
            kernel: c.kernel,
            stride: c.stride,
            padding: c.padding,
            groups: c.groups,
            weight_bits: c.weight_bits,
            codes: c.codes.into(),
            requant: OwnedRequant {
                raw: c.requant.raw,
                affine: c.requant.affine.map(|a| OwnedAffine {
                    shift: a.shift,
                    mult: a.mult.0.into(),
                    bias: a.bias.0.into(),
                    relu: a.relu,
                }),
            },
        }
    }
}

impl OwnedLayer {
    /// The borrowed view, as [`Model::parse`] would return it.
    pub fn as_layer(&self) -> Layer<'_> {
        match self {
            OwnedLayer::Conv(c) => Layer::Conv(c.as_conv()),
            OwnedLayer::Dense(d) => Layer::Dense(Dense {
                input: d.input,
                output: d.output,
                weights: match &d.weights {
                    OwnedDenseWeights::F32(w) => DenseWeights::F32(F32s(w)),
                    OwnedDenseWeights::Int8 { values, scale } => DenseWeights::Int8 {
                        values,
                        scale: F32s(scale),
                    },
                },
                bias: F32s(&d.bias),
            }),
            OwnedLayer::MaxPool(p) => Layer::MaxPool(*p),
            OwnedLayer::AvgPool(p) => Layer::AvgPool(*p),
            OwnedLayer::GlobalAvgPool(u) => Layer::GlobalAvgPool(*u),
            OwnedLayer::Add(a) => Layer::Add(Add {
                a: a.a,
                b: a.b,
                output: a.output,
                params: AddParams {
                    shift: a.params.shift,
                    mult_a: I32s(&a.params.mult_a),
                    mult_b: I32s(&a.params.mult_b),
                    bias: I32s(&a.params.bias),
                    relu: a.params.relu,
                },
            }),
            OwnedLayer::Relu(u) => Layer::Relu(*u),
            OwnedLayer::Flatten(u) => Layer::Flatten(*u),
        }
    }

    /// The tensor this layer writes.
    pub fn output(&self) -> u16 {
        self.as_layer().output()
    }
}

impl From<Layer<'_>> for OwnedLayer {
    fn from(l: Layer<'_>) -> Self {
        match l {
            Layer::Conv(c) => OwnedLayer::Conv(c.into()),
            Layer::Dense(d) => OwnedLayer::Dense(OwnedDense {
                input: d.input,
                output: d.output,
                weights: match d.weights {
                    DenseWeights::F32(w) => OwnedDenseWeights::F32(w.0.into()),
                    DenseWeights::Int8 { values, scale } => OwnedDenseWeights::Int8 {
                        values: values.into(),
                        scale: scale.0.into(),
                    },
                },
                bias: d.bias.0.into(),
            }),
            Layer::MaxPool(p) => OwnedLayer::MaxPool(p),
            Layer::AvgPool(p) => OwnedLayer::AvgPool(p),
            Layer::GlobalAvgPool(u) => OwnedLayer::GlobalAvgPool(u),
            Layer::Add(a) => OwnedLayer::Add(OwnedAdd {
                a: a.a,
                b: a.b,
                output: a.output,
                params: OwnedAddParams {
                    shift: a.params.shift,
                    mult_a: a.params.mult_a.0.into(),
                    mult_b: a.params.mult_b.0.into(),
                    bias: a.params.bias.0.into(),
                    relu: a.params.relu,
                },
            }),
            Layer::Relu(u) => OwnedLayer::Relu(u),
            Layer::Flatten(u) => OwnedLayer::Flatten(u),
        }
    }
}

/// A model under construction: everything a model file holds, owned.
///
/// Tensors are numbered by position ([`ModelBuilder::tensor`] returns the id), layers run in
/// the order they were pushed. The fields are public so that tests can edit a valid model into
/// a broken one and write it with [`ModelBuilder::build_unchecked`].
#[derive(Clone, Debug, PartialEq)]
pub struct ModelBuilder {
    /// Free-form name.
    pub name: String,
    /// The input specification.
    pub input: OwnedInput,
    /// Tensors, numbered by position.
    pub tensors: Vec<TensorDesc>,
    /// Layers in execution order.
    pub layers: Vec<OwnedLayer>,
    /// The logits tensor.
    pub output: u16,
}

impl ModelBuilder {
    /// A model with this input and no tensors or layers yet; the output is tensor 0 until the
    /// `output` field is set.
    pub fn new(name: impl Into<String>, input: OwnedInput) -> Self {
        ModelBuilder {
            name: name.into(),
            input,
            tensors: Vec::new(),
            layers: Vec::new(),
            output: 0,
        }
    }

    /// The editable form of a parsed model (which builds back to the same bytes).
    pub fn from_model(m: &Model<'_>) -> Self {
        ModelBuilder {
            name: m.name.into(),
            input: m.input.into(),
            tensors: m.tensors.iter().collect(),
            layers: m.layers.iter().map(OwnedLayer::from).collect(),
            output: m.output,
        }
    }

    /// Adds a tensor and returns its id (an error past `u16::MAX` tensors).
    pub fn tensor(&mut self, shape: Shape, dtype: DType) -> Result<u16> {
        let id = u16::try_from(self.tensors.len()).map_err(|_| Error::InvalidParam {
            layer: Site::Model,
            what: "tensor count (more than 65535)",
        })?;
        self.tensors.push(TensorDesc { shape, dtype });
        Ok(id)
    }

    /// Appends a layer.
    pub fn layer(&mut self, layer: OwnedLayer) {
        self.layers.push(layer);
    }

    /// The conv at layer `i`, if that layer is one.
    pub fn conv_mut(&mut self, i: usize) -> Option<&mut OwnedConv> {
        match self.layers.get_mut(i) {
            Some(OwnedLayer::Conv(c)) => Some(c),
            _ => None,
        }
    }

    /// Encodes the model file and validates it with [`Model::parse`], so that a writer can
    /// never produce a file the reader rejects.
    pub fn build(&self) -> Result<Vec<u8>> {
        let bytes = self.build_unchecked()?;
        Model::parse(&bytes)?;
        Ok(bytes)
    }

    /// Encodes the model file *without* validating it: the container (header, length, CRC) is
    /// correct but the description may break any rule of [`Model::parse`]. For tests and fuzz
    /// seeds that need deliberately invalid files; writers of real models use
    /// [`ModelBuilder::build`].
    pub fn build_unchecked(&self) -> Result<Vec<u8>> {
        let layers: Vec<Layer<'_>> = self.layers.iter().map(OwnedLayer::as_layer).collect();
        encode_unchecked(&ModelSpec {
            name: &self.name,
            input: self.input.as_spec(),
            tensors: &self.tensors,
            layers: &layers,
            output: self.output,
        })
    }
}
