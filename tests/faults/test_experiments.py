"""Fault injection on studies: a changed configuration is never reused, a malformed one is named precisely."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from experiments import cli
from experiments.runner import (
    ConfigFileError,
    RunSpec,
    Study,
    check_config,
    config_dir,
    full_run_config,
    load_config,
    run_study,
)
from experiments.studies import adam_ode, bdf, continuous_vs_discrete, runge_kutta

PREFIX = "flowopt-experiment: error: "


def _toy(calls: list[str], fail_on: str | None = None) -> Study:
    """Runs ``lr<rate>`` whose result depends on the rate and on the study-level ``scale``."""

    def plan(config):
        return [RunSpec(f"lr{lr}", {"lr": lr}) for lr in config["learning_rates"]]

    def execute(spec, config, run_dir):
        if spec.key == fail_on:
            (run_dir / "checkpoint").write_text("half done")
            raise KeyboardInterrupt
        calls.append(spec.key)
        return {"loss": spec.settings["lr"] * config["scale"]}

    def summarize(config, results, output_dir):
        (output_dir / "summary.json").write_text(json.dumps({k: r["loss"] for k, r in results.items()}))

    def run_config(spec, config):
        return {**spec.settings, "scale": config["scale"]}

    return Study("toy", plan, execute, summarize, run_config=run_config)


def _summary(path: Path) -> dict:
    return json.loads((path / "summary.json").read_text())


def test_a_changed_study_value_reruns_the_runs_it_affects_and_says_so(tmp_path, capsys):
    calls = []
    run_study(_toy(calls), {"learning_rates": [1, 2], "scale": 10}, tmp_path, progress=False)
    assert _summary(tmp_path) == {"lr1": 10, "lr2": 20}
    run_study(_toy(calls), {"learning_rates": [1, 2], "scale": 100}, tmp_path, progress=False)
    assert calls == ["lr1", "lr2", "lr1", "lr2"]
    assert _summary(tmp_path) == {"lr1": 100, "lr2": 200}, "the tables must not show results of the old config"
    out = capsys.readouterr().out
    assert "toy: run lr1: its configuration changed (scale: 10 → 100); running it again (the old run is kept in " in out
    assert json.loads((tmp_path / "replaced" / "lr1-1" / "result.json").read_text())["loss"] == 10


def test_an_unchanged_run_is_reused_and_an_added_one_runs_alone(tmp_path, capsys):
    calls = []
    run_study(_toy(calls), {"learning_rates": [1], "scale": 10}, tmp_path, progress=False)
    run_study(_toy(calls), {"learning_rates": [1, 3], "scale": 10}, tmp_path, progress=False)
    assert calls == ["lr1", "lr3"]
    assert "running it again" not in capsys.readouterr().out
    assert json.loads((tmp_path / "runs" / "lr1" / "result.json").read_text())["run_config"] == {"lr": 1, "scale": 10}


def test_an_interrupted_run_under_a_changed_config_starts_afresh(tmp_path, capsys):
    calls = []
    with pytest.raises(KeyboardInterrupt):
        run_study(_toy(calls, fail_on="lr2"), {"learning_rates": [1, 2], "scale": 10}, tmp_path, progress=False)
    run_study(_toy(calls), {"learning_rates": [1, 2], "scale": 5}, tmp_path, progress=False)
    assert calls == ["lr1", "lr1", "lr2"]
    assert "run lr2: its configuration changed since it started (scale: 10 → 5)" in capsys.readouterr().out
    assert (tmp_path / "replaced" / "lr2-1" / "checkpoint").read_text() == "half done"
    assert not (tmp_path / "runs" / "lr2" / "checkpoint").exists()


def test_a_corrupt_result_is_rerun_not_crashed_on(tmp_path, capsys):
    calls = []
    config = {"learning_rates": [1], "scale": 10}
    run_study(_toy(calls), config, tmp_path, progress=False)
    (tmp_path / "runs" / "lr1" / "result.json").write_text('{"loss": 1')
    run_study(_toy(calls), config, tmp_path, progress=False)
    assert calls == ["lr1", "lr1"]
    assert "its result.json is unreadable" in capsys.readouterr().out


def test_results_written_before_run_configs_were_stored(tmp_path, capsys):
    calls = []
    config = {"learning_rates": [1, 2], "scale": 10}
    run_study(_toy(calls), config, tmp_path, progress=False)
    for key, settings in (("lr1", {"lr": 1}), ("lr2", {"lr": 99})):  # lr2: the settings no longer match
        done = tmp_path / "runs" / key / "result.json"
        old = json.loads(done.read_text())
        del old["run_config"], old["study_config"]
        old["settings"] = settings
        done.write_text(json.dumps(old))
        (tmp_path / "runs" / key / "run_config.json").unlink()
    run_study(_toy(calls), config, tmp_path, progress=False)
    assert calls == ["lr1", "lr2", "lr2"]
    out = capsys.readouterr().out
    assert "run lr2: its settings changed (lr: 99 → 2)" in out
    assert "reused 1 run(s) recorded without their full configuration (lr1)" in out


def test_study_run_configs_hold_the_study_values_each_run_reads():
    rk = json.loads((config_dir("runge-kutta") / "smoke.json").read_text())
    spec = runge_kutta.plan(rk)[0]
    assert full_run_config(runge_kutta.STUDY, spec, {**rk, "seed": 1})["seed"] == 1
    adam = json.loads((config_dir("adam-ode") / "smoke.json").read_text())
    spec = next(s for s in adam_ode.plan(adam) if s.settings["kind"] == "train")
    longer = copy.deepcopy(adam)
    longer["train"]["epochs"] = 8
    assert full_run_config(adam_ode.STUDY, spec, adam) != full_run_config(adam_ode.STUDY, spec, longer)
    assert full_run_config(adam_ode.STUDY, spec, adam) != full_run_config(adam_ode.STUDY, spec, {**adam, "b2": 0.99})
    figures = adam_ode.plan(adam)[0]
    assert full_run_config(adam_ode.STUDY, figures, adam) == full_run_config(adam_ode.STUDY, figures, longer)
    b = json.loads((config_dir("bdf") / "smoke.json").read_text())
    synthetic = bdf.plan(b)[0]
    assert full_run_config(bdf.STUDY, synthetic, b) != full_run_config(bdf.STUDY, synthetic, {**b, "inner_steps": 3})


@pytest.mark.parametrize("study", sorted(cli.STUDIES))
def test_every_shipped_configuration_is_valid(study):
    for path in sorted(config_dir(study).glob("*.json")):
        assert check_config(cli.get_study(study), load_config(study, str(path)), path), path


def _rk(edit) -> dict:
    config = json.loads((config_dir("runge-kutta") / "smoke.json").read_text())
    edit(config)
    return config


def _set(path, value):
    def edit(config):
        *parents, last = path
        target = config
        for key in parents:
            target = target[key]
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value

    return edit


_DELETE = object()
MALFORMED = [
    ("missing key", _set(["experiments"], _DELETE), "key experiments is missing."),
    (
        "unknown key",
        _set(["sede"], 1),
        "key sede is not a known key; valid keys here: config_name, description, experiments, seed.",
    ),
    ("wrong type", _set(["experiments"], {"a": 1}), 'key experiments must be a list, got {"a": 1}.'),
    ("string seed", _set(["seed"], "0"), 'key seed must be a non-negative integer, got "0".'),
    ("missing nested", _set(["experiments", 0, "train", "epochs"], _DELETE), "key experiments[0].train.epochs is missing."),
    (
        "unknown nested",
        _set(["experiments", 0, "train", "eval_every"], 5),
        "key experiments[0].train.eval_every is not a known key; valid keys here: augment, ",
    ),
    (
        "negative rate",
        _set(["experiments", 0, "methods", "sgd"], [-0.1]),
        "key experiments[0].methods.sgd[0] must be a positive finite number, got -0.1.",
    ),
    (
        "unknown method",
        _set(["experiments", 0, "methods", "lbfgs"], [0.1]),
        "key experiments[0].methods.lbfgs is not a valid name: must be one of ['sgd', ",
    ),
    (
        "unknown model",
        _set(["experiments", 0, "train", "model"], "gpt"),
        "key experiments[0].train.model must be one of ['logistic_regression', ",
    ),
    (
        "duplicate name",
        _set(["experiments", 1, "name"], "logreg"),
        'key experiments[1].name repeats "logreg": each name must be unique.',
    ),
    (
        "bad model option",
        _set(["experiments", 1, "train", "model_options"], {"l1": "x"}),
        "run lasso-sgd-lr0.001-epochs: model_options: Model option l1 of 'lasso' must be a number, got 'x'.",
    ),
    (
        "batch too large",
        _set(["experiments", 0, "train", "batch_size"], 1024),
        "run logreg-sgd-lr0.01-epochs: batch_size: batch_size 1024 exceeds the 512 training examples of synthetic_mnist.",
    ),
]


@pytest.mark.parametrize("edit, message", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_study_config_names_file_and_key(edit, message, tmp_path, capsys):
    path = tmp_path / "study.json"
    path.write_text(json.dumps(_rk(edit)))
    with pytest.raises(ConfigFileError) as error:
        check_config(runge_kutta.STUDY, load_config("runge-kutta", str(path)), path)
    assert str(error.value).startswith(f"{path}: {message}"), str(error.value)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["runge-kutta", "--config", str(path), "--output", str(tmp_path / "out"), "--no-progress"])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"{PREFIX}argument --config: {error.value}"]
    assert not (tmp_path / "out" / "runs").exists()


@pytest.mark.parametrize(
    "study, edit, message",
    [
        ("adam-ode", lambda c: c.__setitem__("b1", 1.5), "key b1 must be a number in [0, 1), got 1.5."),
        (
            "adam-ode",
            lambda c: c.__setitem__("integrators", ["rk5"]),
            "key integrators[0] must be one of ['euler', 'heun', 'rk4'], got \"rk5\".",
        ),
        (
            "bdf",
            lambda c: c.__setitem__("methods", ["gd", "bdf9"]),
            'key methods[1] must be one of gd, heun, rk4, bdf1 ... bdf6, got "bdf9".',
        ),
        (
            "bdf",
            lambda c: c["synthetic"].__setitem__("min_rate", 100),
            "run synthetic-quadratic_kappa1e2: synthetic.min_rate (100) exceeds synthetic.max_rate (50).",
        ),
        (
            "continuous-vs-discrete",
            lambda c: c["small_step"]["flow"].__setitem__("tolerance", 1),
            "run small_step-deep_linear-lr0.01: small_step: flow has unknown option(s) ['tolerance']; valid: ",
        ),
        (
            "continuous-vs-discrete",
            lambda c: c["large_step"].__setitem__("flow", None),
            "run large_step-deep_linear-lr0.05: large_step: flow must be set: the large-step runs integrate",
        ),
        (
            "continuous-vs-discrete",
            lambda c: c["data"].__setitem__("pool", 0),
            "key data.pool must be a positive integer, got 0.",
        ),
    ],
)
def test_other_studies_name_file_and_key(study, edit, message, tmp_path):
    config = json.loads((config_dir(study) / "smoke.json").read_text())
    edit(config)
    path = tmp_path / "study.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ConfigFileError) as error:
        check_config(cli.get_study(study), load_config(study, str(path)), path)
    assert str(error.value).startswith(f"{path}: {message}"), str(error.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "{path} is not valid JSON: Expecting property name enclosed in double quotes at line 1, column 2."),
        ("[1, 2]", "{path} must hold a JSON object of settings, got list."),
        ("", "{path} is not valid JSON: Expecting value at line 1, column 1."),
    ],
)
def test_unreadable_study_file(text, message, tmp_path, capsys):
    path = tmp_path / "study.json"
    path.write_text(text)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["runge-kutta", "--config", str(path), "--output", str(tmp_path / "out")])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"{PREFIX}argument --config: {message.format(path=path)}"]


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["nope"],
            "argument study: invalid choice: 'nope' (choose from " + ", ".join(f"'{name}'" for name in sorted(cli.STUDIES)) + ")",
        ),
        (
            ["bdf", "--config", "huge"],
            "argument --config: config must be one of ('smoke', 'cpu', 'gpu') or a .json file, got 'huge'.",
        ),
        (["bdf", "--config", ""], "argument --config: config must be one of ('smoke', 'cpu', 'gpu') or a .json file, got ''."),
        (["bdf", "--config", "missing.json"], "argument --config: no configuration file missing.json for study 'bdf'."),
        (["bdf", "--config", "smoke", "--output", ""], "argument --output: the directory name is empty."),
        (
            ["bdf", "--config", "smoke", "--output", "/proc/flowopt-test"],
            "argument --output: /proc/flowopt-test is not a writable directory: ",
        ),
        (["bdf", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_arguments(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(args)
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX + message), lines


def test_output_that_is_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit):
        cli.main(["bdf", "--config", "smoke", "--output", str(tmp_path / "file")])
    assert capsys.readouterr().err.splitlines() == [
        f"{PREFIX}argument --output: {tmp_path / 'file'} exists and is not a directory."
    ]


def test_continuous_vs_discrete_plan_is_checked_too():
    config = json.loads((config_dir("continuous-vs-discrete") / "smoke.json").read_text())
    config["small_step"]["record_points"] = 7
    with pytest.raises(ConfigFileError, match="small_step/deep_linear: iterations must be a multiple of record_points"):
        check_config(continuous_vs_discrete.STUDY, config)


def test_a_study_without_run_config_compares_the_whole_configuration(tmp_path, capsys):
    calls = []
    plain = _toy(calls)._replace(run_config=None)
    run_study(plain, {"learning_rates": [1], "scale": 10, "description": "a"}, tmp_path, progress=False)
    run_study(plain, {"learning_rates": [1], "scale": 10, "description": "b"}, tmp_path, progress=False)
    assert calls == ["lr1"], "a changed description changes no result"
    run_study(plain, {"learning_rates": [1], "scale": 11}, tmp_path, progress=False)
    assert calls == ["lr1", "lr1"]
    assert "its configuration changed (config.scale: 10 → 11)" in capsys.readouterr().out
