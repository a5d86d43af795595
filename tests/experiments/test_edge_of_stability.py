"""The edge-of-stability study: time averages of an oscillation, the edge phase, the smoke run, bad configurations."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

from experiments.runner import ConfigFileError, check_config, load_config
from experiments.studies.edge_of_stability import STUDY, descent
from experiments.studies.edge_of_stability.problem import Problem
from tests.experiments.helpers import run_smoke


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    return run_smoke(STUDY, "edge-of-stability", tmp_path_factory)


def _parabola(lam: float) -> Problem:
    return Problem(jnp.array([1.0, 0.0]), Partial(lambda w: 0.5 * lam * jnp.sum(w**2)), "parabola")


@pytest.mark.usefixtures("x64")
def test_at_exactly_two_over_eta_the_average_iterate_is_the_centre_and_the_average_loss_is_not_the_loss_there():
    lam, steps = 4.0, 20
    run = descent.gradient_descent(_parabola(lam), 2 / lam, steps, save_every=10, width=4, sharpness_every=5, lanczos=2)
    # θ_k = (-1)^k θ_0: the average over an even window is 0, the average loss is L(θ_0) = 2, L(0) = 0.
    np.testing.assert_allclose(run.losses, 2.0)
    np.testing.assert_allclose(run.averaged_params[1:], 0.0, atol=1e-15)
    np.testing.assert_allclose(run.averaged_losses, 2.0)
    np.testing.assert_array_equal(run.saves, [0, 10, 20])
    np.testing.assert_allclose(run.params[:, 0], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(run.sharpness, lam, rtol=1e-12)
    assert list(run.sharpness_steps) == [0, 5, 10, 15, 20] and len(run.losses) == steps + 2


def test_windows_are_centred_and_clipped_at_the_start():
    assert descent.window(0, 10) == range(0, 5) and descent.window(25, 10) == range(20, 30)


def test_the_edge_phase_starts_where_the_sharpness_first_reaches_the_threshold():
    run = descent.Descent(*[np.zeros(1)] * 7)._replace(sharpness=np.array([1.0, 1.5, 1.92, 2.2, 1.9, 2.0]))
    np.testing.assert_allclose(descent.edge_phase(run, 1.0), [0.96, 1.1, 0.95, 1.0])
    assert descent.edge_phase(run._replace(sharpness=np.array([1.0, 1.2])), 1.0).size == 0


def test_smoke_study_writes_the_summary_the_issue_names(smoke):
    config, output, results = smoke
    summary = json.loads((output / "summary.json").read_text())
    for key in (
        "gd_sharpness_over_2_over_eta",
        "central_flow_loss_rel_error",
        "gradient_flow_loss_rel_error",
        "modified_flow_loss_rel_error",
    ):
        assert key in summary
    assert len(summary["runs"]) == len(config["sharpness_fractions"])
    for name in ("curves.csv", "results.md", "edge_of_stability.png"):
        assert (output / name).is_file()
    (run,) = results.values()
    # GD starts past 2/η; the central flow is held at the threshold from its first save on.
    central = np.asarray(run["central_flow"]["sharpness"]) * run["learning_rate"] / 2
    assert central[0] > 1.1 and np.all(np.abs(central[1:] - 1) < 0.02)
    assert run["central_flow"]["cost"]["max_at_edge"] == 1


@pytest.mark.parametrize(
    "change, message",
    [
        ({"sharpness_fractions": [2.5]}, "sharpness_fractions"),
        ({"steps": 35}, "steps must be a multiple of save_every"),
        ({"model": {"hidden": [8], "activation": "sigmoid"}}, "model.activation"),
    ],
)
def test_bad_configurations_are_refused_by_key(change, message):
    config = load_config("edge-of-stability", "smoke") | change
    with pytest.raises((ConfigFileError, ValueError), match=message):
        check_config(STUDY, config)
