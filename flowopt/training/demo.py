"""A short demo: SGD, Heun and RK4 on MNIST at equal numbers of gradient evaluations.

Trains the same MLP (784-256-256-10) with each method for the same budget of
gradient evaluations (an s-stage step costs s) and prints the test loss each
method has reached at about every eighth of the budget, then the test accuracy.
The rows are multiples of the evaluations of one step of every method (4), so
each cell is the loss after exactly its row's number of evaluations; a budget
that is not such a multiple is rounded down, and one below it is refused.
MNIST is read through tensorflow-datasets by :func:`flowopt.training.load_dataset`,
which prepares it offline on first use; ``--dataset synthetic_mnist`` runs
without any data.

    flowopt-demo [--budget 2400] [--learning-rate 0.1] [--dataset mnist]
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from flowopt.training.cli import OneLineParser
from flowopt.training.data import DATASET_NAMES, DataUnavailableError, load_dataset
from flowopt.training.models import create_model
from flowopt.training.optimizers import gradients_per_step, make_optimizer

_COMPARED = {"SGD (Euler)": "sgd", "Heun": "heun", "RK4": "rk4"}  # column label: optimizer name

METHODS: dict[str, tuple[Callable[[float], optax.GradientTransformationExtraArgs], int]] = {
    label: (functools.partial(make_optimizer, name), gradients_per_step(name)) for label, name in _COMPARED.items()
}
"""Each column's ``(learning_rate -> optimizer, gradient evaluations per step)``, from :mod:`flowopt.registry`."""


def _load(name: str):
    try:
        data = load_dataset(name)
    except DataUnavailableError as error:
        print(f"{error}\nFalling back to the synthetic stand-in (not MNIST).")
        data = load_dataset("synthetic_mnist")
    scale = lambda x: jnp.asarray(x, jnp.float32) / 255.0
    return data.label, scale(data.x_train), jnp.asarray(data.y_train), scale(data.x_test), jnp.asarray(data.y_test)


MAX_BUDGET = 10_000_000
MAX_BATCH_SIZE = 65_536
# Evaluations after which every method has taken a whole number of steps.
COMMON_STEP = math.lcm(*(evals_per_step for _, evals_per_step in METHODS.values()))


def check_settings(dataset: str, budget: int, learning_rate: float, batch_size: int, seed: int) -> None:
    """Raise ``ValueError`` naming the flag of the first bad setting."""
    if dataset not in DATASET_NAMES:
        raise ValueError(f"argument --dataset: unknown dataset {dataset!r}; valid: {', '.join(DATASET_NAMES)}")
    for flag, value, low, high in (
        ("--budget", budget, 1, MAX_BUDGET),
        ("--batch-size", batch_size, 1, MAX_BATCH_SIZE),
        ("--seed", seed, 0, 2**32 - 1),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
            raise ValueError(f"argument {flag}: must be an integer in [{low}, {high}], got {value!r}")
    if budget < COMMON_STEP:
        costliest = max(METHODS, key=lambda name: METHODS[name][1])
        raise ValueError(
            f"argument --budget: must be at least {COMMON_STEP} gradient evaluations, one step of "
            f"every method ({costliest} takes {METHODS[costliest][1]} a step), got {budget}"
        )
    if (
        isinstance(learning_rate, bool)
        or not isinstance(learning_rate, (int, float))
        or not math.isfinite(learning_rate)
        or learning_rate <= 0
    ):
        raise ValueError(f"argument --learning-rate: must be a finite positive number, got {learning_rate!r}")


def table_rows(budget: int) -> list[int]:
    """Distinct evaluation counts of the table: each eighth of ``budget`` rounded down to a multiple of COMMON_STEP."""
    return sorted({budget * i // 8 // COMMON_STEP * COMMON_STEP for i in range(9)})


def run(dataset: str, budget: int, learning_rate: float, batch_size: int, seed: int):
    """Test loss of each method at each of :func:`table_rows`, and the final test accuracy.

    Returns ``(label, rows, curves, accuracy, spent)``: ``curves[name][i]`` is the
    test loss after ``spent[name][i]`` gradient evaluations, which is ``rows[i]``.

    Raises:
      ValueError: for a bad setting, naming its command-line flag.
    """
    check_settings(dataset, budget, learning_rate, batch_size, seed)
    label, x_train, y_train, x_test, y_test = _load(dataset)
    graphdef, params0 = nnx.split(create_model("mlp", input_shape=x_train.shape[1:], num_classes=10, seed=seed))

    def loss(params, x, y):
        logits = nnx.merge(graphdef, params, copy=True)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def test_metrics(params):
        logits = nnx.merge(graphdef, params, copy=True)(x_test)
        xent = optax.softmax_cross_entropy_with_integer_labels(logits, y_test).mean()
        return xent, jnp.mean(jnp.argmax(logits, -1) == y_test)

    rows = table_rows(budget)
    curves, accuracy, spent = {}, {}, {}
    for name, (make, evals_per_step) in METHODS.items():
        tx = make(learning_rate)

        @jax.jit
        def step(params, state, xb, yb):
            grads = jax.grad(loss)(params, xb, yb)
            updates, state = tx.update(grads, state, params, value_fn=lambda p: loss(p, xb, yb))
            return optax.apply_updates(params, updates), state

        params, state = params0, tx.init(params0)
        rng = np.random.default_rng(seed)
        curve, counts, evals = [], [], 0
        for target in rows:
            while evals + evals_per_step <= target:
                idx = rng.integers(0, x_train.shape[0], batch_size)
                params, state = step(params, state, x_train[idx], y_train[idx])
                evals += evals_per_step
            test_loss, test_accuracy = test_metrics(params)
            curve.append(float(test_loss))
            counts.append(evals)
        curves[name], spent[name] = curve, counts
        accuracy[name] = float(test_accuracy)
    return label, rows, curves, accuracy, spent


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="flowopt-demo", description="Compare SGD, Heun and RK4 at equal gradient evaluations.")
    parser.add_argument("--dataset", default="mnist", help=f"one of {', '.join(DATASET_NAMES)}")
    parser.add_argument("--budget", type=int, default=2400, help="gradient evaluations per method")
    parser.add_argument("--learning-rate", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        check_settings(args.dataset, args.budget, args.learning_rate, args.batch_size, args.seed)
    except ValueError as error:
        parser.error(str(error))
    start = time.perf_counter()
    label, rows, curves, accuracy, _ = run(args.dataset, args.budget, args.learning_rate, args.batch_size, args.seed)
    names = list(METHODS)
    print(f"\nTest loss on {label}, MLP 784-256-256-10, batch {args.batch_size}, lr {args.learning_rate}")
    if rows[-1] != args.budget:
        print(
            f"(budget {args.budget} rounded down to {rows[-1]}: every row is a whole number of steps of each "
            f"method, a multiple of {COMMON_STEP} evaluations)"
        )
    print("| gradient evaluations | " + " | ".join(names) + " |")
    print("|---:|" + "---:|" * len(names))
    for i, count in enumerate(rows):
        print(f"| {count} | " + " | ".join(f"{curves[n][i]:.4f}" for n in names) + " |")
    print("| test accuracy | " + " | ".join(f"{100 * accuracy[n]:.2f}%" for n in names) + " |")
    print(f"({time.perf_counter() - start:.1f} s on {jax.devices()[0].platform})")


if __name__ == "__main__":
    main()
