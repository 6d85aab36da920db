//! `slb data-bench`: how fast the streaming loader turns an image-folder tree into augmented
//! 224-pixel batches on the host, with 1..N decoding threads: images/s and images/s per thread,
//! to set against a GPU's training step rate (docs/PERFORMANCE.md).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::data::{BatchSource, Split, StreamData, StreamOptions, Transform};

/// Arguments of `slb data-bench`.
#[derive(Debug, clap::Args)]
pub struct DataBenchArgs {
    /// An image-folder tree (`train/<class>/*.JPEG`).
    #[arg(long)]
    pub data: PathBuf,
    /// Decoding thread counts to measure, comma-separated (default: 1 and every core).
    #[arg(long, value_delimiter = ',')]
    pub threads: Vec<usize>,
    /// Images decoded per measurement (shuffled epochs back to back, as many as it takes).
    #[arg(long, default_value_t = 2048)]
    pub images: usize,
    /// Output side.
    #[arg(long, default_value_t = 224)]
    pub side: u32,
    /// Measure the evaluation transform (resize + centre crop) instead of the training one.
    #[arg(long)]
    pub eval: bool,
    /// Print one JSON object per measurement.
    #[arg(long)]
    pub json: bool,
}

/// Runs `slb data-bench`.
pub fn main(a: &DataBenchArgs) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = if a.threads.is_empty() {
        let mut t = vec![1, cores];
        t.dedup();
        t
    } else {
        a.threads.clone()
    };
    let transform = if a.eval {
        Transform::imagenet_eval(a.side)
    } else {
        Transform::imagenet_train(a.side)
    };
    let batch = 256usize;
    for &t in &threads {
        let d = StreamData::open(
            &a.data,
            Split::Train,
            None,
            StreamOptions {
                transform,
                workers: t.max(1),
                prefetch: 4,
                device: tch::Device::Cpu,
            },
        )
        .with_context(|| format!("loading {}", a.data.display()))?;
        let want = a.images.max(1);
        // One warm-up batch (page cache, thread start-up), its epoch dropped; then epochs
        // back to back, timed from their start (the batches decoded ahead count only once
        // they are delivered), until `want` images arrived.
        let _ = d.epoch(batch as i64, true, 1).next();
        let start = Instant::now();
        let mut n = 0usize;
        let mut seed = 2;
        while n < want {
            let before = n;
            for (_, y) in d.epoch(batch as i64, true, seed) {
                n += y.size()[0] as usize;
                if n >= want {
                    break;
                }
            }
            if n == before {
                break; // every file was skipped
            }
            seed += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        let ips = n as f64 / secs;
        if a.json {
            println!(
                "{{\"threads\":{t},\"images\":{n},\"seconds\":{secs:.3},\"images_per_s\":{ips:.1},\"images_per_s_per_thread\":{:.1},\"side\":{},\"eval\":{},\"cores\":{cores}}}",
                ips / t as f64,
                a.side,
                a.eval
            );
        } else {
            println!(
                "{t:3} threads: {n} images in {secs:.2} s: {ips:.0} images/s, {:.0} per thread ({} {}px)",
                ips / t as f64,
                if a.eval { "eval" } else { "train" },
                a.side
            );
        }
    }
    Ok(())
}
