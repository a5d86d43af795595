"""Data-parallel training step in two processes (gloo on host CPU) against one process, at the same global batch.

Run by :func:`run`, which starts ``python -m benchmarks.multiprocess`` as one
process and then as two processes joined on localhost
(:func:`flowopt.training.distributed.initialize`), one host CPU device each.
In every process the RK4 training step of the model is jitted with the batch
split over the ``data`` mesh axis of all processes' devices and the state
replicated (:mod:`flowopt.training.parallel`); each process feeds its half of
the global batch and XLA reduces the gradients of every stage across the
processes. Reported: two-process step time / one-process step time (wall
clock, minimum over blocks of a fixed number of steps, which every process
runs in step), and the largest parameter difference after a few steps.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

from benchmarks.report import Report, Row

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 600  # seconds a measuring process may take


class Config(NamedTuple):
    model: str
    batch_size: int
    steps: int  # steps per timed block (the same in every process)
    repeats: int
    cluster_timeout: int = 60


def measure(config: Config, processes: int, process_id: int, coordinator: str | None) -> dict:
    """In this process (one of ``processes``): the best and median wall seconds per step and the final parameters' gap."""
    from flowopt.training import distributed

    if processes > 1:
        distributed.initialize(coordinator, processes, process_id, timeout=config.cluster_timeout)

    import jax
    import jax.numpy as jnp
    import numpy as np

    import flowopt
    from benchmarks.problems import classifier
    from benchmarks.timing import compile_step, train_step
    from flowopt.training import parallel

    problem = classifier(config.model, config.batch_size)
    tx = flowopt.rk4(0.05)
    mesh = parallel.data_mesh()
    rows = config.batch_size // processes
    local = [np.asarray(a)[process_id * rows : (process_id + 1) * rows] for a in problem.batch]
    batch = parallel.shard_local_batch(local, mesh)
    params, state = parallel.replicate((problem.params, tx.init(problem.params)), mesh)
    compiled = compile_step(train_step(tx, problem.loss), params, state, batch, donate=())

    def block(n: int) -> tuple[float, float]:
        p, s = params, state
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            p, s, value = compiled.call(p, s, batch)
        jax.block_until_ready((p, value))
        return (time.perf_counter() - wall) / n, (time.process_time() - cpu) / n

    block(1)  # warm-up
    times = [block(config.steps) for _ in range(config.repeats)]
    p, s = params, state
    for _ in range(3):
        p, s, _ = compiled.call(p, s, batch)
    leaves = [np.asarray(x.addressable_shards[0].data) for x in jax.tree.leaves(p)]
    walls = sorted(t[0] for t in times)
    return {
        "process": process_id,
        "devices": mesh.size,
        "best": walls[0],
        "median": walls[len(walls) // 2],
        "cpu": min(t[1] for t in times),
        "params": [leaf.tolist() for leaf in leaves] if process_id == 0 else None,
        "scale": float(max(jnp.max(jnp.abs(x)) for x in leaves)),
    }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def _launch(config: Config, processes: int) -> list[dict]:
    """Run :func:`measure` in ``processes`` processes of one host CPU device each; their results, by process."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=1".strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    coordinator = f"localhost:{_free_port()}"
    procs = []
    try:
        for i in range(processes):
            command = [sys.executable, "-m", "benchmarks.multiprocess", "--config", json.dumps(config._asdict())]
            command += ["--processes", str(processes), "--process-id", str(i), "--coordinator", coordinator]
            procs.append(subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        outputs = [proc.communicate(timeout=TIMEOUT) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    failed = [(proc.returncode, err) for proc, (_, err) in zip(procs, outputs) if proc.returncode != 0]
    if failed:
        code, err = failed[0]
        raise RuntimeError(f"exit {code}: {(err.strip().splitlines() or [''])[-1]}")
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]


def run(config: Config, report: Report) -> None:
    """Time the step in one process, then in two, and report the ratio."""
    import numpy as np

    try:
        one, two = _launch(config, 1), _launch(config, 2)
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        report.note(f"multi-process benchmark failed: {error}")
        return
    gap = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(two[0]["params"], one[0]["params"]))
    gap /= one[0]["scale"]
    cpu_two = " + ".join(f"{1e3 * result['cpu']:.2f}" for result in two)
    report.add(
        Row(
            section=f"5c. two processes against one (gloo on host CPU, RK4, {config.model}, global batch {config.batch_size})",
            model=f"2 processes × 1 device, batch per process {config.batch_size // 2}",
            batch_size=config.batch_size,
            method="rk4",
            metric="2-process step time / 1-process step time (wall)",
            value=two[0]["best"] / one[0]["best"],
            value_median=two[0]["median"] / one[0]["median"],
            method_ms=1e3 * two[0]["best"],
            baseline_ms=1e3 * one[0]["best"],
            note=(
                f"max |θ_2 - θ_1| / max |θ_1| after 3 steps = {gap:.1e}; CPU ms per step: one process "
                f"{1e3 * one[0]['cpu']:.2f}, two {cpu_two}; "
                f"{config.repeats} blocks of {config.steps} steps each"
            ),
        )
    )
    if gap > 1e-5:
        report.note(f"the two-process result differs from the one-process one by {gap:.1e} (relative).")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--config", required=True, help="JSON of Config's fields")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--coordinator")
    args = parser.parse_args()
    config = Config(**json.loads(args.config))
    print(json.dumps(measure(config, args.processes, args.process_id, args.coordinator)))


if __name__ == "__main__":
    main()
