"""Checkpoints of a training run with orbax: array state plus a JSON record of progress.

A checkpoint holds everything a run needs to continue bitwise as if never
stopped: parameters, model state (BatchNorm statistics, dropout RNG), optimizer
state, step and gradient-evaluation counters, augmentation key, and (as JSON)
the position in the data stream and the running epoch sums.

Every checkpoint also stores a SHA-256 of each array and of its JSON record,
checked on restore: orbax does not notice a flipped bit in array data, and a
checkpoint that is unreadable or fails its checks is skipped for the newest
one that passes (with one warning line naming it and why). A step is never saved twice.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import inspect
import json
import logging
import os
import shutil
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from flowopt.core.checks import check_integer
from flowopt.training import distributed

logger = logging.getLogger(__name__)

_FORMAT = "flowopt-checkpoint-1"
_ORBAX_SOURCE = Path(ocp.__file__).parent
# TensorStore appends its whole spec to its messages; a warning keeps what precedes it.
_TENSORSTORE_DETAILS = (" [tensorstore_spec", ". See full TensorStore details")


class CheckpointError(ValueError):
    """A checkpoint could not be written, or no stored checkpoint could be restored and verified."""


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_storable(tree: Any) -> Any:
    """Typed PRNG keys become their raw ``uint32`` data (orbax stores plain arrays)."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _from_storable(tree: Any, like: Any) -> Any:
    return jax.tree.map(
        lambda x, ref: jax.random.wrap_key_data(x, impl=jax.random.key_impl(ref)) if _is_key(ref) else x,
        tree,
        like,
    )


def _host_copy(x: Any) -> np.ndarray:
    """The whole value of ``x`` on this host, however it is sharded.

    An array not fully addressable here is either replicated (one local
    replica is its value) or sharded over the processes' devices; then its
    shards are gathered from every process (a collective, as saving and
    restoring are: every process checksums the same arrays in the same order).
    """
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if x.sharding.is_fully_replicated:
            return np.asarray(x.addressable_shards[0].data)
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def array_checksums(tree: Any) -> list[list[str]]:
    """``[path, dtype, shape, sha256]`` for each leaf of a storable tree, in flattening order."""
    sums = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        value = _host_copy(leaf)
        digest = hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()
        sums.append([jax.tree_util.keystr(path), str(value.dtype), str(list(value.shape)), digest])
    return sums


def _digest(record: Any, arrays: Any) -> str:
    text = json.dumps({"record": record, "arrays": arrays}, sort_keys=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _reason(error: BaseException) -> str:
    """One line saying why a restore failed: the innermost cause (the file and what is wrong with it)."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = str(error).splitlines()[0] if str(error) else ""
    for marker in _TENSORSTORE_DETAILS:
        text = text.split(marker)[0]
    return f"{type(error).__name__}: {text[:300]}"


def _left_by_a_failed_restore(unraisable: Any) -> bool:
    """Whether an exception Python could not raise (``sys.unraisablehook``'s argument) is orbax's leftover.

    orbax runs a restore on an event loop of its own and closes it when the
    restore raises, with reads still in flight: TensorStore then reports their
    completion to the closed loop from one of its threads ("Event loop is
    closed"), and the abandoned coroutines raise again when they are collected.
    """
    if inspect.iscoroutine(unraisable.object):
        return Path(unraisable.object.cr_code.co_filename).is_relative_to(_ORBAX_SOURCE)
    frames = traceback.extract_tb(unraisable.exc_traceback)
    return (
        unraisable.object is None
        and isinstance(unraisable.exc_value, RuntimeError)
        and str(unraisable.exc_value) == "Event loop is closed"
        and bool(frames)
        and frames[0].name == "call_soon_threadsafe"
    )


_ABANDONED_READS: set[str] = set()
"""Checkpoint directories restored from in this process: asyncio's reports of reads abandoned there are not printed."""

_LEFTOVER_MESSAGES = ("Task exception was never retrieved", "Future exception was never retrieved")


def _restore_leftover(record: logging.LogRecord) -> bool:
    """Keep asyncio's report of a task or future a failed restore abandoned out of the log (logged at debug level).

    asyncio reports a collected task or future whose exception nobody retrieved
    through its logger, not the hook, and it may do so after the restore has
    returned: once the reads still in flight fail (the damaged checkpoint has
    been moved aside meanwhile). Such a report names orbax's code or the
    checkpoint directory.
    """
    message = record.getMessage()
    leftover = message.startswith(_LEFTOVER_MESSAGES) and (
        str(_ORBAX_SOURCE) in message or any(directory in message for directory in _ABANDONED_READS)
    )
    if leftover:
        logger.debug("Ignored after a failed restore: %s", message)
    return not leftover


@contextlib.contextmanager
def _failed_restores_contained(directory: Path) -> Iterator[None]:
    """Within, orbax's leftovers of a failed restore are logged at debug level instead of printed as tracebacks.

    Any other unraisable exception goes to the hook that was installed before.
    Reports that asyncio logs later about the reads left in ``directory`` are
    filtered from then on (:func:`_restore_leftover`).
    """
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if _left_by_a_failed_restore(unraisable):
            logger.debug("Ignored after a failed restore: %r (in %r)", unraisable.exc_value, unraisable.object)
        else:
            previous(unraisable)

    _ABANDONED_READS.add(str(directory))
    asyncio_logger = logging.getLogger("asyncio")
    if _restore_leftover not in asyncio_logger.filters:
        asyncio_logger.addFilter(_restore_leftover)
    sys.unraisablehook = hook
    try:
        yield
    finally:
        if sys.unraisablehook is hook:
            sys.unraisablehook = previous


class Checkpointer:
    """Save and restore ``(state, record)`` pairs under ``directory``, keeping the newest ``keep``.

    ``record`` is any JSON-serialisable mapping (the train loop stores the
    config, the position in the data and the running sums there).
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 2):
        if directory is None or not os.fspath(directory):
            raise ValueError(f"directory must be a non-empty path, got {directory!r}.")
        self._keep = check_integer("keep", keep, 1, static_args=False)
        self.directory = Path(os.path.abspath(directory))
        self.skipped: dict[int, str] = {}
        self._manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        if self.directory.exists() and not self.directory.is_dir():
            raise CheckpointError(f"The checkpoint directory {self.directory} exists and is not a directory.")
        try:
            return ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=self._keep,
                    enable_async_checkpointing=False,
                    create=True,
                    cleanup_tmp_directories=True,
                ),
            )
        except OSError as error:
            raise CheckpointError(f"Cannot use the checkpoint directory {self.directory}: {error}") from error

    def all_steps(self) -> list[int]:
        """Steps of the stored checkpoints, oldest first."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """Step of the newest checkpoint, or None."""
        return self._manager.latest_step()

    def save(self, step: int, state: Any, record: dict[str, Any]) -> None:
        """Write a checkpoint for ``step``, with checksums of its arrays and record.

        Raises:
          ValueError: ``step`` is not a non-negative integer, is already saved,
            or ``record`` is not JSON-serialisable.
          CheckpointError: writing failed (disk full, unwritable directory);
            the checkpoints already there are left as they were.
        """
        step = check_integer("step", step, 0, static_args=False)
        if step in self._manager.all_steps():
            raise ValueError(f"A checkpoint for step {step} already exists in {self.directory}; a step is never saved twice.")
        storable = _to_storable(state)
        arrays = array_checksums(storable)
        try:
            item = {"format": _FORMAT, "record": record, "arrays": arrays, "sha256": _digest(record, arrays)}
            json.dumps(item, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise ValueError(f"The checkpoint record is not JSON-serialisable: {error}") from error
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(storable), progress=ocp.args.JsonSave(item)),
            )
            self._manager.wait_until_finished()
        except Exception as error:
            self._manager.close()
            self._manager = self._open()  # clears the unfinished temporary directory
            raise CheckpointError(f"Could not write the checkpoint for step {step} in {self.directory}: {error}") from error
        if step not in self._manager.all_steps():
            raise CheckpointError(f"The checkpoint for step {step} was not written to {self.directory}.")

    def read_record(self, step: int | None = None) -> dict[str, Any]:
        """The JSON record of the given (default: newest) checkpoint, checksum-verified, without its arrays.

        Raises:
          CheckpointError: there is no such checkpoint, or its record is unreadable or fails its checksum.
        """
        step = self.latest_step() if step is None else check_integer("step", step, 0, static_args=False)
        if step is None or step not in self._manager.all_steps():
            raise CheckpointError(f"No checkpoint{'' if step is None else f' for step {step}'} in {self.directory}.")
        try:
            item = self._manager.restore(step, args=ocp.args.Composite(progress=ocp.args.JsonRestore()))["progress"]
        except Exception as error:
            raise CheckpointError(
                f"The record of the checkpoint for step {step} in {self.directory} is unreadable: {error}"
            ) from error
        if not isinstance(item, dict):
            raise CheckpointError(f"The record of the checkpoint for step {step} in {self.directory} is not a mapping.")
        if item.get("format") != _FORMAT:
            return dict(item)
        if item.get("sha256") != _digest(item.get("record"), item.get("arrays")) or not isinstance(item["record"], dict):
            raise CheckpointError(f"The record of the checkpoint for step {step} in {self.directory} fails its checksum.")
        return dict(item["record"])

    def _check_fits(self, like: Any, step: int) -> None:
        """Refuse (without falling back) a checkpoint whose arrays are of other shapes than ``like``'s."""
        try:
            item = self._manager.restore(step, args=ocp.args.Composite(progress=ocp.args.JsonRestore()))["progress"]
        except Exception:
            return  # unreadable: the full restore reports it and falls back
        if not isinstance(item, dict) or item.get("format") != _FORMAT:
            return
        if item.get("sha256") != _digest(item.get("record"), item.get("arrays")):
            return
        stored = {path: (dtype, shape) for path, dtype, shape, _ in item["arrays"]}
        wanted = {
            jax.tree_util.keystr(path): (str(np.dtype(leaf.dtype)), str(list(np.shape(leaf))))
            for path, leaf in jax.tree_util.tree_flatten_with_path(_to_storable(like))[0]
        }
        if stored != wanted:
            diff = [
                f"{k}: stored {stored.get(k, ('absent', ''))[1] or 'absent'} {stored.get(k, ('', ''))[0]}, "
                f"this run {wanted.get(k, ('absent', ''))[1] or 'absent'} {wanted.get(k, ('', ''))[0]}"
                for k in sorted(set(stored) | set(wanted))
                if stored.get(k) != wanted.get(k)
            ]
            raise CheckpointError(
                f"The checkpoint for step {step} in {self.directory} does not fit this run (another model "
                f"or data shape): {'; '.join(diff[:3])}{' ...' if len(diff) > 3 else ''}."
            )

    def _restore_one(self, like: Any, step: int) -> tuple[Any, dict[str, Any]]:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _to_storable(like))
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), progress=ocp.args.JsonRestore()),
        )
        item = restored["progress"]
        if not isinstance(item, dict):
            raise ValueError("its JSON record is not a mapping")
        if item.get("format") != _FORMAT:
            logger.warning(
                "The checkpoint for step %d in %s has no checksums (an older format); it is restored unverified.",
                step,
                self.directory,
            )
            return _from_storable(restored["state"], like), dict(item)
        record, arrays = item.get("record"), item.get("arrays")
        if item.get("sha256") != _digest(record, arrays) or not isinstance(record, dict):
            raise ValueError("its JSON record fails its checksum")
        actual = array_checksums(restored["state"])
        if actual != arrays:
            bad = ["structure"]
            if isinstance(arrays, list) and len(actual) == len(arrays):
                bad = [a[0] for a, b in zip(actual, arrays) if a != b]
            raise ValueError(f"array data fails its checksum ({', '.join(bad)})")
        return _from_storable(restored["state"], like), dict(record)

    def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Restore into the structure and shardings of ``like``: the given step, or the newest good one.

        Without ``step``, a checkpoint that cannot be read or fails its checksums
        is skipped and the next older one is tried; once one is restored, each
        skipped step gets one warning line naming it, why, and the step restored
        instead. The skipped steps are listed in the attribute ``skipped`` (see
        :meth:`quarantine`). What orbax leaves behind from a failed restore is
        logged at debug level, never printed.

        Raises:
          CheckpointError: no checkpoint (or not the given step) could be restored and verified.
        """
        steps = sorted(self._manager.all_steps(), reverse=True)
        if step is not None:
            step = check_integer("step", step, 0, static_args=False)
            if step not in steps:
                raise CheckpointError(f"No checkpoint for step {step} in {self.directory} (stored: {sorted(steps) or 'none'}).")
            steps = [step]
        if not steps:
            raise CheckpointError(f"No checkpoint in {self.directory}.")
        self.skipped = {}
        with _failed_restores_contained(self.directory):
            result = self._newest_usable(like, steps)
            if self.skipped:
                gc.collect()  # the failed restores' abandoned coroutines raise now, inside the scope
        if result is None:
            raise CheckpointError(
                f"No usable checkpoint in {self.directory}: " + "; ".join(f"step {s}: {r}" for s, r in self.skipped.items())
            )
        for skipped, reason in self.skipped.items():
            logger.warning(
                "The checkpoint for step %d in %s is unusable (%s); restored step %d instead, the newest that passed its checks.",
                skipped,
                self.directory / str(skipped),
                reason,
                result[2],
            )
        return result[:2]

    def _newest_usable(self, like: Any, steps: list[int]) -> tuple[Any, dict[str, Any], int] | None:
        """``(state, record, step)`` of the first of ``steps`` that restores and verifies; the others go to ``skipped``."""
        for candidate in steps:
            self._check_fits(like, candidate)
            try:
                return *self._restore_one(like, candidate), candidate
            except Exception as error:  # orbax, tensorstore and json raise many kinds
                self.skipped[candidate] = _reason(error)
        return None

    def quarantine(self, steps: list[int] | None = None) -> list[Path]:
        """Move the given (default: last skipped) checkpoints out of the way, into ``<directory>-corrupt/``.

        They are kept for inspection rather than deleted; the run can then save
        those steps again. With several processes, every process calls it:
        process 0 moves them (and returns where to), and every process then
        sees them gone.
        """
        steps = sorted(self.skipped if steps is None else steps)
        moved = distributed.on_first_process(lambda: self._move_aside(steps), OSError) or []
        if moved or jax.process_count() > 1:
            self._manager.close()
            self._manager = self._open()
        return moved

    def _move_aside(self, steps: list[int]) -> list[Path]:
        moved = []
        target_root = self.directory.with_name(self.directory.name + "-corrupt")
        for step in steps:
            source = self.directory / str(step)
            if not source.exists():
                continue
            target_root.mkdir(parents=True, exist_ok=True)
            target, n = target_root / str(step), 1
            while target.exists():
                target, n = target_root / f"{step}.{n}", n + 1
            shutil.move(str(source), str(target))
            logger.warning("Moved the unusable checkpoint for step %d to %s.", step, target)
            moved.append(target)
        return moved

    def close(self) -> None:
        """Release the manager's resources."""
        self._manager.close()
