"""Analysis toolkit checks: stability regions of every method, and GD against gradient flow on a ReLU net.

Two parts, each one run when its block is in the configuration:

* ``stability_regions`` (:mod:`.stability_regions`): the real stability
  interval of every named method (``stability_intervals.csv``) and the
  complex stability regions (``stability_regions.png``);
* ``gf_gd_distance`` (:mod:`.gf_gd_distance`): gradient descent against the
  gradient flow on a small ReLU network, beside the Elkabetz–Cohen bound's
  shape (``gf_gd_relu.csv``, ``gf_gd_relu_summary.csv``,
  ``gf_gd_relu_spectrum.csv``, ``gf_gd_relu.png``).

Written to ``results/analysis/<config>/``::

    flowopt-experiment analysis --config cpu

Configuration (JSON)::

    {"stability_regions": {"resolution": 500},
     "gf_gd_distance": {"horizon": 4.0, "etas": [0.2, ...], "spectrum_every": 0.1, "refinement": 8}}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax

from experiments import report, runner
from experiments.runner import RunSpec, Study
from experiments.studies.analysis import gf_gd_distance, stability_regions

PARTS = ("stability_regions", "gf_gd_distance")


def plan(config: dict[str, Any]) -> list[RunSpec]:
    """One run per part the configuration names."""
    return [RunSpec(part, config[part]) for part in PARTS if config.get(part) is not None]


def execute(spec: RunSpec, config: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The stability intervals, or the GD–GF distances (in float64)."""
    if spec.key == "stability_regions":
        return {"intervals": report.pack(stability_regions.intervals())}
    with jax.enable_x64(True):
        return {name: report.pack(rows) for name, rows in gf_gd_distance.measure(**spec.settings).items()}


def summarize(config: dict[str, Any], results: dict[str, dict[str, Any]], output_dir: Path) -> None:
    """The tables and the figure of each part that ran."""
    if "stability_regions" in results:
        report.write_csv(output_dir / "stability_intervals.csv", report.unpack(results["stability_regions"]["intervals"]))
        stability_regions.plot(output_dir / "stability_regions.png", config["stability_regions"]["resolution"])
    if "gf_gd_distance" in results:
        tables = {name: report.unpack(results["gf_gd_distance"][name]) for name in ("rows", "summary", "spectrum")}
        report.write_csv(output_dir / "gf_gd_relu.csv", tables["rows"])
        report.write_csv(output_dir / "gf_gd_relu_summary.csv", tables["summary"])
        report.write_csv(output_dir / "gf_gd_relu_spectrum.csv", tables["spectrum"])
        gf_gd_distance.plot(output_dir / "gf_gd_relu.png", tables["rows"], tables["summary"], tables["spectrum"])


SCHEMA = {
    **runner.COMMON,
    "stability_regions": runner.optional({"resolution": runner.POSITIVE_INT}, nullable=True),
    "gf_gd_distance": runner.optional(
        {
            "horizon": runner.POSITIVE,
            "etas": runner.ListOf(runner.POSITIVE, min_length=2),
            "spectrum_every": runner.POSITIVE,
            "refinement": runner.POSITIVE_INT,
        },
        nullable=True,
    ),
}

STUDY = Study("analysis", plan, execute, summarize, SCHEMA)
