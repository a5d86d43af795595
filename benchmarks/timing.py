"""Compiled training steps and interleaved, min-of-repeats timing.

Every ratio in the benchmark divides two times measured in the same process,
with the two sides run in alternating blocks, so that load from other
processes hits both; the minimum over repeats is the estimate (noise only
ever adds time) and the median is kept to show the noise.

On the CPU backend the clock is the process's CPU time (all its threads), not
wall time: on a shared machine another process's load stretches wall time
but not the CPU time the step itself consumed. On an accelerator the host's
CPU time says nothing about the device, so the clock is wall time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from benchmarks.problems import Problem


def train_step(tx: optax.GradientTransformation, loss: Callable) -> Callable:
    """``(params, opt_state, batch) -> (params, opt_state, loss)``: gradient, update, apply.

    The oracle is the loss on the same batch, as in a training loop.
    """

    def step(params, opt_state, batch):
        value, grads = jax.value_and_grad(loss)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params, value_fn=lambda p: loss(p, batch))
        return optax.apply_updates(params, updates), opt_state, value

    return step


class CompiledStep(NamedTuple):
    """A compiled training step and what compiling it told us."""

    call: Callable
    compile_seconds: float
    memory: Any  # jax's CompiledMemoryStats, or None where the backend has none
    cost: dict


def compile_step(step: Callable, *args: Any, donate: tuple[int, ...] = (0, 1)) -> CompiledStep:
    """Lower and compile ``jax.jit(step)`` for ``args``; time the compilation."""
    start = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=donate).lower(*args).compile()
    seconds = time.perf_counter() - start
    try:
        memory = compiled.memory_analysis()
    except Exception:  # backends without memory statistics
        memory = None
    try:
        cost = compiled.cost_analysis() or {}
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    except Exception:
        cost = {}
    return CompiledStep(compiled, seconds, memory, dict(cost))


def clock() -> Callable[[], float]:
    """The clock of every measurement: process CPU time on the CPU backend, wall time elsewhere."""
    return time.process_time if jax.default_backend() == "cpu" else time.perf_counter


def timed(fn: Callable, *args: Any) -> Callable[[int], float]:
    """``n -> seconds per call`` of ``fn(*args)`` called ``n`` times (for :func:`interleaved`)."""

    def run(n: int) -> float:
        now = clock()
        start = now()
        for _ in range(n):
            out = fn(*args)
        jax.block_until_ready(out)
        return (now() - start) / n

    return run


class StepRunner:
    """Runs a compiled training step ``n`` times on donated buffers and returns the time per step."""

    def __init__(self, tx: optax.GradientTransformation, problem: Problem, compiled: CompiledStep | None = None):
        self.params = jax.tree.map(jnp.copy, problem.params)
        # Distinct buffers: a state may hold one array in several fields, and donation needs each once.
        self.state = jax.tree.map(jnp.copy, tx.init(self.params))
        self.batch = problem.batch
        self.compiled = compiled or compile_step(train_step(tx, problem.loss), self.params, self.state, self.batch)
        self.value = None
        self.steps = 0

    def __call__(self, n: int) -> float:
        call, now = self.compiled.call, clock()
        start = now()
        for _ in range(n):
            self.params, self.state, self.value = call(self.params, self.state, self.batch)
        jax.block_until_ready((self.params, self.value))
        self.steps += n
        return (now() - start) / n


class Timing(NamedTuple):
    """Seconds per call: the minimum and the median over repeats."""

    best: float
    median: float


def interleaved(runners: dict[str, Callable[[int], float]], repeats: int, block_seconds: float) -> dict[str, Timing]:
    """Time each runner in alternating blocks of about ``block_seconds``; ``repeats`` blocks each.

    The order of the runners is rotated every round. Each runner is first
    warmed up, then its block length is calibrated on a run long enough
    (a tenth of a block) that the synchronisation ending it is amortised.
    """
    counts = {name: _steps_per_block(run, block_seconds) for name, run in runners.items()}
    samples: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            samples[name].append(runners[name](counts[name]))
    return {name: Timing(min(s), statistics.median(s)) for name, s in samples.items()}


def _steps_per_block(run: Callable[[int], float], block_seconds: float) -> int:
    """Steps that fill ``block_seconds``, from growing runs until one lasts a tenth of a block."""
    run(1)
    steps = 1
    while True:
        per_step = run(steps)
        if per_step * steps >= block_seconds / 10 or steps >= 2**20:
            return max(1, int(block_seconds / max(per_step, 1e-9)))
        steps *= 4
