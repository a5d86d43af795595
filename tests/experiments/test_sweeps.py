"""The sweep studies (bdf-stability, adaptive-steps, analysis): smoke runs through the command line."""

import math

import pytest

from experiments import cli
from tests.experiments.helpers import read_rows


def _run(study, tmp_path):
    output = tmp_path / study
    assert cli.main([study, "--config", "smoke", "--output", str(output), "--no-progress"]) == 0
    return output


def test_bdf_stability_trains_beyond_the_explicit_stability_limit(tmp_path):
    output = _run("bdf-stability", tmp_path)
    assert (output / "bdf_stability.png").is_file()
    runs = read_rows(output / "runs.csv")
    assert list(runs[0]) == [
        "problem",
        "method",
        "lr_times_L",
        "reached",
        "gradient_evaluations",
        "final_relative_gap",
        "diverged",
    ]
    reached = {(r["method"], round(float(r["lr_times_L"]))): r["reached"] == "True" for r in runs}
    # h·L = 5 and 50 lie outside the stability intervals of GD and Heun ([0, 2]); the implicit methods are stable.
    for rate in (5, 50):
        assert not reached[("gd", rate)] and not reached[("heun", rate)]
        assert reached[("backward_euler K=1", rate)] and reached[("bdf2 K=3", rate)]
    summary = {r["method"]: r for r in read_rows(output / "summary.csv")}
    assert float(summary["bdf2 K=3"]["decades"]) == pytest.approx(2.0)


def test_adaptive_steps_count_every_gradient_within_the_budget(tmp_path):
    output = _run("adaptive-steps", tmp_path)
    assert (output / "adaptive_steps.png").is_file()
    runs = read_rows(output / "runs.csv")
    assert {r["problem"] for r in runs} == {"logistic", "mlp-minibatch"}
    for row in runs:
        if row["reached"] == "True":
            assert 0 < int(row["gradient_evals"]) <= 1000, row
        if row["kind"] == "adaptive":
            assert int(row["accepted"]) > 0, row
    assert {r["method"] for r in read_rows(output / "summary.csv")} == {r["method"] for r in runs}


def test_analysis_intervals_and_first_order_distance(tmp_path):
    output = _run("analysis", tmp_path)
    for name in ("stability_regions.png", "gf_gd_relu.png", "gf_gd_relu.csv", "gf_gd_relu_spectrum.csv"):
        assert (output / name).is_file(), name
    intervals = {r["method"]: float(r["stability_interval_hL"]) for r in read_rows(output / "stability_intervals.csv")}
    assert intervals["euler"] == intervals["heun"] == 2.0 and math.isinf(intervals["bdf1"])
    summary = read_rows(output / "gf_gd_relu_summary.csv")
    assert [float(r["eta"]) for r in summary] == [0.2, 0.1]
    assert float(summary[0]["slope_distance_at_T"]) == pytest.approx(1.0, abs=0.2)
