"""The tables of the stabilized study: best gradient evaluations per method, ratios, fitted slopes, target numbers.

Ratios are of gradient evaluations to the target at each method's best
setting; a slope is the least-squares fit of ``log evaluations`` against
``log κ`` over the quadratics a method reached the target on.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from experiments import report
from experiments.studies.stabilized.sweeps import best_rows

TARGET_ROW = "rkc1 s=20 ε=0.05"
"""The issue's target row: RKC with 20 stages at the default damping, ``h·L = 0.9 ℓ_20``."""
TARGET_KAPPA = 1e4
SLOPE_METHODS = ("gd", "nesterov", "cg", "rkc")
ISSUE_TARGETS = {
    "rkc_s20_over_gd": "≤ 0.1",
    "rkc_s20_over_gd_at_2_over_mu_plus_L": "≤ 0.1",
    "best_rkc_over_nesterov": "≤ 1.2",
    "slope_rkc": "≤ 0.6 (√κ: 0.5)",
    "slope_gd": "≈ 1 (κ)",
    "mlp_range_ratio_rkc_over_sgd": "≥ 10",
    "mlp_accuracy_gap_rkc_minus_momentum_points": "≥ -0.2",
}


def best_table(result: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method of one full-batch run: its best row's setting and evaluations, and the ratios to CG and GD."""
    best = best_rows(rows)
    reference = {m: best[m]["gradient_evaluations"] for m in ("cg", "gd", "nesterov") if m in best and best[m]["reached"]}
    table = []
    for method, row in best.items():
        evals = row["gradient_evaluations"] if row["reached"] else None
        entry = {
            "problem": result["problem"],
            "kappa": result["kappa"],
            "method": method,
            "best_setting": row["label"],
            "lr_times_L": row["lr_times_L"],
            "reached": row["reached"],
            "gradient_evaluations": evals,
            "final_relative_gap": row["final_relative_gap"],
        }
        for name, value in reference.items():
            entry[f"over_{name}"] = evals / value if evals is not None else None
        table.append(entry)
    return table


def slopes(tables: list[list[dict[str, Any]]]) -> dict[str, float | None]:
    """Per method of :data:`SLOPE_METHODS`: the fitted slope of log evaluations against log κ (None below 2 points)."""
    fitted: dict[str, float | None] = {}
    for method in SLOPE_METHODS:
        points = [(e["kappa"], e["gradient_evaluations"]) for t in tables for e in t if e["method"] == method and e["reached"]]
        if len(points) < 2:
            fitted[method] = None
            continue
        kappas, evals = np.log10(np.array(points, dtype=float)).T
        fitted[method] = float(np.polyfit(kappas, evals, 1)[0])
    return fitted


def row_evaluations(rows: list[dict[str, Any]], label: str) -> int | None:
    """The fewest evaluations to the target of the rows labelled ``label`` (None if none reached it)."""
    found = [r["gradient_evaluations"] for r in rows if r["label"] == label and r["reached"]]
    return min(found) if found else None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def target_numbers(
    quadratics: dict[float, tuple[list[dict], list[dict]]],
    fitted: dict[str, float | None],
    logistic: list[dict[str, Any]],
    mlp: list[dict[str, Any]],
) -> dict[str, Any]:
    """The issue's numbers: RKC s=20 over GD (tuned, and at ``h = 2/(μ+L)``) and best RKC over Nesterov at κ = 1e4,
    the slopes, best RKC against GD and Nesterov on the logistic regression, the MLP ranges and accuracy gap."""
    numbers: dict[str, Any] = {}
    if TARGET_KAPPA in quadratics:
        rows, table = quadratics[TARGET_KAPPA]
        best = {e["method"]: e["gradient_evaluations"] for e in table}
        numbers["rkc_s20_evaluations"] = row_evaluations(rows, TARGET_ROW)
        numbers["rkc_s20_over_gd"] = _ratio(numbers["rkc_s20_evaluations"], best.get("gd"))
        classic = (r for r in rows if r["method"] == "gd" and r["reached"] and r["lr_times_L"] == r["best_rate_h_L"])
        classic_evals = next((r["gradient_evaluations"] for r in classic), None)
        numbers["rkc_s20_over_gd_at_2_over_mu_plus_L"] = _ratio(numbers["rkc_s20_evaluations"], classic_evals)
        numbers["best_rkc_over_nesterov"] = _ratio(best.get("rkc"), best.get("nesterov"))
        numbers["best_rkc_setting"] = next((e["best_setting"] for e in table if e["method"] == "rkc"), None)
    numbers |= {f"slope_{method}": value for method, value in fitted.items()}
    rkc = next((e for e in logistic if e["method"] == "rkc"), {})
    for name in ("gd", "nesterov"):
        if rkc.get(f"over_{name}") is not None:
            numbers[f"logistic_best_rkc_over_{name}"] = rkc[f"over_{name}"]
    by_method = {entry["method"]: entry for entry in mlp}
    numbers["mlp_decades"] = {method: entry.get("decades") for method, entry in by_method.items()}
    sgd, momentum = by_method.get("sgd", {}), by_method.get("momentum", {})
    for method, entry in by_method.items():
        if not method.startswith("rkc"):
            continue
        if entry.get("decades") is not None and sgd.get("decades") is not None:
            numbers[f"mlp_range_ratio_{method}_over_sgd"] = 10 ** (entry["decades"] - sgd["decades"])
        if entry.get("max_stable_rate") and sgd.get("max_stable_rate"):
            numbers[f"mlp_max_stable_rate_{method}_over_sgd"] = entry["max_stable_rate"] / sgd["max_stable_rate"]
        if entry.get("best_test_accuracy") is not None and momentum.get("best_test_accuracy") is not None:
            gap = 100 * (entry["best_test_accuracy"] - momentum["best_test_accuracy"])
            numbers[f"mlp_accuracy_gap_{method}_minus_momentum_points"] = gap
    numbers["issue_targets"] = ISSUE_TARGETS
    return numbers


def markdown(
    tables: list[list[dict[str, Any]]], logistic: list[dict[str, Any]], mlp: list[dict[str, Any]], numbers: dict[str, Any]
) -> str:
    """``results.md``: evaluations to the target per κ and method, the logistic regression, the MLP, the target numbers."""
    lines = ["# Stabilised Runge–Kutta (Chebyshev): gradient evaluations at each method's best setting", ""]
    methods = list(dict.fromkeys(e["method"] for t in tables for e in t))
    if tables:
        lines += ["## Quadratics: evaluations to f − f* ≤ target·(f₀ − f*) (× CG)", ""]
        lines += report.markdown_table(
            ["κ", *methods],
            ([f"{t[0]['kappa']:.0e}", *(_cell(next((e for e in t if e["method"] == m), None)) for m in methods)] for t in tables),
        )
        lines += ["", "Best RKC setting per κ: " + "; ".join(f"{t[0]['kappa']:.0e}: {_setting(t, 'rkc')}" for t in tables), ""]
        lines += [
            "Fitted slope of log evaluations against log κ: "
            + ", ".join(f"{k[6:]} {report.fmt(v, 3)}" for k, v in numbers.items() if k.startswith("slope_")),
            "",
        ]
    if logistic:
        lines += ["## Logistic regression (full batch)", ""]
        lines += report.markdown_table(
            ["method", "best setting", "h·L", "evaluations", "× GD"],
            (
                [e["method"], e["best_setting"], report.fmt(e["lr_times_L"]), _evals_cell(e), report.fmt(e.get("over_gd"), 3)]
                for e in logistic
            ),
        )
        lines.append("")
    if mlp:
        lines += ["## Minibatch MLP: learning rates that train, best rate", ""]
        lines += report.markdown_table(
            ["method", "rates that train", "decades", "largest stable rate", "best rate", "final train loss", "test accuracy"],
            (
                [
                    e["method"],
                    f"[{report.fmt(e.get('min_rate'))}, {report.fmt(e.get('max_rate'))}]"
                    + ("" if e.get("contiguous", True) else " with gaps"),
                    report.fmt(e.get("decades"), 2),
                    report.fmt(e.get("max_stable_rate")),
                    report.fmt(e.get("best_rate")),
                    report.fmt(e.get("best_final_train_loss")),
                    f"{100 * e['best_test_accuracy']:.2f}%" if e.get("best_test_accuracy") is not None else "–",
                ]
                for e in mlp
            ),
        )
        lines.append("")
    lines += ["## Target numbers", ""]
    lines += report.markdown_table(
        ["number", "measured", "issue target"],
        ([k, _show(v), ISSUE_TARGETS.get(_generic(k), "")] for k, v in numbers.items() if k not in ("issue_targets",)),
    )
    return "\n".join(lines) + "\n"


def _generic(key: str) -> str:
    """The issue's name of a number: ``mlp_range_ratio_rkc5_over_sgd`` → ``mlp_range_ratio_rkc_over_sgd``."""
    return re.sub(r"rkc\d+", "rkc", key)


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {report.fmt(v, 3)}" for k, v in value.items())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return report.fmt(value, 3)
    return "–" if value is None else str(value)


def _setting(table: list[dict[str, Any]], method: str) -> str:
    entry = next((e for e in table if e["method"] == method), None)
    return "–" if entry is None else f"{entry['best_setting']} at h·L = {report.fmt(entry['lr_times_L'])}"


def _evals_cell(entry: dict[str, Any]) -> str:
    if not entry["reached"]:
        return f"not reached (gap {report.fmt(entry['final_relative_gap'], 2)})"
    return str(entry["gradient_evaluations"])


def _cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "–"
    if not entry["reached"]:
        return "not reached within budget"
    over = entry.get("over_cg")
    return (
        f"{entry['gradient_evaluations']} (×{over:.2f})"
        if over is not None and math.isfinite(over)
        else str(entry["gradient_evaluations"])
    )
