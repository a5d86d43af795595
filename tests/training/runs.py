"""Small training runs shared by the training and fault-injection suites: a tiny dataset, ``flowopt-train`` command lines."""

from flowopt.training import data


def tiny_dataset() -> data.Dataset:
    """256 training and 70 test images of synthetic MNIST at 8×8: a run over it takes a few seconds."""
    return data.synthetic_dataset("synthetic_mnist", num_train=256, num_test=70, image_shape=(8, 8, 1))


def train_argv(output, *flags: str) -> list[str]:
    """``flowopt-train`` arguments: logistic regression on synthetic MNIST with ``flags``, no progress bar, into ``output``."""
    return ["--model", "logistic_regression", "--dataset", "synthetic_mnist", *flags, "--no-progress", "--output", str(output)]
