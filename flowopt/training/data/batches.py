"""The order of the training examples: the full batches of an epoch, a pure function of ``(seed, epoch)``."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The example order of one epoch: a pure function of ``(seed, epoch)``."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def iterate_batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    start: int = 0,
    shuffle: bool = True,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield the full batches of one epoch, from batch index ``start`` on.

    The order depends only on ``(seed, epoch)``, so a run resumed at batch
    ``start`` sees exactly the batches an uninterrupted run would. The last
    partial batch is dropped.
    """
    if batch_size < 1 or batch_size > len(x):
        raise ValueError(f"batch_size must be in [1, {len(x)}], got {batch_size}.")
    order = epoch_permutation(seed, epoch, len(x)) if shuffle else np.arange(len(x))
    for b in range(start, len(x) // batch_size):
        idx = order[b * batch_size : (b + 1) * batch_size]
        yield x[idx], y[idx]
