"""The continuous-vs-discrete study: GD's O(η) distance to the flow, reproducibility, mid-trajectory resume."""

import numpy as np
import pytest

from experiments.runner import Study, run_study
from experiments.studies import continuous_vs_discrete as cvd
from flowopt.training import load_dataset
from flowopt.training.checkpoint import Checkpointer
from tests.experiments.helpers import read_rows, run_smoke


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    return run_smoke(cvd.STUDY, "continuous-vs-discrete", tmp_path_factory)


def test_training_subset_is_every_stride_th_of_the_pool():
    images, labels, label, _ = cvd.training_subset("synthetic_mnist", 1000, 10)
    full = load_dataset("synthetic_mnist")
    assert images.shape[0] == labels.shape[0] == 100
    np.testing.assert_array_equal(images, full.x_train[:1000:10])
    assert "every 10th of the first 1000" in label


def test_smoke_study_writes_tables_and_figures(smoke):
    _, output, _ = smoke
    for name in ("summary.csv", "summary.md", "summary.json", "curves.csv", "spectrum.csv", "small_step.png", "large_step.png"):
        assert (output / name).is_file(), name
    regimes = {row["regime"] for row in read_rows(output / "summary.csv")}
    assert regimes == {"small_step", "large_step"}


def test_gd_distance_to_the_flow_is_first_order_in_the_step(smoke):
    # GD at η/r is a better approximation of the same flow: ‖θ_η - θ_{η/r}‖ ≈ (1 - 1/r)‖θ_η - θ(t)‖.
    _, _, results = smoke
    curves = results["small_step-deep_linear-lr0.01"]["curves"]
    to_flow, to_half = np.asarray(curves["distance_to_flow"][1:]), np.asarray(curves["distance_to_gd_r2"][1:])
    assert to_flow[-1] > 0
    np.testing.assert_allclose(to_half / to_flow, 0.5, atol=0.1)
    assert curves["distance_from_init"][-1] > 20 * to_flow[-1]
    # Richardson extrapolation of GD at η/2 and η/4 agrees with the adaptive solver's flow.
    to_extrapolated = np.asarray(curves["distance_to_extrapolated_flow"][1:])
    np.testing.assert_allclose(to_extrapolated, to_flow, rtol=0.1)


def test_large_step_run_records_sharpness_and_the_modified_flow(smoke):
    _, _, results = smoke
    result = results["large_step-deep_linear-lr0.05"]
    assert result["spectrum"]["along"] == "gd"
    highs, lows = np.asarray(result["spectrum"]["lambda_max"]), np.asarray(result["spectrum"]["lambda_min"])
    assert np.all(highs > 0) and np.all(lows <= highs)
    to_flow = np.asarray(result["curves"]["distance_to_flow"])
    to_modified = np.asarray(result["curves"]["distance_to_modified_flow"])
    assert to_flow.shape == to_modified.shape and np.all(np.isfinite(to_modified))
    # A smooth (linear) net: GD is closer to the modified flow than to the gradient flow.
    assert np.all(to_modified[1:] < 0.7 * to_flow[1:])


def test_same_seed_gives_the_same_numbers_and_finished_runs_are_not_redone(smoke, tmp_path):
    config, output, results = smoke
    (spec,) = [s for s in cvd.plan(config) if s.key == "small_step-deep_linear-lr0.01"]
    again = cvd.execute(spec, config, tmp_path)
    assert again["curves"] == results[spec.key]["curves"]

    def refuse(spec, config, run_dir):
        raise AssertionError(f"{spec.key} was run again")

    run_study(Study(cvd.STUDY.name, cvd.plan, refuse, cvd.summarize), config, output, progress=False)


@pytest.mark.usefixtures("x64")
def test_interrupted_trajectory_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    settings = {"model": "deep_linear", "seed": 0, "data": {"dataset": "synthetic_mnist", "pool": 200, "stride": 10}}
    problem = cvd.make_problem(settings)
    whole = cvd.gradient_descent(problem, 0.01, 40, 4, tmp_path / "whole", checkpoint_seconds=1e9)
    save = Checkpointer.save

    def save_then_stop(self, step, state, progress):
        save(self, step, state, progress)
        if step == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(Checkpointer, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        cvd.gradient_descent(problem, 0.01, 40, 4, tmp_path / "resumed", checkpoint_seconds=0.0)
    monkeypatch.setattr(Checkpointer, "save", save)
    resumed = cvd.gradient_descent(problem, 0.01, 40, 4, tmp_path / "resumed", checkpoint_seconds=1e9)
    np.testing.assert_array_equal(resumed.params, whole.params)
    np.testing.assert_array_equal(resumed.losses, whole.losses)
    assert (tmp_path / "resumed.npz").is_file() and not (tmp_path / "resumed").exists()
