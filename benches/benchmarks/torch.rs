//! The float side through libtorch (`--features torch`): what a user would run instead.

use tch::{Device, Kind, Tensor};

fn randn(shape: &[i64]) -> Tensor {
    Tensor::randn(shape, (Kind::Float, Device::Cpu))
}

/// One fp32 conv, `c -> c` channels on `1 x c x s x s`, same padding.
pub struct Conv {
    x: Tensor,
    w: Tensor,
    pad: i64,
}

impl Conv {
    pub fn new(c: u32, s: u32, k: u16) -> Conv {
        tch::manual_seed(1);
        Conv {
            x: randn(&[1, c as i64, s as i64, s as i64]),
            w: randn(&[c as i64, c as i64, k as i64, k as i64]),
            pad: k as i64 / 2,
        }
    }

    pub fn run(&self) -> Tensor {
        let _g = tch::no_grad_guard();
        self.x.conv2d(
            &self.w,
            None::<Tensor>,
            [1, 1],
            [self.pad, self.pad],
            [1, 1],
            1,
        )
    }
}

/// ResNet18-CIFAR in fp32 with random weights (BatchNorm folded into the convs, as an
/// inference deployment would): 3x3 stem, four stages of two basic blocks, 1x1 downsamples,
/// global average pooling, a 512 -> 10 dense layer.
pub struct ResNet18 {
    x: Tensor,
    stem: Tensor,
    blocks: Vec<Block>,
    fc: Tensor,
}

struct Block {
    c1: Tensor,
    c2: Tensor,
    stride: i64,
    down: Option<Tensor>,
}

impl ResNet18 {
    pub fn new() -> ResNet18 {
        tch::manual_seed(2);
        let mut blocks = Vec::new();
        let mut cin = 64i64;
        for (i, &c) in [64i64, 128, 256, 512].iter().enumerate() {
            for j in 0..2 {
                let stride = if i > 0 && j == 0 { 2 } else { 1 };
                let down = (stride != 1 || cin != c).then(|| randn(&[c, cin, 1, 1]) * 0.05);
                blocks.push(Block {
                    c1: randn(&[c, cin, 3, 3]) * 0.05,
                    c2: randn(&[c, c, 3, 3]) * 0.05,
                    stride,
                    down,
                });
                cin = c;
            }
        }
        ResNet18 {
            x: randn(&[1, 3, 32, 32]),
            stem: randn(&[64, 3, 3, 3]) * 0.1,
            blocks,
            fc: randn(&[512, 10]) * 0.05,
        }
    }

    pub fn run(&self) -> Tensor {
        let _g = tch::no_grad_guard();
        let conv = |x: &Tensor, w: &Tensor, s: i64| {
            let k = w.size()[2];
            x.conv2d(w, None::<Tensor>, [s, s], [k / 2, k / 2], [1, 1], 1)
        };
        let mut x = conv(&self.x, &self.stem, 1).relu();
        for b in &self.blocks {
            let y = conv(&x, &b.c1, b.stride).relu();
            let y = conv(&y, &b.c2, 1);
            let sc = match &b.down {
                Some(d) => conv(&x, d, b.stride),
                None => x.shallow_clone(),
            };
            x = (y + sc).relu();
        }
        x.adaptive_avg_pool2d([1, 1])
            .flatten(1, -1)
            .matmul(&self.fc)
    }
}
