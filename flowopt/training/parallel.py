"""Data parallelism with ``jax.sharding``: batch split over devices, parameters replicated or sharded.

The same code runs on one device or many: the train step is a single ``jit``
whose inputs carry shardings (batch over the ``"data"`` mesh axis, state
replicated); XLA inserts the all-reduce of the gradients, so BatchNorm and
the loss see the global batch exactly as on one device.

Sharded parameters (``TrainConfig.param_sharding = "fsdp"``): the parameters
and the optimizer state are split over the same ``"data"`` axis instead of
replicated, each leaf along its largest dimension that the axis size divides
(the first such dimension on a tie; scalars, PRNG keys and leaves with no such
dimension stay replicated: :func:`fsdp_spec`). The batch stays data-parallel.
The train step is jitted with the state's shardings as its output shardings,
so XLA gathers each parameter where a computation needs it whole and the
state stays sharded between steps; each device holds about ``1/devices`` of
the state. Every integrator runs unchanged: they are maps over pytrees, and
their arithmetic on sharded leaves is elementwise. The trajectory is that of
the replicated run up to float32 round-off.

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
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
"""The name of the mesh axis the batch (and, sharded, the parameters) are split over."""
PARAM_SHARDINGS = ("replicated", "fsdp")
"""Values of ``TrainConfig.param_sharding``: parameters and optimizer state copied to every device, or split over them."""


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
    return place_state(tree, mesh)


def place(tree: Any, shardings: Any) -> Any:
    """Put each leaf of ``tree`` on its sharding, also on a mesh that spans processes (each gives the same value)."""
    return jax.tree.map(_global_array, tree, shardings)


def _global_array(leaf: Any, sharding: NamedSharding) -> jax.Array:
    """``leaf`` (this process's copy of the whole value) laid out by ``sharding``."""
    if sharding.is_fully_addressable:
        return jax.device_put(leaf, sharding)
    if _is_key(leaf):
        data = _global_array(jax.random.key_data(leaf), NamedSharding(sharding.mesh, PartitionSpec()))
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


def fsdp_spec(shape: Sequence[int], axis_size: int) -> PartitionSpec:
    """The partition of an array of ``shape`` over a mesh axis of ``axis_size`` devices.

    Its largest dimension that ``axis_size`` divides is split over
    :data:`DATA_AXIS` (the first of several such dimensions of equal size);
    with no such dimension (a scalar, a vector of odd length), the array is
    replicated (``PartitionSpec()``).
    """
    if axis_size < 1:
        raise ValueError(f"axis_size must be a positive integer, got {axis_size!r}.")
    divisible = [i for i, n in enumerate(shape) if n >= axis_size and n % axis_size == 0]
    if not divisible:
        return PartitionSpec()
    axis = max(divisible, key=lambda i: shape[i])  # max keeps the first of equal sizes
    return PartitionSpec(*(DATA_AXIS if i == axis else None for i in range(len(shape))))


def _is_key(leaf: Any) -> bool:
    return hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def fsdp_shardings(tree: Any, mesh: Mesh | AbstractMesh) -> Any:
    """A :class:`~jax.sharding.NamedSharding` for each leaf of ``tree``, by :func:`fsdp_spec` over the mesh's data axis.

    Leaves of equal shape get equal shardings, so the optimizer state's
    parameter-shaped leaves are split as their parameters are. PRNG keys stay
    replicated. ``tree`` may hold arrays or ``jax.ShapeDtypeStruct`` leaves;
    ``mesh`` may be abstract (:class:`~jax.sharding.AbstractMesh`).
    """
    size = dict(zip(mesh.axis_names, mesh.axis_sizes))[DATA_AXIS]
    return jax.tree.map(
        lambda leaf: NamedSharding(mesh, PartitionSpec() if _is_key(leaf) else fsdp_spec(np.shape(leaf), size)), tree
    )


def state_shardings(tree: Any, mesh: Mesh, param_sharding: str = "replicated") -> Any:
    """The sharding of each leaf of ``tree`` for ``param_sharding`` (one of :data:`PARAM_SHARDINGS`)."""
    if param_sharding == "replicated":
        return jax.tree.map(lambda _: replicated(mesh), tree)
    if param_sharding == "fsdp":
        return fsdp_shardings(tree, mesh)
    raise ValueError(f"Unknown param_sharding {param_sharding!r}; valid: {', '.join(PARAM_SHARDINGS)}.")


def place_state(tree: Any, mesh: Mesh, param_sharding: str = "replicated") -> Any:
    """Put ``tree`` on the devices of ``mesh``, replicated or sharded as ``param_sharding`` says."""
    return place(tree, state_shardings(tree, mesh, param_sharding))


def addressable_bytes(tree: Any, device: Any = None) -> int:
    """Bytes the leaves of ``tree`` hold on ``device``, a ``jax.Device`` (default: this process's first device)."""
    device = device if device is not None else jax.local_devices()[0]
    return sum(shard.data.nbytes for leaf in jax.tree.leaves(tree) for shard in leaf.addressable_shards if shard.device == device)
