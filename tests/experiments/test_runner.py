"""The study runner: finished runs are kept, an interrupted study resumes without redoing them."""

import json

import pytest

from experiments.runner import RunSpec, Study, load_config, run_study
from flowopt.training import DataUnavailableError


def _study(calls, fail_on=None, error=KeyboardInterrupt):
    def plan(config):
        return [RunSpec(f"lr{lr}", {"lr": lr}) for lr in config["learning_rates"]]

    def execute(spec, config, run_dir):
        if spec.key == fail_on:
            raise error("CIFAR-10: no source could provide it.")
        calls.append(spec.key)
        return {"loss": spec.settings["lr"] ** 2}

    def summarize(config, results, output_dir):
        (output_dir / "summary.json").write_text(json.dumps({k: r["loss"] for k, r in results.items()}))

    return Study("toy", plan, execute, summarize)


def test_interrupted_study_resumes_without_redoing_runs(tmp_path):
    config = {"learning_rates": [0.1, 0.2, 0.3]}
    calls = []
    with pytest.raises(KeyboardInterrupt):
        run_study(_study(calls, fail_on="lr0.3"), config, tmp_path, progress=False)
    assert calls == ["lr0.1", "lr0.2"]
    run_study(_study(calls), config, tmp_path, progress=False)
    assert calls == ["lr0.1", "lr0.2", "lr0.3"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == pytest.approx({"lr0.1": 0.01, "lr0.2": 0.04, "lr0.3": 0.09})


def test_unknown_config_name_raises():
    with pytest.raises(ValueError, match="config must be one of"):
        load_config("runge-kutta", "huge")


def test_run_without_its_data_is_skipped_not_recorded_and_runs_later(tmp_path, capsys):
    config = {"learning_rates": [0.1, 0.2, 0.3]}
    calls = []
    results = run_study(_study(calls, fail_on="lr0.2", error=DataUnavailableError), config, tmp_path, progress=False)
    assert calls == ["lr0.1", "lr0.3"] and set(results) == {"lr0.1", "lr0.3"}
    assert "skipped 1 of 3 runs" in capsys.readouterr().out
    assert not (tmp_path / "runs" / "lr0.2").exists()
    run_study(_study(calls), config, tmp_path, progress=False)
    assert calls == ["lr0.1", "lr0.3", "lr0.2"]


def test_summary_sees_fresh_results_exactly_as_resumed_ones(tmp_path):
    seen = []

    def execute(spec, config, run_dir):
        return {"zeta": (1, 2), "alpha": spec.settings["lr"]}  # unsorted keys, a tuple

    def summarize(config, results, output_dir):
        seen.append(results)

    study = Study("toy", lambda config: [RunSpec("a", {"lr": 0.1})], execute, summarize)
    run_study(study, {}, tmp_path, progress=False)
    run_study(study, {}, tmp_path, progress=False)
    fresh, resumed = seen
    assert fresh == resumed and list(fresh["a"]) == list(resumed["a"])
    assert fresh["a"]["zeta"] == [1, 2]
