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

Sharded parameters (:func:`measure_sharded`): on all ``config.devices``
devices the same step runs with the parameters and RK4 state replicated and
with them split over the devices (``param_sharding="fsdp"``:
:func:`flowopt.training.parallel.fsdp_shardings`). Reported: the bytes of
parameters and optimizer state on one device, and the compiled step's memory
per device from XLA's memory analysis (arguments and outputs without the
batch, less what aliases, plus temporaries), each as sharded / replicated,
with the parameter difference between the two after a few steps.
"""

from __future__ import annotations

import argparse
import functools
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


def measure_sharded(config: Config) -> dict:
    """In this process: state bytes and compiled step memory per device, replicated and sharded, on all devices."""
    import jax
    import numpy as np

    import flowopt
    from benchmarks.problems import classifier
    from benchmarks.timing import train_step
    from flowopt.training import parallel

    problem = classifier(config.model, config.batch_size)
    tx = flowopt.rk4(0.05)
    step = train_step(tx, problem.loss)
    mesh = parallel.data_mesh(config.devices)
    batch = jax.device_put(problem.batch, parallel.batch_sharded(mesh))
    batch_bytes = parallel.addressable_bytes(batch)
    results, finals = {}, {}
    for kind in parallel.PARAM_SHARDINGS:
        params = parallel.place_state(problem.params, mesh, kind)
        state = parallel.place_state(tx.init(problem.params), mesh, kind)
        shardings = jax.tree.map(lambda leaf: leaf.sharding, (params, state))
        jitted = jax.jit(step, out_shardings=(*shardings, parallel.replicated(mesh)))
        compiled = jitted.lower(params, state, batch).compile()
        stats = compiled.memory_analysis()
        p, s = params, state
        for _ in range(config.steps):
            p, s, _ = compiled(p, s, batch)
        finals[kind] = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(p))]
        results[kind] = {
            "state_bytes": parallel.addressable_bytes((params, state)),
            "step_bytes": None
            if stats is None
            else stats.argument_size_in_bytes
            - batch_bytes
            + stats.output_size_in_bytes
            - stats.alias_size_in_bytes
            + stats.temp_size_in_bytes,
            "temp_bytes": None if stats is None else stats.temp_size_in_bytes,
            "sharded_leaves": sum(not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(p)),
        }
    scale = max(float(np.max(np.abs(r))) for r in finals["replicated"])
    gap = max(float(np.max(np.abs(a - b))) for a, b in zip(finals["fsdp"], finals["replicated"])) / scale
    return {"devices": config.devices, "gap": gap, "leaves": len(finals["fsdp"]), **results}


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
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    results = measured["data_parallel"]
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
    _report_sharded(config, measured["sharded"], report)


def _report_sharded(config: Config, result: dict, report: Report) -> None:
    n = result["devices"]
    rep, fsdp = result["replicated"], result["fsdp"]
    section = f"5b. sharded parameters (FSDP) on {n} host CPU devices (RK4, {config.model}, global batch {config.batch_size})"
    model = f"{n} devices, parameters + RK4 state {rep['state_bytes'] / 2**20:.2f} MiB replicated"
    note = (
        f"max |θ_fsdp - θ_replicated| / max |θ_replicated| after {config.steps} steps = {result['gap']:.1e}; "
        f"{fsdp['sharded_leaves']} of {result['leaves']} parameter leaves split"
    )
    row = functools.partial(Row, section=section, model=model, method="rk4")
    report.add(
        judged(
            row(
                metric="state bytes per device, sharded / replicated",
                value=fsdp["state_bytes"] / rep["state_bytes"],
                note=f"{fsdp['state_bytes']} vs {rep['state_bytes']} bytes on device 0; {note}",
            ),
            at_most(1.25 / n),
        )
    )
    if rep["step_bytes"] is not None and fsdp["step_bytes"] is not None:
        mib = lambda key: f"{fsdp[key] / 2**20:.3f} vs {rep[key] / 2**20:.3f} MiB"
        report.add(
            row(
                metric="compiled step memory per device (args + out - aliased + temp, no batch), sharded / replicated",
                value=fsdp["step_bytes"] / rep["step_bytes"],
                note=f"{mib('step_bytes')}; temporaries {mib('temp_bytes')} (with the gathered parameters)",
            )
        )
    if result["gap"] > 1e-5:
        report.note(f"sharded-parameter result differs from the replicated one by {result['gap']:.1e} (relative).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="JSON of Config's fields")
    config = Config(**json.loads(parser.parse_args().config))
    print(json.dumps({"data_parallel": measure(config), "sharded": measure_sharded(config)}))


if __name__ == "__main__":
    main()
