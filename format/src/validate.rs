//! Parsing and validation of a model file.

use core::marker::PhantomData;

use crate::model::Payload;
use crate::{
    packed_len, Add, ChannelAffine, Conv, DType, Dense, DenseWeights, Error, Layer, Model, Records,
    Result, Shape, Site, TensorDesc, HEADER_LEN, MAGIC, TRAILER_LEN, VERSION,
};

/// Most tensors a model may have.
pub const MAX_TENSORS: usize = 1024;
/// Most layers a model may have.
pub const MAX_LAYERS: usize = 1024;

const MODEL: Site = Site::Model;

/// One bit per tensor: written yet?
struct Written([u64; MAX_TENSORS / 64]);

impl Written {
    fn get(&self, t: u16) -> bool {
        self.0[t as usize / 64] >> (t % 64) & 1 == 1
    }
    fn set(&mut self, t: u16) {
        self.0[t as usize / 64] |= 1 << (t % 64);
    }
}

impl<'a> Model<'a> {
    /// Parses and validates a model file from borrowed bytes. Every structural property the
    /// runtime relies on is checked here, so a `Model` can be executed without further checks.
    pub fn parse(bytes: &'a [u8]) -> Result<Model<'a>> {
        if bytes.len() < HEADER_LEN + TRAILER_LEN {
            if bytes.len() >= 4 && bytes[..4] != MAGIC {
                return Err(Error::BadMagic([bytes[0], bytes[1], bytes[2], bytes[3]]));
            }
            return Err(Error::Truncated {
                needed: HEADER_LEN + TRAILER_LEN,
                got: bytes.len(),
            });
        }
        let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if magic != MAGIC {
            return Err(Error::BadMagic(magic));
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version == 0 || version > VERSION {
            return Err(Error::UnsupportedVersion {
                found: version,
                supported: VERSION,
            });
        }
        let flags = u16::from_le_bytes([bytes[6], bytes[7]]);
        if flags != 0 {
            return Err(Error::UnknownFlags(flags));
        }
        let n = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
        let needed = HEADER_LEN
            .checked_add(n)
            .and_then(|x| x.checked_add(TRAILER_LEN))
            .ok_or(Error::Overflow {
                layer: MODEL,
                what: "payload length",
            })?;
        if bytes.len() < needed {
            return Err(Error::Truncated {
                needed,
                got: bytes.len(),
            });
        }
        if bytes.len() > needed {
            return Err(Error::TrailingBytes {
                extra: bytes.len() - needed,
            });
        }
        let payload = &bytes[HEADER_LEN..HEADER_LEN + n];
        let c = &bytes[HEADER_LEN + n..];
        let stored = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        let computed = crc32fast::hash(payload);
        if stored != computed {
            return Err(Error::ChecksumMismatch { stored, computed });
        }
        let (p, rest) = postcard::take_from_bytes::<Payload<'a>>(payload)
            .map_err(|_| Error::Malformed { what: "payload" })?;
        if !rest.is_empty() {
            return Err(Error::Malformed {
                what: "payload (trailing bytes)",
            });
        }
        let model = Model {
            name: p.name,
            input: p.input,
            tensors: Records {
                bytes: p.tensors,
                count: p.tensor_count,
                _t: PhantomData,
            },
            layers: Records {
                bytes: p.layers,
                count: p.layer_count,
                _t: PhantomData,
            },
            output: p.output,
            version,
        };
        model.validate()?;
        Ok(model)
    }

    fn validate(&self) -> Result<()> {
        if self.tensors.len() > MAX_TENSORS {
            return Err(Error::InvalidParam {
                layer: MODEL,
                what: "tensor count (more than 1024)",
            });
        }
        if self.layers.len() > MAX_LAYERS {
            return Err(Error::InvalidParam {
                layer: MODEL,
                what: "layer count (more than 1024)",
            });
        }
        // Every record decodes, exactly `count` of them, nothing left over.
        check_records::<TensorDesc>(self.tensors.bytes, self.tensors.count, "tensor table")?;
        check_records::<Layer<'a>>(self.layers.bytes, self.layers.count, "layer table")?;
        // Every tensor is valid, and all of them together (at four bytes an element, the widest
        // dtype) fit a 32-bit address space, so a planner summing tensor sizes in `u32` or a
        // 32-bit `usize` cannot overflow.
        let mut total: u64 = 0;
        for (i, t) in self.tensors.iter().enumerate() {
            check_tensor(Site::Tensor(i as u16), &t)?;
            total += u64::from(t.shape.elements().unwrap_or(0)) * 4;
        }
        if total > u64::from(u32::MAX) {
            return Err(Error::Overflow {
                layer: MODEL,
                what: "total tensor size",
            });
        }

        let mut written = Written([0; MAX_TENSORS / 64]);
        self.check_input()?;
        written.set(self.input.tensor);

        for (i, layer) in self.layers.iter().enumerate() {
            let li = i as u16;
            let read = |t: u16| -> Result<TensorDesc> {
                let d = self.tensor(t).ok_or(Error::UnknownTensor {
                    layer: Site::Layer(li),
                    tensor: t,
                })?;
                if !written.get(t) {
                    return Err(Error::Dataflow {
                        layer: Site::Layer(li),
                        tensor: t,
                        what: "is read before it is written",
                    });
                }
                Ok(d)
            };
            let ins = layer.inputs();
            let a = read(ins[0].unwrap_or(0))?;
            let b = match ins[1] {
                Some(t) => Some(read(t)?),
                None => None,
            };
            let out_id = layer.output();
            let out = self.tensor(out_id).ok_or(Error::UnknownTensor {
                layer: Site::Layer(li),
                tensor: out_id,
            })?;
            if written.get(out_id) {
                return Err(Error::Dataflow {
                    layer: Site::Layer(li),
                    tensor: out_id,
                    what: "is written twice",
                });
            }
            check_layer(Site::Layer(li), &layer, &a, b.as_ref(), &out)?;
            written.set(out_id);
        }

        let out = self.tensor(self.output).ok_or(Error::UnknownTensor {
            layer: MODEL,
            tensor: self.output,
        })?;
        if out.dtype != DType::F32 || !written.get(self.output) || self.output == self.input.tensor
        {
            return Err(Error::BadOutput);
        }
        if out.shape.h != 1 || out.shape.w != 1 {
            return Err(Error::BadOutput);
        }
        let classes = self.input.num_classes();
        if classes != 0 && classes != out.shape.c as usize {
            return Err(Error::InvalidParam {
                layer: MODEL,
                what: "class names (count differs from the output size)",
            });
        }
        Ok(())
    }

    fn check_input(&self) -> Result<()> {
        let inp = &self.input;
        let t = self.tensor(inp.tensor).ok_or(Error::UnknownTensor {
            layer: MODEL,
            tensor: inp.tensor,
        })?;
        if t.shape != inp.shape {
            return Err(Error::ShapeMismatch {
                layer: MODEL,
                what: "input tensor",
                expected: inp.shape,
                got: t.shape,
            });
        }
        let c = inp.shape.c as usize;
        check_len(MODEL, "input mean", inp.mean.0.len(), c * 4)?;
        check_len(MODEL, "input std", inp.std.0.len(), c * 4)?;
        if inp.std.iter().any(|s| !(s.is_finite() && s != 0.0))
            || inp.mean.iter().any(|m| !m.is_finite())
        {
            return Err(Error::InvalidParam {
                layer: MODEL,
                what: "input normalisation (std must be finite and non-zero)",
            });
        }
        match t.dtype {
            DType::Quant { .. } => {
                let lut_len = c.checked_mul(256).ok_or(Error::Overflow {
                    layer: MODEL,
                    what: "input lookup table size",
                })?;
                check_len(MODEL, "input lookup table", inp.lut.len(), lut_len)?;
                let qmax = t.dtype.qmax().unwrap_or(0);
                if inp.lut.iter().any(|&q| q as i32 > qmax) {
                    return Err(Error::InvalidParam {
                        layer: MODEL,
                        what: "input lookup table (code above the tensor's bits)",
                    });
                }
            }
            DType::F32 => check_len(MODEL, "input lookup table", inp.lut.len(), 0)?,
        }
        Ok(())
    }
}

fn check_records<'a, T: serde::Deserialize<'a>>(
    mut bytes: &'a [u8],
    count: u16,
    what: &'static str,
) -> Result<()> {
    for _ in 0..count {
        let (_, rest) =
            postcard::take_from_bytes::<T>(bytes).map_err(|_| Error::Malformed { what })?;
        bytes = rest;
    }
    if !bytes.is_empty() {
        return Err(Error::Malformed { what });
    }
    Ok(())
}

fn check_len(layer: Site, what: &'static str, got: usize, expected: usize) -> Result<()> {
    if got != expected {
        return Err(Error::Length {
            layer,
            what,
            expected,
            got,
        });
    }
    Ok(())
}

/// Checks tensor `t` (`at`: its id, for the errors).
fn check_tensor(at: Site, t: &TensorDesc) -> Result<()> {
    let elems = t.shape.elements().ok_or(Error::Overflow {
        layer: at,
        what: "tensor size",
    })?;
    if elems == 0 {
        return Err(Error::InvalidParam {
            layer: at,
            what: "tensor shape (a dimension is zero)",
        });
    }
    // Four bytes per element must fit the address space of a 32-bit target.
    if elems > u32::MAX / 4 {
        return Err(Error::Overflow {
            layer: at,
            what: "tensor size",
        });
    }
    if let DType::Quant {
        scale,
        zero_point,
        bits,
    } = t.dtype
    {
        if !matches!(bits, 1 | 2 | 4 | 8) {
            return Err(Error::BadBits {
                layer: at,
                what: "activation",
                bits,
            });
        }
        if !(scale.is_finite() && scale > 0.0) {
            return Err(Error::InvalidParam {
                layer: at,
                what: "tensor scale (must be finite and positive)",
            });
        }
        let qmax = (1i32 << bits) - 1;
        if !(0..=qmax).contains(&zero_point) || (bits == 1 && zero_point != 0) {
            return Err(Error::InvalidParam {
                layer: at,
                what: "tensor zero point (outside the code range)",
            });
        }
    }
    Ok(())
}

fn shape_eq(layer: Site, what: &'static str, expected: Shape, got: Shape) -> Result<()> {
    if expected != got {
        return Err(Error::ShapeMismatch {
            layer,
            what,
            expected,
            got,
        });
    }
    Ok(())
}

fn check_shift(layer: Site, shift: u8) -> Result<()> {
    if !(1..=62).contains(&shift) {
        return Err(Error::InvalidParam {
            layer,
            what: "requantization shift (must be 1..=62)",
        });
    }
    Ok(())
}

fn quant_bits(layer: Site, what: &'static str, d: &DType) -> Result<u8> {
    match *d {
        DType::Quant { bits, .. } => Ok(bits),
        DType::F32 => Err(Error::InvalidParam { layer, what }),
    }
}

fn check_affine(layer: Site, a: &ChannelAffine<'_>, channels: u32) -> Result<()> {
    check_shift(layer, a.shift)?;
    let n = channels as usize * 4;
    check_len(layer, "per-channel multipliers", a.mult.0.len(), n)?;
    check_len(layer, "per-channel biases", a.bias.0.len(), n)
}

fn check_conv(l: Site, c: &Conv<'_>, a: &TensorDesc, out: &TensorDesc) -> Result<()> {
    let in_bits = quant_bits(l, "conv input (must be quantized)", &a.dtype)?;
    let out_bits = quant_bits(l, "conv output (must be quantized)", &out.dtype)?;
    if !matches!(c.weight_bits, 1 | 2 | 4) {
        return Err(Error::BadBits {
            layer: l,
            what: "weight",
            bits: c.weight_bits,
        });
    }
    if c.groups == 0
        || c.in_channels == 0
        || c.out_channels == 0
        || !c.in_channels.is_multiple_of(c.groups)
        || !c.out_channels.is_multiple_of(c.groups)
    {
        return Err(Error::InvalidParam {
            layer: l,
            what: "groups (must divide both channel counts)",
        });
    }
    if c.stride.contains(&0) || c.kernel.contains(&0) {
        return Err(Error::InvalidParam {
            layer: l,
            what: "kernel or stride (zero)",
        });
    }
    if c.in_channels != a.shape.c {
        return Err(Error::ShapeMismatch {
            layer: l,
            what: "conv input",
            expected: Shape::new(c.in_channels, a.shape.h, a.shape.w),
            got: a.shape,
        });
    }
    let expected = c.output_shape(a.shape).ok_or(Error::InvalidParam {
        layer: l,
        what: "kernel (larger than the padded input)",
    })?;
    shape_eq(l, "conv output", expected, out.shape)?;
    check_codes(l, c)?;
    let _ = in_bits;
    check_stages(l, c, out, out_bits)
}

/// A conv's packed weight codes: their length, zero bits past the input channels, and an
/// accumulator that fits `i32`.
fn check_codes(l: Site, c: &Conv<'_>) -> Result<()> {
    let need = packed_len(c.out_channels, c.kernel, c.in_per_group(), c.weight_bits).ok_or(
        Error::Overflow {
            layer: l,
            what: "packed weight size",
        },
    )?;
    check_len(l, "packed weight codes", c.codes.len(), need)?;
    // Bits past the input channels in each row's last byte are zero (the popcount kernels
    // count them otherwise: an XOR with the zero activation bits there would set them).
    let used = c.in_per_group() % 8;
    if used != 0 {
        let row = (c.in_per_group() as usize).div_ceil(8);
        let mask = !((1u8 << used) - 1);
        if c.codes.chunks_exact(row).any(|r| r[row - 1] & mask != 0) {
            return Err(Error::InvalidParam {
                layer: l,
                what: "packed weight codes (bits past the input channels must be zero)",
            });
        }
    }
    // The accumulator must fit i32: |c| <= 15, |q - zp| <= 255 per term. (The length check
    // above already bounds `terms` by the file size; saturate anyway so that this check can
    // never overflow on its own.)
    let terms = u64::from(c.in_per_group())
        .saturating_mul(u64::from(c.kernel[0]))
        .saturating_mul(u64::from(c.kernel[1]));
    if terms.saturating_mul(15 * 255) > i32::MAX as u64 {
        return Err(Error::Overflow {
            layer: l,
            what: "accumulator (kernel too large for 32 bits)",
        });
    }
    Ok(())
}

/// A conv's requantization into `out` (`out_bits` its codes' width): the raw stage, then the
/// affine stage or an output that is the raw quantization.
fn check_stages(l: Site, c: &Conv<'_>, out: &TensorDesc, out_bits: u8) -> Result<()> {
    let r = &c.requant.raw;
    check_shift(l, r.shift)?;
    if !matches!(r.bits, 2 | 4 | 8) {
        return Err(Error::BadBits {
            layer: l,
            what: "raw output",
            bits: r.bits,
        });
    }
    let zp_ok = (0..(1i32 << r.bits)).contains(&r.zero_point);
    if !(zp_ok && r.scale.is_finite() && r.scale > 0.0) {
        return Err(Error::InvalidParam {
            layer: l,
            what: "raw output quantization",
        });
    }
    match &c.requant.affine {
        Some(aff) => {
            check_affine(l, aff, c.out_channels)?;
            if out_bits == 1 && aff.relu {
                return Err(Error::InvalidParam {
                    layer: l,
                    what: "ReLU into a 1-bit (sign) output",
                });
            }
        }
        None => {
            let raw = DType::Quant {
                scale: r.scale,
                zero_point: r.zero_point,
                bits: r.bits,
            };
            if out.dtype != raw {
                return Err(Error::InvalidParam {
                    layer: l,
                    what:
                        "output dtype (without an affine stage it must equal the raw quantization)",
                });
            }
        }
    }
    Ok(())
}

/// A dense layer: an F32 output, and finite weights, scales and biases of the right lengths.
fn check_dense(l: Site, d: &Dense<'_>, a: &TensorDesc, out: &TensorDesc) -> Result<()> {
    let inf = a.shape.elements().unwrap_or(0) as usize;
    let outf = out.shape.c as usize;
    if out.dtype != DType::F32 {
        return Err(Error::InvalidParam {
            layer: l,
            what: "dense output (must be F32)",
        });
    }
    shape_eq(l, "dense output", Shape::new(out.shape.c, 1, 1), out.shape)?;
    let n = inf.checked_mul(outf).ok_or(Error::Overflow {
        layer: l,
        what: "dense weights",
    })?;
    match &d.weights {
        DenseWeights::F32(w) => {
            check_len(
                l,
                "dense weights",
                w.0.len(),
                n.checked_mul(4).ok_or(Error::Overflow {
                    layer: l,
                    what: "dense weights",
                })?,
            )?;
            if w.iter().any(|x| !x.is_finite()) {
                return Err(Error::InvalidParam {
                    layer: l,
                    what: "dense weights (not finite)",
                });
            }
        }
        DenseWeights::Int8 { values, scale } => {
            check_len(l, "dense int8 weights", values.len(), n)?;
            check_len(l, "dense scales", scale.0.len(), outf * 4)?;
            if scale.iter().any(|x| !x.is_finite()) {
                return Err(Error::InvalidParam {
                    layer: l,
                    what: "dense scales (not finite)",
                });
            }
        }
    }
    check_len(l, "dense bias", d.bias.0.len(), outf * 4)?;
    if d.bias.iter().any(|x| !x.is_finite()) {
        return Err(Error::InvalidParam {
            layer: l,
            what: "dense bias (not finite)",
        });
    }
    Ok(())
}

/// A residual add: equal shapes, quantized tensors, and per-channel parameters of the right
/// lengths.
fn check_add(
    l: Site,
    add: &Add<'_>,
    a: &TensorDesc,
    b: Option<&TensorDesc>,
    out: &TensorDesc,
) -> Result<()> {
    let b = b.ok_or(Error::Malformed { what: "add" })?;
    shape_eq(l, "add input b", a.shape, b.shape)?;
    shape_eq(l, "add output", a.shape, out.shape)?;
    quant_bits(l, "add input a (must be quantized)", &a.dtype)?;
    quant_bits(l, "add input b (must be quantized)", &b.dtype)?;
    let ob = quant_bits(l, "add output (must be quantized)", &out.dtype)?;
    let p = &add.params;
    check_shift(l, p.shift)?;
    let n = a.shape.c as usize * 4;
    check_len(l, "add multipliers a", p.mult_a.0.len(), n)?;
    check_len(l, "add multipliers b", p.mult_b.0.len(), n)?;
    check_len(l, "add biases", p.bias.0.len(), n)?;
    if ob == 1 && p.relu {
        return Err(Error::InvalidParam {
            layer: l,
            what: "ReLU into a 1-bit (sign) output",
        });
    }
    Ok(())
}

fn check_pool(l: Site, p: &crate::Pool, avg: bool, a: &TensorDesc, out: &TensorDesc) -> Result<()> {
    if p.stride.contains(&0) || p.kernel.contains(&0) {
        return Err(Error::InvalidParam {
            layer: l,
            what: "pool kernel or stride (zero)",
        });
    }
    // Widened: `padding * 2` overflows u16 for padding >= 32768.
    if u32::from(p.padding[0]) * 2 > u32::from(p.kernel[0])
        || u32::from(p.padding[1]) * 2 > u32::from(p.kernel[1])
    {
        return Err(Error::InvalidParam {
            layer: l,
            what: "pool padding (more than half the window)",
        });
    }
    let expected = p.output_shape(a.shape).ok_or(Error::InvalidParam {
        layer: l,
        what: "pool window (larger than the padded input)",
    })?;
    shape_eq(l, "pool output", expected, out.shape)?;
    same_dtype(l, a, out)?;
    // Average pooling counts padded positions as real 0, which a 1-bit (sign) code cannot hold.
    if avg && p.padding != [0, 0] {
        if let DType::Quant { bits: 1, .. } = a.dtype {
            return Err(Error::InvalidParam {
                layer: l,
                what: "average pool padding on a 1-bit (sign) tensor",
            });
        }
    }
    Ok(())
}

fn same_dtype(l: Site, a: &TensorDesc, out: &TensorDesc) -> Result<()> {
    if a.dtype != out.dtype {
        return Err(Error::InvalidParam {
            layer: l,
            what: "output dtype (must equal the input's)",
        });
    }
    Ok(())
}

fn check_layer(
    l: Site,
    layer: &Layer<'_>,
    a: &TensorDesc,
    b: Option<&TensorDesc>,
    out: &TensorDesc,
) -> Result<()> {
    match layer {
        Layer::Conv(c) => check_conv(l, c, a, out),
        Layer::Dense(d) => check_dense(l, d, a, out),
        Layer::MaxPool(p) => check_pool(l, p, false, a, out),
        Layer::AvgPool(p) => check_pool(l, p, true, a, out),
        Layer::GlobalAvgPool(_) => {
            shape_eq(l, "pool output", Shape::new(a.shape.c, 1, 1), out.shape)?;
            if out.dtype != DType::F32 {
                same_dtype(l, a, out)?;
            }
            Ok(())
        }
        Layer::Relu(_) => {
            shape_eq(l, "relu output", a.shape, out.shape)?;
            same_dtype(l, a, out)?;
            if let DType::Quant { bits: 1, .. } = a.dtype {
                return Err(Error::InvalidParam {
                    layer: l,
                    what: "ReLU of a 1-bit (sign) tensor",
                });
            }
            Ok(())
        }
        Layer::Flatten(_) => {
            let n = a.shape.elements().unwrap_or(0);
            shape_eq(l, "flatten output", Shape::new(n, 1, 1), out.shape)?;
            same_dtype(l, a, out)
        }
        Layer::Add(add) => check_add(l, add, a, b, out),
    }
}
