"""Explicit Runge–Kutta stages, and the fixed-step integrator of the gradient flow built from them.

For a vector field ``y' = F(t, y)`` on a pytree ``y`` the stages of a tableau
are ``k_i = F(t + c_i h, y + h Σ_j a_ij k_j)`` and the step is
``y + h Σ_i b_i k_i`` (Butcher 1963; Hairer, Nørsett & Wanner, *Solving ODEs
I*, §II.1). :func:`stage_slopes` evaluates them for any field: the gradient
flow here, the extended systems of :mod:`flowopt.flows.family` there.

The gradient flow ``θ' = -∇f(θ)`` is the flow of ``+∇f`` run with the step
``-h``: with ``k_i = ∇f(θ_n - h Σ_j a_ij k_j)`` the step is
``θ_{n+1} = θ_n - h Σ_i b_i k_i``, every stage descends, and ``k_1`` is the
gradient ``update`` receives. Stages whose slope no weight uses (the FSAL
stage of an embedded pair run at a fixed step) are not evaluated.

**Memory.** :func:`stage_sum` adds each ``k_i`` to the running sums
``Σ_j b_j k_j`` as the stages are produced, so a stage gradient is dropped as
soon as no later stage point reads it: an RK4 step holds ``θ``, one running
sum and one stage instead of all four (see :func:`sum_schedule`,
:func:`live_buffers` and ``docs/performance.md``). :func:`stage_slopes` keeps
every stage, for callers that need them all (the stiffness estimate of the
adaptive pairs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flowopt.core.integrator import Integrator
from flowopt.core.trees import linear_combination
from flowopt.core.types import GradFn, Params
from flowopt.rk.tableau import ButcherTableau

Field = Callable[[Any, Any], Any]
"""A vector field ``(t, y) -> y'`` over pytrees (``t`` is ``None`` for an autonomous flow)."""


def needed_stages(tableau: ButcherTableau, weights: Sequence[np.ndarray]) -> tuple[bool, ...]:
    """Which stages contribute to any of ``weights``, directly or through later stages."""
    needed = np.zeros(tableau.num_stages, dtype=bool)
    for w in weights:
        needed |= np.asarray(w) != 0
    for i in reversed(range(tableau.num_stages)):
        if needed[i]:
            needed[:i] |= tableau.a[i, :i] != 0
    needed[0] = True
    return tuple(bool(x) for x in needed)


def stage_slopes(
    tableau: ButcherTableau,
    field: Field,
    y0: Any,
    k1: Any,
    h: jax.Array,
    weights: Sequence[np.ndarray],
    t0: jax.Array | None = None,
) -> list[Any]:
    """The slopes ``k_i = field(t0 + c_i h, y0 + h Σ_j a_ij k_j)`` that ``weights`` need (``None`` for the others).

    ``k1`` is the first slope, already known; every other needed stage calls
    ``field`` once. With ``t0 = None`` the field is called with ``t = None``.
    """
    needed = needed_stages(tableau, weights)
    ks: list[Any] = [k1]
    for i in range(1, tableau.num_stages):
        if not needed[i]:
            ks.append(None)
            continue
        ks.append(_stage(tableau, i, field, y0, ks, h, t0))
    return ks


def _stage(
    tableau: ButcherTableau, i: int, field: Field, y0: Any, ks: list[Any], h: jax.Array, t0: jax.Array | None, wait: Any = None
) -> Any:
    """``k_i = field(t0 + c_i h, y0 + h Σ_j a_ij k_j)``, its point formed only once ``wait`` exists (:func:`after`)."""
    point = jax.tree.map(jnp.add, y0, linear_combination(tableau.a[i, :i], ks, h))
    point = point if wait is None else after(point, wait)
    time = None if t0 is None else t0 + jnp.asarray(tableau.c[i], t0.dtype) * h
    return field(time, point)


def _readers(tableau: ButcherTableau, needed: Sequence[bool]) -> list[list[int]]:
    """For each stage ``j``, the evaluated stages ``m > j`` whose points read ``k_j`` (``a_mj ≠ 0``)."""
    s = tableau.num_stages
    return [[m for m in range(j + 1, s) if needed[m] and tableau.a[m, j] != 0] for j in range(s)]


def live_buffers(tableau: ButcherTableau, b: np.ndarray, flush: Sequence[bool]) -> int:
    """Parameter-sized buffers that :func:`stage_sum` holds at its peak, with flush points ``flush``.

    The model counts whole trees: ``θ``; every stage ``k_j`` not yet added
    to the running sum or read by a later stage point; the sum once it is
    formed; and the stage point being formed. A stage point and its gradient
    count as one buffer (the forward pass reads the point's layers, the
    backward pass writes the gradient's, mostly after the last read), a
    combination writes over an input that dies at it when there is one, and
    the step writes over ``θ`` (a donated training step). SGD and Euler
    hold 2, Heun 3, RK4 3 (the running sum, ``θ`` and one stage).
    """
    needed = needed_stages(tableau, (b,))
    readers = _readers(tableau, needed)
    live, terms, formed = {0}, [], False  # stages held; stages not yet in the sum; whether the sum exists
    peak = 2
    for i in (i for i in range(tableau.num_stages) if needed[i]):
        if i > 0:
            dying = {j for j in live if j not in terms and not any(m > i for m in readers[j])}
            reuses = any(tableau.a[i, j] != 0 for j in dying)  # the point is written over a stage it reads last
            peak = max(peak, 1 + len(live) + formed + (not reuses))
            live = (live - dying) | {i}
            peak = max(peak, 1 + len(live) + formed)
        terms += [i] if b[i] != 0 else []
        if flush[i] and len(terms) + formed >= 2:
            dying = {j for j in terms if not any(m > i for m in readers[j])}
            peak = max(peak, 1 + len(live) + formed + (not (formed or dying)))
            live, terms, formed = live - dying, [], True
    return peak


def sum_schedule(tableau: ButcherTableau, b: np.ndarray) -> tuple[bool, ...]:
    """The stages after which :func:`stage_sum` adds the stages produced so far to its running sum.

    Chosen greedily, stage by stage, in the model of :func:`live_buffers`:
    a stage is a flush point when adding there holds no more buffers at the
    peak than not adding. RK4 adds after its second and third stages and
    then holds one stage at a time; Dopri5 never adds early, since its sixth
    stage point reads all five stages before it anyway and a sum beside them
    would be one buffer more.
    """
    evaluated = [i for i, needed in enumerate(needed_stages(tableau, (b,))) if needed]
    flush = [False] * tableau.num_stages
    for i in evaluated[:-1]:  # after the last stage the sum becomes the step
        trial = flush[:i] + [True] + flush[i + 1 :]
        if live_buffers(tableau, b, trial) <= live_buffers(tableau, b, flush):
            flush = trial
    return tuple(flush)


class _RunningSum:
    """``Σ_j b_j k_j`` over the stages added so far, as terms of :func:`~flowopt.core.trees.linear_combination`.

    :meth:`flush` replaces the terms by their sum, a term ``(1, sum)`` that
    the next flush or :meth:`total` adds without a multiplication. The
    additions are then those of ``linear_combination`` over all terms at
    once, in the same order, and the result is bitwise the same.
    """

    def __init__(self, b: np.ndarray) -> None:
        self.b = b
        self.terms: list[tuple[Any, Any]] = []

    def add(self, i: int, k: Any) -> None:
        """Take ``b_i k_i`` as a term (nothing for ``b_i = 0``)."""
        if self.b[i] != 0:
            self.terms.append((self.b[i], k))

    def flush(self) -> Any:
        """Sum the terms into one; the sum, or ``None`` where there was at most one term (left as it is)."""
        if len(self.terms) < 2:
            return None
        weights, trees = zip(*self.terms)
        total = linear_combination(weights, trees)
        self.terms = [(1.0, total)]
        return total

    def total(self, scale: Any) -> Any:
        """``scale · Σ_j b_j k_j``."""
        weights, trees = zip(*self.terms)
        return linear_combination(weights, trees, scale)


def after(tree: Any, dependency: Any) -> Any:
    """``tree``, in a form that XLA computes only once ``dependency`` (a tree of the same structure) exists.

    Each leaf ``x`` becomes ``x · (1 + 0 · d)``, with ``d`` the first element
    of the matching leaf of ``dependency``: ``x`` itself for a finite ``d``,
    NaN for a non-finite one (an empty leaf has nothing to wait for). Reading one element makes ``dependency`` a
    buffer of its own that must be complete before ``tree`` is used. An
    ``optimization_barrier`` would say the same, but the CPU backend removes
    barriers before fusion; without the dependency XLA fuses the chain of
    running sums into one loop after the last stage, which reads every stage
    there and keeps all of them live (RK4 on an MLP: 5.2 parameter-sized
    buffers instead of 3.2, measured with ``memory_analysis``).
    """

    def wait(x: jax.Array, d: jax.Array) -> jax.Array:
        return x * (1 + 0 * d.ravel()[0]).astype(x.dtype) if d.size else x

    return jax.tree.map(wait, tree, dependency)


def stage_sum(
    tableau: ButcherTableau,
    field: Field,
    y0: Any,
    k1: Any,
    h: jax.Array,
    b: np.ndarray,
    t0: jax.Array | None = None,
) -> Any:
    """``h Σ_i b_i k_i`` over the stages of :func:`stage_slopes`, summed while they are produced.

    The result equals ``linear_combination(b, stage_slopes(...), h)``
    bitwise (up to XLA's choice of fused multiply-adds), but the stages are
    added to a running sum at the flush points of :func:`sum_schedule`, after
    which a stage stays live only while a later stage point reads it. The
    next stage point depends on each newly formed sum (:func:`after`), so
    that XLA forms the sum there and not after the last stage.
    """
    b = np.asarray(b)
    flush = sum_schedule(tableau, b)
    needed = needed_stages(tableau, (b,))
    running = _RunningSum(b)
    ks: list[Any] = [k1]
    formed = None
    for i in range(tableau.num_stages):
        if i > 0 and not needed[i]:
            ks.append(None)
            continue
        if i > 0:
            ks.append(_stage(tableau, i, field, y0, ks, h, t0, wait=formed))
        running.add(i, ks[i])
        formed = running.flush() if flush[i] else None
    return running.total(h)


def _gradient_field(oracle: GradFn | None) -> Field:
    """The field ``(t, θ) -> ∇f(θ)`` of ``oracle`` (``None`` when no stage beyond the first calls it)."""

    def gradient(_: Any, point: Params) -> Params:
        assert oracle is not None  # only a stage beyond the first calls it, and a method with one is given an oracle
        return oracle(point)

    return gradient


def gradient_stages(
    tableau: ButcherTableau,
    oracle: GradFn | None,
    params: Params,
    k1: Params,
    h: jax.Array,
    weights: Sequence[np.ndarray],
) -> list[Params | None]:
    """The stage gradients ``k_i = ∇f(θ - h Σ_j a_ij k_j)`` of the gradient flow that ``weights`` need.

    ``oracle`` may be ``None`` when ``weights`` need no stage beyond the first.
    """

    return stage_slopes(tableau, _gradient_field(oracle), params, k1, -h, weights)


def oracle_calls(tableau: ButcherTableau, weights: Sequence[np.ndarray]) -> int:
    """Oracle calls per step: the needed stages beyond the first."""
    return sum(needed_stages(tableau, weights)) - 1


def explicit_runge_kutta(tableau: ButcherTableau) -> Integrator:
    """The fixed-step explicit Runge–Kutta integrator of ``tableau`` for the gradient flow (no stage state)."""
    weights = (tableau.b,)
    calls = oracle_calls(tableau, weights)

    def step(oracle: GradFn | None, params: Params, k1: Params, h: jax.Array | None, state: tuple):
        assert h is not None  # the step of the learning-rate schedule (as_optimizer passes it)
        increment = stage_sum(tableau, _gradient_field(oracle), params, k1, -h, tableau.b)
        return increment, state, calls

    return Integrator(name=tableau.name, init=lambda params: (), step=step, needs_oracle=calls > 0)
