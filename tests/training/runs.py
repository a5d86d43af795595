"""Small training runs shared by the training and fault-injection suites: a tiny dataset and run, command lines, a kill."""

import json

import pytest

from flowopt.training import data, loop

# Logistic regression on tiny_dataset: 8 steps an epoch (TrainConfig fields, a budget to add).
TINY_LOGISTIC = dict(
    model="logistic_regression",
    dataset="synthetic_mnist",
    batch_size=32,
    eval_batch_size=50,
    learning_rate=0.05,
    progress=False,
)


def tiny_dataset() -> data.Dataset:
    """256 training and 70 test images of synthetic MNIST at 8×8: a run over it takes a few seconds."""
    return data.synthetic_dataset("synthetic_mnist", num_train=256, num_test=70, image_shape=(8, 8, 1))


def train_argv(output, *flags: str) -> list[str]:
    """``flowopt-train`` arguments: logistic regression on synthetic MNIST with ``flags``, no progress bar, into ``output``."""
    return ["--model", "logistic_regression", "--dataset", "synthetic_mnist", *flags, "--no-progress", "--output", str(output)]


def kill_after_steps(steps, config, output, dataset, monkeypatch) -> list[dict]:
    """Train until the step after ``steps`` raises; return the metrics rows left on disk."""
    make_step = loop.make_train_step

    def killed(*args, **kwargs):
        step = make_step(*args, **kwargs)
        calls = []

        def counting(*a):
            calls.append(None)
            if len(calls) > steps:
                raise KeyboardInterrupt("killed")
            return step(*a)

        return counting

    monkeypatch.setattr(loop, "make_train_step", killed)
    with pytest.raises(KeyboardInterrupt):
        loop.train(config, output, dataset=dataset)
    monkeypatch.setattr(loop, "make_train_step", make_step)
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
