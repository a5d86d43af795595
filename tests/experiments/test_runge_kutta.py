"""The Runge–Kutta study: both views at exact gradient-evaluation budgets, reproducible, resumable."""

import shutil

import pytest

from experiments.runner import load_config
from experiments.studies import runge_kutta
from experiments.studies.runge_kutta import STUDY, budget, plan, selections, steps_per_epoch
from tests.experiments.helpers import read_rows, rerun_recording, run_smoke


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    return run_smoke(STUDY, "runge-kutta", tmp_path_factory)


def test_plan_reads_constant_rate_budgets_off_the_epoch_runs_and_adds_runs_for_schedules():
    config = load_config("runge-kutta", "smoke")
    keys = [spec.key for spec in plan(config)]
    assert len(keys) == len(set(keys))
    # Constant rate, 4 epochs: the equal-budget point of RK4 (4 evaluations a step) is epoch 1 of its run.
    assert not any(k.startswith("logreg") and k.endswith("-evals") for k in keys)
    # Cosine schedule: Ralston's equal-budget run is separate, with its schedule over G/2 steps.
    (evals,) = [spec for spec in plan(config) if spec.key == "lasso-ralston-lr0.001-evals"]
    lasso = config["experiments"][1]["train"]
    assert evals.settings["grad_evals"] == budget(lasso) == 2 * steps_per_epoch(lasso)
    assert evals.settings["steps"] == budget(lasso) // 2
    # The fair comparison runs first.
    assert keys.index("lasso-ralston-lr0.001-evals") < keys.index("lasso-ralston-lr0.001-epochs")


def test_smoke_study_reports_both_views_at_their_exact_gradient_budgets(smoke):
    config, output, _ = smoke
    for name in ("results.csv", "results.md", "runs.csv", "logreg.png", "lasso.png"):
        assert (output / name).is_file()
    costs = {"sgd": 1, "heun": 2, "ralston": 2, "rk4": 4}
    for experiment in config["experiments"]:
        g = budget(experiment["train"])
        rows = [r for r in read_rows(output / "results.csv") if r["experiment"] == experiment["name"]]
        assert {r["method"] for r in rows} == set(experiment["methods"])
        for row in rows:
            assert row["test_accuracy"], row
            if row["view"] == "equal_evals":
                assert int(row["grad_evals"]) == g
                assert int(row["steps"]) == g // costs[row["method"]]
            else:
                assert float(row["epochs"]) == experiment["train"]["epochs"]
                assert int(row["grad_evals"]) == g * costs[row["method"]]


def test_learning_rate_is_chosen_by_training_objective_not_test_accuracy(smoke):
    config, output, results = smoke
    table = selections(config, results)
    (heun,) = [e for e in table if e["experiment"] == "logreg" and e["view"] == "per_epoch" and e["method"] == "heun"]
    finals = {lr: results[f"logreg-heun-lr{lr:g}-epochs"]["history"][-1] for lr in (0.01, 0.03)}
    assert heun["learning_rate"] == min(finals, key=lambda lr: finals[lr]["train_loss"])
    assert heun["test_accuracy"] == finals[heun["learning_rate"]]["test_accuracy"]


def test_rerun_skips_finished_runs_and_redoes_lost_work_identically(smoke, tmp_path):
    config, output, _ = smoke
    copy = tmp_path / "copy"
    shutil.copytree(output, copy)
    lost = "logreg-heun-lr0.01-epochs"  # lost entirely: retrained from scratch
    shutil.rmtree(copy / "runs" / lost)
    cut = copy / "runs" / "logreg-rk4-lr0.01-epochs"  # interrupted after 3 of 4 epochs: resumes mid-run
    (cut / "result.json").unlink()
    steps = sorted((cut / "checkpoints").iterdir(), key=lambda d: int(d.name))
    assert len(steps) == 2
    shutil.rmtree(steps[-1])
    executed = rerun_recording(STUDY, config, copy)
    assert sorted(executed) == sorted([lost, cut.name])
    assert read_rows(copy / "runs.csv") == read_rows(output / "runs.csv")


def test_experiment_whose_data_is_unavailable_is_reported_as_not_run(smoke, tmp_path):
    config, output, results = smoke
    missing = {**config["experiments"][0], "name": "offline", "row": "data not on this machine"}
    config = {**config, "experiments": [*config["experiments"], missing]}
    runge_kutta.summarize(config, results, tmp_path)
    markdown = (tmp_path / "results.md").read_text()
    offline = markdown[markdown.index("### data not on this machine") :]
    assert offline.count("| not run | not run |") == len(missing["methods"])
    assert "data set is not available on this machine" in offline
    assert "not run" not in markdown[: markdown.index("### data not on this machine")].lower()
    assert (tmp_path / "logreg.png").is_file() and not (tmp_path / "offline.png").exists()
