"""The order of the training examples: the full batches of an epoch, a pure function of ``(seed, epoch)``, read by index."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The example order of one epoch: a pure function of ``(seed, epoch)``."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def iterate_batches(
    x: Any,
    y: Any,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    start: int = 0,
    shuffle: bool = True,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield this process's rows of the full batches of one epoch, from batch index ``start`` on.

    The order depends only on ``(seed, epoch)``, so a run resumed at batch
    ``start`` sees exactly the batches an uninterrupted run would. The last
    partial batch is dropped. Every process draws the same global batches and
    reads only its own contiguous ``batch_size // process_count`` rows of each,
    by index: ``x`` and ``y`` are anything indexed by an integer array
    (numpy arrays, memory maps, lazily decoded sources).
    """
    if batch_size < 1 or batch_size > len(x):
        raise ValueError(f"batch_size must be in [1, {len(x)}], got {batch_size}.")
    if not 0 <= process_index < process_count or batch_size % process_count:
        raise ValueError(
            f"process {process_index} of {process_count}: the batch of {batch_size} must split evenly over the processes."
        )
    rows = batch_size // process_count
    order = epoch_permutation(seed, epoch, len(x)) if shuffle else np.arange(len(x))
    for b in range(start, len(x) // batch_size):
        idx = order[b * batch_size + process_index * rows : b * batch_size + (process_index + 1) * rows]
        yield x[idx], y[idx]
