"""The approximate-BDF study: honest gradient accounting, the stability claim on a quadratic, resumability."""

import json
import shutil

import jax
import numpy as np
import pytest

from experiments.studies import bdf_stability
from experiments.studies.bdf import STUDY, constructor, loss_curve, plan, rate_grid
from tests.experiments.helpers import read_rows, rerun_recording, run_smoke


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    return run_smoke(STUDY, "bdf", tmp_path_factory)


@pytest.mark.usefixtures("x64")
def test_loss_curve_of_gradient_descent_matches_the_closed_form():
    problem = bdf_stability.quadratic(1e2, dim=6)
    a = np.asarray(jax.hessian(problem.loss)(np.zeros(6)))
    h = 0.5
    evals, gaps = jax.device_get(loss_curve(problem, constructor("gd", 1), 1, 12)(h))
    eigenvalues, basis = np.linalg.eigh(a)
    coords = basis.T @ problem.x0
    k = np.arange(1, 13)
    weights = eigenvalues * coords**2
    expected = (weights * (1 - h * eigenvalues) ** (2 * k[:, None])).sum(1) / weights.sum()
    np.testing.assert_array_equal(evals, k)
    np.testing.assert_allclose(gaps, expected, rtol=1e-10)


@pytest.mark.usefixtures("x64")
def test_loss_curve_counts_inner_steps_and_the_bdf_start_up():
    problem = bdf_stability.quadratic(1e2, dim=6)
    evals, _ = jax.device_get(loss_curve(problem, constructor("bdf2", 2), 3, 30)(1.0))
    # BDF-2 with K = 2: the start-up step is backward Euler extrapolated over 1 + 2 substeps
    # (3 proximal solves of at most 2 oracle calls), then 1 + 2 evaluations per step.
    assert evals[0] <= 1 + 3 * 2
    np.testing.assert_array_equal(np.diff(evals)[1:] <= 3, True)


def test_smoke_study_counts_gradient_evaluations_within_each_budget(smoke):
    config, output, results = smoke
    outputs = ("sensitivity.csv", "sensitivity.md", "synthetic_runs.csv", "mnist_runs.csv", "synthetic.png", "mnist.png")
    for name in outputs:
        assert (output / name).is_file()
    problem = config["mnist"][0]
    g = problem["train"]["grad_evals"]
    runs = read_rows(output / "mnist_runs.csv")
    assert len(runs) == len(problem["methods"]) * len(problem["rates"])
    for row in runs:
        cost = 1 if row["method"] == "gd" else 1 + config["inner_steps"]
        assert g - cost < int(row["grad_evals"]) <= g, row
    assert len(plan(config)) == 1 + len(runs)


def test_bdf_trains_on_the_quadratic_beyond_the_explicit_stability_limit(smoke):
    config, output, results = smoke
    rows = results["synthetic-quadratic_kappa1e2"]["rows"]
    assert len(rows) == len(config["methods"]) * len(rate_grid(config["synthetic"]))
    trains = {(r["method"], round(r["lr_times_L"], 6)): r["reached"] for r in rows}
    # h·L = 5 and 50 lie outside the stability intervals of GD and Heun ([0, 2]); BDF is stable there.
    for rate in (5.0, 50.0):
        assert not trains[("gd", rate)] and not trains[("heun", rate)]
        assert trains[("bdf1", rate)] and trains[("bdf2", rate)]
    table = json.loads((output / "sensitivity.json").read_text())
    decades = {e["method"]: e.get("decades") for e in table if e["problem"] == "quadratic kappa=1e2"}
    assert decades["bdf1"] == decades["bdf2"] == 2.0 and decades["gd"] == 0.0


def test_rerun_skips_finished_runs_and_redoes_a_lost_one_identically(smoke, tmp_path):
    config, output, _ = smoke
    copy = tmp_path / "copy"
    shutil.copytree(output, copy)
    lost = "logreg-bdf2-lr10"
    shutil.rmtree(copy / "runs" / lost)
    executed = rerun_recording(STUDY, config, copy)
    assert executed == [lost]
    assert read_rows(copy / "mnist_runs.csv") == read_rows(output / "mnist_runs.csv")
    assert read_rows(copy / "sensitivity.csv") == read_rows(output / "sensitivity.csv")
