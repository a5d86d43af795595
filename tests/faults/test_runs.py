"""Fault injection on training runs: kills, damaged checkpoints and metrics, reused and shared run directories.

The rule: a run killed at any point resumes to the metrics file an uninterrupted
run writes (every byte but ``time_s``); a damaged checkpoint is skipped for the
newest good one, and said so; damage that cannot be repaired safely, a
directory holding another run or in use by one, is a ``ValueError`` naming the
file or directory (exit 2 and one line from ``flowopt-train``); nothing is
overwritten unless asked.
"""

from __future__ import annotations

import errno
import gc
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from flowopt.training import checkpoint, cli, data, loop, metrics, rundir
from flowopt.training.config import TrainConfig
from tests.training.runs import TINY_LOGISTIC, train_argv

BASE = dict(TINY_LOGISTIC, optimizer="sgd")
# 8 steps an epoch; rows at 3, 6, 8, 9, 12, 15, 16; checkpoints at 2, 4, 6, 8, 10, 12, 14, 16.
RUN = dict(BASE, epochs=2, eval_every=3, checkpoint_every=2)

pytestmark = pytest.mark.usefixtures("frozen_heap")  # a failed restore collects garbage: only the test's own

ROWS = [3, 6, 8, 9, 12, 15, 16]

_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from flowopt.training import data, loop
    from flowopt.training.config import TrainConfig
    ds = data.synthetic_dataset("synthetic_mnist", num_train=256, num_test=70, image_shape=(8, 8, 1))
    loop.train(TrainConfig(**json.loads(sys.argv[1])), sys.argv[2], dataset=ds)
    """
)
# Where a run is killed: "<point>@<step>" (see rundir.kill_point). Real SIGKILLs of subprocesses:
KILLS = {
    "after_row_before_save": "row@6",  # the row of step 6 is on disk, its checkpoint is not
    "mid_epoch_after_a_checkpoint": "step@5",  # resumes from step 4: running sums from the checkpoint
    "during_eval": "eval@8",
}
# ... and in this process (the kill an exception that skips the rest of the run), to keep the suite fast:
STOPS = {
    "after_save": "save@6",
    "half_written_row": "metrics_write@9",  # half the line of step 9 is on disk
}


class _Stopped(BaseException):
    pass


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_data) -> Path:
    """An uninterrupted run of RUN."""
    out = tmp_path_factory.mktemp("reference")
    loop.train(TrainConfig(**RUN), out, dataset=tiny_data)
    return out


@pytest.fixture(scope="module", autouse=True)
def _kill_processes(tmp_path_factory):
    """RUN in real subprocesses, each killed with SIGKILL at one point of KILLS.

    Started when the module starts, so they run while the other tests do; the tests of the kills come last.
    """
    root = tmp_path_factory.mktemp("killed")
    script = root / "run.py"
    script.write_text(_SCRIPT)
    procs = {}
    for name, point in KILLS.items():
        env = {**os.environ, "_FLOWOPT_TEST_KILL_AT": point, "JAX_PLATFORMS": "cpu"}
        procs[name] = subprocess.Popen(
            [sys.executable, str(script), json.dumps(RUN), str(root / name)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    yield root, procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@pytest.fixture(scope="module")
def killed(_kill_processes) -> dict[str, Path]:
    """The run directories the killed subprocesses left."""
    root, procs = _kill_processes
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == -signal.SIGKILL, (name, err.decode()[-2000:])
    return {name: root / name for name in KILLS}


def _lines(path: Path) -> list[str]:
    """The metrics file's lines with ``time_s`` removed: the rest must match byte for byte."""
    return [re.sub(r', "time_s": [^,}]*', "", line) for line in path.read_text().splitlines()]


def _steps(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.endswith("}")]


def _checkpoints(out: Path) -> list[int]:
    return sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())


def _snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _data_files(out: Path, step: int) -> list[Path]:
    """The array data files of a checkpoint, largest first."""
    files = [p for p in (out / "checkpoints" / str(step) / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    return sorted(files, key=lambda p: p.stat().st_size, reverse=True)


def test_cli_checkpoint_every_dividing_the_epoch_finishes_and_a_rerun_adds_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    args = train_argv(out, "--optimizer", "sgd", "--batch-size", "256", "--epochs", "2", "--checkpoint-every", "8")
    assert cli.main(args) == 0  # step 8 is both a --checkpoint-every step and an epoch end
    first = (out / "metrics.jsonl").read_bytes()
    assert _steps(out / "metrics.jsonl") == [8, 16] and _checkpoints(out) == [8, 16]
    assert cli.main(args) == 0
    assert (out / "metrics.jsonl").read_bytes() == first
    assert "already complete (step 16)" in capsys.readouterr().err


def test_a_budget_below_one_step_is_refused_naming_the_flag(tmp_path, capsys):
    args = train_argv(tmp_path / "run", "--optimizer", "rk4", "--grad-evals", "2")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        exit_info.value.code == 2
        and len(err) == 1
        and err[0].endswith(
            "argument --grad-evals: grad_evals is 2, less than one step of rk4 (4 gradient evaluations); nothing was trained."
        )
    )
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


def test_a_smaller_budget_on_a_finished_run_changes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    args = train_argv(out, "--optimizer", "sgd", "--batch-size", "256", "--epochs", "2")
    assert cli.main(args) == 0
    before = _snapshot(out)
    assert cli.main(args[: args.index("2")] + ["1"] + args[args.index("2") + 1 :]) == 0
    assert _snapshot(out) == before  # config.json keeps epochs 2: the metrics hold two epochs
    assert "already complete (step 16)" in capsys.readouterr().err


def test_budget_ending_on_an_eval_row_saves_its_checkpoint(tmp_path, tiny_data):
    loop.train(TrainConfig(**BASE, steps=6, eval_every=3), tmp_path, dataset=tiny_data)
    assert _checkpoints(tmp_path) == [6] and _steps(tmp_path / "metrics.jsonl") == [3, 6]
    loop.train(TrainConfig(**BASE, steps=6, eval_every=3), tmp_path, dataset=tiny_data)
    assert _steps(tmp_path / "metrics.jsonl") == [3, 6]


# -- damaged checkpoints: fall back to the newest good one, and say so ----------------------------------


def _damage(out: Path, step: int, damage: str) -> None:
    ck = out / "checkpoints" / str(step)
    if damage == "truncated_array_file":
        target = _data_files(out, step)[0]
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif damage == "bit_flip_in_array_data":
        # orbax reads a flipped bit in array data back without complaint; the stored checksums catch it
        target = _data_files(out, step)[0]
        raw = bytearray(target.read_bytes())
        raw[len(raw) // 2] ^= 0x04
        target.write_bytes(bytes(raw))
    elif damage == "garbled_progress":
        (ck / "progress" / "metadata").write_text('{"format": "flowopt-checkpoint-1", "rec')
    elif damage == "garbled_tree_metadata":
        (ck / "state" / "_METADATA").write_text("{")
    elif damage == "deleted_manifest":
        (ck / "state" / "manifest.ocdbt").unlink()
    else:
        _data_files(out, step)[0].unlink()


def _fallback_warning(message: str) -> bool:
    return "The checkpoint for step 16 in " in message and "is unusable (" in message


@pytest.mark.parametrize(
    "damage",
    [
        "truncated_array_file",
        "bit_flip_in_array_data",
        "garbled_progress",
        "garbled_tree_metadata",
        "deleted_array_file",
        "deleted_manifest",
    ],
)
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(damage, tmp_path, tiny_data, caplog, reference):
    """Checkpoint 16 is damaged: the run resumes from 14, says so in one line, and reaches what an undamaged run reaches."""
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    expected = _lines(out / "metrics.jsonl")
    _damage(out, 16, damage)
    with caplog.at_level(logging.WARNING, logger="flowopt.training.checkpoint"):
        result = loop.train(TrainConfig(**RUN), out, dataset=tiny_data)
    [warning] = [r.getMessage() for r in caplog.records if _fallback_warning(r.getMessage())]
    assert warning.endswith("; restored step 14 instead, the newest that passed its checks.")
    assert "\n" not in warning and "TensorStore" not in warning and "tensorstore_spec" not in warning, warning
    assert (out / "checkpoints-corrupt" / "16").is_dir()  # kept for inspection, out of the way
    assert _checkpoints(out) == [14, 16]  # step 16 redone and saved again
    assert _lines(out / "metrics.jsonl") == expected
    assert result.history[-1]["step"] == 16


@pytest.mark.parametrize("damage", ["truncated_array_file", "deleted_manifest"])
def test_fallback_prints_no_traceback_of_orbax_or_tensorstore(damage, tmp_path, reference):
    """orbax leaves reads in flight when a restore fails; what they raise later is not printed."""
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    expected = _lines(out / "metrics.jsonl")
    _damage(out, 16, damage)
    resume = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(RUN), str(out)],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert resume.returncode == 0, resume.stderr[-2000:]
    assert "Traceback" not in resume.stderr and "Exception ignored" not in resume.stderr, resume.stderr[-2000:]
    lines = resume.stderr.splitlines()  # the warning, where the checkpoint went, the resume
    assert len(lines) == 3 and _fallback_warning(lines[0]), lines
    assert lines[1].endswith(f"Moved the unusable checkpoint for step 16 to {out}/checkpoints-corrupt/16."), lines
    assert lines[2] == f"flowopt: Resuming {out} from step 14.", lines
    assert _lines(out / "metrics.jsonl") == expected


def test_garbled_step_metadata_alone_loses_nothing(tmp_path, tiny_data):
    """orbax's per-step metadata file is not needed to restore: the verified step 16 is used."""
    config = TrainConfig(**BASE, steps=4, checkpoint_every=2)
    loop.train(config, tmp_path, dataset=tiny_data)
    (tmp_path / "checkpoints" / "4" / "_CHECKPOINT_METADATA").write_text("{")
    result = loop.train(TrainConfig(**BASE, steps=6, checkpoint_every=2), tmp_path, dataset=tiny_data)
    assert _steps(tmp_path / "metrics.jsonl") == [4, 6] and result.history[-1]["step"] == 6
    assert not (tmp_path / "checkpoints-corrupt").exists()


def test_flipped_bit_that_orbax_misses_is_caught_by_the_checksums(tmp_path):
    """Every flip in the array data either fails in orbax or in the checksum: never a silent wrong restore."""
    ckpt = checkpoint.Checkpointer(tmp_path / "c", keep=2)
    like = {"w": jax.random.normal(jax.random.key(1), (1000,)), "key": jax.random.key(0)}  # incompressible
    ckpt.save(1, like, {"n": 1})
    ckpt.close()
    files = [p for p in (tmp_path / "c" / "1" / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    target = max(files, key=lambda p: p.stat().st_size)
    good = target.read_bytes()
    orbax_silent = caught = 0
    for offset in range(0, len(good), max(1, len(good) // 12)):
        raw = bytearray(good)
        raw[offset] ^= 0x10
        target.write_bytes(bytes(raw))
        ckpt = checkpoint.Checkpointer(tmp_path / "c", keep=2)
        try:
            try:
                restored, _ = ckpt.restore(like)
                np.testing.assert_array_equal(restored["w"], like["w"])  # the flip hit bytes never read
            except checkpoint.CheckpointError as error:
                assert "step 1" in str(error)
                caught += 1
            # orbax alone, outside Checkpointer.restore: its leftovers of a failed read are contained the same way.
            with checkpoint._failed_restores_contained(ckpt.directory):
                try:
                    restored = ckpt._manager.restore(
                        1,
                        args=ocp.args.Composite(
                            state=ocp.args.StandardRestore(
                                jax.tree.map(ocp.utils.to_shape_dtype_struct, checkpoint._to_storable(like))
                            ),
                            progress=ocp.args.JsonRestore(),
                        ),
                    )
                    orbax_silent += not np.array_equal(restored["state"]["w"], like["w"])
                except Exception:
                    pass
                gc.collect()
        finally:
            ckpt.close()
    assert orbax_silent > 0 and caught >= orbax_silent  # why the checksums exist


def test_no_good_checkpoint_is_one_clear_error(tmp_path, tiny_data, capsys):
    config = TrainConfig(**BASE, steps=4, checkpoint_every=2)
    loop.train(config, tmp_path, dataset=tiny_data)
    for step in _checkpoints(tmp_path):
        (tmp_path / "checkpoints" / str(step) / "progress" / "metadata").write_text("garbled")
    before = _snapshot(tmp_path)
    with pytest.raises(
        checkpoint.CheckpointError, match=f"No usable checkpoint in {tmp_path / 'checkpoints'}: step 4: .*; step 2: "
    ):
        loop.train(config, tmp_path, dataset=tiny_data)
    assert _snapshot(tmp_path) == before
    args = train_argv(tmp_path, "--steps", "4")
    assert _cli_exit(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "argument --output" in err[0]


def test_kill_during_a_checkpoint_write_leaves_nothing_in_the_way(tmp_path, tiny_data, reference):
    """An orbax temporary directory of an unfinished save is cleared; the step is saved again."""
    config = TrainConfig(**RUN)
    loop.train(TrainConfig(**dict(RUN, epochs=None, steps=6)), tmp_path, dataset=tiny_data)
    partial = tmp_path / "checkpoints" / "8.orbax-checkpoint-tmp-1700000000000000"
    partial.mkdir()
    (partial / "state").mkdir()
    (partial / "state" / "junk").write_bytes(b"\0" * 10)
    loop.train(config, tmp_path, dataset=tiny_data)
    assert not partial.exists() and _checkpoints(tmp_path) == [14, 16]
    assert _lines(tmp_path / "metrics.jsonl") == _lines(reference / "metrics.jsonl")


def test_checkpointer_rejects_bad_arguments_and_never_saves_a_step_twice(tmp_path):
    with pytest.raises(ValueError, match="keep must be a positive integer, got 0"):
        checkpoint.Checkpointer(tmp_path, keep=0)
    with pytest.raises(ValueError, match="keep must be a positive integer"):
        checkpoint.Checkpointer(tmp_path, keep=True)
    ckpt = checkpoint.Checkpointer(tmp_path / "c")
    state = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match="step must be a nonnegative integer, got -1"):
        ckpt.save(-1, state, {})
    ckpt.save(2, state, {"a": 1})
    with pytest.raises(ValueError, match=f"checkpoint for step 2 already exists in {tmp_path / 'c'}"):
        ckpt.save(2, state, {"a": 2})
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        ckpt.save(3, state, {"a": object()})
    with pytest.raises(checkpoint.CheckpointError, match=r"No checkpoint for step 7 .*stored: \[2\]"):
        ckpt.restore(state, step=7)
    assert ckpt.all_steps() == [2] and ckpt.restore(state)[1] == {"a": 1}
    ckpt.close()
    with pytest.raises(checkpoint.CheckpointError, match="No checkpoint in"):
        checkpoint.Checkpointer(tmp_path / "empty").restore(state)


# -- metrics.jsonl: damage is named, a kill's half line is repaired, a full disk loses nothing -----------


def test_damaged_metrics_rows_are_an_error_naming_the_file(tmp_path, tiny_data):
    config = TrainConfig(**BASE, steps=12, eval_every=3, checkpoint_every=4)
    loop.train(TrainConfig(**BASE, steps=8, eval_every=3, checkpoint_every=4), tmp_path, dataset=tiny_data)
    path = tmp_path / "metrics.jsonl"
    good = path.read_bytes()
    path.write_bytes(good.replace(b'"step": 3', b'"step": 3 GARBLED', 1))
    with pytest.raises(metrics.MetricsError, match=rf"The first 3 row\(s\) of {path} differ from those recorded"):
        loop.train(config, tmp_path, dataset=tiny_data)
    path.write_bytes(good[:20])
    with pytest.raises(metrics.MetricsError, match=f"{path} holds 0 complete row"):
        loop.train(config, tmp_path, dataset=tiny_data)
    path.unlink()
    with pytest.raises(metrics.MetricsError, match=f"{path} holds 0 complete row.*the checkpoint recorded 3"):
        loop.train(config, tmp_path, dataset=tiny_data)
    path.write_bytes(good)
    assert _steps(path) == [3, 6, 8]
    loop.train(config, tmp_path, dataset=tiny_data)
    assert _steps(path) == [3, 6, 8, 9, 12]


def test_metrics_log_without_row_counts_names_a_garbled_line_and_drops_a_half_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2\n{"step": 3}\n')
    with pytest.raises(metrics.MetricsError, match=f"{path}, line 2: not a JSON row"):
        metrics.MetricsLog(path, resume_step=3)
    path.write_text('{"step": 1}\n[1, 2]\n')
    with pytest.raises(metrics.MetricsError, match="line 2: not a metrics row"):
        metrics.MetricsLog(path, resume_step=3)
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"ste')
    log = metrics.MetricsLog(path, resume_step=2)
    assert [r["step"] for r in log.rows] == [1, 2] and path.read_text() == '{"step": 1}\n{"step": 2}\n'
    with pytest.raises(ValueError, match="integer 'step'"):
        log.write({"loss": 1.0})
    log.write({"step": 3, "loss": float("nan")})
    assert json.loads(path.read_text().splitlines()[-1]) == {"step": 3, "loss": None}
    with pytest.raises(ValueError, match="rows must be a non-negative integer"):
        metrics.MetricsLog(path, rows=-1)


def test_disk_full_on_a_metrics_row_stops_cleanly_and_the_rerun_loses_nothing(tmp_path, tiny_data, reference, monkeypatch):
    real = metrics._append_bytes

    def full_at_row_9(fd, line):
        if b'"step": 9,' in line:
            real(fd, line[:17])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, line)

    monkeypatch.setattr(metrics, "_append_bytes", full_at_row_9)
    with pytest.raises(
        metrics.MetricsError, match=f"Could not write a row to {tmp_path / 'metrics.jsonl'}: No space left on device"
    ):
        loop.train(TrainConfig(**RUN), tmp_path, dataset=tiny_data)
    assert (tmp_path / "metrics.jsonl").read_text().endswith("}\n") and _steps(tmp_path / "metrics.jsonl") == [3, 6, 8]
    monkeypatch.setattr(metrics, "_append_bytes", real)
    loop.train(TrainConfig(**RUN), tmp_path, dataset=tiny_data)
    assert _lines(tmp_path / "metrics.jsonl") == _lines(reference / "metrics.jsonl")
    lock = rundir.RunLock(tmp_path)  # the failed run released its lock
    lock.release()


def test_disk_full_on_a_checkpoint_stops_cleanly_and_the_rerun_loses_nothing(tmp_path, tiny_data, reference, monkeypatch):
    real = ocp.CheckpointManager.save

    def full_at_step_10(self, step, *args, **kwargs):
        if step == 10:
            partial = Path(self.directory) / "10.orbax-checkpoint-tmp-1"
            (partial / "state").mkdir(parents=True)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_at_step_10)
    with pytest.raises(
        checkpoint.CheckpointError, match="Could not write the checkpoint for step 10 in .*No space left on device"
    ):
        loop.train(TrainConfig(**RUN), tmp_path, dataset=tiny_data)
    assert _checkpoints(tmp_path) == [6, 8]
    monkeypatch.setattr(ocp.CheckpointManager, "save", real)
    loop.train(TrainConfig(**RUN), tmp_path, dataset=tiny_data)
    assert _lines(tmp_path / "metrics.jsonl") == _lines(reference / "metrics.jsonl")
    assert _checkpoints(tmp_path) == [14, 16]


# -- run directories: another run's files are not overwritten unless asked; one run at a time -----------


def test_reusing_a_directory_with_another_config_is_refused_unless_overwrite(tmp_path, tiny_data, capsys):
    out = tmp_path / "run"
    loop.train(TrainConfig(**BASE, steps=3), out, dataset=tiny_data)
    (out / "checkpoints").rename(tmp_path / "moved")  # no checkpoint left: config.json and metrics remain
    before = _snapshot(out)
    other = TrainConfig(**dict(BASE, learning_rate=0.2), steps=3)
    with pytest.raises(
        rundir.RunDirectoryError,
        match=rf"{out} holds a different run \(it differs in "
        r"\['learning_rate'\]\).*overwrite",
    ):
        loop.train(other, out, dataset=tiny_data)
    args = train_argv(out, "--optimizer", "sgd", "--steps", "3", "--learning-rate", "0.2", "--batch-size", "256")
    loop.train(TrainConfig(**dict(BASE, batch_size=256), steps=3), tmp_path / "cli", dataset=tiny_data)
    assert _cli_exit(args[:-1] + [str(tmp_path / "cli")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "differs in ['learning_rate']" in err[0] and str(tmp_path / "cli") in err[0]
    assert _snapshot(out) == before
    result = loop.train(other, out, dataset=tiny_data, overwrite=True)
    fresh = loop.train(other, tmp_path / "fresh", dataset=tiny_data)
    assert _lines(out / "metrics.jsonl") == _lines(tmp_path / "fresh" / "metrics.jsonl")
    assert json.loads((out / "config.json").read_text())["config"]["learning_rate"] == 0.2
    assert result.history[-1]["test_loss"] == fresh.history[-1]["test_loss"]
    assert _cli_exit(args[:-1] + [str(tmp_path / "cli"), "--overwrite"]) == 0
    assert json.loads((tmp_path / "cli" / "config.json").read_text())["config"]["learning_rate"] == 0.2


def test_same_config_without_checkpoints_starts_again(tmp_path, tiny_data, capfd):
    config = TrainConfig(**BASE, steps=3)
    loop.train(config, tmp_path, dataset=tiny_data)
    expected = _lines(tmp_path / "metrics.jsonl")
    for p in (tmp_path / "checkpoints").iterdir():
        shutil.rmtree(p)
    loop.train(config, tmp_path, dataset=tiny_data)
    assert "holds no checkpoint of this run: starting it again from step 0" in capfd.readouterr().err
    assert _lines(tmp_path / "metrics.jsonl") == expected


def test_unknown_or_damaged_run_records_are_refused(tmp_path, tiny_data):
    config = TrainConfig(**BASE, steps=3)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(rundir.RunDirectoryError, match="holds metrics.jsonl but no config.json"):
        loop.train(config, tmp_path, dataset=tiny_data)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(rundir.RunDirectoryError, match=f"{tmp_path / 'config.json'} is not a readable run record"):
        loop.train(config, tmp_path, dataset=tiny_data)
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n'
    loop.train(config, tmp_path, dataset=tiny_data, overwrite=True)
    assert _steps(tmp_path / "metrics.jsonl") == [3]


def test_resume_false_with_checkpoints_is_refused(tmp_path, tiny_data):
    loop.train(TrainConfig(**BASE, steps=3), tmp_path, dataset=tiny_data)
    with pytest.raises(rundir.RunDirectoryError, match="already holds checkpoints; resume, overwrite"):
        loop.train(TrainConfig(**BASE, steps=3, resume=False), tmp_path, dataset=tiny_data)


_HOLD_LOCK = textwrap.dedent(
    """
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, f"pid {os.getpid()} on testhost".encode())
    print("locked", flush=True)
    time.sleep(120)
    """
)


def test_a_directory_in_use_is_refused_and_a_dead_holder_does_not_block(tmp_path, tiny_data, capsys):
    config = TrainConfig(**BASE, steps=3)
    tmp_path.mkdir(exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(tmp_path / rundir.LOCK_NAME)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"locked"
        with pytest.raises(
            rundir.RunDirectoryError, match=rf"{tmp_path} is in use by another run \(pid {holder.pid} on testhost\)"
        ):
            loop.train(config, tmp_path, dataset=tiny_data)
        args = train_argv(tmp_path, "--steps", "3", "--batch-size", "256")
        assert _cli_exit(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"pid {holder.pid}" in err[0]
        assert not (tmp_path / "metrics.jsonl").exists()
    finally:
        holder.kill()  # SIGKILL: the kernel releases its lock
        holder.wait()
    loop.train(config, tmp_path, dataset=tiny_data)
    assert _steps(tmp_path / "metrics.jsonl") == [3]
    assert (tmp_path / rundir.LOCK_NAME).read_text() == ""  # released on exit


def test_an_unusable_output_directory_is_named(tmp_path, tiny_data):
    (tmp_path / "file").write_text("x")
    with pytest.raises(rundir.RunDirectoryError, match=f"Cannot create the output directory {tmp_path / 'file' / 'run'}"):
        loop.train(TrainConfig(**BASE, steps=1), tmp_path / "file" / "run", dataset=tiny_data)
    with pytest.raises(ValueError, match="output_dir must be a non-empty path"):
        loop.train(TrainConfig(**BASE, steps=1), "", dataset=tiny_data)
    with pytest.raises(ValueError, match="overwrite must be True or False"):
        loop.train(TrainConfig(**BASE, steps=1), tmp_path, dataset=tiny_data, overwrite="yes")


def _cli_exit(args: list[str]) -> int:
    try:
        return cli.main(args)
    except SystemExit as exit_:
        return exit_.code


def test_resuming_on_other_data_is_refused_before_anything_changes(tmp_path, tiny_data):
    loop.train(TrainConfig(**BASE, steps=5, checkpoint_every=5), tmp_path, dataset=tiny_data)
    before = _snapshot(tmp_path)
    fewer = data.synthetic_dataset("synthetic_mnist", num_train=96, num_test=70, image_shape=(8, 8, 1))
    with pytest.raises(rundir.RunDirectoryError, match=rf"{tmp_path} holds a run on other data \(train: 256 -> 96\)"):
        loop.train(TrainConfig(**BASE, steps=8), tmp_path, dataset=fewer)
    larger = data.synthetic_dataset("synthetic_mnist", num_train=256, num_test=70, image_shape=(10, 10, 1))
    with pytest.raises(
        checkpoint.CheckpointError,
        match=r"step 5 .* does not fit this run .*kernel.*"
        r"stored \[64, 10\] float32, this run \[100, 10\] float32",
    ):
        loop.train(TrainConfig(**BASE, steps=8), tmp_path, dataset=larger)
    assert _snapshot(tmp_path) == before and not (tmp_path / "checkpoints-corrupt").exists()


def test_a_diverged_run_given_again_diverges_again_without_duplicate_rows(tmp_path, tiny_data):
    import optax

    explode = optax.sgd(lambda count: jnp.where(count < 20, 0.05, 1e30))
    config = TrainConfig(**dict(BASE, model="mlp", model_options={"hidden": [16]}), epochs=5)
    for _ in range(2):
        result = loop.train(config, tmp_path, dataset=tiny_data, tx=explode)
        assert result.diverged and "last good checkpoint (step 16)" in result.message
        assert _steps(tmp_path / "metrics.jsonl") == [8, 16, 21]


def test_a_checkpoint_directory_that_is_a_file_is_named(tmp_path, tiny_data):
    (tmp_path / "checkpoints").write_text("not a directory")
    with pytest.raises(checkpoint.CheckpointError, match=f"{tmp_path / 'checkpoints'} exists and is not a directory"):
        loop.train(TrainConfig(**BASE, steps=2), tmp_path, dataset=tiny_data)


# -- kills at every point resume to the uninterrupted metrics ------------------------------------------


@pytest.mark.parametrize("name", [*KILLS, *STOPS])
def test_killed_run_resumes_to_the_uninterrupted_metrics(name, request, reference, tiny_data, capfd, monkeypatch, tmp_path):
    if name in KILLS:
        out = request.getfixturevalue("killed")[name]
    else:
        out = tmp_path / name

        def stop():
            raise _Stopped(name)

        monkeypatch.setenv("_FLOWOPT_TEST_KILL_AT", STOPS[name])
        monkeypatch.setattr(rundir, "_kill", stop)
        with pytest.raises(_Stopped):
            loop.train(TrainConfig(**RUN), out, dataset=tiny_data)
        monkeypatch.delenv("_FLOWOPT_TEST_KILL_AT")
    before = _steps(out / "metrics.jsonl")
    expected_before = {
        "after_row_before_save": [3, 6],
        "after_save": [3, 6],
        "mid_epoch_after_a_checkpoint": [3],
        "during_eval": [3, 6],
        "half_written_row": [3, 6, 8],
    }[name]
    assert before == expected_before
    if name == "half_written_row":
        assert not (out / "metrics.jsonl").read_text().endswith("\n")  # the kill left half a line
    resumed = loop.train(TrainConfig(**RUN), out, dataset=tiny_data)
    assert _lines(out / "metrics.jsonl") == _lines(reference / "metrics.jsonl")
    assert [r["step"] for r in resumed.history] == ROWS
    assert _checkpoints(out) == _checkpoints(reference) == [14, 16]
    start = {
        "after_row_before_save": 4,
        "after_save": 6,
        "mid_epoch_after_a_checkpoint": 4,
        "during_eval": 6,
        "half_written_row": 8,
    }[name]
    assert f"Resuming {out} from step {start}." in capfd.readouterr().err  # printed without any logging setup
    ref = loop.train(TrainConfig(**RUN), reference, dataset=tiny_data)  # finished: nothing is redone
    for a, b in zip(jax.tree.leaves(resumed.state.params), jax.tree.leaves(ref.state.params)):
        np.testing.assert_array_equal(a, b)


def test_asyncio_reports_of_reads_abandoned_in_a_restored_directory_are_kept_out_of_the_log(tmp_path):
    """A restore's reads may fail after it returned (the damaged step was moved aside): asyncio's report is dropped."""
    with checkpoint._failed_restores_contained(tmp_path / "checkpoints"):
        pass

    def report(path) -> logging.LogRecord:
        message = f"Future exception was never retrieved\nfuture: <Future finished exception=ValueError('NOT_FOUND: {path}/16')>"
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 0, message, None, None)

    assert not checkpoint._restore_leftover(report(tmp_path / "checkpoints-corrupt"))
    assert checkpoint._restore_leftover(report(tmp_path / "elsewhere"))  # not a restore's: printed as usual
    assert checkpoint._restore_leftover(logging.LogRecord("asyncio", logging.ERROR, __file__, 0, "other", None, None))
