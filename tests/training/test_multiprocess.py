"""Multi-process runs: two real ``flowopt-train`` processes on localhost (gloo on CPU) against one process.

Every process here gets a timeout and is killed when a test ends, whatever
happened; the processes' cluster timeout is short, so a missing peer fails in
seconds. "The same result": one process over two host devices and two
processes of one device each share the global batch and its split over two
devices, so parameters and metrics rows agree to 1e-6 (relative).
"""

import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from flowopt.training import cli, distributed, loop
from flowopt.training.checkpoint import Checkpointer

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 90  # seconds a process may take
STEPS = 40
# Logistic regression on synthetic MNIST, 32 a global batch: a few milliseconds a step, a checkpoint every 10.
RUN = [
    *("--model", "logistic_regression", "--dataset", "synthetic_mnist", "--learning-rate", "0.05", "--steps", str(STEPS)),
    *("--batch-size", "32", "--eval-batch-size", "512", "--eval-every", "5", "--checkpoint-every", "10", "--no-progress"),
]


FSDP = ("--param-sharding", "fsdp")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


class Launch:
    """The processes of one run (``processes`` of ``devices`` host devices each), their logs beside the run directory.

    ``ids``: start only these processes of the run (default: all); ``extra``: flags added to the command.
    """

    compilation_cache: Path | None = None  # set for the module by :func:`compilation_cache`

    def __init__(
        self,
        output: Path,
        processes: int,
        devices: int,
        ids: list[int] | None = None,
        cluster_timeout: int = 20,
        extra: tuple[str, ...] = (),
    ):
        self.output = output
        env = {
            **os.environ,
            "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        if self.compilation_cache is not None:  # the runs compile the same programs: once, then loaded
            env["JAX_COMPILATION_CACHE_DIR"] = str(self.compilation_cache)
            env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
            env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
        cluster = []
        if processes > 1:
            cluster = ["--coordinator", f"localhost:{_free_port()}", "--num-processes", str(processes)]
            cluster += ["--cluster-timeout", str(cluster_timeout)]
        ids = list(range(processes)) if ids is None else ids
        self.logs = [output.with_name(f"{output.name}.{i}.log") for i in ids]
        self.procs = []
        for i, log in zip(ids, self.logs):
            own = ["--process-id", str(i)] if processes > 1 else []
            command = [sys.executable, "-m", "flowopt.training.cli", *RUN, "--output", str(output), *cluster, *own, *extra]
            with open(log, "w") as f:
                self.procs.append(subprocess.Popen(command, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT))
        self.deadline = time.monotonic() + TIMEOUT

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        for proc in self.procs:
            proc.wait()

    def log_tails(self) -> str:
        return "\n".join(f"--- {log.name}:\n" + log.read_text()[-2000:] for log in self.logs)

    def wait(self) -> list[int]:
        """The exit statuses; a process still running at the deadline fails the test (all are killed)."""
        try:
            for proc in self.procs:
                proc.wait(timeout=max(1.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"a process of {self.output.name} ran past {TIMEOUT} s:\n{self.log_tails()}")
        return [proc.returncode for proc in self.procs]

    def succeed(self) -> None:
        codes = self.wait()
        assert codes == [0] * len(codes), f"{self.output.name} exited with {codes}:\n{self.log_tails()}"


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """One JAX compilation cache for the module's processes."""
    Launch.compilation_cache = tmp_path_factory.mktemp("jit-cache")


@pytest.fixture
def launches():
    """Start runs with ``launches(...)``; every process is killed when the test ends."""
    started: list[Launch] = []

    def launch(*args, **kwargs) -> Launch:
        started.append(Launch(*args, **kwargs))
        return started[-1]

    yield launch
    for run in started:
        run.kill()


def _rows(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


@functools.cache
def _initial_state():
    """The initial state of the runs here, in this process: the structure their checkpoints restore into."""
    args = cli.build_parser().parse_args([*RUN, "--output", "unused"])
    return loop.build(cli.config_from_args(args)).state


def _params(output: Path, step: int = STEPS) -> list[np.ndarray]:
    """The parameters of the checkpoint for ``step``, restored and verified in this process (whatever processes wrote it)."""
    checkpointer = Checkpointer(output / "checkpoints")
    try:
        state, _ = checkpointer.restore(_initial_state(), step)
    finally:
        checkpointer.close()
    return [np.asarray(leaf) for leaf in jax.tree.leaves(state.params)]


def _assert_same_run(output: Path, reference: Path) -> None:
    """Final parameters within 1e-6 relative; metrics rows equal (numbers to 1e-6 relative) but for their times."""
    for a, b in zip(_params(output), _params(reference), strict=True):
        assert np.max(np.abs(a - b)) <= 1e-6 * np.max(np.abs(b)), (output.name, np.max(np.abs(a - b)))
    rows, expected = _rows(output), _rows(reference)
    assert len(rows) == len(expected) == STEPS // 5
    for row, want in zip(rows, expected):
        assert set(row) == set(want)
        for key, value in want.items():
            if key == "time_s":
                continue
            if isinstance(value, float):
                assert row[key] == pytest.approx(value, rel=1e-6), (output.name, row["step"], key)
            else:
                assert row[key] == value, (output.name, row["step"], key)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Two runs side by side: one process over two host devices (the reference), and two processes of one device each
    whose parameters and optimizer state are split between them (FSDP: each process holds half of every leaf)."""
    folder = tmp_path_factory.mktemp("multiprocess")
    runs = {
        "one": Launch(folder / "one", processes=1, devices=2),
        "two": Launch(folder / "two", processes=2, devices=1, extra=FSDP),
    }
    try:
        for run in runs.values():
            run.succeed()
    finally:
        for run in runs.values():
            run.kill()
    return runs


@pytest.fixture(scope="module")
def reference(finished):
    """The run every multi-process run here must reproduce: one process, two host devices."""
    return finished["one"].output


def test_two_processes_match_one_process(finished, reference):
    two = finished["two"]
    _assert_same_run(two.output, reference)
    assert not (two.output / "checkpoints-corrupt").exists()
    record = json.loads((two.output / "config.json").read_text())
    assert record["devices"] == 2 and record["config"]["num_processes"] == 2 and record["config"]["process_id"] == 0
    assert record["config"]["param_sharding"] == "fsdp"
    assert "is connected to 1 peer" in two.logs[1].read_text()  # the second process took part, over gloo


def test_killed_two_process_run_resumes_with_two_or_one_process(reference, tmp_path, launches):
    killed = launches(tmp_path / "two", processes=2, devices=1, extra=FSDP)
    checkpoints = killed.output / "checkpoints"
    while not (checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())):
        assert time.monotonic() < killed.deadline, killed.log_tails()
        assert all(proc.poll() is None for proc in killed.procs), (
            f"a process ended before its first checkpoint:\n{killed.log_tails()}"
        )
        time.sleep(0.01)
    killed.kill()
    assert [proc.returncode for proc in killed.procs] == [-signal.SIGKILL] * 2
    shutil.copytree(killed.output, tmp_path / "one")
    # Resumed as it ran, and by one process with replicated parameters from the checkpoint the two processes split.
    resumed = [
        launches(tmp_path / "two", processes=2, devices=1, extra=FSDP),
        launches(tmp_path / "one", processes=1, devices=2),
    ]
    for run in resumed:
        run.succeed()
        assert "Resuming" in run.logs[0].read_text(), run.log_tails()
        _assert_same_run(run.output, reference)


def test_a_missing_peer_fails_in_seconds(tmp_path, launches):
    # Process 1 alone finds no coordinator; process 0 alone (on another port) waits for a peer that never comes.
    started = time.monotonic()
    alone = [launches(tmp_path / f"alone{i}", processes=2, devices=1, ids=[i], cluster_timeout=2) for i in (0, 1)]
    codes = [run.wait()[0] for run in alone]
    assert codes[0] != 0 and codes[1] == 2, (codes, alone[0].log_tails(), alone[1].log_tails())
    lines = alone[1].logs[0].read_text().strip().splitlines()
    assert lines[-1].startswith("flowopt-train: error: argument --coordinator: no coordinator answers at localhost:"), lines
    assert "RegisterTask" in alone[0].logs[0].read_text()  # JAX's coordination service names what timed out
    assert time.monotonic() - started < 60


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--coordinator", "localhost:1234"], "argument --num-processes: coordinator, num_processes and process_id go together"),
        (["--num-processes", "2", "--process-id", "0"], "argument --coordinator: coordinator, num_processes and process_id go"),
        (
            ["--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"],
            "argument --coordinator: the coordinator address must be HOST:PORT",
        ),
        (
            ["--coordinator", "h:99999", "--num-processes", "2", "--process-id", "0"],
            "argument --coordinator: the coordinator port must be in [1, 65535]",
        ),
        (
            ["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"],
            "argument --process-id: process_id must be in [0, 1] for 2 processes",
        ),
        (
            ["--coordinator", "h:1", "--num-processes", "0", "--process-id", "0"],
            "argument --num-processes: num_processes must be at least 1",
        ),
        (
            ["--coordinator", "h:1", "--num-processes", "3", "--process-id", "0"],
            "argument --batch-size: batch_size 32 does not split evenly over the 3",
        ),
        (["--cluster-timeout", "0"], "argument --cluster-timeout: cluster_timeout must be an integer in [1,"),
    ],
)
def test_bad_process_flags_exit_2_naming_the_flag(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*RUN, *flags, "--output", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_only_a_launcher_of_several_processes_is_joined_without_flags(monkeypatch):
    for variables in distributed.LAUNCHERS.values():
        for variable in variables:
            monkeypatch.delenv(variable, raising=False)
    assert distributed.detected_launcher() is None
    slurm = dict(SLURM_JOB_ID="7", SLURM_STEP_NODELIST="node[01-02]", SLURM_PROCID="1", SLURM_LOCALID="0", SLURM_NTASKS="1")
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    assert distributed.detected_launcher() is None  # one task: a run of its own, whatever else the job runs
    monkeypatch.setenv("SLURM_NTASKS", "2")
    assert distributed.detected_launcher() == "slurm"
    monkeypatch.delenv("SLURM_STEP_NODELIST")  # a batch script outside srun
    assert distributed.detected_launcher() is None


@pytest.mark.parametrize(
    "args, message",
    [
        (("h:1", 2, None), "process_id is not set"),
        (("h", 2, 0), "HOST:PORT"),
        (("[::1:5", 2, 0), "IPv6"),
        (("h:1", 2, 5), "process_id must be in [0, 1]"),
    ],
)
def test_initialize_refuses_bad_values_before_joining(args, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        distributed.initialize(*args)
