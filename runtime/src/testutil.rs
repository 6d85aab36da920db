//! Building small random models for tests, through `slb_format::ModelBuilder`; buffers that
//! end at an unreadable page ([`Guarded`]).

use slb_format::{
    f32_bytes, i32_bytes, pack_codes, DType, ModelBuilder, OwnedAdd, OwnedAddParams, OwnedAffine,
    OwnedConv, OwnedDense, OwnedDenseWeights, OwnedInput, OwnedLayer, OwnedRequant, Pool, RawQuant,
    Shape, Unary,
};

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

/// A parameterless layer of [`Builder::unary`].
#[derive(Clone, Copy)]
pub(crate) enum Op1 {
    Relu,
    /// Global average pooling to codes (same dtype).
    Gap,
    /// Global average pooling to F32.
    GapF32,
    Flatten,
}

/// Random layers on top of a [`ModelBuilder`].
pub(crate) struct Builder {
    pub model: ModelBuilder,
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
        let lut = if bits == 0 {
            Vec::new()
        } else {
            let qmax = (1u64 << bits) - 1;
            (0..c as usize * 256)
                .map(|_| rng.below(qmax + 1) as u8)
                .collect()
        };
        let input = OwnedInput {
            shape,
            mean: f32_bytes(&vec![0.5; c as usize]),
            std: f32_bytes(&vec![0.25; c as usize]),
            classes: String::new(),
            tensor: 0,
            lut,
        };
        let mut model = ModelBuilder::new("test", input);
        model.tensor(shape, dtype).unwrap();
        Builder { model, rng }
    }

    pub fn tensor(&mut self, shape: Shape, dtype: DType) -> u16 {
        self.model.tensor(shape, dtype).unwrap()
    }

    pub fn shape(&self, t: u16) -> Shape {
        self.model.tensors[t as usize].shape
    }

    fn dtype(&self, t: u16) -> DType {
        self.model.tensors[t as usize].dtype
    }

    fn i32s(&mut self, n: usize, lo: i32, hi: i32) -> Vec<u8> {
        let v: Vec<i32> = (0..n).map(|_| self.rng.range_i32(lo, hi)).collect();
        i32_bytes(&v)
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
        self.conv_hw(
            input,
            cout,
            [k, k],
            [stride, stride],
            [pad, pad],
            groups,
            wbits,
            out_bits,
            affine,
            relu,
        )
    }

    /// [`Builder::conv`] with kernel, stride and padding given per axis (rows, columns).
    #[allow(clippy::too_many_arguments)]
    pub fn conv_hw(
        &mut self,
        input: u16,
        cout: u32,
        k: [u16; 2],
        stride: [u16; 2],
        pad: [u16; 2],
        groups: u32,
        wbits: u8,
        out_bits: u8,
        affine: bool,
        relu: bool,
    ) -> u16 {
        let ish = self.shape(input);
        let cin_g = ish.c / groups;
        let (kh, kw) = (u32::from(k[0]), u32::from(k[1]));
        let n = (cout * kh * kw * cin_g) as usize;
        let codes: Vec<u8> = (0..n).map(|_| self.rng.below(1 << wbits) as u8).collect();
        let packed = pack_codes(&codes, cout, k, cin_g, wbits).unwrap();
        let taps = (kh * kw * cin_g) as f64;
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
                Some(OwnedAffine {
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
            (ish.h + 2 * u32::from(pad[0]) - kh) / u32::from(stride[0]) + 1,
            (ish.w + 2 * u32::from(pad[1]) - kw) / u32::from(stride[1]) + 1,
        );
        let output = self.tensor(osh, odt);
        self.model.layer(OwnedLayer::Conv(OwnedConv {
            input,
            output,
            out_channels: cout,
            in_channels: ish.c,
            kernel: k,
            stride,
            padding: pad,
            groups,
            weight_bits: wbits,
            codes: packed,
            requant: OwnedRequant { raw, affine: aff },
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
        self.model.layer(OwnedLayer::Add(OwnedAdd {
            a,
            b,
            output,
            params: OwnedAddParams {
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
        let dt = self.dtype(input);
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
        self.model.layer(if max {
            OwnedLayer::MaxPool(p)
        } else {
            OwnedLayer::AvgPool(p)
        });
        output
    }

    pub fn unary(&mut self, input: u16, op: Op1) -> u16 {
        let sh = self.shape(input);
        let dt = self.dtype(input);
        let (osh, odt) = match op {
            Op1::GapF32 => (Shape::new(sh.c, 1, 1), DType::F32),
            Op1::Gap => (Shape::new(sh.c, 1, 1), dt),
            Op1::Flatten => (Shape::new(sh.c * sh.h * sh.w, 1, 1), dt),
            Op1::Relu => (sh, dt),
        };
        let output = self.tensor(osh, odt);
        let u = Unary { input, output };
        self.model.layer(match op {
            Op1::GapF32 | Op1::Gap => OwnedLayer::GlobalAvgPool(u),
            Op1::Flatten => OwnedLayer::Flatten(u),
            Op1::Relu => OwnedLayer::Relu(u),
        });
        output
    }

    pub fn dense(&mut self, input: u16, out: u32, int8: bool) -> u16 {
        let n = self.shape(input).elements().unwrap() as usize * out as usize;
        let output = self.tensor(Shape::new(out, 1, 1), DType::F32);
        let weights = if int8 {
            let v: Vec<u8> = (0..n).map(|_| self.rng.next() as u8).collect();
            let s: Vec<f32> = (0..out).map(|i| 0.01 + i as f32 * 0.001).collect();
            OwnedDenseWeights::Int8 {
                values: v,
                scale: f32_bytes(&s),
            }
        } else {
            let v: Vec<f32> = (0..n)
                .map(|_| (self.rng.below(2001) as f32 - 1000.0) / 1000.0)
                .collect();
            OwnedDenseWeights::F32(f32_bytes(&v))
        };
        let b: Vec<f32> = (0..out).map(|i| i as f32 * 0.1).collect();
        self.model.layer(OwnedLayer::Dense(OwnedDense {
            input,
            output,
            weights,
            bias: f32_bytes(&b),
        }));
        output
    }

    /// Encodes the model (output: the last layer's output).
    pub fn finish(mut self) -> Vec<u8> {
        self.model.output = self.model.layers.last().unwrap().output();
        self.model.build().expect("valid test model")
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
) -> Vec<u8> {
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
    let g = b.unary(x, Op1::GapF32);
    b.dense(g, 10, false);
    b.finish()
}

/// `len` writable bytes that end where a page mapped without access begins, so that reading
/// one byte past them faults (the test process dies with SIGSEGV: a failing test).
pub(crate) struct Guarded {
    map: *mut libc::c_void,
    /// The readable bytes, then one page without access.
    data: usize,
    page: usize,
    len: usize,
}

impl Guarded {
    pub(crate) fn new(len: usize) -> Guarded {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap();
        let data = len.div_ceil(page).max(1) * page;
        let size = data + page;
        // SAFETY: a fresh private anonymous mapping; the result is checked.
        let map = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED, "mmap");
        // SAFETY: the last page lies inside the mapping just made.
        let rc =
            unsafe { libc::mprotect(map.cast::<u8>().add(data).cast(), page, libc::PROT_NONE) };
        assert_eq!(rc, 0, "mprotect");
        Guarded {
            map,
            data,
            page,
            len,
        }
    }

    pub(crate) fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `data - len .. data` lies inside the readable, writable part of the mapping,
        // which lives as long as `self`.
        unsafe {
            core::slice::from_raw_parts_mut(
                self.map.cast::<u8>().add(self.data - self.len),
                self.len,
            )
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, whose slices no longer live.
        unsafe { libc::munmap(self.map, self.data + self.page) };
    }
}
