//! Every error path of planning and running: typed errors for bad models, plans, arenas and
//! buffers, never a panic.

use slb_format::Site;

use super::hand_model;
use crate::kernels::Algo;
use crate::testutil::{resnet, Builder, Op1};
use crate::{run, Engine, Error, Model, Plan, PlanOptions};

#[test]
fn error_paths() {
    let bytes = hand_model();
    let model = Model::parse(&bytes).unwrap();
    let plan = Plan::new(&model, Engine::Packed).unwrap();
    let mut arena = vec![0u8; plan.arena_bytes()];
    let mut logits = [0f32; 1];
    let img = [1u8, 2, 3, 4];
    // Short arena (also one byte short).
    let n = plan.arena_bytes();
    assert_eq!(
        run(&model, &plan, &mut arena[..n - 1], &img, &mut logits),
        Err(Error::ArenaTooSmall {
            needed: n,
            got: n - 1
        })
    );
    assert!(matches!(
        run(&model, &plan, &mut [], &img, &mut logits),
        Err(Error::ArenaTooSmall { .. })
    ));
    // Wrong image and output sizes.
    assert_eq!(
        run(&model, &plan, &mut arena, &img[..3], &mut logits),
        Err(Error::InputSize {
            expected: 4,
            got: 3
        })
    );
    assert_eq!(
        run(&model, &plan, &mut arena, &img, &mut [0f32; 2]),
        Err(Error::OutputSize {
            expected: 1,
            got: 2
        })
    );
    // A plan made for another model.
    let bytes = resnet(4, 4, 1, 1, 1, 1);
    let other = Model::parse(&bytes).unwrap();
    let oplan = Plan::new(&other, Engine::Packed).unwrap();
    let mut oarena = vec![0u8; oplan.arena_bytes().max(n)];
    let oimg = vec![0u8; oplan.input_len()];
    let mut ologits = vec![0f32; oplan.output_len()];
    assert!(matches!(
        run(&model, &oplan, &mut oarena, &oimg, &mut ologits),
        Err(Error::PlanMismatch { .. })
    ));
    // XNOR forced on a W2A4 layer.
    assert_eq!(
        Plan::with_options(
            &model,
            Engine::Packed,
            PlanOptions {
                force: Some(Algo::Xnor),
                portable_only: false,
                ..PlanOptions::default()
            }
        )
        .err(),
        Some(Error::KernelUnavailable {
            layer: 0,
            kernel: "xnor (needs 1-bit weights and activations)"
        })
    );
    // Format errors convert.
    let e: Error = Model::parse(&bytes[..10]).unwrap_err().into();
    assert!(matches!(e, Error::Format(_)));
    assert!(format!("{e}").contains("invalid model"));
    // Too many layers: a chain of 300 ReLUs.
    let mut b = Builder::new(1, 1, 1, 4, 0, 1);
    let mut x = 0;
    for _ in 0..300 {
        x = b.unary(x, Op1::Relu);
    }
    let g = b.unary(x, Op1::GapF32);
    let _ = g;
    let bytes = b.finish();
    let big = Model::parse(&bytes).unwrap();
    assert_eq!(
        Plan::new(&big, Engine::Packed).err(),
        Some(Error::TooManyLayers)
    );
    // Every error displays something.
    for e in [
        Error::TooManyLayers,
        Error::Pin,
        Error::Overflow { what: "x" },
        Error::PlanMismatch {
            layer: Site::Layer(3),
        },
    ] {
        assert!(!format!("{e}").is_empty());
    }
}

#[cfg(feature = "embedded-hal")]
#[test]
fn busy_pin_goes_high_then_low() {
    use crate::run_with_busy_pin;
    use core::convert::Infallible;
    use embedded_hal::digital::{ErrorType, OutputPin};
    #[derive(Default)]
    struct Pin(Vec<bool>);
    impl ErrorType for Pin {
        type Error = Infallible;
    }
    impl OutputPin for Pin {
        fn set_low(&mut self) -> Result<(), Infallible> {
            self.0.push(false);
            Ok(())
        }
        fn set_high(&mut self) -> Result<(), Infallible> {
            self.0.push(true);
            Ok(())
        }
    }
    let bytes = hand_model();
    let model = Model::parse(&bytes).unwrap();
    let plan = Plan::new(&model, Engine::Packed).unwrap();
    let mut arena = vec![0u8; plan.arena_bytes()];
    let mut logits = [0f32; 1];
    let mut pin = Pin::default();
    run_with_busy_pin(
        &model,
        &plan,
        &mut arena,
        &[5, 0, 3, 7],
        &mut logits,
        &mut pin,
    )
    .unwrap();
    assert_eq!(pin.0, [true, false]);
    assert_eq!(logits, [-0.5]);
    // Low again after an error too.
    let mut pin = Pin::default();
    assert!(run_with_busy_pin(&model, &plan, &mut arena, &[5], &mut logits, &mut pin).is_err());
    assert_eq!(pin.0, [true, false]);
}

#[test]
fn explicit_prepare_and_unaligned_arena() {
    let bytes = hand_model();
    let model = Model::parse(&bytes).unwrap();
    let plan = Plan::new(&model, Engine::Packed).unwrap();
    // An arena starting at every offset 0..64 of a buffer works (alignment slack).
    let mut buf = vec![0u8; plan.arena_bytes() + 64];
    for off in [0usize, 1, 7, 33, 63] {
        let arena = &mut buf[off..off + plan.arena_bytes()];
        crate::prepare(&model, &plan, arena).unwrap();
        let mut logits = [0f32; 1];
        run(&model, &plan, arena, &[5, 0, 3, 7], &mut logits).unwrap();
        assert_eq!(logits, [-0.5]);
    }
}

#[test]
fn never_panics_on_short_or_dirty_buffers() {
    let bytes = resnet(8, 8, 1, 1, 2, 13);
    let model = Model::parse(&bytes).unwrap();
    let plan = Plan::new(&model, Engine::Packed).unwrap();
    let n = plan.arena_bytes();
    let image = vec![7u8; plan.input_len()];
    let mut logits = vec![0f32; plan.output_len()];
    // Every short arena length in a coarse sweep is an error, never a panic.
    let mut arena = vec![0xA5u8; n];
    for len in (0..n).step_by(n / 97 + 1) {
        assert!(matches!(
            run(&model, &plan, &mut arena[..len], &image, &mut logits),
            Err(Error::ArenaTooSmall { .. })
        ));
    }
    // Garbage in the arena (header included) is re-prepared; weights scribbled over after
    // preparation give garbage logits but no panic.
    run(&model, &plan, &mut arena, &image, &mut logits).unwrap();
    let want = logits.clone();
    let pad = arena.as_ptr().align_offset(crate::arena::ALIGN);
    let w0 = pad + crate::arena::HEADER;
    for b in &mut arena[w0..w0 + plan.weights_bytes()] {
        *b = 0xFF;
    }
    run(&model, &plan, &mut arena, &image, &mut logits).unwrap();
    crate::prepare(&model, &plan, &mut arena).unwrap();
    run(&model, &plan, &mut arena, &image, &mut logits).unwrap();
    assert_eq!(logits, want);
    // Empty and oversized images and outputs.
    for len in [0, 1, plan.input_len() - 1, plan.input_len() + 1] {
        let img = vec![0u8; len];
        assert!(matches!(
            run(&model, &plan, &mut arena, &img, &mut logits),
            Err(Error::InputSize { .. })
        ));
    }
    assert!(matches!(
        run(&model, &plan, &mut arena, &image, &mut []),
        Err(Error::OutputSize { .. })
    ));
}
