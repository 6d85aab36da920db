//! On-device augmentation and batching: crop and flip give shifted / mirrored copies of known
//! images, normalisation equals `normalise_value` bit for bit, batches cover the set once.
//! Runs on CUDA when there is one (so a GPU run checks the device arithmetic too), else on CPU.

use std::collections::HashSet;

use slb_trainer::data::{normalise_value, Augment, Dataset, DeviceData, CIFAR_MEAN, CIFAR_STD};
use tch::{Device, Kind, Tensor};

fn device() -> Device {
    Device::cuda_if_available()
}

fn to_vec_f32(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_device(Device::Cpu).flatten(0, -1)).unwrap()
}

fn to_vec_u8(t: &Tensor) -> Vec<u8> {
    Vec::<u8>::try_from(t.to_device(Device::Cpu).flatten(0, -1)).unwrap()
}

/// `n` distinct `h x w` images, NHWC, all values nonzero (so zero padding is recognisable).
fn images(n: usize, h: usize, w: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n * h * w * 3);
    for i in 0..n {
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    v.push(((i * 13 + y * w + x + c * 50) % 250 + 1) as u8);
                }
            }
        }
    }
    v
}

fn nhwc(data: &[u8], n: usize, h: usize, w: usize) -> Tensor {
    Tensor::from_slice(data)
        .view([n as i64, h as i64, w as i64, 3])
        .to_device(device())
}

/// Host reference: image `src` (HWC, h x w) zero-padded by `pad`, cropped at (dy, dx),
/// optionally mirrored, normalised; CHW order.
#[allow(clippy::too_many_arguments)]
fn reference(
    src: &[u8],
    h: usize,
    w: usize,
    pad: usize,
    dy: usize,
    dx: usize,
    flip: bool,
    a: &Augment,
) -> Vec<f32> {
    let mut out = vec![0f32; 3 * h * w];
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                let xx = if flip { w - 1 - x } else { x };
                // Position in the padded image, then in the source.
                let (py, px) = (y + dy, xx + dx);
                let v = if py < pad || px < pad || py >= pad + h || px >= pad + w {
                    0
                } else {
                    src[((py - pad) * w + (px - pad)) * 3 + c]
                };
                out[(c * h + y) * w + x] = normalise_value(v, c, &a.mean, &a.std);
            }
        }
    }
    out
}

#[test]
fn eval_normalisation_equals_the_formula_bit_for_bit() {
    // 16 x 16 = 256 pixels: every value in every channel.
    let mut data = Vec::new();
    for p in 0..256usize {
        for c in 0..3 {
            data.push(((p + c * 85) % 256) as u8);
        }
    }
    let x = nhwc(&data, 1, 16, 16);
    let custom = Augment {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
        ..Augment::cifar()
    };
    for a in [Augment::cifar(), custom] {
        let y = a.eval(&x);
        assert_eq!(y.size(), [1, 3, 16, 16]);
        assert_eq!(y.kind(), Kind::Float);
        assert_eq!(y.device(), device());
        let got = to_vec_f32(&y);
        for c in 0..3 {
            for p in 0..256 {
                let v = data[p * 3 + c];
                let want = normalise_value(v, c, &a.mean, &a.std);
                let g = got[c * 256 + p];
                assert_eq!(
                    g.to_bits(),
                    want.to_bits(),
                    "channel {c} value {v}: {g} vs {want}"
                );
            }
        }
    }
    assert_eq!(Augment::cifar().mean, CIFAR_MEAN);
    assert_eq!(Augment::cifar().std, CIFAR_STD);
    // Spot values of the formula itself.
    assert_eq!(
        normalise_value(0, 0, &CIFAR_MEAN, &CIFAR_STD),
        (0.0 - 0.4914f32) / 0.2023
    );
    assert_eq!(
        normalise_value(255, 2, &CIFAR_MEAN, &CIFAR_STD),
        (1.0 - 0.4465f32) / 0.2010
    );
}

#[test]
fn random_crop_and_flip_give_shifted_mirrored_copies() {
    let (n, h, w, pad) = (48usize, 8usize, 6usize, 2usize);
    let data = images(n, h, w);
    let x = nhwc(&data, n, h, w);
    let a = Augment {
        pad: pad as i64,
        ..Augment::cifar()
    };
    tch::manual_seed(17);
    let y = a.train(&x);
    assert_eq!(y.size(), [n as i64, 3, h as i64, w as i64]);
    let got = to_vec_f32(&y);
    let per = 3 * h * w;
    let mut seen = HashSet::new();
    for i in 0..n {
        let src = &data[i * h * w * 3..(i + 1) * h * w * 3];
        let out = &got[i * per..(i + 1) * per];
        let mut found = None;
        'search: for dy in 0..=2 * pad {
            for dx in 0..=2 * pad {
                for flip in [false, true] {
                    if reference(src, h, w, pad, dy, dx, flip, &a) == out {
                        found = Some((dy, dx, flip));
                        break 'search;
                    }
                }
            }
        }
        let found = found.unwrap_or_else(|| panic!("image {i} is no crop/flip of its input"));
        seen.insert(found);
    }
    // 48 draws from 5 x 5 x 2 variants: both flips and many offsets appear.
    assert!(
        seen.len() >= 12,
        "only {} distinct crops: {seen:?}",
        seen.len()
    );
    assert!(seen.iter().any(|s| s.2) && seen.iter().any(|s| !s.2));
    assert!(
        seen.iter().any(|s| s.0 != pad || s.1 != pad),
        "never shifted"
    );

    // Seeded: the same seed gives the same batch, another seed another.
    tch::manual_seed(17);
    assert_eq!(to_vec_f32(&a.train(&x)), got);
    tch::manual_seed(18);
    assert_ne!(to_vec_f32(&a.train(&x)), got);

    // No pad, no flip: train is eval.
    let plain = Augment {
        pad: 0,
        flip: false,
        ..a
    };
    assert_eq!(to_vec_f32(&plain.train(&x)), to_vec_f32(&a.eval(&x)));
    // Flip only: every image is itself or its mirror.
    let flip_only = Augment { pad: 0, ..a };
    let fo = to_vec_f32(&flip_only.train(&x));
    for i in 0..n {
        let src = &data[i * h * w * 3..(i + 1) * h * w * 3];
        let out = &fo[i * per..(i + 1) * per];
        assert!(
            out == reference(src, h, w, 0, 0, 0, false, &a)
                || out == reference(src, h, w, 0, 0, 0, true, &a),
            "image {i}"
        );
    }
}

#[test]
fn resize_to_224_is_bilinear_of_the_normalised_crop() {
    let x = nhwc(&[77u8; 2 * 32 * 32 * 3], 2, 32, 32);
    let a = Augment {
        resize: Some(224),
        ..Augment::cifar()
    };
    let e = a.eval(&x);
    assert_eq!(e.size(), [2, 3, 224, 224]);
    let v = to_vec_f32(&e);
    for c in 0..3 {
        let want = normalise_value(77, c, &a.mean, &a.std);
        let plane = &v[c * 224 * 224..(c + 1) * 224 * 224];
        assert!(
            plane.iter().all(|&g| (g - want).abs() < 1e-5),
            "channel {c}"
        );
    }
    let data = images(2, 32, 32);
    let x = nhwc(&data, 2, 32, 32);
    let small = Augment::cifar().eval(&x);
    let want = small.upsample_bilinear2d([224, 224], false, None, None);
    assert_eq!(to_vec_f32(&a.eval(&x)), to_vec_f32(&want));
    tch::manual_seed(3);
    let t = a.train(&x);
    assert_eq!(t.size(), [2, 3, 224, 224]);
}

fn numbered_dataset(n: usize) -> Dataset {
    Dataset {
        images: (0..n)
            .flat_map(|i| std::iter::repeat_n(i as u8, 4 * 4 * 3))
            .collect(),
        labels: (0..n).map(|i| (i % 3) as i64).collect(),
        height: 4,
        width: 4,
        classes: vec!["a".into(), "b".into(), "c".into()],
    }
}

/// Image numbers (first pixel) and labels of every batch.
fn collect(dd: &DeviceData, batch: i64, shuffle: bool, seed: u64) -> (Vec<usize>, Vec<Vec<u8>>) {
    let mut sizes = Vec::new();
    let mut order = Vec::new();
    for (x, y) in dd.batches(batch, shuffle, seed) {
        assert_eq!(x.kind(), Kind::Uint8);
        assert_eq!(y.kind(), Kind::Int64);
        assert_eq!(x.device(), device());
        let b = x.size()[0];
        assert_eq!(x.size(), [b, 4, 4, 3]);
        let first: Vec<u8> = to_vec_u8(&x.select(3, 0).select(2, 0).select(1, 0));
        let labels = Vec::<i64>::try_from(y.to_device(Device::Cpu)).unwrap();
        for (&i, &l) in first.iter().zip(&labels) {
            assert_eq!(l, (i % 3) as i64, "label travels with its image");
        }
        sizes.push(b as usize);
        order.push(first);
    }
    (sizes, order)
}

#[test]
fn device_batches_cover_every_image_once() {
    let ds = numbered_dataset(23);
    let dd = DeviceData::new(&ds, device());
    assert_eq!(dd.len(), 23);

    let (sizes, order) = collect(&dd, 5, false, 0);
    assert_eq!(sizes, vec![5, 5, 5, 5, 3]);
    let flat: Vec<u8> = order.concat();
    assert_eq!(flat, (0..23).collect::<Vec<u8>>());

    let (sizes, order) = collect(&dd, 5, true, 42);
    assert_eq!(sizes, vec![5, 5, 5, 5, 3]);
    let shuffled: Vec<u8> = order.concat();
    let mut sorted = shuffled.clone();
    sorted.sort();
    assert_eq!(sorted, (0..23).collect::<Vec<u8>>(), "a permutation");
    assert_ne!(shuffled, flat, "shuffled");
    assert_eq!(
        collect(&dd, 5, true, 42).1.concat(),
        shuffled,
        "same seed, same order"
    );
    assert_ne!(
        collect(&dd, 5, true, 43).1.concat(),
        shuffled,
        "another seed, another order"
    );
    // One batch larger than the set.
    assert_eq!(collect(&dd, 100, true, 1).0, vec![23]);

    let empty = DeviceData::new(&numbered_dataset(0), device());
    assert!(empty.is_empty());
    assert_eq!(empty.batches(8, true, 1).count(), 0);
}

#[test]
fn shuffles_are_roughly_uniform() {
    // Position of image 0 over 400 seeds, 8 images: every position should occur often.
    let dd = DeviceData::new(&numbered_dataset(8), device());
    let mut counts = [0usize; 8];
    for seed in 0..400 {
        let order: Vec<u8> = collect(&dd, 8, true, seed).1.concat();
        counts[order.iter().position(|&v| v == 0).unwrap()] += 1;
    }
    assert!(counts.iter().all(|&c| (25..=75).contains(&c)), "{counts:?}");
}
