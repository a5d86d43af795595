"""Opening a run directory: whether it holds this run, and resuming what its checkpoints and metrics hold.

Nothing in the directory changes before every check has passed: a directory
holding a different run, a run on other data, or records that cannot be read
is refused with a :class:`~flowopt.training.rundir.RunDirectoryError`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import jax

from flowopt.training import distributed
from flowopt.training.checkpoint import Checkpointer, CheckpointError
from flowopt.training.config import TrainConfig, trajectory_mismatch
from flowopt.training.data import Dataset
from flowopt.training.metrics import MetricsLog
from flowopt.training.progress import Progress, budget_spent
from flowopt.training.rundir import RunDirectoryError, notice, write_atomic
from flowopt.training.step import RunState


class OpenedRun(NamedTuple):
    """What :func:`open_run` found: where to checkpoint, the state and progress to go on from, the metrics log.

    ``legacy``: the checkpoint is of an older flowopt that saved before writing
    its step's metrics row (and recorded no rows), so that row may be missing.
    """

    checkpointer: Checkpointer | None
    state: RunState
    progress: Progress
    log: MetricsLog
    legacy: bool


def _read_record(path: Path) -> dict[str, Any] | None:
    """The ``config.json`` record of a run directory, None if there is none."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunDirectoryError(
            f"{path} is not a readable run record ({error}); repair or remove it, or overwrite the run."
        ) from None
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise RunDirectoryError(f"{path} is not a run record (no 'config' mapping); repair or remove it, or overwrite the run.")
    return record


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


_RUN_FILES = ("config.json", "metrics.jsonl", "checkpoints", "checkpoints-corrupt")


def _remove_run(out: Path) -> None:
    """Delete what a run left in ``out`` (only the files a run writes)."""
    present = [name for name in _RUN_FILES if (out / name).exists()]
    if not present:
        return
    notice(f"Overwriting the run in {out}: removing {', '.join(present)}.")
    for name in present:
        path = out / name
        try:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        except OSError as error:
            raise RunDirectoryError(f"Cannot remove {path}: {error.strerror or error}.") from error


def _check_same_run(out: Path, stored: dict[str, Any], config: TrainConfig) -> None:
    mismatch = trajectory_mismatch(stored, config)
    if mismatch:
        raise RunDirectoryError(
            f"{out} holds a run that differs in {mismatch}; use a fresh output directory, "
            "or overwrite (--overwrite) to replace it."
        )


def data_identity(dataset: Dataset) -> dict[str, Any]:
    """What a resumed run's data must agree on (the example order and the arrays' shapes depend on it)."""
    return {
        "name": dataset.name,
        "train": len(dataset.x_train),
        "test": len(dataset.x_test),
        "image_shape": list(dataset.image_shape),
        "classes": dataset.num_classes,
    }


def open_run(
    out: Path,
    config: TrainConfig,
    state: RunState,
    record: dict[str, Any],
    overwrite: bool,
    data_identity: dict[str, Any],
    steps_per_epoch: int,
) -> OpenedRun:
    """Check the run directory and resume what it holds.

    Nothing in ``out`` changes before every check has passed.
    """
    writer = jax.process_index() == 0
    config_file, metrics_file = out / "config.json", out / "metrics.jsonl"
    if overwrite:
        distributed.on_first_process(lambda: _remove_run(out), RunDirectoryError)
    checkpointer = Checkpointer(out / "checkpoints", keep=config.keep_checkpoints)
    progress = Progress.start()
    resume_step = None
    legacy = False
    try:
        if checkpointer.all_steps():
            if not config.resume:
                raise RunDirectoryError(
                    f"{out} already holds checkpoints; resume, overwrite (--overwrite), or use a fresh directory."
                )
            try:  # a different run is refused before its arrays are read (they may not even fit)
                _check_same_run(out, checkpointer.read_record().get("config", {}), config)
            except CheckpointError:
                pass  # the newest checkpoint is damaged: restore() falls back, and the record is checked then
            state, stored = checkpointer.restore(state)
            _check_same_run(out, stored.get("config", {}), config)
            progress = Progress.from_record(stored["progress"])
            resume_step = int(state.step)
            stored_data = stored.get("data", data_identity)
            if stored_data != data_identity or progress.batch > steps_per_epoch:
                what = "; ".join(_differences(stored_data, data_identity)) or (
                    f"its checkpoint is at batch {progress.batch} of an epoch of {steps_per_epoch}"
                )
                raise RunDirectoryError(
                    f"{out} holds a run on other data ({what}); use the same data, "
                    "a fresh output directory, or overwrite (--overwrite)."
                )
            rows = stored.get("metrics")
            legacy = rows is None
            log = (
                MetricsLog(metrics_file, resume_step)
                if rows is None
                else MetricsLog(metrics_file, rows=rows["rows"], sha256=rows["sha256"])
            )
            if checkpointer.skipped:
                checkpointer.quarantine()
            notice(f"Resuming {out} from step {resume_step}.")
        else:
            old = None if overwrite else _read_record(config_file)
            has_rows = metrics_file.exists() and metrics_file.stat().st_size > 0
            if not overwrite and old is None and has_rows:
                raise RunDirectoryError(
                    f"{out} holds {metrics_file.name} but no config.json: it is not known which run wrote it. "
                    "Use a fresh output directory, or overwrite (--overwrite) to replace it."
                )
            if old is not None:
                mismatch = trajectory_mismatch(old["config"], config)
                if mismatch:
                    raise RunDirectoryError(
                        f"{out} holds a different run (it differs in {mismatch}); use a fresh output directory, "
                        "or overwrite (--overwrite) to replace it."
                    )
                if has_rows:
                    notice(f"{out} holds no checkpoint of this run: starting it again from step 0.")
            log = MetricsLog(metrics_file)
        done = resume_step is not None and budget_spent(config, resume_step, int(state.grad_evals), progress, steps_per_epoch)
        if writer and not done:  # a run already at or past a smaller budget keeps the record of its own
            old = _read_record(config_file) if config_file.exists() else None
            if old != record:
                if old is not None:
                    notice(f"Updating {config_file}: {'; '.join(_differences(old['config'], record['config']))}.")
                write_atomic(config_file, (json.dumps(record, indent=2) + "\n").encode())
    except BaseException:
        checkpointer.close()
        raise
    return OpenedRun(checkpointer, state, progress, log, legacy)
