//! The network builder behind the generators: random codes, and requantization parameters
//! chosen from the assumed statistics of each tensor (see the parent module).

use super::*;

/// SplitMix64: small, deterministic, good enough for weights.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    pub(super) fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What stage 2 of a conv produces.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Stage2 {
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
pub(super) struct Net {
    q: Quant,
    rng: Rng,
    /// The model file's tensors and layers (named and given its output by [`Net::finish`]).
    model: ModelBuilder,
    /// Assumed statistics of each tensor, by id.
    stats: Vec<Stats>,
    pub(super) input: u16,
}

impl Net {
    /// The image of `shape` becomes tensor 0 with `bits` through a lookup table.
    pub(super) fn new(q: Quant, shape: Shape, bits: u8) -> Net {
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

    pub(super) fn tag(&self) -> String {
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
    pub(super) fn conv(
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
    pub(super) fn conv_full(
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
        let codes = self.random_codes(count);
        conv.codes = pack_codes(&codes, out_c, kernel, ipg, wb)?;
        debug_assert_eq!(conv.codes.len(), n);
        let terms = ipg as f64 * kernel[0] as f64 * kernel[1] as f64;
        let (mult, raw_scale) = self.raw_requant(x, terms);
        conv.requant.raw.mult = mult;
        conv.requant.raw.scale = raw_scale;
        let (out_dtype, stats, affine) = self.stage2_output(stage2, out_c, raw_scale)?;
        let y = self.add_tensor(out_shape, out_dtype, stats)?;
        conv.output = y;
        conv.requant.affine = affine;
        self.model.layer(OwnedLayer::Conv(conv));
        Ok(y)
    }

    /// `count` uniform weight codes; the random stream consumed in whole u64s, 16 codes at a
    /// time.
    fn random_codes(&mut self, count: usize) -> Vec<u8> {
        let mut codes = Vec::with_capacity(count);
        let mask = (1u64 << self.q.weight_bits) - 1;
        while codes.len() < count {
            let mut r = self.rng.next();
            for _ in 0..16.min(count - codes.len()) {
                codes.push((r & mask) as u8);
                r >>= 4;
            }
        }
        codes
    }

    /// Stage 1's multiplier and the raw output's scale for a conv of `terms` products a sum
    /// over tensor `x`: the accumulator has variance `terms * E[w^2] * E[x^2]` (zero-mean
    /// weights), `w` the odd numerator with `E[w^2] = (L^2 - 1) / 3` for `L = 2^wb` levels;
    /// the raw codes get standard deviation `RAW_STD`.
    fn raw_requant(&self, x: u16, terms: f64) -> (i32, f32) {
        let levels = (1u64 << self.q.weight_bits) as f64;
        let w2 = (levels * levels - 1.0) / 3.0;
        let sigma_acc = (terms * w2 * self.stats[x as usize].m2).sqrt().max(1.0);
        let r = RAW_STD / sigma_acc;
        let mult = (r * (1u64 << RAW_SHIFT) as f64)
            .round()
            .clamp(1.0, i32::MAX as f64) as i32;
        // mult / 2^shift = scale_in / ((2^wb - 1) * raw_scale)
        let r_fixed = mult as f64 / (1u64 << RAW_SHIFT) as f64;
        let raw_scale = (self.scale(x) as f64 / ((levels - 1.0) * r_fixed)) as f32;
        (mult, raw_scale)
    }

    /// A conv output's type, statistics and stage 2: the raw codes, or activations through a
    /// per-channel affine.
    fn stage2_output(
        &mut self,
        stage2: Stage2,
        out_c: u32,
        raw_scale: f32,
    ) -> Result<(DType, Stats, Option<OwnedAffine>)> {
        Ok(match stage2 {
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
        })
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
    pub(super) fn basic_block(&mut self, x: u16, out_c: u32, stride: u16) -> Result<u16> {
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

    pub(super) fn maxpool(&mut self, x: u16) -> Result<u16> {
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

    pub(super) fn gap(&mut self, x: u16) -> Result<u16> {
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

    pub(super) fn flatten(&mut self, x: u16) -> Result<u16> {
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
    pub(super) fn dense(&mut self, x: u16, out: u32) -> Result<u16> {
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

    pub(super) fn finish(mut self, name: String, classes: &str, output: u16) -> Result<Vec<u8>> {
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
