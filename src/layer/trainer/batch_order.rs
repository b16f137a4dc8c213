//! The documented order of training examples: SplitMix64-driven Fisher–Yates per epoch, the
//! same as `epoch_permutation` in the Python exporter (docs/training.md).

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64 (Steele, Lea, Flood 2014), the generator of the batch order.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN_GAMMA);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The order of `n` training examples in epoch `epoch` (0-based): Fisher–Yates driven by
/// SplitMix64 seeded with `seed ^ ((epoch + 1) * 0x9E3779B97F4A7C15)` (wrapping).
///
/// ```
/// let p = flaxlayer::layer::epoch_permutation(0, 0, 5);
/// let mut sorted = p.clone();
/// sorted.sort();
/// assert_eq!(sorted, [0, 1, 2, 3, 4]);
/// ```
pub fn epoch_permutation(seed: u64, epoch: u64, n: usize) -> Vec<usize> {
    let mut rng = SplitMix64(seed ^ epoch.wrapping_add(1).wrapping_mul(GOLDEN_GAMMA));
    let mut perm: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        // `i + 1 <= n` fits in u64; the remainder is at most `i`.
        let j = (rng.next() % (i as u64 + 1)) as usize;
        perm.swap(i, j);
    }
    perm
}

/// The batches of epoch `epoch`: consecutive slices of `batch_size` of
/// [`epoch_permutation`]; the last partial slice is dropped.
pub fn epoch_batches(seed: u64, epoch: u64, n: usize, batch_size: usize) -> Vec<Vec<usize>> {
    if batch_size == 0 {
        return Vec::new();
    }
    epoch_permutation(seed, epoch, n).chunks_exact(batch_size).map(<[usize]>::to_vec).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        // Vigna's splitmix64.c from state 0: the first outputs.
        let mut r = SplitMix64(0);
        assert_eq!(r.next(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn permutations_are_permutations_and_differ_by_epoch_and_seed() {
        for n in [0usize, 1, 2, 10, 1437] {
            let mut p = epoch_permutation(7, 3, n);
            p.sort_unstable();
            assert_eq!(p, (0..n).collect::<Vec<_>>());
        }
        assert_ne!(epoch_permutation(0, 0, 50), epoch_permutation(0, 1, 50));
        assert_ne!(epoch_permutation(0, 0, 50), epoch_permutation(1, 0, 50));
        assert_eq!(epoch_permutation(u64::MAX, u64::MAX, 20), epoch_permutation(u64::MAX, u64::MAX, 20));
    }

    #[test]
    fn batches_drop_the_last_partial_one() {
        let b = epoch_batches(0, 0, 10, 4);
        assert_eq!(b.len(), 2);
        assert_eq!(b.concat(), epoch_permutation(0, 0, 10)[..8]);
        assert!(epoch_batches(0, 0, 3, 4).is_empty());
        assert!(epoch_batches(0, 0, 3, 0).is_empty());
    }
}
