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

/// This rank's batches of one epoch: `order` (a permutation, or `0..n` unshuffled) cut into
/// global batches of `batch` (at least 1; the last one shorter), each interleaved over the
/// ranks of `shard`. A rank whose part of a short last batch is empty gets no batch for it.
///
/// Panics if `shard.world` is 0 or `shard.rank >= shard.world` (a programming error).
pub fn rank_batches(order: &[usize], batch: usize, shard: Shard) -> Vec<Vec<usize>> {
    assert!(
        shard.world > 0 && shard.rank < shard.world,
        "rank_batches: bad shard {shard:?}"
    );
    order
        .chunks(batch.max(1))
        .map(|global| {
            global
                .iter()
                .skip(shard.rank)
                .step_by(shard.world)
                .copied()
                .collect::<Vec<usize>>()
        })
        .filter(|b| !b.is_empty())
        .collect()
}

/// This rank's batches of an epoch over `n` images: shuffled by `seed` when `shuffle`, else in
/// stored order (see [`rank_batches`]).
pub fn epoch_batches(
    n: usize,
    shuffle: bool,
    seed: u64,
    batch: usize,
    shard: Shard,
) -> Vec<Vec<usize>> {
    let order = if shuffle {
        permutation(n, seed)
    } else {
        (0..n).collect()
    };
    rank_batches(&order, batch, shard)
}

#[cfg(test)]
mod tests {
    use super::*;

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
                .map(|rank| epoch_batches(n, true, 3, batch, Shard { rank, world }))
                .collect();
            for (rank, batches) in per_rank.iter().enumerate() {
                // The same call again: the same batches.
                assert_eq!(
                    batches,
                    &epoch_batches(n, true, 3, batch, Shard { rank, world })
                );
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
        let b = epoch_batches(10, false, 0, 4, Shard::single());
        assert_eq!(b, vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]);
        assert_eq!(epoch_batches(0, true, 1, 4, Shard::single()).len(), 0);
    }
}
