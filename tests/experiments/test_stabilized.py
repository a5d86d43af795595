"""The stabilized study: CG's exact termination, the momentum methods' closed-form rates, RKC's cost, the smoke run."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.runner import ConfigFileError, check_config, load_config
from experiments.studies.bdf_stability import Problem, loss_curve
from experiments.studies.stabilized import STUDY, methods
from tests.experiments.helpers import read_rows, run_smoke


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    return run_smoke(STUDY, "stabilized", tmp_path_factory)


def test_cg_terminates_after_as_many_iterations_as_distinct_eigenvalues():
    eigenvalues = np.repeat([1.0, 3.0, 10.0, 30.0, 100.0], 4)
    x0 = np.random.default_rng(1).normal(size=eigenvalues.size)
    reached, evaluations, gaps = methods.conjugate_gradient(eigenvalues, x0, 1e-20, 1000)
    assert reached and len(gaps) == 5 and evaluations == 6
    assert gaps[3] > 1e-6  # not one iteration earlier


def _iterates(build, lipschitz: float, rate: float, x0: np.ndarray, steps: int) -> np.ndarray:
    """The iterates of optimizer ``build(rate/L)`` on ``½(x₁² + L x₂²)``."""
    curvature = jnp.array([1.0, lipschitz])
    tx = build(rate / lipschitz)
    x, state, out = jnp.asarray(x0), tx.init(jnp.asarray(x0)), [x0]
    for _ in range(steps):
        updates, state = tx.update(curvature * x, state, x)
        x = x + updates
        out.append(np.asarray(x))
    return np.array(out)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("method", ["heavy_ball", "nesterov"])
def test_momentum_methods_are_the_textbook_recursions_at_their_closed_form_rates(method):
    kappa, steps, x0 = 100.0, 400, np.array([1.0, 1.0])
    (setting,) = methods.settings({method: {}}, 1.0, kappa)
    rate, beta, h = setting.rates[0], setting.params["beta"], setting.rates[0] / kappa
    got = _iterates(setting.build, kappa, rate, x0, steps)
    grad = np.array([1.0, kappa])
    previous, x, expected = x0, x0, [x0]
    for _ in range(steps):  # Polyak: x' = x - h∇f(x) + β(x - x⁻); Nesterov's look-ahead y' = x' + β(x' - x), x' = y - h∇f(y)
        if method == "heavy_ball":
            previous, x = x, x - h * grad * x + beta * (x - previous)
            expected.append(x)
        else:
            y = expected[-1]
            previous, x = x, y - h * grad * y
            expected.append(x + beta * (x - previous))
    error = np.linalg.norm(got - np.array(expected), axis=1)
    assert np.all(error <= 1e-10 * np.linalg.norm(got, axis=1)), error.max()
    closed_form = (math.sqrt(kappa) - 1) / (math.sqrt(kappa) + 1) if method == "heavy_ball" else 1 - 1 / math.sqrt(kappa)
    half = steps // 2
    measured = (np.linalg.norm(got[steps]) / np.linalg.norm(got[half])) ** (1 / half)
    # a double root at the optimal constants adds a factor k: (2)^(1/200) ≈ 1.0035
    assert closed_form <= measured <= closed_form * 1.006


@pytest.mark.usefixtures("x64")
def test_rkc_costs_its_stages_per_step():
    rkc = {"safety": 0.9, "fixed_stages": [7]}
    (setting,) = methods.rkc_settings(rkc, 100.0)
    problem = Problem("quadratic", lambda x: 0.5 * jnp.sum(jnp.arange(1.0, 11.0) * x * x), np.ones(10), 0.0, 10.0)
    evals, gaps = jax.device_get(loss_curve(problem, setting.build, setting.cost, 70)(setting.rates[0] / problem.lipschitz))
    np.testing.assert_array_equal(evals, 7 * np.arange(1, 11))
    assert np.all(np.diff(gaps) < 0)


def test_smoke_study_writes_its_tables_and_cg_bounds_every_method(smoke):
    config, output, _ = smoke
    for name in ("quadratics.csv", "logistic.csv", "mlp.csv", "results.md", "summary.json", "stability_polynomials.png"):
        assert (output / name).is_file()
    rows = [r for r in read_rows(output / "fullbatch_runs.csv") if r["problem"].startswith("quadratic")]
    cg = int(next(r["gradient_evaluations"] for r in rows if r["method"] == "cg"))
    reached = [r for r in rows if r["reached"] == "True"]
    assert {r["method"] for r in reached} >= {"gd", "heavy_ball", "nesterov", "rkc", "cg"}
    for row in reached:  # every method stays in the Krylov space, where CG's f is lowest (CG pays one more evaluation)
        assert int(row["gradient_evaluations"]) >= cg - 1, row
        assert int(row["gradient_evaluations"]) % int(row["cost_per_step"]) == 0 or row["method"] == "bdf2", row
    summary = json.loads((output / "summary.json").read_text())
    assert set(summary["mlp_decades"]) == set(config["mlp"]["methods"])


def test_a_bad_configuration_names_the_key():
    config = load_config("stabilized", "smoke")
    config["quadratics"]["methods"]["rkc"]["safety"] = 1.5
    with pytest.raises(ConfigFileError, match=r"key quadratics\.methods\.rkc\.safety must be a number in \(0, 1\]"):
        check_config(STUDY, config, "smoke.json")
    config = load_config("stabilized", "smoke")
    config["logistic"]["methods"]["cg"] = {}  # CG only on quadratics
    with pytest.raises(ConfigFileError, match=r"key logistic\.methods\.cg is not a known key"):
        check_config(STUDY, config, "smoke.json")
