"""Implicit methods against RK4 at the same gradient evaluations per step.

Backward Euler and BDF2 with 3 inner steps make 4 gradient evaluations per
step after the start-up, as RK4 does, so their step time over RK4's, measured
in the same run, is the cost of their inner loop against RK4's stages; the
floor is about 1.00. The gradients per step are counted from the optimizer
state (the start-up's extra solves included) and given in the note.
"""

from __future__ import annotations

from typing import NamedTuple

from benchmarks import methods
from benchmarks.problems import DESCRIPTIONS, classifier, num_params
from benchmarks.report import Report, Row, at_most, judged
from benchmarks.timing import StepRunner, interleaved

RK4_RATIO_TARGET = 1.5


class Config(NamedTuple):
    model: str
    batch_size: int
    methods: tuple[str, ...]  # implicit methods of benchmarks.methods, each 4 gradients per step
    repeats: int
    block_seconds: float


def run(config: Config, report: Report) -> None:
    problem = classifier(config.model, config.batch_size)
    runners = {name: StepRunner(methods.build(name), problem) for name in ("rk4", *config.methods)}
    times = interleaved(runners, config.repeats, config.block_seconds)
    rk4 = times["rk4"]
    label = f"{DESCRIPTIONS[config.model]} ({num_params(problem.params):,} params)"
    for name in config.methods:
        t = times[name]
        evals = methods.gradients_per_step(runners[name].state, runners[name].steps)
        report.add(
            judged(
                Row(
                    section="6. implicit methods",
                    model=label,
                    batch_size=config.batch_size,
                    method=name,
                    metric="time / rk4 time (4 gradients per step each)",
                    value=t.best / rk4.best,
                    value_median=t.median / rk4.median,
                    method_ms=1e3 * t.best,
                    baseline_ms=1e3 * rk4.best,
                    note=f"{evals:.3g} gradients per step over {runners[name].steps} steps",
                ),
                at_most(RK4_RATIO_TARGET),
            )
        )
