"""The minibatch runs of the stabilized study: an MLP on MNIST, each method at each learning rate, equal evaluations.

Every run trains with the library's loop (:func:`experiments.training_runs.train_run`)
for the same ``grad_evals`` budget, so an ``s``-stage step is charged ``s``
gradients. A rate *trains* when the run does not diverge and its final full
training loss is at most ``loss_target``; a method's range is the decades
between the smallest and the largest rate that train, and its best rate the
one with the lowest final training loss (test accuracy reported there). Its
largest stable rate is the largest rate at or below which no run diverged.
"""

from __future__ import annotations

import re
from typing import Any

from experiments.runner import RunSpec
from experiments.studies.bdf import rate_range, training_row
from experiments.training_runs import FIXED_STEP_METHODS

_RKC = re.compile(r"rkc([1-9][0-9]*)")


def is_method(value: Any) -> bool:
    """A fixed-step method name (``sgd``, ``momentum``, ``adam``, ``heun``, ...) or ``rkc<s>`` (``rkc5``)."""
    return isinstance(value, str) and (value in FIXED_STEP_METHODS or _RKC.fullmatch(value) is not None)


def optimizer(method: str) -> tuple[str, dict[str, Any]]:
    """The registry name and options of a method: ``rkc10`` is ``("rkc", {"stages": 10})``."""
    match = _RKC.fullmatch(method)
    return ("rkc", {"stages": int(match.group(1))}) if match else (method, {})


def key(method: str, rate: float) -> str:
    """The run key of ``method`` at learning rate ``rate``."""
    return f"mlp-{method}-lr{rate:g}"


def plan(block: dict[str, Any]) -> list[RunSpec]:
    """One training run per method and learning rate of the ``mlp`` block."""
    specs = []
    for method in block["methods"]:
        name, options = optimizer(method)
        for rate in block["rates"]:
            settings = {**block["train"], "optimizer": name, "learning_rate": rate, "optimizer_options": options}
            specs.append(RunSpec(key(method, rate), {"kind": "mlp", "method": method, **settings}))
    return specs


def rows(block: dict[str, Any], results: dict[str, dict]) -> list[dict[str, Any]]:
    """One row per finished run: final full training loss, test accuracy, whether it trained."""
    out = []
    for method in block["methods"]:
        for rate in block["rates"]:
            result = results.get(key(method, rate))
            if result is None:
                continue
            out.append({"method": method, "learning_rate": rate, **training_row(result, block["loss_target"])})
    return out


def summary(block: dict[str, Any], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method: the range of rates that train and the result at the best rate."""
    table = []
    for method in block["methods"]:
        own = [row for row in runs if row["method"] == method]
        entry = {
            "method": method,
            "rates_tried": len(own),
            **rate_range([r["learning_rate"] for r in own], [r["trains"] for r in own]),
            "max_stable_rate": max(
                (
                    r["learning_rate"]
                    for r in own
                    if not any(o["diverged"] for o in own if o["learning_rate"] <= r["learning_rate"])
                ),
                default=None,
            ),
        }
        finished = [row for row in own if row["final_train_loss"] is not None]
        if finished:
            best = min(finished, key=lambda row: row["final_train_loss"])
            entry |= {
                "best_rate": best["learning_rate"],
                "best_final_train_loss": best["final_train_loss"],
                "best_test_accuracy": best["test_accuracy"],
                "grad_evals": best["grad_evals"],
            }
        table.append(entry)
    return table
