"""The training batch order (docs/training.md); the Rust twin is
flaxlayer::layer::epoch_permutation."""

from __future__ import annotations

import numpy as np

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


class SplitMix64:
    def __init__(self, state: int):
        self.state = state & _MASK64

    def next(self) -> int:
        self.state = (self.state + _GOLDEN) & _MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return z ^ (z >> 31)


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of the n training examples in epoch `epoch` (0-based): Fisher-Yates driven by
    SplitMix64 seeded with `seed XOR ((epoch + 1) * 0x9E3779B97F4A7C15)` (wrapping u64)."""
    rng = SplitMix64((seed & _MASK64) ^ (((epoch + 1) * _GOLDEN) & _MASK64))
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        j = rng.next() % (i + 1)
        perm[i], perm[j] = perm[j], perm[i]
    return np.asarray(perm, dtype=np.int64)


def epoch_batches(seed: int, epoch: int, n: int, batch_size: int) -> list[np.ndarray]:
    """Consecutive slices of `batch_size` of the epoch's permutation; the last partial slice
    is dropped."""
    perm = epoch_permutation(seed, epoch, n)
    return [perm[i * batch_size:(i + 1) * batch_size] for i in range(n // batch_size)]
