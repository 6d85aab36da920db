//! Export of a trained network to the `slb-format` model file: argmax weight codes packed as
//! bit planes, BatchNorm folded into per-channel integer requantization, activation scales and
//! zero points, the float dense layer, the input normalisation (as a look-up table) and the
//! class names. The arithmetic is docs/DESIGN.md's.
//!
//! - `graph`: the walk over the network's stages into the file's tensors and layers;
//! - [`fold`]: the fixed-point folding each layer's parameters go through (pure arithmetic);
//! - here: the entry points (a checkpoint, a network), the input look-up table, the
//!   calibration of ranges a run did not train.

pub mod fold;
mod graph;

use slb_format::{f32_bytes, ModelBuilder, OwnedInput, Shape};
use tch::{nn, Device, Kind, Tensor};

use crate::data::{Augment, DeviceData};
use crate::error::{Error, Result};
use crate::nn::net::{Ctx, Net};
use crate::nn::QuantMode;
use crate::train::{build, net_config, Checkpoint};
use graph::Graph;

pub use fold::{pick_shift, sign_gain, BN_EPS};
pub use graph::bn_affine;

/// What an export produced, for messages and tests.
#[derive(Debug)]
pub struct Exported {
    /// The model file bytes (already parsed back once by `ModelBuilder::build`).
    pub bytes: Vec<u8>,
    /// Whether the 8-bit ranges were calibrated here (activation quantization was off in
    /// training).
    pub calibrated: bool,
    /// Number of convolutions written.
    pub convs: usize,
}

/// Builds the model file of a network whose activation ranges are set.
pub fn export_net(
    net: &Net,
    name: &str,
    classes: &[String],
    aug: &Augment,
    image_size: i64,
) -> Result<Vec<u8>> {
    let hw = image_size as u32;
    let input = OwnedInput {
        shape: Shape::new(3, hw, hw),
        mean: f32_bytes(&aug.mean),
        std: f32_bytes(&aug.std),
        classes: classes.join("\n"),
        tensor: 0,
        lut: input_lut(net, aug)?,
    };
    let mut model = ModelBuilder::new(name, input);
    Graph::walk(net, hw, &mut model)?;
    Ok(model.build()?)
}

/// The input look-up table: `lut[c * 256 + v]` is the input node's code of pixel value `v` in
/// channel `c`, computed with the trainer's own normalisation and fake-quant ops.
pub fn input_lut(net: &Net, aug: &Augment) -> Result<Vec<u8>> {
    let px: Vec<u8> = (0..=255u8).flat_map(|v| [v, v, v]).collect();
    let img = Tensor::from_slice(&px).view([1, 1, 256, 3]);
    let plain = Augment {
        resize: None,
        ..*aug
    };
    let x = plain.eval(&img.to_device(net.dense.ws.device()));
    let mode = QuantMode {
        observe: false,
        quantize: true,
        ema: false,
        fused: false,
    };
    let y = tch::no_grad(|| net.input.forward(&x, false, mode));
    let (s, zp) = net.input.qparams();
    let codes = (y.to_device(Device::Cpu) / s as f64).round() + zp as f64;
    let codes = codes.clamp(0.0, 255.0).to_kind(Kind::Uint8).flatten(0, -1);
    Vec::<u8>::try_from(codes).map_err(Error::Torch)
}

/// Calibrates the 8-bit ranges of a network trained without activation quantization: one
/// forward pass over `images` (u8 NHWC) with hard weights, BatchNorm in eval mode, every node
/// observing its batch range and quantizing with it.
pub fn calibrate(net: &Net, images: &Tensor, aug: &Augment) {
    let ctx = Ctx {
        train: false,
        t: 1.0,
        hard: true,
        q: QuantMode {
            observe: true,
            quantize: true,
            ema: false,
            fused: false,
        },
        amp: false,
    };
    tch::no_grad(|| {
        let _ = net.forward(&aug.eval(images), &ctx);
    });
}

/// Loads a checkpoint onto the CPU and rebuilds its network.
pub fn load_net(ck: &Checkpoint) -> Result<(nn::VarStore, Net)> {
    let mut cfg = ck.meta.config.clone();
    cfg.has_trained_epoch = Some(0);
    let algo = cfg.algorithm()?;
    let vs = nn::VarStore::new(Device::Cpu);
    let net = build(
        &algo,
        &vs,
        net_config(&cfg, ck.meta.classes.len() as i64, ck.meta.image_size),
        cfg.float_weights,
    );
    ck.restore(&vs)?;
    Ok((vs, net))
}

/// The augmentation (normalisation, resize) a checkpoint's run used.
pub fn augment_of(ck: &Checkpoint) -> Augment {
    let c = &ck.meta.config;
    Augment {
        pad: 0,
        flip: false,
        resize: c.resize,
        mean: c.normalization.mean(),
        std: c.normalization.std(),
    }
}

/// Exports a checkpoint. `calib` supplies training data when the 8-bit ranges were not trained
/// (enable_act_quant = false); its first `calibration_batches * batch_size` images are used.
pub fn export_checkpoint(ck: &Checkpoint, calib: Option<&DeviceData>) -> Result<Exported> {
    if ck.meta.config.float_weights {
        return Err(Error::Export(
            "this is a float-weight baseline (float_weights = true): it has no codes to pack"
                .into(),
        ));
    }
    let (_vs, net) = load_net(ck)?;
    let aug = augment_of(ck);
    let mut calibrated = false;
    if !ck.meta.ranges_valid {
        let data = calib.ok_or_else(|| {
            Error::Export(
                "the network was trained without activation quantization: its 8-bit ranges \
                 must be calibrated on training images (pass --data)"
                    .into(),
            )
        })?;
        let n = (ck.meta.config.calibration_batches.max(1) * ck.meta.config.batch_size)
            .min(data.len() as i64);
        let imgs = data.images().narrow(0, 0, n).to_device(Device::Cpu);
        calibrate(&net, &imgs, &aug);
        calibrated = true;
    }
    let c = &ck.meta.config;
    let name = format!(
        "{:?} W{}A{} (SLB, epoch {})",
        c.model,
        c.weight_quant_dtype.bits(),
        c.act_quant_dtype.bits(),
        ck.meta.epoch
    )
    .to_lowercase();
    let bytes = export_net(&net, &name, &ck.meta.classes, &aug, ck.meta.image_size)?;
    Ok(Exported {
        bytes,
        calibrated,
        convs: net.convs().len(),
    })
}
