"""The README's demo runs and reports equal evaluation budgets."""

from flowopt import demo


def test_demo_runs_on_the_synthetic_stand_in(capsys):
    demo.main(["--dataset", "synthetic_mnist", "--budget", "80", "--batch-size", "32"])
    out = capsys.readouterr().out
    assert "| 80 |" in out and "test accuracy" in out
    label, evals, curves, _ = demo.run("synthetic_mnist", 80, 0.1, 32, 0)
    assert evals[-1] == 80 and set(curves) == set(demo.METHODS)
    assert all(curve[-1] < curve[0] for curve in curves.values())
