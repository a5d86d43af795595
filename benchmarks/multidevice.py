"""Data-parallel training step on several devices against one device.

Run in its own process (``python -m benchmarks.multidevice --devices 8``),
because the number of host-platform CPU devices is fixed when JAX starts;
:func:`run` starts it with ``XLA_FLAGS=--xla_force_host_platform_device_count``.
For 1, 2, 4, … devices the RK4 training step of the MLP is jitted with the
batch split over a ``data`` mesh axis and the state replicated
(``flowopt.training.parallel`` when present, else the same shardings made
here); XLA inserts the gradient all-reduce of every stage. Reported: the
largest parameter difference after a few steps against the one-device run
(float32 round-off from the reduction order), and the floating-point work of
each device's program from XLA's cost analysis, which should shrink as
``1/devices``. Wall times are context only: host devices share the CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

from benchmarks.report import Report, Row, at_most, judged

ROOT = Path(__file__).resolve().parent.parent


class Config(NamedTuple):
    devices: int
    model: str
    batch_size: int
    steps: int
    repeats: int
    block_seconds: float


def _shardings(num_devices: int):
    from flowopt.training import parallel

    mesh = parallel.data_mesh(num_devices)
    return mesh, parallel.replicated(mesh), parallel.batch_sharded(mesh), "flowopt.training.parallel"


def measure(config: Config) -> list[dict]:
    """In this process: one row per device count (1, 2, 4, … up to ``config.devices``)."""
    import jax
    import jax.numpy as jnp

    import flowopt
    from benchmarks.problems import classifier
    from benchmarks.timing import compile_step, interleaved, timed, train_step

    problem = classifier(config.model, config.batch_size)
    tx = flowopt.rk4(0.05)
    step = train_step(tx, problem.loss)
    results, reference = [], None
    counts = [n for n in (1, 2, 4, 8, 16, 32) if n <= config.devices]
    for n in counts:
        mesh, replicated, sharded, source = _shardings(n)
        params = jax.device_put(problem.params, replicated)
        state = jax.device_put(tx.init(problem.params), replicated)
        batch = jax.device_put(problem.batch, sharded)
        compiled = compile_step(step, params, state, batch, donate=())
        p, s = params, state
        for _ in range(config.steps):
            p, s, _ = compiled.call(p, s, batch)
        final = [jnp.asarray(x) for x in jax.tree.leaves(jax.device_get(p))]
        reference = reference or final
        scale = max(float(jnp.max(jnp.abs(r))) for r in reference)
        gap = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(final, reference)) / scale
        run = timed(compiled.call, params, state, batch)
        seconds = interleaved({"step": run}, config.repeats, config.block_seconds)["step"].best
        results.append(
            {
                "devices": n,
                "flops": float(compiled.cost.get("flops", float("nan"))),
                "gap": gap,
                "seconds": seconds,
                "source": source,
                "input_sharding": str(batch[0].sharding.spec),
            }
        )
    return results


def run(config: Config, report: Report) -> None:
    """Start :func:`measure` in a process with ``config.devices`` host devices and report its rows."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={config.devices}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "benchmarks.multidevice", "--config", json.dumps(config._asdict())]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        report.note(f"multi-device benchmark failed: {done.stderr.strip().splitlines()[-1:]}")
        return
    results = json.loads(done.stdout.strip().splitlines()[-1])
    single = results[0]
    section = f"5. data parallel on host CPU devices (RK4, {config.model}, global batch {config.batch_size})"
    for result in results:
        n = result["devices"]
        report.add(
            judged(
                Row(
                    section=section,
                    model=f"{n} device(s), batch per device {config.batch_size // n}",
                    method="rk4",
                    metric="per-device flops × devices / 1-device flops",
                    value=result["flops"] * n / single["flops"],
                    method_ms=1e3 * result["seconds"],
                    baseline_ms=1e3 * single["seconds"],
                    note=(
                        f"max |θ_n - θ_1| / max |θ_1| after {config.steps} steps = {result['gap']:.1e}; "
                        f"per-device GFLOP {result['flops'] / 1e9:.3f}; step sharded by {result['source']}"
                    ),
                ),
                at_most(1.05),
            )
        )
        if result["gap"] > 1e-5:
            report.note(f"{n}-device result differs from the single-device one by {result['gap']:.1e} (relative).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="JSON of Config's fields")
    config = Config(**json.loads(parser.parse_args().config))
    print(json.dumps(measure(config)))


if __name__ == "__main__":
    main()
