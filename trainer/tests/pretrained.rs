//! The ResNet18-CIFAR W1A8 model trained on the H100 (`models/resnet18-cifar-w1a8.slb`,
//! docs/RESULTS.md: 88.78 % top-1 on the 5,000 test images from both the trainer and the packed
//! runtime) evaluated again here, on real test images from the shared archive: the packed
//! kernels of this CPU must still reach its accuracy, and the float executor of the same graph
//! must agree with them.

use std::path::{Path, PathBuf};

use slb_runtime::Engine;
use slb_trainer::data::{self, Split};
use slb_trainer::tools::eval::{check_compatible, evaluate};

fn archive() -> PathBuf {
    if let Some(p) = std::env::var_os("SLB_CIFAR_ARCHIVE") {
        return p.into();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/cifar10-jpeg.tar.xz")
}

#[test]
fn trained_resnet18_w1a8_keeps_its_accuracy_packed() {
    let model_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/resnet18-cifar-w1a8.slb");
    let bytes =
        std::fs::read(&model_path).expect("models/resnet18-cifar-w1a8.slb is in the repository");
    let model = slb_format::Model::parse(&bytes).expect("valid model");
    let path = archive();
    assert!(
        path.exists(),
        "the shared CIFAR-10 archive {} is missing",
        path.display()
    );
    let test = data::load_limited(&path, Split::Test, Some(40)).expect("test images");
    check_compatible(&model, &test, &path).expect("dataset fits the model");

    let packed = evaluate(&bytes, &test, Engine::Packed).expect("packed evaluation");
    // 88.78 % on all 5,000 images; 400 images leave a standard error of about 1.6 points.
    assert!(
        packed.top1 >= 84.0,
        "packed top-1 {:.2}% on {} images",
        packed.top1,
        packed.images
    );
    assert!(packed.top5 >= 96.0, "packed top-5 {:.2}%", packed.top5);

    let few = test.subset(4, 7);
    let p = evaluate(&bytes, &few, Engine::Packed).unwrap();
    let f = evaluate(&bytes, &few, Engine::Float).unwrap();
    let agree = p
        .predictions
        .iter()
        .zip(&f.predictions)
        .filter(|(a, b)| a == b)
        .count();
    assert!(
        agree * 100 >= 95 * few.len(),
        "packed and float engines agree on {agree} of {} images",
        few.len()
    );
}
