"""Checkpoints of a training run with orbax: array state plus a JSON record of progress.

A checkpoint holds everything a run needs to continue bitwise as if never
stopped: parameters, model state (BatchNorm statistics, dropout RNG), optimizer
state, step and gradient-evaluation counters, augmentation key, and (as JSON)
the position in the data stream and the running epoch sums.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_storable(tree: Any) -> Any:
    """Typed PRNG keys become their raw ``uint32`` data (orbax stores plain arrays)."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _from_storable(tree: Any, like: Any) -> Any:
    return jax.tree.map(
        lambda x, ref: jax.random.wrap_key_data(x, impl=jax.random.key_impl(ref)) if _is_key(ref) else x,
        tree, like,
    )


class Checkpointer:
    """Save and restore ``(state, progress)`` pairs under ``directory``, keeping the newest ``keep``."""

    def __init__(self, directory: str | os.PathLike, keep: int = 2):
        self._manager = ocp.CheckpointManager(
            os.path.abspath(directory),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=False, create=True
            ),
        )

    def latest_step(self) -> int | None:
        """Step of the newest checkpoint, or None."""
        return self._manager.latest_step()

    def save(self, step: int, state: Any, progress: dict[str, Any]) -> None:
        """Write a checkpoint for ``step`` (replacing one already there)."""
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_to_storable(state)), progress=ocp.args.JsonSave(progress)
            ),
            force=True,
        )
        self._manager.wait_until_finished()

    def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Restore the newest (or given) checkpoint into the structure and shardings of ``like``."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"No checkpoint in {self._manager.directory}.")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _to_storable(like))
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), progress=ocp.args.JsonRestore()
            ),
        )
        return _from_storable(restored["state"], like), dict(restored["progress"])

    def close(self) -> None:
        """Release the manager's resources."""
        self._manager.close()
