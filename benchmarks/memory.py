"""Peak memory of one training step, from XLA's compiled memory analysis, and compile times.

For a compiled step ``(params, opt_state, batch) -> (params, opt_state, loss)``
XLA reports the bytes of its arguments, outputs and temporaries, and which
outputs alias (reuse) donated arguments. The step's peak is at most

    arguments + outputs - aliased + temporaries

and we report it, without the batch, as a multiple of the parameter bytes
``P``. Beside it is the number of parameter-sized buffers the scheme must
hold at once (:func:`minimum_buffers`): SGD needs 2 (``θ`` and ``∇f``), and
an explicit Runge–Kutta step needs ``θ``, the stage point, the stage
gradient, one running sum per weight vector and every earlier ``k_j`` that a
later stage still reads. Activations add to both sides; on the
``elementwise`` problem there are none, so its figures are the optimizer's
own. The step donates ``params`` and ``opt_state`` (as a training loop
should); the undonated SGD and RK4 steps show what donation saves.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from benchmarks import methods
from benchmarks.problems import DESCRIPTIONS, classifier, elementwise, param_bytes
from benchmarks.report import Report, Row
from benchmarks.timing import compile_step, train_step
from flowopt import tableaus
from flowopt.rk.stages import needed_stages

TABLEAUS = {
    "euler": tableaus.EULER,
    "heun": tableaus.HEUN,
    "rk3": tableaus.RK3,
    "rk4": tableaus.RK4,
    "dopri5-fixed": tableaus.DOPRI5,
}


class Config(NamedTuple):
    problems: tuple[str, ...]  # "elementwise-<size>" or "<model>-<batch>"
    methods: tuple[str, ...]
    donation: bool = True  # also compile SGD and RK4 without donation, to show what it saves


def minimum_buffers(method: str) -> int | None:
    """Parameter-sized buffers a step of ``method`` holds at its peak, in the liveness model above."""
    if method in ("optax.sgd", "euler"):
        return 2
    if method in ("optax.adam", "adam_flow"):
        return 4  # θ, ∇f, m, v
    if method == "bosh3-adaptive":
        return _runge_kutta_buffers(tableaus.BOSH3, (tableaus.BOSH3.b, tableaus.BOSH3.b_error))
    if method in TABLEAUS:
        return _runge_kutta_buffers(TABLEAUS[method], (TABLEAUS[method].b,))
    return None


def _runge_kutta_buffers(tableau, weights) -> int:
    needed = needed_stages(tableau, weights)
    stages = [i for i in range(tableau.num_stages) if needed[i]]
    if len(stages) == 1:
        return 2
    peak = 0
    for i in stages[1:]:
        sums = sum(1 for w in weights if np.any(np.asarray(w)[:i] != 0))
        later = sum(1 for j in range(i) if np.any(tableau.a[i + 1 :, j] != 0))
        peak = max(peak, 3 + sums + later)  # θ, stage point, stage gradient
    return peak


def run(config: Config, report: Report, compile_seconds: dict) -> None:
    _memory(config, report)
    _compile_times(report, compile_seconds)


def _memory(config: Config, report: Report) -> None:
    for spec in config.problems:
        kind, _, number = spec.rpartition("-")  # "elementwise-<params>" or "<model>-<batch size>"
        if kind == "elementwise":
            problem = elementwise(int(float(number)))
            label = problem.name
        else:
            problem = classifier(kind, int(number))
            label = f"{DESCRIPTIONS[kind]}, batch {number}"
        size = param_bytes(problem.params)
        batch = param_bytes(problem.batch)
        peaks = {}
        variants = [(m, True) for m in config.methods]
        variants += [("optax.sgd", False), ("rk4", False)] if config.donation else []
        for name, donate in variants:
            tx = methods.build(name)
            state = tx.init(problem.params)
            compiled = compile_step(
                train_step(tx, problem.loss), problem.params, state, problem.batch, donate=(0, 1) if donate else ()
            )
            stats = compiled.memory
            if stats is None:
                report.note(f"memory analysis unavailable on this backend ({spec}).")
                return
            peak = (
                stats.argument_size_in_bytes
                - batch
                + stats.output_size_in_bytes
                - stats.alias_size_in_bytes
                + stats.temp_size_in_bytes
            )
            peaks[(name, donate)] = peak
            base = peaks.get(("optax.sgd", True), peak)
            minimum = minimum_buffers(name)
            parts = (
                f"args {(stats.argument_size_in_bytes - batch) / size:.2f}P, out {stats.output_size_in_bytes / size:.2f}P, "
                f"aliased {stats.alias_size_in_bytes / size:.2f}P, temp {stats.temp_size_in_bytes / size:.2f}P"
            )
            report.add(
                Row(
                    section="3. memory per step (multiples of parameter bytes P)",
                    model=f"{label} (P = {size / 2**20:.2f} MiB)",
                    method=name + ("" if donate else " (no donation)"),
                    metric="peak / P",
                    value=peak / size,
                    note=f"{parts}; peak / SGD's {peak / base:.2f}; minimum live buffers {minimum}; "
                    f"measured − minimum {peak / size - minimum:+.2f}P; compile {compiled.compile_seconds:.2f} s",
                )
            )


def _compile_times(report: Report, compile_seconds: dict) -> None:
    sgd_compile = {model: s for (model, name), s in compile_seconds.items() if name == "optax.sgd"}
    for (model, name), seconds in compile_seconds.items():
        if name == "optax.sgd":
            continue
        report.add(
            Row(
                section="3b. compile time",
                model=DESCRIPTIONS[model],
                method=name,
                metric="compile time / SGD step's",
                value=seconds / sgd_compile[model],
                method_ms=1e3 * seconds,
                baseline_ms=1e3 * sgd_compile[model],
            )
        )
