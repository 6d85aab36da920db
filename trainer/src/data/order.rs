//! The order of an epoch's images, on the host: one permutation of the whole split, identical on
//! every rank, cut into global batches, each global batch interleaved over the ranks (as
//! PyTorch's `DistributedSampler`, but per batch so that every step sees one global batch).
//!
//! Global batch `k` is `perm[k * B .. min((k + 1) * B, n)]`; rank `r` of `world` takes the
//! positions `i` of that batch with `i % world == r`. Across the ranks every image is seen
//! exactly once per epoch, and the same `(n, seed)` gives the same order on every machine.

use rand::seq::SliceRandom;
use rand::SeedableRng;

/// This process's part of the data: rank `rank` of `world` ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// This rank, `0..world`.
    pub rank: usize,
    /// Number of ranks, at least 1.
    pub world: usize,
}

impl Shard {
    /// Rank 0 of 1: the whole data.
    pub fn single() -> Shard {
        Shard { rank: 0, world: 1 }
    }
}

impl Default for Shard {
    fn default() -> Shard {
        Shard::single()
    }
}

/// A permutation of `0..n` determined by `seed` alone (the same on every rank and machine).
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    p.shuffle(&mut rng);
    p
}

/// This rank's part of every global batch of an epoch over `n` images (a permutation by
/// `seed` when `shuffle`, else stored order, cut into global batches of `batch`), with the
/// global batch's size. A rank whose part of a global batch is empty still gets an (empty)
/// entry, so that every rank has one entry per global batch (a data-parallel step needs every
/// rank).
pub fn shard_batches(
    n: usize,
    shuffle: bool,
    seed: u64,
    batch: usize,
    shard: Shard,
) -> Vec<(Vec<usize>, usize)> {
    let order = if shuffle {
        permutation(n, seed)
    } else {
        (0..n).collect()
    };
    let world = shard.world.max(1);
    order
        .chunks(batch.max(1))
        .map(|global| {
            let part = global
                .iter()
                .skip(shard.rank)
                .step_by(world)
                .copied()
                .collect();
            (part, global.len())
        })
        .collect()
}

/// Whether a global batch of `len` images is trained on in a run of `world` ranks: with more
/// than one rank each needs at least two images (BatchNorm's batch statistics), so a last
/// global batch smaller than `2 * world` is left out (fewer than `2 * world` images an epoch).
pub fn trains(len: usize, world: usize) -> bool {
    world <= 1 || len >= 2 * world
}

/// Training steps of an epoch over `n` images in global batches of `batch` on `world` ranks
/// (the global batches that [`trains`] keeps).
pub fn train_steps(n: usize, batch: usize, world: usize) -> usize {
    let batch = batch.max(1);
    let tail = n % batch;
    n / batch + usize::from(tail > 0 && trains(tail, world))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parts alone of [`shard_batches`].
    fn parts(n: usize, shuffle: bool, seed: u64, batch: usize, shard: Shard) -> Vec<Vec<usize>> {
        shard_batches(n, shuffle, seed, batch, shard)
            .into_iter()
            .map(|(p, _)| p)
            .collect()
    }

    #[test]
    fn every_rank_has_one_entry_per_global_batch() {
        for (n, batch, world) in [(10, 4, 3), (9, 4, 4), (64, 15, 2), (0, 4, 2)] {
            let parts: Vec<Vec<(Vec<usize>, usize)>> = (0..world)
                .map(|rank| shard_batches(n, true, 5, batch, Shard { rank, world }))
                .collect();
            let globals = n.div_ceil(batch);
            for p in &parts {
                assert_eq!(p.len(), globals);
            }
            for k in 0..globals {
                let len = parts[0][k].1;
                assert_eq!(len, batch.min(n - k * batch));
                let total: usize = parts.iter().map(|p| p[k].0.len()).sum();
                assert_eq!(total, len, "the ranks' parts make up global batch {k}");
            }
        }
        assert_eq!(train_steps(64, 15, 2), 5);
        assert_eq!(
            train_steps(61, 15, 2),
            4,
            "a last batch of 1 image for 2 ranks is left out"
        );
        assert_eq!(train_steps(61, 15, 1), 5);
        assert!(trains(4, 2) && !trains(3, 2) && trains(1, 1));
    }

    #[test]
    fn permutation_is_deterministic_and_seed_dependent() {
        let a = permutation(1000, 7);
        assert_eq!(a, permutation(1000, 7));
        assert_ne!(a, permutation(1000, 8));
        let mut s = a.clone();
        s.sort_unstable();
        assert_eq!(s, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn ranks_are_disjoint_cover_everything_and_follow_the_global_batches() {
        for (n, batch, world) in [(103, 16, 4), (10, 4, 3), (5, 8, 8), (64, 8, 1), (7, 1, 2)] {
            let perm = permutation(n, 3);
            let global: Vec<&[usize]> = perm.chunks(batch).collect();
            let mut seen = vec![0u32; n];
            let per_rank: Vec<Vec<Vec<usize>>> = (0..world)
                .map(|rank| parts(n, true, 3, batch, Shard { rank, world }))
                .collect();
            for (rank, batches) in per_rank.iter().enumerate() {
                // The same call again: the same batches.
                assert_eq!(batches, &parts(n, true, 3, batch, Shard { rank, world }));
                for b in batches {
                    for &i in b {
                        seen[i] += 1;
                    }
                }
            }
            assert!(
                seen.iter().all(|&c| c == 1),
                "n {n} batch {batch} world {world}"
            );
            // Step k of every rank draws from global batch k, interleaved by position.
            for (k, g) in global.iter().enumerate() {
                for (pos, &img) in g.iter().enumerate() {
                    let r = pos % world;
                    assert!(per_rank[r][k].contains(&img));
                }
            }
        }
    }

    #[test]
    fn single_shard_is_the_plain_batching() {
        let b = parts(10, false, 0, 4, Shard::single());
        assert_eq!(b, vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]);
        assert_eq!(parts(0, true, 1, 4, Shard::single()).len(), 0);
    }
}
