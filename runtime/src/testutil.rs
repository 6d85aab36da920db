//! Building small synthetic models for tests (buffers are leaked: tests only).

use slb_format::{
    encode, f32_bytes, i32_bytes, pack_codes, AddParams, ChannelAffine, Conv, DType, Dense,
    DenseWeights, F32s, I32s, InputSpec, Layer, ModelSpec, Pool, RawQuant, Requant, Shape,
    TensorDesc, Unary,
};

pub(crate) fn leak<T>(v: Vec<T>) -> &'static [T] {
    Box::leak(v.into_boxed_slice())
}

/// A tiny deterministic generator (xorshift), so tests need no RNG crate beyond proptest.
pub(crate) struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn range_i32(&mut self, lo: i32, hi: i32) -> i32 {
        lo + self.below((hi - lo + 1) as u64) as i32
    }
}

pub(crate) fn quant(bits: u8, zp: i32, scale: f32) -> DType {
    DType::Quant {
        scale,
        zero_point: zp,
        bits,
    }
}

/// Incremental model builder.
pub(crate) struct Builder {
    pub tensors: Vec<TensorDesc>,
    pub layers: Vec<Layer<'static>>,
    pub input: InputSpec<'static>,
    pub rng: Rng,
}

impl Builder {
    /// Input image `c x h x w` into a quantized tensor (`bits`, zp) through a random LUT, or
    /// into an f32 tensor when `bits == 0`.
    pub fn new(c: u32, h: u32, w: u32, bits: u8, zp: i32, seed: u64) -> Builder {
        let mut rng = Rng(seed | 1);
        let shape = Shape::new(c, h, w);
        let dtype = if bits == 0 {
            DType::F32
        } else {
            quant(bits, zp, 0.05)
        };
        let lut: &'static [u8] = if bits == 0 {
            &[]
        } else {
            let qmax = (1u64 << bits) - 1;
            leak(
                (0..c as usize * 256)
                    .map(|_| rng.below(qmax + 1) as u8)
                    .collect(),
            )
        };
        let mean = leak(f32_bytes(&vec![0.5; c as usize]));
        let std = leak(f32_bytes(&vec![0.25; c as usize]));
        Builder {
            tensors: vec![TensorDesc { shape, dtype }],
            layers: vec![],
            input: InputSpec {
                shape,
                mean: F32s(mean),
                std: F32s(std),
                classes: "",
                tensor: 0,
                lut,
            },
            rng,
        }
    }

    pub fn tensor(&mut self, shape: Shape, dtype: DType) -> u16 {
        self.tensors.push(TensorDesc { shape, dtype });
        (self.tensors.len() - 1) as u16
    }

    pub fn shape(&self, t: u16) -> Shape {
        self.tensors[t as usize].shape
    }

    fn i32s(&mut self, n: usize, lo: i32, hi: i32) -> I32s<'static> {
        let v: Vec<i32> = (0..n).map(|_| self.rng.range_i32(lo, hi)).collect();
        I32s(leak(i32_bytes(&v)))
    }

    /// A conv with random codes and requantization; `affine` adds a random stage 2 into
    /// `out_bits` (else the output holds the 8-bit raw codes).
    #[allow(clippy::too_many_arguments)]
    pub fn conv(
        &mut self,
        input: u16,
        cout: u32,
        k: u16,
        stride: u16,
        pad: u16,
        groups: u32,
        wbits: u8,
        out_bits: u8,
        affine: bool,
        relu: bool,
    ) -> u16 {
        let ish = self.shape(input);
        let cin_g = ish.c / groups;
        let n = (cout * k as u32 * k as u32 * cin_g) as usize;
        let codes: Vec<u8> = (0..n).map(|_| self.rng.below(1 << wbits) as u8).collect();
        let packed = leak(pack_codes(&codes, cout, [k, k], cin_g, wbits).unwrap());
        let taps = (k as u32 * k as u32 * cin_g) as f64;
        // Scale the raw quantizer to the accumulator's typical size (sqrt(taps) * spread).
        let shift = 20u8;
        let mult = ((1u64 << shift) as f64 * 8.0 / (taps.sqrt() * 4.0 * (1 << wbits) as f64))
            .max(1.0) as i32;
        let raw = RawQuant {
            mult,
            shift,
            zero_point: 128,
            bits: 8,
            scale: 0.1,
        };
        let (odt, aff) = if affine {
            let zp = if out_bits == 1 {
                0
            } else {
                self.rng.range_i32(0, (1 << out_bits) / 2)
            };
            let mult = self.i32s(cout as usize, 1 << 10, 1 << 12);
            let bias = self.i32s(cout as usize, -(1 << 14), 1 << 14);
            (
                quant(out_bits, zp, 0.07),
                Some(ChannelAffine {
                    shift: 12,
                    mult,
                    bias,
                    relu: relu && out_bits != 1,
                }),
            )
        } else {
            (quant(8, 128, 0.1), None)
        };
        let osh = Shape::new(
            cout,
            (ish.h + 2 * pad as u32 - k as u32) / stride as u32 + 1,
            (ish.w + 2 * pad as u32 - k as u32) / stride as u32 + 1,
        );
        let output = self.tensor(osh, odt);
        self.layers.push(Layer::Conv(Conv {
            input,
            output,
            out_channels: cout,
            in_channels: ish.c,
            kernel: [k, k],
            stride: [stride, stride],
            padding: [pad, pad],
            groups,
            weight_bits: wbits,
            codes: packed,
            requant: Requant { raw, affine: aff },
        }));
        output
    }

    pub fn add(&mut self, a: u16, b: u16, out_bits: u8, relu: bool) -> u16 {
        let sh = self.shape(a);
        let c = sh.c as usize;
        let zp = if out_bits == 1 {
            0
        } else {
            self.rng.range_i32(0, (1 << out_bits) / 2)
        };
        let output = self.tensor(sh, quant(out_bits, zp, 0.07));
        let mult_a = self.i32s(c, 1 << 9, 1 << 11);
        let mult_b = self.i32s(c, 1 << 9, 1 << 11);
        let bias = self.i32s(c, -(1 << 12), 1 << 12);
        self.layers.push(Layer::Add(slb_format::Add {
            a,
            b,
            output,
            params: AddParams {
                shift: 11,
                mult_a,
                mult_b,
                bias,
                relu: relu && out_bits != 1,
            },
        }));
        output
    }

    pub fn pool(&mut self, input: u16, k: u16, stride: u16, pad: u16, max: bool) -> u16 {
        let sh = self.shape(input);
        let dt = self.tensors[input as usize].dtype;
        let osh = Shape::new(
            sh.c,
            (sh.h + 2 * pad as u32 - k as u32) / stride as u32 + 1,
            (sh.w + 2 * pad as u32 - k as u32) / stride as u32 + 1,
        );
        let output = self.tensor(osh, dt);
        let p = Pool {
            input,
            output,
            kernel: [k, k],
            stride: [stride, stride],
            padding: [pad, pad],
        };
        self.layers.push(if max {
            Layer::MaxPool(p)
        } else {
            Layer::AvgPool(p)
        });
        output
    }

    pub fn unary(&mut self, input: u16, kind: &str) -> u16 {
        let sh = self.shape(input);
        let dt = self.tensors[input as usize].dtype;
        let (osh, odt) = match kind {
            "gap_f32" => (Shape::new(sh.c, 1, 1), DType::F32),
            "gap" => (Shape::new(sh.c, 1, 1), dt),
            "flatten" => (Shape::new(sh.c * sh.h * sh.w, 1, 1), dt),
            _ => (sh, dt),
        };
        let output = self.tensor(osh, odt);
        let u = Unary { input, output };
        self.layers.push(match kind {
            "gap_f32" | "gap" => Layer::GlobalAvgPool(u),
            "flatten" => Layer::Flatten(u),
            _ => Layer::Relu(u),
        });
        output
    }

    pub fn dense(&mut self, input: u16, out: u32, int8: bool) -> u16 {
        let n = self.shape(input).elements().unwrap() as usize * out as usize;
        let output = self.tensor(Shape::new(out, 1, 1), DType::F32);
        let weights = if int8 {
            let v: Vec<u8> = (0..n).map(|_| self.rng.next() as u8).collect();
            let s: Vec<f32> = (0..out).map(|i| 0.01 + i as f32 * 0.001).collect();
            DenseWeights::Int8 {
                values: leak(v),
                scale: F32s(leak(f32_bytes(&s))),
            }
        } else {
            let v: Vec<f32> = (0..n)
                .map(|_| (self.rng.below(2001) as f32 - 1000.0) / 1000.0)
                .collect();
            DenseWeights::F32(F32s(leak(f32_bytes(&v))))
        };
        let b: Vec<f32> = (0..out).map(|i| i as f32 * 0.1).collect();
        self.layers.push(Layer::Dense(Dense {
            input,
            output,
            weights,
            bias: F32s(leak(f32_bytes(&b))),
        }));
        output
    }

    /// Encodes the model (output: the last layer's output).
    pub fn finish(self) -> &'static [u8] {
        let output = self.layers.last().unwrap().output();
        let spec = ModelSpec {
            name: "test",
            input: self.input,
            tensors: &self.tensors,
            layers: &self.layers,
            output,
        };
        leak(encode(&spec).expect("valid test model"))
    }
}

/// A ResNet-shaped model (CIFAR, basic blocks), `width` channels at stage 1, `blocks` per
/// stage, four stages, weights `wbits`, activations `abits`, first conv's input 8 bits.
pub(crate) fn resnet(
    width: u32,
    hw: u32,
    blocks: usize,
    wbits: u8,
    abits: u8,
    seed: u64,
) -> &'static [u8] {
    let mut b = Builder::new(3, hw, hw, 8, 128, seed);
    let mut x = b.conv(0, width, 3, 1, 1, 1, wbits, abits, true, true);
    let mut c = width;
    for stage in 0..4 {
        for blk in 0..blocks {
            let stride = if stage > 0 && blk == 0 { 2 } else { 1 };
            let co = if stage > 0 && blk == 0 { c * 2 } else { c };
            let y = b.conv(x, co, 3, stride, 1, 1, wbits, abits, true, true);
            let y = b.conv(y, co, 3, 1, 1, 1, wbits, 8, false, false);
            let sc = if stride != 1 || co != c {
                b.conv(x, co, 1, stride, 0, 1, wbits, 8, false, false)
            } else {
                x
            };
            x = b.add(y, sc, abits, true);
            c = co;
        }
    }
    let g = b.unary(x, "gap_f32");
    b.dense(g, 10, false);
    b.finish()
}
