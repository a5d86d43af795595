"""Step-time overhead and the optax anchors.

For each model and batch size, one group of compiled training steps is timed
in interleaved blocks: ``optax.sgd`` (the unit), flowopt's integrators, and
``optax.adam`` beside ``flowopt.adam_flow``. The overhead of a method is

    t_step / (gradient evaluations per step × t_sgd_step)

where ``t_sgd_step`` is one jitted value-and-grad plus SGD update and the
evaluations are counted from the optimizer state. The floor is 1.00: an
``s``-stage step costs ``s`` gradients. Euler's and adam_flow's ratios are
against their optax twins (same arithmetic, target 1.00 ± 0.02 and ≤ 1.03).
An A/A control runs the very same compiled SGD step as a second runner: its
ratio to the first shows how far from 1.00 noise alone moves a figure.
"""

from __future__ import annotations

from typing import NamedTuple

from benchmarks import methods
from benchmarks.problems import DESCRIPTIONS, classifier, num_params
from benchmarks.report import Report, Row, at_most, judged, within
from benchmarks.timing import StepRunner, interleaved

OVERHEAD_TARGET = 1.03


class Config(NamedTuple):
    batches: dict[str, tuple[int, ...]]  # model -> batch sizes
    integrators: tuple[str, ...]
    anchors: tuple[str, ...]  # models on which adam_flow vs optax.adam is measured
    repeats: int
    block_seconds: float


def run(config: Config, report: Report) -> dict:
    """Measure and report; returns ``{(model, method): compile seconds}`` at each model's first batch."""
    compile_seconds = {}
    for model, batches in config.batches.items():
        for i, batch_size in enumerate(batches):
            problem = classifier(model, batch_size)
            names = ["optax.sgd", *config.integrators]
            if model in config.anchors and i == 0:
                names += ["optax.adam", "adam_flow"]
            runners = {name: StepRunner(methods.build(name), problem) for name in names}
            runners["A/A"] = StepRunner(methods.build("optax.sgd"), problem, runners["optax.sgd"].compiled)
            times = interleaved(runners, config.repeats, config.block_seconds)
            if i == 0:
                compile_seconds.update({(model, n): runners[n].compiled.compile_seconds for n in names})
            _report(report, model, batch_size, runners, times, num_params(problem.params))
    return compile_seconds


def _timing_row(section: str, label: str, batch_size: int, method: str, metric: str, t, base, evals: float = 1.0) -> Row:
    """A row of ``t`` against ``evals`` steps of the baseline ``base`` (best and median times)."""
    return Row(
        section=section,
        model=label,
        batch_size=batch_size,
        method=method,
        metric=metric,
        value=t.best / (evals * base.best),
        value_median=t.median / (evals * base.median),
        method_ms=1e3 * t.best,
        baseline_ms=1e3 * base.best,
    )


def _report(report: Report, model: str, batch_size: int, runners, times, size: int) -> None:
    sgd = times["optax.sgd"]
    label = f"{DESCRIPTIONS[model]} ({size:,} params)"
    for name, runner in runners.items():
        if name.startswith("optax."):
            continue
        t = times[name]
        if name == "A/A":
            control = "time / sgd step (noise control)"
            report.add(_timing_row("1. step-time overhead", label, batch_size, "A/A: optax.sgd again", control, t, sgd))
            continue
        if name == "adam_flow":
            base, section = times["optax.adam"], "2a. anchors: optax"
            metric, target = "time / optax.adam time", at_most(OVERHEAD_TARGET)
            evals = 1.0
        else:
            evals = methods.gradients_per_step(runner.state, runner.steps)
            base, section = sgd, "1. step-time overhead"
            metric = f"time / ({evals:g} × sgd step)"
            target = at_most(OVERHEAD_TARGET)
        report.add(judged(_timing_row(section, label, batch_size, name, metric, t, base, evals), target))
        if name == "euler":
            anchor = _timing_row("2a. anchors: optax", label, batch_size, "euler", "time / optax.sgd time", t, sgd)
            report.add(judged(anchor, within(1.0, 0.02)))
