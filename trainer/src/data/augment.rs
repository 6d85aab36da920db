//! Whole-batch augmentation and normalisation on the training device.

use tch::{Device, Kind, Tensor};

/// CIFAR-10 per-channel mean (units of `pixel / 255`), as Golden Stick's recipe uses.
pub const CIFAR_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// CIFAR-10 per-channel standard deviation (units of `pixel / 255`), as Golden Stick's recipe
/// uses.
pub const CIFAR_STD: [f32; 3] = [0.2023, 0.1994, 0.2010];

/// ImageNet per-channel mean (units of `pixel / 255`), as torchvision's recipes use.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet per-channel standard deviation (units of `pixel / 255`).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Which per-channel mean and standard deviation normalise the images (`normalization` in the
/// configuration; the exported model's input table is built from the same values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalization {
    /// [`CIFAR_MEAN`], [`CIFAR_STD`] (Golden Stick's CIFAR-10 recipe).
    #[default]
    Cifar,
    /// [`IMAGENET_MEAN`], [`IMAGENET_STD`] (torchvision's ImageNet recipe).
    Imagenet,
}

impl Normalization {
    /// The per-channel mean.
    pub fn mean(self) -> [f32; 3] {
        match self {
            Normalization::Cifar => CIFAR_MEAN,
            Normalization::Imagenet => IMAGENET_MEAN,
        }
    }

    /// The per-channel standard deviation.
    pub fn std(self) -> [f32; 3] {
        match self {
            Normalization::Cifar => CIFAR_STD,
            Normalization::Imagenet => IMAGENET_STD,
        }
    }
}

/// The network input value of pixel value `v` in channel `c`: `(v / 255 - mean[c]) / std[c]`,
/// each step rounded to `f32`. This is the single definition of the normalisation: the exporter
/// builds the packed model's input look-up table from it, and [`Augment`] computes the same
/// `f32` values on the device (checked by a test).
///
/// Panics if `c >= 3` (a programming error, not user input).
pub fn normalise_value(v: u8, c: usize, mean: &[f32; 3], std: &[f32; 3]) -> f32 {
    (f32::from(v) / 255.0 - mean[c]) / std[c]
}

/// Training-time augmentation and normalisation of `u8` NHWC batches (see [`Augment::train`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Augment {
    /// Zero padding on each side before the random crop back to the original size; 0 turns the
    /// crop off.
    pub pad: i64,
    /// Whether to flip each image horizontally with probability 1/2.
    pub flip: bool,
    /// Per-channel mean, units of `pixel / 255`.
    pub mean: [f32; 3],
    /// Per-channel standard deviation, units of `pixel / 255`.
    pub std: [f32; 3],
    /// Resize the (cropped) images to `size x size` with bilinear interpolation (the 224-pixel
    /// ImageNet-style network on CIFAR); `None` keeps the input size.
    pub resize: Option<i64>,
}

impl Default for Augment {
    fn default() -> Augment {
        Augment::cifar()
    }
}

impl Augment {
    /// The CIFAR-10 recipe: random crop with 4-pixel zero padding, random horizontal flip,
    /// Golden Stick's mean and standard deviation, no resize.
    pub fn cifar() -> Augment {
        Augment {
            pad: 4,
            flip: true,
            mean: CIFAR_MEAN,
            std: CIFAR_STD,
            resize: None,
        }
    }

    /// The normalised training input for a `u8` NHWC batch `x` (3 channels): `f32` NCHW on
    /// `x`'s device. Each image is zero-padded by `pad` pixels (before normalisation, as
    /// torchvision's `RandomCrop(padding=4)`), cropped back to its size at a random offset,
    /// flipped horizontally at random (with `flip`), normalised as [`normalise_value`] and
    /// resized (with `resize`). Offsets and flips come from torch's generator (seed it with
    /// `tch::manual_seed`); everything runs as whole-batch tensor ops on the device, with no
    /// host round trip.
    ///
    /// Panics if `x` is not a 4-D tensor with 3 channels in its last dimension.
    pub fn train(&self, x: &Tensor) -> Tensor {
        let (n, h, w, c) = x.size4().expect("Augment::train: x must be N x H x W x 3");
        assert_eq!(c, 3, "Augment::train: x must have 3 channels (NHWC)");
        let device = x.device();
        let pad = self.pad.max(0);
        if n == 0 || (pad == 0 && !self.flip) {
            return self.eval(x);
        }
        let hp = h + 2 * pad;
        let wp = w + 2 * pad;
        // Zero padding of H and W (pad list runs from the last dimension: C, W, H).
        let padded = if pad > 0 {
            x.constant_pad_nd([0, 0, pad, pad, pad, pad])
        } else {
            x.shallow_clone()
        };
        let opts = (Kind::Int64, device);
        let oy = Tensor::randint_low(0, 2 * pad + 1, [n, 1], opts);
        let ox = Tensor::randint_low(0, 2 * pad + 1, [n, 1], opts);
        let rows = oy + Tensor::arange(h, opts).view([1, h]); // [n, h]
        let ar_w = Tensor::arange(w, opts).view([1, w]);
        let cols = if self.flip {
            // Flipped images read column w-1-j instead of j: offset + j + f * (w - 1 - 2j).
            let f = Tensor::randint(2, [n, 1], opts);
            let flipped = ar_w.neg() * 2 + (w - 1);
            &ox + &ar_w + f * flipped
        } else {
            &ox + &ar_w
        }; // [n, w]
        let base = Tensor::arange(n, opts).view([n, 1, 1]) * (hp * wp);
        let lin = base + rows.view([n, h, 1]) * wp + cols.view([n, 1, w]); // [n, h, w]
        let cropped = padded
            .reshape([n * hp * wp, 3])
            .index_select(0, &lin.view([-1]))
            .view([n, h, w, 3]);
        self.normalise(&cropped)
    }

    /// The normalised evaluation input for a `u8` NHWC batch `x`: `f32` NCHW on `x`'s device,
    /// normalised as [`normalise_value`] and resized (with `resize`); no random crop or flip.
    ///
    /// Panics if `x` is not a 4-D tensor with 3 channels in its last dimension.
    pub fn eval(&self, x: &Tensor) -> Tensor {
        let (_, _, _, c) = x.size4().expect("Augment::eval: x must be N x H x W x 3");
        assert_eq!(c, 3, "Augment::eval: x must have 3 channels (NHWC)");
        self.normalise(x)
    }

    /// NHWC `u8` -> normalised NCHW `f32`, then the optional resize.
    fn normalise(&self, x: &Tensor) -> Tensor {
        let device = x.device();
        let x = x.permute([0, 3, 1, 2]).to_kind(Kind::Float);
        // Divide by tensors made on the device, not by scalars: CUDA turns division by a scalar
        // into multiplication by its reciprocal, which is not `normalise_value`'s f32 division.
        // `full` fills on the device, so no host-to-device copy (and no sync) is needed.
        let d255 = Tensor::full([1], 255.0, (Kind::Float, device));
        let mean = channel_tensor(&self.mean, device);
        let std = channel_tensor(&self.std, device);
        let y = (x / d255 - mean) / std;
        match self.resize {
            Some(s) if s > 0 && (y.size()[2] != s || y.size()[3] != s) => {
                y.upsample_bilinear2d([s, s], false, None, None)
            }
            _ => y.contiguous(),
        }
    }
}

/// A `[1, 3, 1, 1]` f32 tensor on `device` holding `v`, built by device fills.
fn channel_tensor(v: &[f32; 3], device: Device) -> Tensor {
    let parts: Vec<Tensor> = v
        .iter()
        .map(|&x| Tensor::full([1], f64::from(x), (Kind::Float, device)))
        .collect();
    Tensor::cat(&parts, 0).view([1, 3, 1, 1])
}
