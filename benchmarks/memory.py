"""Peak memory of one training step, from XLA's compiled memory analysis, and compile times.

For a compiled step ``(params, opt_state, batch) -> (params, opt_state, loss)``
XLA reports the bytes of its arguments, outputs and temporaries, and which
outputs alias (reuse) donated arguments. The step's peak is at most

    arguments + outputs - aliased + temporaries

and we report it, without the batch, as a multiple of the parameter bytes
``P``. It is everything XLA allocates for the step: the parameter-sized
buffers of the scheme, and also the activations of each gradient evaluation
and other workspace (on the MLP at batch 32, the boolean mask of the step's
finiteness check, 0.19 P). Nothing is subtracted.

Beside it is the number of parameter-sized buffers the scheme must hold at
once (:func:`minimum_buffers`), counted as whole trees: SGD holds ``θ`` and
``∇f`` (2). An explicit Runge–Kutta step sums its stages as it produces them
(:func:`flowopt.rk.stages.live_buffers`): it holds ``θ``, the running sum,
the stages a later stage point still reads and the stage being evaluated,
whose point and gradient count as one buffer (the backward pass writes a
layer's gradient after the forward pass last read that layer's point), so
Heun holds 3 and RK4 3. The embedded pairs keep every stage until the end,
for their stiffness estimate, and then form the increment and the error
beside them. The Chebyshev recurrence holds ``θ``, the last two stage
differences and the stage point, whose gradient takes its place (order 1:
4), order 2 also the first gradient (5), for any number of stages
(:func:`chebyshev_buffers`). The excess of the SGD step over
its 2 buffers shows the activations and workspace that every method pays on
top of its minimum. On the ``elementwise`` problem there are no activations,
and XLA fuses a fixed-step method's whole step into one loop (2 P).

Targets: RK4 ≤ 4.2 P and Heun ≤ 3.2 P on the MLP, the bounds set for the
memory-lean stages (a minimum of 4 and 3 buffers + 0.2 P, when a stage point
and its gradient were counted apart); every RKC row (order 1 and 2, 5 and 50
stages), its minimum + 0.25 P on every problem. The step donates ``params`` and ``opt_state`` (as a training loop
should); the undonated SGD and RK4 steps show what donation saves.
"""

from __future__ import annotations

from typing import NamedTuple

from benchmarks import methods
from benchmarks.problems import DESCRIPTIONS, classifier, elementwise, param_bytes
from benchmarks.report import Report, Row, at_most, judged
from benchmarks.timing import compile_step, train_step
from flowopt import tableaus
from flowopt.rk.stages import live_buffers, needed_stages, sum_schedule

TABLEAUS = {
    "euler": tableaus.EULER,
    "heun": tableaus.HEUN,
    "rk3": tableaus.RK3,
    "rk4": tableaus.RK4,
    "dopri5-fixed": tableaus.DOPRI5,
}

TARGETS = {("mlp", "rk4"): 4.2, ("mlp", "heun"): 3.2}
"""Peak / P bounds of the memory-lean stages, by problem kind and method."""

CHEBYSHEV_MARGIN = 0.25
"""The bound of every RKC row, on every problem: its minimum buffers + this, in P."""


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
        return 1 + sum(needed_stages(tableaus.BOSH3, (tableaus.BOSH3.b, tableaus.BOSH3.b_error))) + 2
    if method in TABLEAUS:
        tableau = TABLEAUS[method]
        return live_buffers(tableau, tableau.b, sum_schedule(tableau, tableau.b))
    if method.startswith("rkc"):
        order, stages = (2, method[len("rkc2-s") :]) if method.startswith("rkc2-") else (1, method[len("rkc-s") :])
        return chebyshev_buffers(order, int(stages))
    return None


def chebyshev_buffers(order: int, stages: int) -> int:
    """Buffers of an RKC step (:func:`flowopt.rk.chebyshev.chebyshev_increment`) in the model above.

    ``θ``, the two latest stage differences and the stage point, whose
    gradient takes its place: 4 from 3 stages on (2 with one stage, SGD; 3
    with two, where ``Y_1 - θ`` is a multiple of ``k1``). Order 2 also holds
    ``k1`` for every stage (the ``γ̃_j h F(Y_0)`` term), and ``Y_1 - θ`` is a
    multiple of it: 5 from 4 stages on, 4 with 3.
    """
    if order == 1:
        return min(stages + 1, 4)
    return min(stages + 1, 5)


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
            target = TARGETS.get((kind, name)) if donate else None
            if donate and name.startswith("rkc") and minimum is not None:
                target = minimum + CHEBYSHEV_MARGIN
            report.add(
                judged(
                    Row(
                        section="3. memory per step (multiples of parameter bytes P)",
                        model=f"{label} (P = {size / 2**20:.2f} MiB)",
                        method=name + ("" if donate else " (no donation)"),
                        metric="peak / P",
                        value=peak / size,
                        note=f"{parts}; peak / SGD's {peak / base:.2f}; minimum live buffers {minimum}; "
                        f"measured − minimum {peak / size - minimum:+.2f}P; compile {compiled.compile_seconds:.2f} s",
                    ),
                    None if target is None else at_most(target),
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
