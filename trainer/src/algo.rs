//! The algorithm object, mirroring MindSpore Golden Stick's `SlbQuantAwareTraining`: its
//! settings, their validation (same rules, clear messages), its `Display`, the temperature
//! schedule and the epoch callbacks.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A quantization data type, spelled as in Golden Stick (`"INT1"`, `"INT2"`, `"INT4"`, `"INT8"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QuantDtype {
    /// 1 bit.
    #[serde(rename = "INT1")]
    Int1,
    /// 2 bits.
    #[serde(rename = "INT2")]
    Int2,
    /// 4 bits.
    #[serde(rename = "INT4")]
    Int4,
    /// 8 bits.
    #[serde(rename = "INT8")]
    Int8,
}

impl QuantDtype {
    /// Number of bits.
    pub fn bits(self) -> u8 {
        match self {
            QuantDtype::Int1 => 1,
            QuantDtype::Int2 => 2,
            QuantDtype::Int4 => 4,
            QuantDtype::Int8 => 8,
        }
    }

    /// The dtype of a bit width, if there is one.
    pub fn from_bits(bits: u8) -> Option<QuantDtype> {
        match bits {
            1 => Some(QuantDtype::Int1),
            2 => Some(QuantDtype::Int2),
            4 => Some(QuantDtype::Int4),
            8 => Some(QuantDtype::Int8),
            _ => None,
        }
    }
}

impl fmt::Display for QuantDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "INT{}", self.bits())
    }
}

/// What the temperature schedule says for one epoch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Temperature {
    /// The factor multiplying the logits before the softmax.
    pub t: f64,
    /// Train with the hard (argmax) weights: the temperature phase has ended.
    pub hard: bool,
}

/// SLB quantization-aware training settings (Golden Stick's `SlbQuantAwareTraining`).
///
/// Build it with [`SlbQuantAwareTraining::new`] and the `set_*` methods (each validates its
/// value as Golden Stick's setters do), then [`SlbQuantAwareTraining::validate`] checks the
/// settings that depend on each other and those required before training.
#[derive(Clone, Debug, PartialEq)]
pub struct SlbQuantAwareTraining {
    weight_quant_dtype: QuantDtype,
    act_quant_dtype: QuantDtype,
    enable_act_quant: bool,
    enable_bn_calibration: bool,
    epoch_size: Option<i64>,
    has_trained_epoch: Option<i64>,
    t_start_val: f64,
    t_start_time: f64,
    t_end_time: f64,
    t_factor: f64,
}

impl Default for SlbQuantAwareTraining {
    fn default() -> Self {
        Self::new()
    }
}

fn check_unit(name: &str, v: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&v) {
        return Err(Error::config(format!(
            "{name} must be a float in [0, 1], but got {v}"
        )));
    }
    Ok(())
}

fn check_positive(name: &str, v: f64) -> Result<()> {
    if !(v.is_finite() && v > 0.0) {
        return Err(Error::config(format!(
            "{name} must be a float greater than 0, but got {v}"
        )));
    }
    Ok(())
}

impl SlbQuantAwareTraining {
    /// The defaults of Golden Stick's CIFAR-10 recipe: W1, A8 (activation quantization off),
    /// no BN calibration, T 1.0 / 0.2 / 0.6 / 1.2; epoch_size and has_trained_epoch unset.
    pub fn new() -> Self {
        SlbQuantAwareTraining {
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
        }
    }

    /// Sets the weight dtype: INT1, INT2 or INT4.
    pub fn set_weight_quant_dtype(&mut self, d: QuantDtype) -> Result<()> {
        if d == QuantDtype::Int8 {
            return Err(Error::config(format!(
                "weight_quant_dtype must be one of INT1, INT2, INT4, but got {d}"
            )));
        }
        self.weight_quant_dtype = d;
        Ok(())
    }

    /// Sets the activation dtype: INT8 as Golden Stick, or INT1, INT2, INT4 as in the SLB paper
    /// (these need `enable_act_quant`, checked by [`Self::validate`]).
    pub fn set_act_quant_dtype(&mut self, d: QuantDtype) -> Result<()> {
        self.act_quant_dtype = d;
        Ok(())
    }

    /// Enables activation fake quantization in training.
    pub fn set_enable_act_quant(&mut self, v: bool) {
        self.enable_act_quant = v;
    }

    /// Enables BatchNorm recalibration at the end of each epoch after the temperature start.
    pub fn set_enable_bn_calibration(&mut self, v: bool) {
        self.enable_bn_calibration = v;
    }

    /// Sets the total number of epochs of the schedule (> 0).
    pub fn set_epoch_size(&mut self, v: i64) -> Result<()> {
        if v <= 0 {
            return Err(Error::config(format!(
                "epoch_size must be an int greater than 0, but got {v}"
            )));
        }
        self.epoch_size = Some(v);
        Ok(())
    }

    /// Sets the number of epochs already trained (>= 0; below epoch_size, checked by
    /// [`Self::validate`]).
    pub fn set_has_trained_epoch(&mut self, v: i64) -> Result<()> {
        if v < 0 {
            return Err(Error::config(format!(
                "has_trained_epoch must be an int greater than or equal to 0, but got {v}"
            )));
        }
        self.has_trained_epoch = Some(v);
        Ok(())
    }

    /// Sets the initial temperature (> 0).
    pub fn set_t_start_val(&mut self, v: f64) -> Result<()> {
        check_positive("t_start_val", v)?;
        self.t_start_val = v;
        Ok(())
    }

    /// Sets the fraction of epochs after which the temperature starts growing ([0, 1]).
    pub fn set_t_start_time(&mut self, v: f64) -> Result<()> {
        check_unit("t_start_time", v)?;
        self.t_start_time = v;
        Ok(())
    }

    /// Sets the fraction of epochs after which training uses hard weights ([0, 1]).
    pub fn set_t_end_time(&mut self, v: f64) -> Result<()> {
        check_unit("t_end_time", v)?;
        self.t_end_time = v;
        Ok(())
    }

    /// Sets the per-epoch temperature growth factor (> 0).
    pub fn set_t_factor(&mut self, v: f64) -> Result<()> {
        check_positive("t_factor", v)?;
        self.t_factor = v;
        Ok(())
    }

    /// Checks everything needed before training: epoch_size and has_trained_epoch set,
    /// has_trained_epoch < epoch_size, t_end_time >= t_start_time, low-bit activations only
    /// with activation quantization enabled.
    pub fn validate(&self) -> Result<()> {
        let epoch_size = self.epoch_size.ok_or_else(|| {
            Error::config("epoch_size is not set: it must be an int greater than 0")
        })?;
        let trained = self.has_trained_epoch.ok_or_else(|| {
            Error::config(
                "has_trained_epoch is not set: it must be an int greater than or equal to 0",
            )
        })?;
        if trained >= epoch_size {
            return Err(Error::config(format!(
                "has_trained_epoch must be smaller than epoch_size, but got has_trained_epoch={trained}, epoch_size={epoch_size}"
            )));
        }
        if self.t_end_time < self.t_start_time {
            return Err(Error::config(format!(
                "t_end_time must be greater than or equal to t_start_time, but got t_end_time={}, t_start_time={}",
                self.t_end_time, self.t_start_time
            )));
        }
        if self.act_quant_dtype != QuantDtype::Int8 && !self.enable_act_quant {
            return Err(Error::config(format!(
                "act_quant_dtype {} needs enable_act_quant = true (only INT8 ranges can be calibrated after training)",
                self.act_quant_dtype
            )));
        }
        Ok(())
    }

    /// Weight dtype.
    pub fn weight_quant_dtype(&self) -> QuantDtype {
        self.weight_quant_dtype
    }
    /// Activation dtype.
    pub fn act_quant_dtype(&self) -> QuantDtype {
        self.act_quant_dtype
    }
    /// Whether activations are fake-quantized in training.
    pub fn enable_act_quant(&self) -> bool {
        self.enable_act_quant
    }
    /// Whether BatchNorm is recalibrated at epoch end.
    pub fn enable_bn_calibration(&self) -> bool {
        self.enable_bn_calibration
    }
    /// Total epochs of the schedule, if set.
    pub fn epoch_size(&self) -> Option<i64> {
        self.epoch_size
    }
    /// Epochs already trained, if set.
    pub fn has_trained_epoch(&self) -> Option<i64> {
        self.has_trained_epoch
    }
    /// Initial temperature.
    pub fn t_start_val(&self) -> f64 {
        self.t_start_val
    }
    /// Start of the temperature growth (fraction of epochs).
    pub fn t_start_time(&self) -> f64 {
        self.t_start_time
    }
    /// End of the temperature phase (fraction of epochs).
    pub fn t_end_time(&self) -> f64 {
        self.t_end_time
    }
    /// Temperature growth per epoch.
    pub fn t_factor(&self) -> f64 {
        self.t_factor
    }

    /// `floor(epoch_size * t_start_time)`, `floor(epoch_size * t_end_time)`.
    pub fn t_epochs(&self) -> (i64, i64) {
        let n = self.epoch_size.unwrap_or(0) as f64;
        (
            (n * self.t_start_time).floor() as i64,
            (n * self.t_end_time).floor() as i64,
        )
    }

    /// The temperature callback at the beginning of epoch `run_epoch` (1-based, counted in
    /// this run: the schedule's epoch is `run_epoch + has_trained_epoch`).
    pub fn epoch_begin(&self, run_epoch: i64) -> Temperature {
        self.temperature(run_epoch + self.has_trained_epoch.unwrap_or(0))
    }

    /// The temperature of schedule epoch `epoch` (1-based, has_trained_epoch included).
    pub fn temperature(&self, epoch: i64) -> Temperature {
        let (start, end) = self.t_epochs();
        let mut t = self.t_start_val;
        if epoch > start {
            t *= self.t_factor.powi((epoch.min(end) - start) as i32);
        }
        Temperature {
            t,
            hard: epoch >= end,
        }
    }

    /// Golden Stick's `apply`: builds the network `cfg` under `p` with every convolution (the
    /// first conv and the 1x1 downsample convs included) an SLB conv of the configured weight
    /// bits, and activation nodes of the configured activation bits; the final dense layer
    /// stays float.
    pub fn apply(&self, p: &tch::nn::Path, cfg: crate::nn::NetConfig) -> crate::nn::Net {
        crate::nn::Net::new(
            p,
            cfg,
            self.weight_quant_dtype.bits(),
            self.act_quant_dtype.bits(),
        )
    }

    /// The BN-calibration callback at the end of schedule epoch `epoch`: whether to run a
    /// calibration pass (enabled and past the temperature start).
    pub fn epoch_end_calibrates(&self, epoch: i64) -> bool {
        self.enable_bn_calibration && epoch > self.t_epochs().0
    }
}

fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

fn py_opt(v: Option<i64>) -> String {
    v.map_or_else(|| "None".to_string(), |v| v.to_string())
}

impl fmt::Display for SlbQuantAwareTraining {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SlbQuantAwareTraining<weight_quant_dtype={}, act_quant_dtype={}, enable_act_quant={}, \
             enable_bn_calibration={}, epoch_size={}, has_trained_epoch={}, t_start_val={:?}, \
             t_start_time={:?}, t_end_time={:?}, t_factor={:?}>",
            self.weight_quant_dtype,
            self.act_quant_dtype,
            py_bool(self.enable_act_quant),
            py_bool(self.enable_bn_calibration),
            py_opt(self.epoch_size),
            py_opt(self.has_trained_epoch),
            self.t_start_val,
            self.t_start_time,
            self.t_end_time,
            self.t_factor
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults(epochs: i64) -> SlbQuantAwareTraining {
        let mut a = SlbQuantAwareTraining::new();
        a.set_epoch_size(epochs).unwrap();
        a.set_has_trained_epoch(0).unwrap();
        a.validate().unwrap();
        a
    }

    #[test]
    fn temperature_table_for_defaults() {
        let a = defaults(100);
        for e in 1..=20 {
            assert_eq!(
                a.temperature(e),
                Temperature {
                    t: 1.0,
                    hard: false
                },
                "epoch {e}"
            );
        }
        assert!((a.temperature(21).t - 1.2).abs() < 1e-12);
        assert!(!a.temperature(21).hard);
        let t59 = a.temperature(59);
        assert!((t59.t - 1224.8).abs() < 0.2, "{t59:?}");
        assert!(!t59.hard);
        for e in 60..=100 {
            let t = a.temperature(e);
            assert!(t.hard, "epoch {e}");
            assert!((t.t - 1.2f64.powi(40)).abs() < 1e-6);
        }
    }

    #[test]
    fn has_trained_epoch_shifts_the_schedule() {
        let mut a = defaults(100);
        a.set_has_trained_epoch(20).unwrap();
        assert_eq!(a.epoch_begin(1), a.temperature(21));
        assert!(a.epoch_end_calibrates(21) == a.enable_bn_calibration());
    }

    #[test]
    fn display_prints_every_setting() {
        let mut a = defaults(100);
        a.set_enable_act_quant(true);
        assert_eq!(
            a.to_string(),
            "SlbQuantAwareTraining<weight_quant_dtype=INT1, act_quant_dtype=INT8, \
             enable_act_quant=True, enable_bn_calibration=False, epoch_size=100, \
             has_trained_epoch=0, t_start_val=1.0, t_start_time=0.2, t_end_time=0.6, t_factor=1.2>"
        );
        assert!(SlbQuantAwareTraining::new()
            .to_string()
            .contains("epoch_size=None"));
    }

    fn err(r: Result<()>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn each_validation_error() {
        let mut a = SlbQuantAwareTraining::new();
        assert!(err(a.set_weight_quant_dtype(QuantDtype::Int8)).contains("weight_quant_dtype"));
        assert!(err(a.set_epoch_size(0)).contains("epoch_size must be an int greater than 0"));
        assert!(err(a.set_has_trained_epoch(-1)).contains("has_trained_epoch"));
        assert!(err(a.set_t_start_val(0.0)).contains("t_start_val"));
        assert!(err(a.set_t_start_val(f64::NAN)).contains("t_start_val"));
        assert!(err(a.set_t_start_time(1.5)).contains("t_start_time must be a float in [0, 1]"));
        assert!(err(a.set_t_end_time(-0.1)).contains("t_end_time must be a float in [0, 1]"));
        assert!(err(a.set_t_factor(-1.0)).contains("t_factor"));
        // Nothing was changed by the rejected values.
        assert_eq!(a, SlbQuantAwareTraining::new());
        assert!(err(a.validate()).contains("epoch_size is not set"));
        a.set_epoch_size(10).unwrap();
        assert!(err(a.validate()).contains("has_trained_epoch is not set"));
        a.set_has_trained_epoch(10).unwrap();
        assert!(err(a.validate()).contains("smaller than epoch_size"));
        a.set_has_trained_epoch(0).unwrap();
        a.set_t_start_time(0.7).unwrap();
        assert!(err(a.validate()).contains("t_end_time must be greater than or equal"));
        a.set_t_start_time(0.2).unwrap();
        a.set_act_quant_dtype(QuantDtype::Int2).unwrap();
        assert!(err(a.validate()).contains("enable_act_quant"));
        a.set_enable_act_quant(true);
        a.validate().unwrap();
    }
}
