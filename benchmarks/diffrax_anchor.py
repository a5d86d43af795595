"""flowopt's gradient-flow integration against ``diffrax.diffeqsolve``, same solver, steps and tolerances.

The flow ``θ' = -∇f(θ)`` of a full-batch logistic regression is integrated
from ``t = 0`` to ``T`` and only ``θ(T)`` is kept, by
``flowopt.analysis.gradient_flow`` and by ``diffrax.diffeqsolve``:

- fixed steps: ``N`` equal steps of Heun, Bosh3 and Dopri5 (both sides
  evaluate 2, 3 and 6 gradients per step: flowopt skips the unused FSAL stage,
  diffrax reuses it);
- adaptive steps: the embedded pairs Heun–Euler, Bosh3 and Dopri5 with the
  same ``rtol``/``atol``, RMS error norm, first step, safety 0.9, factor
  limits [0.2, 10] and PI coefficients (diffrax ``pcoeff=0.4, icoeff=0.3``
  is flowopt's controller).

Both solves are jitted end to end and timed in interleaved blocks; the
figure is flowopt's time over diffrax's (target ≤ 1, aim 0.8). Step counts
are reported beside it: adaptive controllers that differ in small details
(clipping at ``T``, the first step) may take slightly different steps.
"""

from __future__ import annotations

import importlib
from typing import NamedTuple

import jax
import jax.numpy as jnp

from benchmarks.problems import classifier, num_params
from benchmarks.report import Report, Row, at_most, judged
from benchmarks.timing import interleaved, timed
from flowopt.analysis import gradient_flow

# flowopt method name, diffrax solver class name, adaptive?
CASES = (
    ("heun", "Heun", False),
    ("bosh3", "Bosh3", False),
    ("dopri5", "Dopri5", False),
    ("heun_euler", "Heun", True),
    ("bosh3", "Bosh3", True),
    ("dopri5", "Dopri5", True),
)


class Config(NamedTuple):
    samples: int
    end_time: float
    fixed_steps: int
    rtol: float
    atol: float
    cases: tuple[tuple[str, str, bool], ...]
    repeats: int
    block_seconds: float


def run(config: Config, report: Report) -> None:
    try:
        diffrax = importlib.import_module("diffrax")
    except ImportError as error:
        report.note(f"diffrax comparison skipped: {error}.")
        return
    problem = classifier("logreg", config.samples)
    value_fn = jax.tree_util.Partial(problem.loss, batch=problem.batch)
    grad = jax.grad(value_fn)
    params0 = problem.params
    end = config.end_time
    first_step = end / config.fixed_steps
    term = diffrax.ODETerm(lambda t, y, args: jax.tree.map(jnp.negative, grad(y)))

    for method, solver_name, adaptive in config.cases:
        solver = getattr(diffrax, solver_name)()
        if adaptive:
            controller = diffrax.PIDController(rtol=config.rtol, atol=config.atol, pcoeff=0.4, icoeff=0.3)
            options = dict(rtol=config.rtol, atol=config.atol, initial_step=first_step)
            max_steps = 100_000
        else:
            controller = diffrax.ConstantStepSize()
            options = dict(substeps=config.fixed_steps)
            max_steps = config.fixed_steps

        def ours(y0, method=method, options=options):
            solution = gradient_flow(value_fn, y0, jnp.asarray([end]), method=method, **options)
            return jax.tree.map(lambda x: x[-1], solution.params), solution.num_steps, solution.num_rejected

        def theirs(y0, solver=solver, controller=controller, max_steps=max_steps):
            solution = diffrax.diffeqsolve(
                term,
                solver,
                0.0,
                end,
                first_step,
                y0,
                stepsize_controller=controller,
                saveat=diffrax.SaveAt(t1=True),
                max_steps=max_steps,
            )
            y1 = jax.tree.map(lambda x: x[-1], solution.ys)
            return y1, solution.stats["num_accepted_steps"], solution.stats["num_rejected_steps"]

        ours_jit, theirs_jit = jax.jit(ours), jax.jit(theirs)
        y_ours, steps_ours, rejected_ours = ours_jit(params0)
        y_theirs, steps_theirs, rejected_theirs = theirs_jit(params0)
        gap = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(y_ours), jax.tree.leaves(y_theirs)))
        times = interleaved(
            {"flowopt": timed(ours_jit, params0), "diffrax": timed(theirs_jit, params0)},
            config.repeats,
            config.block_seconds,
        )
        mode = f"adaptive rtol={config.rtol:g} atol={config.atol:g}" if adaptive else f"{config.fixed_steps} fixed steps"
        report.add(
            judged(
                Row(
                    section="2b. anchors: diffrax.diffeqsolve",
                    model=(
                        f"logistic-regression flow ({num_params(params0):,} params, {config.samples} samples), t ∈ [0, {end:g}]"
                    ),
                    method=f"{method} vs diffrax.{solver_name}, {mode}",
                    metric="flowopt time / diffrax time",
                    value=times["flowopt"].best / times["diffrax"].best,
                    value_median=times["flowopt"].median / times["diffrax"].median,
                    method_ms=1e3 * times["flowopt"].best,
                    baseline_ms=1e3 * times["diffrax"].best,
                    note=(
                        f"steps accepted/rejected flowopt {int(steps_ours)}/{int(rejected_ours)}, "
                        f"diffrax {int(steps_theirs)}/{int(rejected_theirs)}; max |θ_flowopt(T) - θ_diffrax(T)| = {gap:.1e}"
                    ),
                ),
                at_most(1.0),
            )
        )
