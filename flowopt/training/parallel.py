"""Data parallelism with ``jax.sharding``: batch split over devices, parameters replicated.

The same code runs on one device or many: the train step is a single ``jit``
whose inputs carry shardings (batch over the ``"data"`` mesh axis, state
replicated); XLA inserts the all-reduce of the gradients, so BatchNorm and
the loss see the global batch exactly as on one device.

Multi-host: call ``jax.distributed.initialize()`` (coordinator address,
process count and id, or the cluster's auto-detection) in every process before
any other JAX call (:func:`flowopt.training.distributed.initialize` does, for
``flowopt-train`` and :func:`flowopt.training.train`), then run the same
training script everywhere.
``jax.devices()`` then lists the devices of all hosts, :func:`data_mesh` spans
them, every process iterates the same global batch order (it is seeded), and
:func:`shard_local_batch` feeds each process's rows of it
(``jax.make_array_from_process_local_data``). Checkpoints are written
collectively by orbax; metrics are written by process 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def data_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh over the first ``num_devices`` devices (default: all, across hosts)."""
    devices = jax.devices()
    if num_devices is not None:
        if not 1 <= num_devices <= len(devices):
            raise ValueError(f"num_devices must be in [1, {len(devices)}], got {num_devices}.")
        if num_devices != len(devices) and jax.process_count() > 1:
            raise ValueError("With several processes, data parallelism uses all devices (num_devices=None).")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Sharding that splits the leading (batch) axis over the mesh."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Put every leaf of ``tree`` on all devices of ``mesh`` (with several processes, each gives the same value)."""
    sharding = replicated(mesh)
    if sharding.is_fully_addressable:
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda leaf: _replicated_global(leaf, sharding), tree)


def _replicated_global(leaf: Any, sharding: NamedSharding) -> jax.Array:
    """``leaf`` (this process's copy) on every device of a mesh that spans processes."""
    if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        data = _replicated_global(jax.random.key_data(leaf), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
    value = np.asarray(leaf)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """Raise ValueError unless the batch splits evenly over the devices."""
    if batch_size % mesh.size:
        raise ValueError(f"batch size {batch_size} is not divisible by the {mesh.size} devices of the mesh.")


def shard_batch(arrays: Sequence[np.ndarray], mesh: Mesh) -> tuple[jax.Array, ...]:
    """Shard global host batches over the mesh; each process contributes its own rows."""
    count, index = jax.process_count(), jax.process_index()
    rows = [len(array) // count for array in arrays]
    return shard_local_batch([array[index * n : (index + 1) * n] for array, n in zip(arrays, rows)], mesh)


def shard_local_batch(arrays: Sequence[np.ndarray], mesh: Mesh) -> tuple[jax.Array, ...]:
    """Global batches sharded over the mesh from this process's rows of them (every process gives as many)."""
    sharding = batch_sharded(mesh)
    count = jax.process_count()
    return tuple(
        jax.make_array_from_process_local_data(sharding, local, (len(local) * count, *local.shape[1:])) for local in arrays
    )
