"""The README's demo runs and reports equal evaluation budgets."""

import pytest

from flowopt.training import demo


def test_demo_runs_on_the_synthetic_stand_in(capsys):
    demo.main(["--dataset", "synthetic_mnist", "--budget", "80", "--batch-size", "32"])
    out = capsys.readouterr().out
    assert "| 80 |" in out and "test accuracy" in out and "rounded down" not in out
    label, evals, curves, _, _ = demo.run("synthetic_mnist", 80, 0.1, 32, 0)
    assert evals[-1] == 80 and set(curves) == set(demo.METHODS)
    assert all(curve[-1] < curve[0] for curve in curves.values())


def test_every_cell_is_at_exactly_its_rows_evaluations_for_a_budget_not_a_multiple_of_the_steps():
    _, rows, curves, _, spent = demo.run("synthetic_mnist", 40, 0.1, 32, 0)
    assert rows == [0, 4, 8, 12, 20, 24, 28, 32, 40]  # eighths of 40 (5, 15, ...) rounded down to whole steps
    for name, (_, evals_per_step) in demo.METHODS.items():
        assert spent[name] == rows and all(count % evals_per_step == 0 for count in spent[name])
    # The same evaluations under another budget reach the same loss: no cell holds a later point.
    _, short_rows, short_curves, _, _ = demo.run("synthetic_mnist", 8, 0.1, 32, 0)
    assert short_rows == [0, 4, 8]
    for name in demo.METHODS:
        assert short_curves[name] == curves[name][:3], name


def test_a_budget_off_the_step_grid_is_rounded_down_and_says_so(capsys):
    demo.main(["--dataset", "synthetic_mnist", "--budget", "6", "--batch-size", "32"])
    out = capsys.readouterr().out
    assert "(budget 6 rounded down to 4:" in out
    table = [line.split(" | ")[0].strip("| ") for line in out.splitlines() if line.startswith("| ")]
    assert table == ["gradient evaluations", "0", "4", "test accuracy"]


@pytest.mark.parametrize("budget", ["1", "3"])
def test_a_budget_below_one_step_of_every_method_exits_2_naming_budget(budget, capsys):
    with pytest.raises(SystemExit) as exit_:
        demo.main(["--dataset", "synthetic_mnist", "--budget", budget])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        f"flowopt-demo: error: argument --budget: must be at least 4 gradient evaluations, "
        f"one step of every method (RK4 takes 4 a step), got {budget}"
    ]
