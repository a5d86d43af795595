"""Fault injection on ``flowopt-train`` and TrainConfig: every bad value is exit 2 and one line naming the flag."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flowopt.training import cli
from flowopt.training.config import ConfigError, TrainConfig, read_config_file

BASE = ["--dataset", "synthetic_mnist", "--model", "mlp", "--steps", "1", "--batch-size", "32", "--no-progress"]
PREFIX = "flowopt-train: error: "


def _run(argv: list[str], capsys) -> tuple[int, list[str]]:
    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    return code, err.splitlines()


def _fails(argv: list[str], capsys) -> str:
    """Run the CLI; it must exit 2 with exactly one stderr line; return that line without the prefix."""
    code, lines = _run(argv, capsys)
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith(PREFIX), lines
    return lines[0][len(PREFIX) :]


BAD_FLAGS = [
    (
        ["--model-option", "hidden=abc"],
        "argument --model-option: Model option hidden of 'mlp' must be a list of integers, got 'abc'.",
    ),
    (
        ["--model-option", "hidden=[0]"],
        "argument --model-option: Model option hidden of 'mlp' must hold positive integers, got [0].",
    ),
    (
        ["--model-option", "colour=1"],
        "argument --model-option: Model 'mlp' has no option(s) ['colour']; valid options: ['hidden', 'activation', 'use_bias'].",
    ),
    (["--model-option", "use_bias=1"], "argument --model-option: Model option use_bias of 'mlp' must be true or false, got 1."),
    (
        ["--model-option", "activation=sigmoid"],
        "argument --model-option: Model 'mlp' cannot be built with options {'activation': 'sigmoid'}: "
        "Unknown activation 'sigmoid'; valid: relu, tanh, None.",
    ),
    (["--model-option", "hidden"], "argument --model-option: expected KEY=VALUE, got 'hidden'"),
    (
        ["--model", "lenet5", "--model-option", "image_size=8"],
        "argument --model-option: Model 'lenet5' cannot be built with options {'image_size': 8}: division by zero",
    ),
    (
        ["--model", "lenet5", "--model-option", "image_size=40"],
        "argument --model-option: Model 'lenet5' cannot be built with options {'image_size': 40}: ",
    ),
    (
        ["--optimizer", "adam", "--optimizer-option", "b1=abc"],
        "argument --optimizer-option: Optimizer option b1 of 'adam' must be a number, got 'abc'.",
    ),
    (
        ["--optimizer", "adam", "--optimizer-option", "b1=true"],
        "argument --optimizer-option: Optimizer option b1 of 'adam' must be a number, got True.",
    ),
    (
        ["--optimizer", "adam", "--optimizer-option", "b1=NaN"],
        "argument --optimizer-option: optimizer_options b1 must be plain JSON (finite numbers, strings, lists, "
        "true/false, null), got nan.",
    ),
    (
        ["--optimizer-option", "colour=1"],
        "argument --optimizer-option: Optimizer 'sgd' has no option 'colour'; valid options: "
        "['momentum', 'nesterov', 'accumulator_dtype'].",
    ),
    (
        ["--optimizer", "bdf"],
        "argument --optimizer-option: Optimizer 'bdf' needs the option(s) order, inner_steps "
        "(or a name with the order in it, such as bdf2).",
    ),
    (["--optimizer", "runge_kutta"], "argument --optimizer-option: Optimizer 'runge_kutta' needs the option(s) tableau."),
    (
        ["--optimizer", "sgd", "--optimizer-option", "momentum=fast"],
        "argument --optimizer-option: Optimizer option momentum of 'sgd' must be a number or null, got 'fast'.",
    ),
    (
        ["--optimizer", "bdf2", "--optimizer-option", "inner_steps=0"],
        "argument --optimizer-option: Optimizer 'bdf2' rejected options {'inner_steps': 0}: "
        "inner_steps must be a positive integer, got 0.",
    ),
    (["--optimizer", "bdf2"], "argument --optimizer-option: Optimizer 'bdf2' needs the option(s) inner_steps."),
    (
        ["--optimizer-option", "learning_rate=0.1"],
        "argument --optimizer-option: learning_rate is set by the learning_rate field, not as an optimizer option.",
    ),
    (
        ["--optimizer", "guard_nonfinite"],
        "argument --optimizer: flowopt.guard_nonfinite is not an optimizer constructor (it takes no learning rate; "
        "its first argument is inner: optax.GradientTransformation); valid names: sgd, ",
    ),
    (["--optimizer", "nope"], "argument --optimizer: Unknown optimizer 'nope'; valid names: sgd, "),
    (["--optimizer", ""], "argument --optimizer: Unknown optimizer ''; valid names: sgd, "),
    (["--model", "nope"], "argument --model: Unknown model 'nope'; valid names: logistic_regression, "),
    (["--model", ""], "argument --model: Unknown model ''; valid names: logistic_regression, "),
    (["--dataset", "imagenet"], "argument --dataset: Unknown dataset 'imagenet'; valid names: mnist, "),
    (
        ["--warmup-steps", "-5", "--schedule", "warmup_cosine"],
        "argument --warmup-steps: warmup_steps must be an integer in [0, 2147483647], got -5.",
    ),
    (
        ["--warmup-steps", "5"],
        "argument --warmup-steps: warmup_steps (5) only applies to the warmup_cosine schedule, not to constant.",
    ),
    (
        ["--warmup-steps", "5", "--schedule", "warmup_cosine", "--steps", "5"],
        "argument --warmup-steps: warmup_steps (5) must be less than steps (5).",
    ),
    (
        ["--warmup-steps", "500", "--schedule", "warmup_cosine", "--steps", "900", "--epochs", "1"],
        "argument --warmup-steps: warmup_steps (500) must be less than the run's 64 steps.",
    ),
    (["--warmup-steps", "x"], "argument --warmup-steps: invalid int value: 'x'"),
    (["--seed", "-1"], "argument --seed: seed must be an integer in [0, 4294967295], got -1."),
    (["--seed", str(2**32)], "argument --seed: seed must be an integer in [0, 4294967295], got 4294967296."),
    (["--seed", "1.5"], "argument --seed: invalid int value: '1.5'"),
    (["--learning-rate", "inf"], "argument --learning-rate: learning_rate must be a positive finite number, got inf."),
    (["--learning-rate", "nan"], "argument --learning-rate: learning_rate must be a positive finite number, got nan."),
    (["--learning-rate", "1e999"], "argument --learning-rate: learning_rate must be a positive finite number, got inf."),
    (["--learning-rate", "-0.1"], "argument --learning-rate: learning_rate must be a positive finite number, got -0.1."),
    (["--learning-rate", "0"], "argument --learning-rate: learning_rate must be a positive finite number, got 0.0."),
    (["--learning-rate", ""], "argument --learning-rate: invalid float value: ''"),
    (["--learning-rate", "fast"], "argument --learning-rate: invalid float value: 'fast'"),
    (["--weight-decay", "-1"], "argument --weight-decay: weight_decay must be a non-negative finite number, got -1.0."),
    (["--weight-decay", "nan"], "argument --weight-decay: weight_decay must be a non-negative finite number, got nan."),
    (["--batch-size", "0"], "argument --batch-size: batch_size must be an integer in [1, 2147483647], got 0."),
    (
        ["--batch-size", "100000"],
        "argument --batch-size: batch_size 100000 exceeds the 2048 training examples of synthetic_mnist.",
    ),
    (["--batch-size", str(2**40)], "argument --batch-size: batch_size must be an integer in [1, 2147483647], got 1099511627776."),
    (["--epochs", "0"], "argument --epochs: epochs must be an integer in [1, 2147483647], got 0."),
    (["--steps", "-3"], "argument --steps: steps must be an integer in [1, 2147483647], got -3."),
    (["--grad-evals", str(2**31)], "argument --grad-evals: grad_evals must be an integer in [1, 2147483647], got 2147483648."),
    (["--eval-batch-size", "0"], "argument --eval-batch-size: eval_batch_size must be an integer in [1, 2147483647], got 0."),
    (["--eval-every", "-1"], "argument --eval-every: eval_every must be an integer in [1, 2147483647], got -1."),
    (["--checkpoint-every", "0"], "argument --checkpoint-every: checkpoint_every must be an integer in [1, 2147483647], got 0."),
    (["--devices", "0"], "argument --devices: num_devices must be an integer in [1, 2147483647], got 0."),
    (["--devices", "4096"], "argument --devices: num_devices must be in [1, "),
    (
        ["--param-sharding", "zero3"],
        "argument --param-sharding: invalid choice: 'zero3' (choose from 'replicated', 'fsdp')",
    ),
    (
        ["--schedule", "linear"],
        "argument --schedule: invalid choice: 'linear' (choose from 'constant', 'cosine', 'warmup_cosine')",
    ),
    (
        ["--data-path", "/data/x"],
        "argument --data-path: dataset_options ['path'] do not apply to the synthetic dataset 'synthetic_mnist'.",
    ),
    (["--dataset", "mnist", "--data-path", ""], "argument --data-path: the path is empty."),
    (["--config", ""], "argument --config: the file name is empty."),
    (["--bogus", "1"], "unrecognized arguments: --bogus 1"),
    (["--sharpness-every", "0"], "argument --sharpness-every: sharpness_every must be an integer in [1, 2147483647], got 0."),
    (["--sharpness-every", "1.5"], "argument --sharpness-every: invalid int value: '1.5'"),
    (
        ["--sharpness-every", "2", "--sharpness-top", "30"],
        "argument --sharpness-top: sharpness_top (30) exceeds sharpness_iterations (20): "
        "Lanczos gives at most one eigenvalue per iteration.",
    ),
    (
        ["--sharpness-iterations", "5"],
        "argument --sharpness-iterations: sharpness_iterations only applies with sharpness_every "
        "(the sharpness is not measured).",
    ),
    (
        ["--model-option", "hidden=[1]", "--sharpness-every", "1", "--sharpness-top", "900", "--sharpness-iterations", "900"],
        "argument --sharpness-top: sharpness_top (900) exceeds the model's 805 parameters.",
    ),
]


@pytest.mark.parametrize("extra, message", BAD_FLAGS, ids=[" ".join(case[0]) or "empty" for case in BAD_FLAGS])
def test_bad_flag_exits_2_with_one_line_naming_it(extra, message, tmp_path, capsys):
    line = _fails(BASE + extra + ["--output", str(tmp_path / "run")], capsys)
    assert line.startswith(message), line
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_missing_output_and_missing_files(tmp_path, capsys):
    assert _fails(BASE, capsys) == "the following arguments are required: --output"
    out = ["--output", str(tmp_path / "run")]
    assert _fails(BASE + ["--dataset", "mnist", "--data-path", str(tmp_path / "nope")] + out, capsys) == (
        f"argument --data-path: {tmp_path / 'nope'} does not exist."
    )
    (tmp_path / "file").write_text("x")
    assert _fails(BASE + ["--dataset", "mnist", "--data-dir", str(tmp_path / "file")] + out, capsys) == (
        f"argument --data-dir: {tmp_path / 'file'} exists and is not a directory."
    )
    assert _fails(BASE + ["--config", str(tmp_path / "none.yaml")] + out, capsys) == (
        f"argument --config: cannot read {tmp_path / 'none.yaml'}: No such file or directory."
    )


@pytest.mark.parametrize(
    "where, message",
    [
        ("file", "{out} exists and is not a directory."),
        ("under a file", "{out} is not a writable directory: Not a directory."),
        ("read-only", "{out} is not a writable directory: "),
        ("empty", "the directory name is empty."),
    ],
)
def test_unusable_output_directory(where, message, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    out = {
        "file": tmp_path / "file",
        "under a file": tmp_path / "file" / "run",
        "read-only": Path("/proc/flowopt-test-run"),
        "empty": "",
    }[where]
    line = _fails(BASE + ["--output", str(out)], capsys)
    assert line.startswith("argument --output: " + message.format(out=out)), line


CONFIG_FILES = [
    ("bad.json", "{not json", "{path} is not valid JSON: Expecting property name enclosed in double quotes at line 1, column 2."),
    ("bad.yaml", "a: [1, 2\nb: :", "{path} is not valid YAML: expected ',' or ']', but got ':' at line 2, column 2."),
    ("list.yaml", "- 1\n", "{path} must hold a mapping of config keys, got list."),
    ("typo.yaml", "learning_rte: 0.1\n", "{path}: Unknown config key(s) ['learning_rte']; valid keys: "),
    (
        "lr.yaml",
        "learning_rate: 1e-3\n",
        "{path}: key learning_rate: learning_rate must be a number, got the string '1e-3' (quoted, or in YAML an "
        "exponent without a decimal point, e.g. 1e-3 for 1.0e-3).",
    ),
    ("neg.json", '{"weight_decay": -1}', "{path}: key weight_decay: weight_decay must be a non-negative finite number, got -1."),
    ("bool.yaml", "eval_train: 3\n", "{path}: key eval_train: eval_train must be true or false, got 3."),
    (
        "options.yaml",
        "model_options: 3\n",
        "{path}: key model_options: model_options must be a mapping of option names to values, got 3.",
    ),
    (
        "hidden.yaml",
        "model_options: {hidden: abc}\n",
        "{path}: key model_options.hidden: Model option hidden of 'mlp' must be a list of integers, got 'abc'.",
    ),
    (
        "data.yaml",
        "dataset: mnist\ndataset_options: {colour: 1}\n",
        "{path}: key dataset_options.colour: Unknown dataset option 'colour'; valid: path, data_dir, refresh.",
    ),
    (
        "refresh.yaml",
        "dataset: mnist\ndataset_options: {refresh: 'yes'}\n",
        "{path}: key dataset_options.refresh: dataset option refresh must be true or false, got 'yes'.",
    ),
    ("config.txt", "epochs: 1\n", "Config files must be .json, .yaml or .yml, got config.txt."),
]


@pytest.mark.parametrize("name, text, message", CONFIG_FILES, ids=[c[0] for c in CONFIG_FILES])
def test_bad_config_file_names_the_file_and_key(name, text, message, tmp_path, capsys):
    path = tmp_path / name
    path.write_text(text)
    argv = ["--model", "mlp", "--steps", "1", "--no-progress", "--config", str(path)]  # the dataset from the file
    line = _fails(argv + ["--output", str(tmp_path / "run")], capsys)
    assert line.startswith("argument --config: " + message.format(path=path)), line


def test_flag_overrides_a_bad_config_value(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("learning_rate: -1\n")
    code, lines = _run(
        BASE + ["--config", str(tmp_path / "c.yaml"), "--learning-rate", "0.05", "--output", str(tmp_path / "run")], capsys
    )
    assert code == 0 and lines == []


def test_reusing_an_output_directory_of_another_run_names_output(tmp_path, capsys):
    out = ["--output", str(tmp_path / "run")]
    assert _run(BASE + out, capsys)[0] == 0
    line = _fails(BASE + ["--seed", "7"] + out, capsys)
    assert line.startswith(f"argument --output: {tmp_path / 'run'} ") and "seed" in line, line


def test_data_errors_are_one_line_naming_the_dataset(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FLOWOPT_CIFAR10_ARCHIVE", raising=False)
    line = _fails(
        [
            "--dataset",
            "cifar10",
            "--model",
            "resnet20",
            "--steps",
            "1",
            "--no-progress",
            "--data-dir",
            str(tmp_path / "cache"),
            "--output",
            str(tmp_path / "run"),
        ],
        capsys,
    )
    assert line.startswith(f"argument --dataset: CIFAR-10 is not prepared in {tmp_path / 'cache' / 'cifar10'}"), line
    assert "$FLOWOPT_CIFAR10_ARCHIVE" in line


def test_the_installed_command_prints_one_line_and_no_traceback(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-m", "flowopt.training.cli", *BASE, "--model-option", "hidden=abc", "--output", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "flowopt-train: error: argument --model-option: Model option hidden of 'mlp' must be a list of integers, got 'abc'."
    ]


# --------------------------------------------------------------------------- the library: TrainConfig

GOOD = dict(model="mlp", dataset="synthetic_mnist", steps=1)

BAD_FIELDS = [
    ("learning_rate", float("inf")),
    ("learning_rate", float("nan")),
    ("learning_rate", -0.1),
    ("learning_rate", 0),
    ("learning_rate", "0.1"),
    ("learning_rate", True),
    ("weight_decay", -1e-4),
    ("weight_decay", float("inf")),
    ("seed", -1),
    ("seed", 2**32),
    ("seed", 1.0),
    ("warmup_steps", -5),
    ("batch_size", 0),
    ("batch_size", 2.0),
    ("epochs", 0),
    ("steps", -1),
    ("steps", True),
    ("grad_evals", 2**31),
    ("eval_batch_size", 0),
    ("eval_every", 0),
    ("checkpoint_every", -2),
    ("keep_checkpoints", 0),
    ("num_devices", 0),
    ("param_sharding", "zero3"),
    ("param_sharding", None),
    ("param_sharding", 1),
    ("model", "nope"),
    ("model", 3),
    ("dataset", ""),
    ("optimizer", "guard_nonfinite"),
    ("optimizer", None),
    ("schedule", "linear"),
    ("augment", "yes"),
    ("eval_train", 1),
    ("progress", "no"),
    ("resume", None),
    ("model_options", {"hidden": "abc"}),
    ("model_options", {"depth": 3}),
    ("model_options", []),
    ("optimizer_options", {"momentum": "x"}),
    ("optimizer_options", {"colour": 1}),
    ("optimizer_options", {1: 2}),
    ("dataset_options", {"path": "/x"}),
]


@pytest.mark.parametrize("field, value", BAD_FIELDS, ids=[f"{f}={v!r}" for f, v in BAD_FIELDS])
def test_train_config_names_the_bad_field(field, value):
    with pytest.raises(ConfigError) as error:
        TrainConfig(**{**GOOD, field: value})
    assert error.value.field == field
    assert isinstance(error.value, ValueError)
    message = str(error.value)
    assert field in message or ("option" in message and field.endswith("options")) or field in ("model", "dataset", "optimizer")
    assert "\n" not in message


def test_train_config_warm_up_and_dataset_options():
    with pytest.raises(ConfigError, match="only applies to the warmup_cosine schedule"):
        TrainConfig(**GOOD, warmup_steps=3)
    with pytest.raises(ConfigError, match=r"warmup_steps \(3\) must be less than steps \(3\)"):
        TrainConfig(**{**GOOD, "steps": 3}, warmup_steps=3, schedule="warmup_cosine")
    with pytest.raises(ConfigError, match="Unknown dataset option 'source'; valid: path, data_dir, refresh"):
        TrainConfig(**{**GOOD, "dataset": "mnist"}, dataset_options={"source": "web"})
    with pytest.raises(ConfigError, match="must be less than the run's 8 steps") as error:
        TrainConfig(
            **{**GOOD, "steps": None, "epochs": 1}, batch_size=256, warmup_steps=8, schedule="warmup_cosine"
        ).check_buildable()
    assert error.value.field == "warmup_steps"
    config = TrainConfig(**GOOD, optimizer="adam", optimizer_options={"b1": 0.5}, model_options={"hidden": [8]})
    config.check_buildable()
    assert config.to_dict()["optimizer_options"] == {"b1": 0.5}


def test_read_config_file_errors_name_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("epochs: [1\n")
    with pytest.raises(ValueError, match=r"a\.yaml is not valid YAML: .* at line 2"):
        read_config_file(tmp_path / "a.yaml")
    with pytest.raises(ValueError, match=r"cannot read .*missing\.json: No such file or directory"):
        read_config_file(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="must be a mapping of config keys, got list"):
        TrainConfig.from_dict([("epochs", 1)])
