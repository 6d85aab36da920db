//! Random values for every configuration key (issue 14): each gives either a configuration
//! that validates and can run its whole schedule (every learning rate and temperature finite,
//! the checkpoint's JSON copy of it reads back equal), or a one-line configuration error that
//! names a key the file set; never a panic.

use proptest::prelude::*;
use slb_trainer::config::Config;
use slb_trainer::Error;

/// Every key of the file and the kind of value it takes.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Float,
    Int,
    Bool,
    Dtype,
    Model,
    Schedule,
}

const KEYS: &[(&str, Kind)] = &[
    ("weight_quant_dtype", Kind::Dtype),
    ("act_quant_dtype", Kind::Dtype),
    ("enable_act_quant", Kind::Bool),
    ("enable_bn_calibration", Kind::Bool),
    ("epoch_size", Kind::Int),
    ("has_trained_epoch", Kind::Int),
    ("t_start_val", Kind::Float),
    ("t_start_time", Kind::Float),
    ("t_end_time", Kind::Float),
    ("t_factor", Kind::Float),
    ("model", Kind::Model),
    ("width", Kind::Int),
    ("epochs", Kind::Int),
    ("batch_size", Kind::Int),
    ("lr", Kind::Float),
    ("warmup_lr", Kind::Float),
    ("warmup_epochs", Kind::Float),
    ("lr_schedule", Kind::Schedule),
    ("poly_power", Kind::Float),
    ("momentum", Kind::Float),
    ("nesterov", Kind::Bool),
    ("weight_decay", Kind::Float),
    ("label_smoothing", Kind::Float),
    ("quant_delay", Kind::Int),
    ("ema", Kind::Bool),
    ("mixed_precision", Kind::Bool),
    ("channels_last", Kind::Bool),
    ("cuda_graphs", Kind::Bool),
    ("fused_kernels", Kind::Bool),
    ("float_weights", Kind::Bool),
    ("crop_pad", Kind::Int),
    ("flip", Kind::Bool),
    ("resize", Kind::Int),
    ("train_per_class", Kind::Int),
    ("test_per_class", Kind::Int),
    ("seed", Kind::Int),
    ("log_every", Kind::Int),
    ("calibration_batches", Kind::Int),
];

/// A TOML value: mostly of the key's kind (edge cases and random ones), sometimes of another.
fn value(kind: Kind) -> BoxedStrategy<String> {
    let float = prop_oneof![
        Just("inf".to_string()),
        Just("-inf".to_string()),
        Just("nan".to_string()),
        Just("0.0".to_string()),
        Just("-0.0".to_string()),
        Just("1e300".to_string()),
        Just("1e-300".to_string()),
        (-10.0f64..10.0).prop_map(|v| format!("{v:?}")),
        any::<f64>()
            .prop_filter("finite", |v| v.is_finite())
            .prop_map(|v| format!("{v:?}")),
    ];
    let int = prop_oneof![
        Just("0".to_string()),
        Just("-1".to_string()),
        Just(i64::MAX.to_string()),
        Just(i64::MIN.to_string()),
        (-5i64..300).prop_map(|v| v.to_string()),
        any::<i64>().prop_map(|v| v.to_string()),
    ];
    let typed = match kind {
        Kind::Float => float.boxed(),
        Kind::Int => int.boxed(),
        Kind::Bool => prop_oneof![Just("true".to_string()), Just("false".to_string())].boxed(),
        Kind::Dtype => prop_oneof![
            Just("\"INT1\""),
            Just("\"INT2\""),
            Just("\"INT4\""),
            Just("\"INT8\""),
            Just("\"INT3\"")
        ]
        .prop_map(str::to_string)
        .boxed(),
        Kind::Model => prop_oneof![
            Just("\"resnet20\""),
            Just("\"vgg_small\""),
            Just("\"resnet18_cifar\""),
            Just("\"resnet18_imagenet\""),
            Just("\"alexnet\"")
        ]
        .prop_map(str::to_string)
        .boxed(),
        Kind::Schedule => prop_oneof![Just("\"poly\""), Just("\"cosine\""), Just("\"step\"")]
            .prop_map(str::to_string)
            .boxed(),
    };
    prop_oneof![
        8 => typed,
        1 => prop_oneof![Just("\"x\"".to_string()), Just("[]".to_string()), Just("1.5".to_string())],
    ]
    .boxed()
}

/// One to four distinct keys with values.
fn assignments() -> impl Strategy<Value = Vec<(&'static str, String)>> {
    proptest::sample::subsequence((0..KEYS.len()).collect::<Vec<_>>(), 1..=4).prop_flat_map(|idx| {
        idx.into_iter()
            .map(|i| {
                let (k, kind) = KEYS[i];
                value(kind).prop_map(move |v| (k, v))
            })
            .collect::<Vec<_>>()
    })
}

/// Checks one file: Ok and runnable, or an error naming one of its keys.
fn check(pairs: &[(&'static str, String)]) -> Result<(), TestCaseError> {
    let text: String = pairs.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
    let keys: Vec<&str> = pairs.iter().map(|(k, _)| *k).collect();
    let named = |msg: &str| keys.iter().any(|k| msg.contains(k));
    let cfg = match Config::from_toml(&text) {
        Ok(c) => c,
        Err(Error::Config(msg)) => {
            prop_assert!(named(&msg), "{text}: {msg}");
            prop_assert!(!msg.contains('\n'), "{text}: {msg}");
            return Ok(());
        }
        Err(e) => {
            return Err(TestCaseError::fail(format!(
                "{text}: not a config error: {e}"
            )))
        }
    };
    match cfg.algorithm() {
        Err(Error::Config(msg)) => {
            prop_assert!(
                named(&msg),
                "{text}: the message names none of {keys:?}: {msg}"
            );
            prop_assert!(!msg.contains('\n'), "{text}: {msg}");
        }
        Err(e) => {
            return Err(TestCaseError::fail(format!(
                "{text}: not a config error: {e}"
            )))
        }
        Ok(algo) => {
            // The whole schedule is finite: every epoch's temperature, every step's rate.
            let total = cfg.schedule_epochs();
            for epoch in [1, total / 2, total] {
                let t = algo.temperature(epoch.max(1)).t;
                prop_assert!(t.is_finite() && t > 0.0, "{text}: T {t} at epoch {epoch}");
            }
            for spe in [1i64, 391, 100_000] {
                for step in [0, spe, total * spe / 2, total * spe - 1] {
                    let lr = cfg.lr_at(step, spe);
                    prop_assert!(
                        lr.is_finite() && lr >= 0.0,
                        "{text}: lr {lr} at step {step}"
                    );
                }
            }
            // The checkpoint stores the config as JSON: it must read back the same (an
            // infinite value became `null` and made the checkpoint unusable).
            let json = serde_json::to_string(&cfg).unwrap();
            let back: Config = serde_json::from_str(&json)
                .map_err(|e| TestCaseError::fail(format!("{text}: {e}: {json}")))?;
            prop_assert_eq!(&back, &cfg, "{}", text);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn random_config_values_validate_or_name_their_key(pairs in assignments()) {
        check(&pairs)?;
    }
}

/// The cases of issue 14 and their siblings, pinned.
#[test]
fn named_cases() {
    for (k, v) in [
        ("warmup_epochs", "inf"),
        ("poly_power", "inf"),
        ("weight_decay", "inf"),
        ("t_factor", "nan"),
        ("resize", "0"),
        ("resize", "100000"),
        ("width", "1000000"),
        ("crop_pad", "100000"),
        ("epochs", "9223372036854775807"),
        ("quant_delay", "-1"),
    ] {
        let cfg = Config::from_toml(&format!("{k} = {v}\n")).unwrap();
        let msg = cfg.algorithm().unwrap_err().to_string();
        assert!(msg.contains(k), "{k} = {v}: {msg}");
    }
    check(&[("epochs", "3".into())]).unwrap();
}
