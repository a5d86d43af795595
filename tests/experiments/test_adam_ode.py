"""The Adam-ODE study: the seed's figures, equal gradient-evaluation budgets, reproducible and resumable."""

import pytest

from experiments.runner import Study, load_config, run_study
from experiments.studies import adam_ode
from experiments.studies.adam_ode import STUDY, budget, cost, plan
from tests.experiments.helpers import read_rows, run_smoke


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    return run_smoke(STUDY, "adam-ode", tmp_path_factory)


def test_smoke_study_writes_tables_and_figures(smoke):
    _, output, _ = smoke
    for name in (
        "results.csv",
        "results.md",
        "curves.csv",
        "summary.json",
        "training.png",
        "adam_ode_fig2.png",
        "adam_ode_fig3.png",
        "figures_summary.csv",
    ):
        assert (output / name).is_file(), name


def test_figures_reproduce_the_seeds_claims(smoke):
    _, _, results = smoke
    summary = results["figures"]["summary"]
    # Figure 2: with β's this large gradient descent ends lower than Adam.
    assert summary["fig2 final loss gd"] < summary["fig2 final loss adam"]
    # Figure 3: at a fixed ODE the Euler scheme (Adam) converges to the flow at order one.
    assert summary["fig3 fixed ode error order (log-log slope)"] == pytest.approx(1.0, abs=0.1)


def test_views_spend_exact_gradient_budgets(smoke):
    config, output, _ = smoke
    g = budget(config)
    rows = read_rows(output / "results.csv")
    assert {r["integrator"] for r in rows} == set(config["integrators"])
    for row in rows:
        assert row["complete"] == "True", row
        per_step = cost(row["integrator"])
        if row["view"] == "equal_evals":
            assert int(row["grad_evals"]) == g
            assert int(row["step"]) == g // per_step
        else:
            assert float(row["epoch"]) == config["train"]["epochs"]
            assert int(row["grad_evals"]) == g * per_step


def test_same_seed_gives_the_same_numbers_and_finished_runs_are_not_redone(smoke, tmp_path):
    config, output, results = smoke
    key = "heun-lr" + format(config["learning_rates"][0], "g")
    (spec,) = [s for s in plan(config) if s.key == key]
    again = adam_ode.execute(spec, config, tmp_path)
    assert again["history"][-1]["full_train_loss"] == results[key]["history"][-1]["full_train_loss"]
    assert [r["grad_evals"] for r in again["history"]] == [r["grad_evals"] for r in results[key]["history"]]

    def refuse(spec, config, run_dir):
        raise AssertionError(f"{spec.key} was run again")

    run_study(Study("adam-ode", plan, refuse, adam_ode.summarize), config, output, progress=False)


def test_plan_requires_logged_equal_budget_points():
    config = load_config("adam-ode", "smoke")
    config["train"] = {**config["train"], "epochs": 6}
    with pytest.raises(ValueError, match="multiple of 4"):
        plan(config)
    assert [s.key for s in plan({**config, "integrators": ["euler", "heun"], "figures": False})] == [
        "euler-lr0.003",
        "heun-lr0.003",
    ]
