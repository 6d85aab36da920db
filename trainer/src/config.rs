//! The TOML configuration: Golden Stick's algorithm keys plus the training recipe.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::algo::{QuantDtype, SlbQuantAwareTraining};
use crate::data::{Normalization, Streaming};
use crate::error::{Error, Result};
use crate::nn::Arch;

/// Learning-rate schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Golden Stick's: linear warm-up from `warmup_lr` to `lr`, then `lr * (1 - progress)^power`.
    Poly,
    /// Linear warm-up, then `lr * (1 + cos(pi * progress)) / 2`.
    Cosine,
}

/// A whole configuration file. Unknown keys are rejected.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    // --- Golden Stick's SlbQuantAwareTraining keys ---
    /// Weight dtype (INT1, INT2, INT4).
    pub weight_quant_dtype: QuantDtype,
    /// Activation dtype (INT8; INT1/2/4 with enable_act_quant).
    pub act_quant_dtype: QuantDtype,
    /// Fake-quantize activations in training.
    pub enable_act_quant: bool,
    /// Recalibrate BatchNorm at epoch end.
    pub enable_bn_calibration: bool,
    /// Total epochs of the schedule (default: `epochs`).
    pub epoch_size: Option<i64>,
    /// Epochs already trained (default 0; set from the checkpoint on resume).
    pub has_trained_epoch: Option<i64>,
    /// Initial temperature.
    pub t_start_val: f64,
    /// Temperature start (fraction of epochs).
    pub t_start_time: f64,
    /// Temperature end (fraction of epochs).
    pub t_end_time: f64,
    /// Temperature growth per epoch.
    pub t_factor: f64,
    // --- recipe ---
    /// Network.
    pub model: Arch,
    /// Base width (default: the published network's).
    pub width: Option<i64>,
    /// Epochs to train (the schedule length unless epoch_size is given).
    pub epochs: i64,
    /// Batch size.
    pub batch_size: i64,
    /// Peak learning rate.
    pub lr: f64,
    /// Learning rate at the start of the warm-up.
    pub warmup_lr: f64,
    /// Warm-up epochs.
    pub warmup_epochs: f64,
    /// Schedule after the warm-up.
    pub lr_schedule: Schedule,
    /// Exponent of the poly schedule.
    pub poly_power: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// Weight decay (weights and SLB logits; never BatchNorm or biases).
    pub weight_decay: f64,
    /// Weight decay of the SLB logits alone (default: `weight_decay`). Decay pulls the logits
    /// toward a uniform choice, so they may want less than the float weights.
    pub logit_weight_decay: Option<f64>,
    /// Label smoothing.
    pub label_smoothing: f64,
    /// Steps before the 8-bit activation nodes quantize (Golden Stick: 900).
    pub quant_delay: i64,
    /// EMA range tracking (decay 0.999) instead of the batch min/max.
    pub ema: bool,
    /// bf16 convolutions on CUDA.
    pub mixed_precision: bool,
    /// NHWC (channels-last) activations on CUDA.
    pub channels_last: bool,
    /// Record each full-batch training step as a CUDA graph and replay it (CUDA only; off
    /// while `--profile-steps` times phases). Same arithmetic as the eager step.
    pub cuda_graphs: bool,
    /// The fused CUDA kernels for the 8-bit activation nodes (`nn::fused`: ReLU + fake quant
    /// in one pass, its gradient in one; compiled by NVRTC at run time). CUDA only; where they
    /// cannot run, one line on stderr and the libtorch ops, with the same results.
    pub fused_kernels: bool,
    /// Plain float convolutions instead of SLB ones: the float baseline of the accuracy table
    /// (such a network cannot be exported to a packed model).
    pub float_weights: bool,
    /// Random-crop padding.
    pub crop_pad: i64,
    /// Random horizontal flip.
    pub flip: bool,
    /// Resize images to this side before the network (224 for Golden Stick's recipe). For a
    /// streamed dataset: the side of ImageNet's `RandomResizedCrop` (default 224) and of the
    /// evaluation centre crop (after resizing the shorter side to `resize * 256 / 224`).
    pub resize: Option<i64>,
    /// Per-channel normalisation: "cifar" (default) or "imagenet".
    pub normalization: Normalization,
    /// Which loader reads an image-folder tree: "auto" (stream it when its images differ in
    /// size or would not fit in memory decoded), "always" or "never".
    pub streaming: Streaming,
    /// Threads decoding a streamed dataset (default: every core).
    pub data_workers: Option<usize>,
    /// Batches a streamed dataset decodes ahead of the training step.
    pub prefetch_batches: usize,
    /// Keep only this many training images per class (quick runs).
    pub train_per_class: Option<usize>,
    /// Keep only this many test images per class.
    pub test_per_class: Option<usize>,
    /// Seed of initialisation, shuffling and augmentation.
    pub seed: u64,
    /// Read back the loss for the progress bar (and the NaN check) every this many steps.
    pub log_every: i64,
    /// Batches of training data used to calibrate 8-bit ranges at export when
    /// enable_act_quant is false.
    pub calibration_batches: i64,
    /// Batches of training data each BatchNorm calibration pass averages (default: the whole
    /// training set, as Golden Stick). A few thousand images measure the statistics closely.
    pub bn_calibration_batches: Option<i64>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            weight_quant_dtype: QuantDtype::Int1,
            act_quant_dtype: QuantDtype::Int8,
            enable_act_quant: false,
            enable_bn_calibration: false,
            epoch_size: None,
            has_trained_epoch: None,
            t_start_val: 1.0,
            t_start_time: 0.2,
            t_end_time: 0.6,
            t_factor: 1.2,
            model: Arch::Resnet18Cifar,
            width: None,
            epochs: 100,
            batch_size: 128,
            lr: 0.1,
            warmup_lr: 0.01,
            warmup_epochs: 5.0,
            lr_schedule: Schedule::Poly,
            poly_power: 2.0,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 1e-4,
            logit_weight_decay: None,
            label_smoothing: 0.1,
            quant_delay: 900,
            ema: false,
            mixed_precision: true,
            channels_last: true,
            cuda_graphs: true,
            fused_kernels: true,
            float_weights: false,
            crop_pad: 4,
            flip: true,
            resize: None,
            normalization: Normalization::Cifar,
            streaming: Streaming::Auto,
            data_workers: None,
            prefetch_batches: 4,
            train_per_class: None,
            test_per_class: None,
            seed: 1,
            log_every: 25,
            calibration_batches: 8,
            bn_calibration_batches: None,
        }
    }
}

fn positive(name: &str, ok: bool, v: impl std::fmt::Display) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::config(format!("{name} is out of range: got {v}")))
    }
}

/// One `KEY=VALUE` override: the key and its TOML value.
pub fn parse_set(s: &str) -> Result<(String, toml::Value)> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| Error::config(format!("--set {s}: expected KEY=VALUE")))?;
    let key = key.trim();
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(Error::config(format!("--set {s}: bad key {key:?}")));
    }
    let value = value.trim();
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"));
    Ok((
        key.to_string(),
        parsed.unwrap_or_else(|| toml::Value::String(value.to_string())),
    ))
}

/// The largest configuration file read: 1 MiB (a real one is under 2 KB).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// The largest `resize`, `width` and image side a configuration accepts: 1024 (Golden Stick's
/// ImageNet recipe uses 224; ResNet-18's width is 64). Larger values would ask libtorch for
/// tens of gigabytes in the first step.
pub const MAX_SIDE: i64 = 1024;
/// The largest `crop_pad`: 256 pixels each side.
pub const MAX_CROP_PAD: i64 = 256;
/// The largest `batch_size`: 65536.
pub const MAX_BATCH: i64 = 1 << 16;
/// The largest schedule (`epochs`, `epoch_size`): 100,000 epochs.
pub const MAX_EPOCHS: i64 = 100_000;
/// The largest `calibration_batches`, `log_every` and `quant_delay`: 1e9.
pub const MAX_COUNT: i64 = 1_000_000_000;
/// The largest temperature the schedule may reach (`t_start_val * t_factor^epochs`): 1e30
/// (the logits are f32; the default recipe reaches 1.2^40, about 1470).
pub const MAX_TEMPERATURE: f64 = 1e30;

/// The largest first activation a configuration may ask for (`batch_size * width * side^2` f32
/// values): 64 GiB. Beyond it the first step's allocation fails inside libtorch.
pub const MAX_ACTIVATION_BYTES: u128 = 64 << 30;

/// Reads a configuration file: at most [`MAX_CONFIG_BYTES`], UTF-8, with at least one key.
fn read_config_text(path: &Path) -> Result<String> {
    use std::io::Read;
    let err = |msg: String| Error::ConfigFile {
        path: path.to_path_buf(),
        msg,
    };
    let f = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut raw = Vec::new();
    f.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut raw)
        .map_err(|e| err(e.to_string()))?;
    if raw.len() as u64 > MAX_CONFIG_BYTES {
        return Err(err(format!(
            "larger than {MAX_CONFIG_BYTES} bytes: not a configuration"
        )));
    }
    let text = String::from_utf8(raw).map_err(|_| err("not UTF-8 text".into()))?;
    let has_key = text.lines().any(|l| {
        let l = l.trim();
        !l.is_empty() && !l.starts_with('#')
    });
    if !has_key {
        return Err(err(
            "the file is empty: give at least `model` and `epochs` (see trainer/configs/)".into(),
        ));
    }
    Ok(text)
}

/// A TOML error on one line, with the offending line of the file (which names the key).
fn toml_message(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().replace('\n', " ");
    let Some(span) = e.span() else {
        return msg;
    };
    let start = span.start.min(text.len());
    let line_no = text.get(..start).unwrap_or(text).matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
    let shown: String = line.chars().take(80).collect();
    format!("line {line_no} (`{shown}`): {msg}")
}

/// A float that must be finite and in `range` (`shown` in the message), named by its key.
fn finite_in(key: &str, v: f64, range: impl std::ops::RangeBounds<f64>, shown: &str) -> Result<()> {
    if v.is_finite() && range.contains(&v) {
        Ok(())
    } else {
        Err(Error::config(format!(
            "{key} must be a finite number {shown}, but got {v}"
        )))
    }
}

/// An integer that must be in `range`, named by its key.
fn int_in(key: &str, v: i64, range: std::ops::RangeInclusive<i64>) -> Result<()> {
    if range.contains(&v) {
        Ok(())
    } else {
        Err(Error::config(format!(
            "{key} must be an int in [{}, {}], but got {v}",
            range.start(),
            range.end()
        )))
    }
}

impl Config {
    /// The checks [`Config::algorithm`] adds to the algorithm's own: every float finite, every
    /// size and count within a stated bound (so the first step cannot ask libtorch for more
    /// memory than exists), and a temperature schedule that stays finite.
    fn check_bounds(&self, a: &SlbQuantAwareTraining) -> Result<()> {
        int_in("epochs", self.epochs, 1..=MAX_EPOCHS)?;
        if let Some(e) = self.epoch_size {
            int_in("epoch_size", e, 1..=MAX_EPOCHS)?;
        }
        int_in("batch_size", self.batch_size, 1..=MAX_BATCH)?;
        finite_in("lr", self.lr, f64::MIN_POSITIVE.., "greater than 0")?;
        finite_in("warmup_lr", self.warmup_lr, 0.0.., "of at least 0")?;
        finite_in(
            "warmup_epochs",
            self.warmup_epochs,
            0.0..=MAX_EPOCHS as f64,
            "in [0, 100000]",
        )?;
        finite_in(
            "poly_power",
            self.poly_power,
            f64::MIN_POSITIVE..=1e6,
            "in (0, 1e6]",
        )?;
        finite_in("momentum", self.momentum, 0.0..1.0, "in [0, 1)")?;
        finite_in("weight_decay", self.weight_decay, 0.0..=1.0, "in [0, 1]")?;
        if let Some(d) = self.logit_weight_decay {
            finite_in("logit_weight_decay", d, 0.0..=1.0, "in [0, 1]")?;
        }
        if let Some(n) = self.bn_calibration_batches {
            int_in("bn_calibration_batches", n, 1..=MAX_COUNT)?;
        }
        finite_in(
            "label_smoothing",
            self.label_smoothing,
            0.0..1.0,
            "in [0, 1)",
        )?;
        int_in("quant_delay", self.quant_delay, 0..=MAX_COUNT)?;
        int_in("log_every", self.log_every, 1..=MAX_COUNT)?;
        int_in(
            "calibration_batches",
            self.calibration_batches,
            1..=MAX_COUNT,
        )?;
        if let Some(w) = self.width {
            int_in("width", w, 1..=MAX_SIDE)?;
        }
        if let Some(r) = self.resize {
            int_in("resize", r, 1..=MAX_SIDE)?;
        }
        int_in("crop_pad", self.crop_pad, 0..=MAX_CROP_PAD)?;
        if let Some(w) = self.data_workers {
            int_in("data_workers", w as i64, 1..=1024)?;
        }
        int_in("prefetch_batches", self.prefetch_batches as i64, 1..=64)?;
        for (key, n) in [
            ("train_per_class", self.train_per_class),
            ("test_per_class", self.test_per_class),
        ] {
            if n == Some(0) {
                return Err(Error::config(format!(
                    "{key} must be greater than 0 (leave it out to keep every image), but got 0"
                )));
            }
        }
        if let Some(side) = self.resize {
            self.check_memory(side)?;
        }
        let end = a.temperature(self.schedule_epochs()).t;
        let (lo, hi) = (end.min(self.t_start_val), end.max(self.t_start_val));
        if !(lo > 0.0 && hi.is_finite() && hi <= MAX_TEMPERATURE) {
            return Err(Error::config(format!(
                "t_start_val and t_factor reach a temperature of {end:e} by the end of the \
                 schedule (epochs/epoch_size = {}); it must stay in (0, {MAX_TEMPERATURE:e}]",
                self.schedule_epochs()
            )));
        }
        Ok(())
    }

    /// Checks that the first activation of a batch at image side `side` (the data's, or
    /// `resize`) stays under [`MAX_ACTIVATION_BYTES`]: a run that cannot allocate its first step
    /// is refused before it starts, naming the keys to lower.
    pub fn check_memory(&self, side: i64) -> Result<()> {
        let width = self.width.unwrap_or(self.model.default_width()).max(1) as u128;
        let side = side.max(1) as u128;
        let bytes = self.batch_size.max(1) as u128 * width * side * side * 4;
        if bytes > MAX_ACTIVATION_BYTES {
            return Err(Error::config(format!(
                "batch_size {} x width {width} x image side {side}^2 needs {} GiB for one \
                 activation (the limit is {} GiB): lower batch_size, width or resize",
                self.batch_size,
                bytes >> 30,
                MAX_ACTIVATION_BYTES >> 30
            )));
        }
        Ok(())
    }

    /// Reads and parses a TOML file (not yet validated: see [`Config::algorithm`]).
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = read_config_text(path)?;
        Config::from_toml(&text).map_err(|e| match e {
            Error::Config(msg) => Error::ConfigFile {
                path: path.to_path_buf(),
                msg,
            },
            e => e,
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Config> {
        toml::from_str(text).map_err(|e| Error::config(toml_message(text, &e)))
    }

    /// Reads a TOML file as [`Config::from_file`] does, with `KEY=VALUE` overrides applied on
    /// top (`slb train --set`): VALUE is a TOML value (`0.5`, `true`, `"INT2"`), or else taken
    /// as a string (`weight_quant_dtype=INT2`). An unknown key is an error naming it.
    pub fn from_file_with(path: &Path, sets: &[String]) -> Result<Config> {
        if sets.is_empty() {
            // Deserialising the text itself keeps the offending line in type errors.
            return Config::from_file(path);
        }
        let text = read_config_text(path)?;
        let mut table: toml::Table = toml::from_str(&text).map_err(|e| Error::ConfigFile {
            path: path.to_path_buf(),
            msg: toml_message(&text, &e),
        })?;
        for s in sets {
            let (key, value) = parse_set(s)?;
            table.insert(key, value);
        }
        toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| {
                // Display names the key (`for key `epochs``); on one line.
                let msg = e.to_string().trim().replace('\n', " ");
                Error::config(format!("{} with --set: {msg}", path.display()))
            })
    }

    /// The TOML text of this configuration.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// The weight decay of the SLB logits.
    pub fn logit_decay(&self) -> f64 {
        self.logit_weight_decay.unwrap_or(self.weight_decay)
    }

    /// The schedule length: epoch_size, or epochs.
    pub fn schedule_epochs(&self) -> i64 {
        self.epoch_size.unwrap_or(self.epochs)
    }

    /// Builds and validates the algorithm object, and checks the recipe values.
    pub fn algorithm(&self) -> Result<SlbQuantAwareTraining> {
        let mut a = SlbQuantAwareTraining::new();
        a.set_weight_quant_dtype(self.weight_quant_dtype)?;
        a.set_act_quant_dtype(self.act_quant_dtype)?;
        a.set_enable_act_quant(self.enable_act_quant);
        a.set_enable_bn_calibration(self.enable_bn_calibration);
        a.set_epoch_size(self.schedule_epochs())
            .map_err(|e| match self.epoch_size {
                // The file said `epochs`: name it.
                None => Error::config(format!(
                    "epochs = {}: {e} (the schedule is `epochs` long unless `epoch_size` is given)",
                    self.epochs
                )),
                Some(_) => e,
            })?;
        a.set_has_trained_epoch(self.has_trained_epoch.unwrap_or(0))?;
        a.set_t_start_val(self.t_start_val)?;
        a.set_t_start_time(self.t_start_time)?;
        a.set_t_end_time(self.t_end_time)?;
        a.set_t_factor(self.t_factor)?;
        a.validate()?;
        positive("epochs (must be > 0)", self.epochs > 0, self.epochs)?;
        positive(
            "batch_size (must be > 0)",
            self.batch_size > 0,
            self.batch_size,
        )?;
        positive(
            "lr (must be finite and > 0)",
            self.lr.is_finite() && self.lr > 0.0,
            self.lr,
        )?;
        positive(
            "warmup_lr (must be finite and >= 0)",
            self.warmup_lr.is_finite() && self.warmup_lr >= 0.0,
            self.warmup_lr,
        )?;
        positive(
            "warmup_epochs (must be >= 0)",
            self.warmup_epochs >= 0.0,
            self.warmup_epochs,
        )?;
        positive(
            "momentum (must be in [0, 1))",
            (0.0..1.0).contains(&self.momentum),
            self.momentum,
        )?;
        positive(
            "weight_decay (must be >= 0)",
            self.weight_decay >= 0.0,
            self.weight_decay,
        )?;
        positive(
            "label_smoothing (must be in [0, 1))",
            (0.0..1.0).contains(&self.label_smoothing),
            self.label_smoothing,
        )?;
        positive(
            "quant_delay (must be >= 0)",
            self.quant_delay >= 0,
            self.quant_delay,
        )?;
        positive(
            "width (must be > 0)",
            self.width.is_none_or(|w| w > 0),
            format!("{:?}", self.width),
        )?;
        positive("crop_pad (must be >= 0)", self.crop_pad >= 0, self.crop_pad)?;
        positive(
            "log_every (must be > 0)",
            self.log_every > 0,
            self.log_every,
        )?;
        positive(
            "poly_power (must be > 0)",
            self.poly_power > 0.0,
            self.poly_power,
        )?;
        if self.nesterov && self.momentum == 0.0 {
            return Err(Error::config("nesterov needs momentum > 0"));
        }
        self.check_bounds(&a)?;
        Ok(a)
    }

    /// Learning rate at `step` of `total` steps (`steps_per_epoch` converts the warm-up).
    pub fn lr_at(&self, step: i64, steps_per_epoch: i64) -> f64 {
        let total = (self.schedule_epochs() * steps_per_epoch).max(1) as f64;
        let warm = (self.warmup_epochs * steps_per_epoch as f64).min(total);
        let s = step as f64;
        if s < warm {
            // A weighted mean of two finite rates, each term at most its rate: finite and not
            // negative for any valid pair (`warmup_lr + (lr - warmup_lr) * s / warm` reached
            // -inf with `warmup_lr = 1.5e305`, `(lr - warmup_lr) * s` overflowing).
            let f = s / warm;
            return self.warmup_lr * (1.0 - f) + self.lr * f;
        }
        let progress = ((s - warm) / (total - warm).max(1.0)).clamp(0.0, 1.0);
        match self.lr_schedule {
            Schedule::Poly => self.lr * (1.0 - progress).powf(self.poly_power),
            Schedule::Cosine => self.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_keys_and_validation() {
        let c = Config::from_toml(
            "weight_quant_dtype = \"INT2\"\nt_factor = 1.12\nmodel = \"resnet20\"\nepochs = 10\n",
        )
        .unwrap();
        assert_eq!(c.weight_quant_dtype, QuantDtype::Int2);
        let a = c.algorithm().unwrap();
        assert_eq!(a.epoch_size(), Some(10));
        assert!(Config::from_toml("weight_quant_dtype = \"INT3\"").is_err());
        assert!(Config::from_toml("no_such_key = 1")
            .unwrap_err()
            .to_string()
            .contains("no_such_key"));
        let bad = Config::from_toml("t_start_time = 1.5").unwrap();
        assert!(bad
            .algorithm()
            .unwrap_err()
            .to_string()
            .contains("t_start_time"));
        let bad = Config::from_toml("weight_quant_dtype = \"INT8\"").unwrap();
        assert!(bad
            .algorithm()
            .unwrap_err()
            .to_string()
            .contains("weight_quant_dtype"));
        let bad = Config::from_toml("batch_size = 0").unwrap();
        assert!(bad
            .algorithm()
            .unwrap_err()
            .to_string()
            .contains("batch_size"));
    }

    #[test]
    fn set_overrides_keys_with_toml_values_or_strings() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.toml");
        std::fs::write(&p, "epochs = 10\nlr = 0.1\n").unwrap();
        let sets = [
            "lr=0.5".to_string(),
            "weight_quant_dtype=INT2".to_string(),
            "enable_act_quant = true".to_string(),
            "act_quant_dtype=\"INT8\"".to_string(),
            "logit_weight_decay=1e-4".to_string(),
        ];
        let c = Config::from_file_with(&p, &sets).unwrap();
        assert_eq!(c.epochs, 10);
        assert_eq!(c.lr, 0.5);
        assert_eq!(c.weight_quant_dtype, QuantDtype::Int2);
        assert!(c.enable_act_quant);
        assert_eq!(c.logit_decay(), 1e-4);
        for (bad, names) in [
            ("no_such_key=1", "no_such_key"),
            ("lr", "KEY=VALUE"),
            ("=3", "bad key"),
            ("epochs=ten", "epochs"),
        ] {
            let e = Config::from_file_with(&p, &[bad.to_string()])
                .unwrap_err()
                .to_string();
            assert!(e.contains(names), "{bad}: {e}");
        }
    }

    #[test]
    fn lr_schedules() {
        let mut c = Config {
            epochs: 10,
            warmup_epochs: 2.0,
            ..Config::default()
        };
        assert!((c.lr_at(0, 10) - 0.01).abs() < 1e-12);
        assert!((c.lr_at(10, 10) - 0.055).abs() < 1e-12);
        assert!((c.lr_at(20, 10) - 0.1).abs() < 1e-12);
        assert!((c.lr_at(60, 10) - 0.1 * 0.25).abs() < 1e-12);
        c.lr_schedule = Schedule::Cosine;
        assert!((c.lr_at(60, 10) - 0.05).abs() < 1e-12);
        // A warm-up from a huge rate stays finite (it overflowed to -inf).
        let huge = Config {
            warmup_lr: 1.5e305,
            warmup_epochs: 2.0,
            ..Config::default()
        };
        for step in [0, 1, 10, 99_999, 199_999] {
            let lr = huge.lr_at(step, 100_000);
            assert!(lr.is_finite() && lr >= 0.0, "{lr} at {step}");
        }
        assert!(c.lr_at(100, 10).abs() < 1e-12);
    }
}
