//! A dataset resident on the training device, served in (shuffled) batches.

use tch::{Device, Kind, Tensor};

use super::Dataset;

/// The `u8` NHWC images and `i64` labels of a [`Dataset`], kept on one device.
#[derive(Debug)]
pub struct DeviceData {
    /// `[N, H, W, 3]`, `u8`.
    images: Tensor,
    /// `[N]`, `i64`.
    labels: Tensor,
    len: i64,
}

impl DeviceData {
    /// Copies `ds` to `device` (one upload of the whole set). Panics if `ds.images` does not
    /// hold `len * height * width * 3` bytes (every loader guarantees it).
    pub fn new(ds: &Dataset, device: Device) -> DeviceData {
        let n = ds.len() as i64;
        let images = Tensor::from_slice(&ds.images)
            .view([n, ds.height as i64, ds.width as i64, 3])
            .to_device(device);
        let labels = Tensor::from_slice(&ds.labels).to_device(device);
        DeviceData {
            images,
            labels,
            len: n,
        }
    }

    /// Wraps a `u8` NHWC image tensor and its `i64` labels (moved to `device`). Panics if they
    /// disagree in length or `images` is not 4-D.
    pub fn from_tensors(images: &Tensor, labels: &Tensor, device: Device) -> DeviceData {
        let n = images
            .size4()
            .expect("DeviceData::from_tensors: images must be NHWC")
            .0;
        assert_eq!(
            labels.size(),
            [n],
            "DeviceData::from_tensors: one label per image"
        );
        DeviceData {
            images: images.to_device(device),
            labels: labels.to_device(device),
            len: n,
        }
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device the data lives on.
    pub fn device(&self) -> Device {
        self.images.device()
    }

    /// All images, `[N, H, W, 3]` `u8`.
    pub fn images(&self) -> &Tensor {
        &self.images
    }

    /// All labels, `[N]` `i64`.
    pub fn labels(&self) -> &Tensor {
        &self.labels
    }

    /// Batches of `batch` images (`u8` NHWC) and labels (`i64`), covering every image once; the
    /// last batch is shorter when `batch` does not divide the size. With `shuffle`, the order is
    /// a permutation computed on the device from `seed` alone (the same seed gives the same
    /// order on every device; torch's global generator is not touched), otherwise the stored
    /// order. A `batch` below 1 is taken as 1.
    pub fn batches(
        &self,
        batch: i64,
        shuffle: bool,
        seed: u64,
    ) -> impl Iterator<Item = (Tensor, Tensor)> + '_ {
        let batch = batch.max(1);
        let perm = shuffle.then(|| permutation(self.len, seed, self.device()));
        let n = self.len;
        (0..n).step_by(batch as usize).map(move |start| {
            let len = batch.min(n - start);
            match &perm {
                Some(p) => {
                    let idx = p.narrow(0, start, len);
                    (
                        self.images.index_select(0, &idx),
                        self.labels.index_select(0, &idx),
                    )
                }
                None => (
                    self.images.narrow(0, start, len),
                    self.labels.narrow(0, start, len),
                ),
            }
        })
    }

    /// This rank's part of each global batch of a data-parallel run (`shard`): one order
    /// (with `shuffle`, a permutation from `seed` computed on the device, the same on every
    /// rank, as [`DeviceData::batches`]), global batch `k` its elements `k * batch ..`, and
    /// rank `r` of `world` takes the positions `i` of that batch with `i % world == r`
    /// ([`order`](super::order)'s rule), so every image is seen once per epoch across the ranks
    /// and the ranks' batches `k` together are exactly the single-process batch `k`. Yields
    /// `(images, labels, global batch size)`; a rank's part of a short last batch may be empty.
    pub fn shard_batches(
        &self,
        batch: i64,
        shuffle: bool,
        seed: u64,
        shard: super::Shard,
    ) -> impl Iterator<Item = (Tensor, Tensor, i64)> + '_ {
        let batch = batch.max(1);
        let (rank, world) = (shard.rank as i64, shard.world.max(1) as i64);
        let perm = if shuffle {
            permutation(self.len, seed, self.device())
        } else {
            Tensor::arange(self.len, (Kind::Int64, self.device()))
        };
        let n = self.len;
        (0..n).step_by(batch as usize).map(move |start| {
            let len = batch.min(n - start);
            let idx = perm
                .narrow(0, start, len)
                .slice(0, rank.min(len), len, world);
            (
                self.images.index_select(0, &idx),
                self.labels.index_select(0, &idx),
                len,
            )
        })
    }
}

/// SplitMix64's output function: spreads a seed over 64 bits.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A 32-bit mixing bijection on int64 tensors holding values below 2^32 (products stay below
/// 2^63, so no overflow).
fn mix32(x: &Tensor) -> Tensor {
    const M: i64 = 0x045D_9F3B;
    const MASK: i64 = 0xFFFF_FFFF;
    let x = (x.bitwise_xor_tensor(&x.bitwise_right_shift_tensor_scalar(16)) * M).bitwise_and(MASK);
    let x = (x.bitwise_xor_tensor(&x.bitwise_right_shift_tensor_scalar(16)) * M).bitwise_and(MASK);
    x.bitwise_xor_tensor(&x.bitwise_right_shift_tensor_scalar(16))
}

/// A permutation of `0..n` on `device` determined by `seed`: the indices' keyed hashes, argsorted.
/// Each round (xor/add a key, then `mix32`) is a bijection of 32-bit values, so for
/// `n <= 2^32` the keys are distinct and the sort has no ties.
fn permutation(n: i64, seed: u64, device: Device) -> Tensor {
    let s = splitmix64(seed);
    let k1 = (s & 0xFFFF_FFFF) as i64;
    let k2 = (s >> 32) as i64;
    let k3 = (splitmix64(s) & 0xFFFF_FFFF) as i64;
    let idx = Tensor::arange(n, (Kind::Int64, device));
    let x = mix32(&idx.bitwise_xor(k1));
    let x = mix32(&(x + k2).bitwise_and(0xFFFF_FFFFi64));
    let x = mix32(&x.bitwise_xor(k3));
    x.argsort_stable(true, 0, false)
}
