"""Reference solutions of the gradient flow ``θ'(t) = -∇f(θ(t))``, ``θ(0) = θ_0``.

:func:`gradient_flow` integrates the flow with one of flowopt's own Runge–Kutta
tableaus and returns it at requested times. Two modes:

- an embedded pair (``'dopri5'`` by default, ``'bosh3'``, ``'heun_euler'``):
  adaptive steps whose local error estimate ``‖Δθ - Δθ̂‖`` is kept below
  ``atol + rtol·|θ|`` (root-mean-square over all parameters) by a PI
  controller; every requested time is hit exactly;
- a fixed-step tableau (``'euler'``, alias ``'gd'``, ``'heun'``, ``'rk4'``,
  ...) with ``substeps`` equal steps between consecutive times. With
  ``'gd'``, ``times = η·k`` and ``substeps = r`` this is the practice of
  Elkabetz & Cohen (NeurIPS 2021): gradient descent with step ``η/r``,
  keeping every ``r``-th iterate; its error is ``O(η/r)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.core
import jax.numpy as jnp
import numpy as np
import optax

from flowopt.analysis._functions import as_partial
from flowopt.core.checks import INT32_MAX, check_callable, check_float_tree, check_integer, check_positive
from flowopt.core.oracle import resolve_oracle
from flowopt.core.trees import merge_complex, split_complex, tree_all_finite
from flowopt.core.types import GradFn, Params
from flowopt.rk import tableaus
from flowopt.rk.adaptive import adaptive_step, attempt_oracle_calls
from flowopt.rk.stages import explicit_runge_kutta, oracle_calls
from flowopt.rk.step_size import PIController, StepSizeState, scaled_error_norm
from flowopt.rk.tableau import ButcherTableau

_TABLEAUS = {tableau.name: tableau for tableau in tableaus.ALL} | {"gd": tableaus.EULER}
# (rtol, atol) by whether the parameters are float64.
_DEFAULT_TOLERANCES = {True: (1e-8, 1e-10), False: (1e-5, 1e-6)}


class FlowSolution(NamedTuple):
    """The flow at the requested times and what it cost.

    Attributes:
      times: ``(T,)`` the requested times.
      params: the flow ``θ(times[i])``: a pytree like ``θ_0`` with a leading
        axis of length ``T`` on every leaf.
      num_steps: accepted steps.
      num_rejected: rejected steps (adaptive mode).
      oracle_evals: gradient evaluations, all included.
      successful: whether the integration reached the last time within
        ``max_steps`` (and stayed finite).
    """

    times: jax.Array
    params: Params
    num_steps: jax.Array
    num_rejected: jax.Array
    oracle_evals: jax.Array
    successful: jax.Array


def gradient_flow(
    value_fn: Callable[[Params], jax.Array] | None,
    params0: Params,
    times: jax.Array,
    *,
    method: ButcherTableau | str = "dopri5",
    rtol: float | None = None,
    atol: float | None = None,
    substeps: int | None = None,
    initial_step: float | None = None,
    max_steps: int = 100_000,
    grad_fn: GradFn | None = None,
) -> FlowSolution:
    """Solve ``θ' = -∇f(θ)``, ``θ(0) = params0``, and return ``θ`` at ``times``.

    Accuracy (adaptive mode): each step's local error estimate is below
    ``atol + rtol·max(|θ_n|, |θ_{n+1}|)`` in root-mean-square over all
    parameters. On a contracting flow (convex ``f``) the local errors do
    not grow, and the global error at every requested time stays within
    a small multiple of that tolerance (the tests check ``≤ 10·tol``
    against the matrix exponential on quadratics and that the error falls
    with the tolerance); along directions of negative curvature ``μ`` local
    errors are amplified by up to ``exp(|μ| t)``, as for any integrator.
    Fixed-step mode has no error control: its error is ``O(h^p)`` with
    ``h`` the substep and ``p`` the tableau's order.

    Non-smooth losses (ReLU networks): crossing a kink costs a few rejected
    steps, but once the flow slides along a kink (a Filippov sliding mode,
    visible as gradient descent flipping an activation back and forth) no
    step meets the tolerance and the solver stops with ``max_steps``; use
    the fixed-step mode there, the reference Elkabetz & Cohen use.

    Args:
      value_fn: ``params -> scalar`` loss (or ``None`` with ``grad_fn``).
        A ``jax.tree_util.Partial`` is traced through, so calling again with
        other bound values reuses the compiled solver.
      params0: initial parameters, any pytree of floating arrays. Complex
        leaves follow optax's convention: the flow is the real gradient flow
        of ``f(x + iy)`` in ``(x, y)``, ``z' = -conj(jax.grad(f)(z))``.
      times: nondecreasing, nonnegative output times ``(T,)``.
      method: an embedded-pair tableau or name (adaptive), or a fixed-step
        tableau or name (``'gd'`` is ``'euler'``) used with ``substeps``.
      rtol, atol: relative and absolute local tolerances (adaptive mode);
        by default ``1e-8, 1e-10`` for float64 parameters and ``1e-5, 1e-6``
        for float32 (whose rounding, ``6e-8`` relative, rules out tighter).
      substeps: equal steps between consecutive output times (fixed mode).
      initial_step: first step of the adaptive mode; Hairer's starting-step
        heuristic (one extra gradient) by default.
      max_steps: bound on accepted plus rejected steps; when exceeded the
        solution is marked unsuccessful (a ``RuntimeError`` outside ``jit``,
        saying where the integration stopped and why). Under ``jit``, times
        that are not finite, nonnegative and nondecreasing also make the
        solution unsuccessful (concrete times are checked up front).
      grad_fn: ``params -> gradient``, instead of ``value_fn``.

    Returns:
      A :class:`FlowSolution`.
    """
    name = "gradient_flow"
    tableau = _resolve_method(method)
    if value_fn is None and grad_fn is None:
        raise ValueError("gradient_flow needs an oracle: pass value_fn (params -> scalar loss) or grad_fn= (params -> gradient).")
    if value_fn is not None and grad_fn is not None:
        raise ValueError("gradient_flow: pass either value_fn or grad_fn, not both.")
    if value_fn is not None:
        check_callable("value_fn", value_fn, where=name)
    else:
        check_callable("grad_fn", grad_fn, "a callable params -> gradient pytree", where=name)
    if params0 is None:
        raise ValueError("gradient_flow: params0 is None; pass the initial parameters (a pytree of floating arrays).")
    check_float_tree("params0", params0, where=name, nonempty=True)
    times_array = _check_times(times)
    adaptive = substeps is None
    if adaptive and not tableau.is_embedded:
        raise ValueError(
            f"gradient_flow: method {tableau.name!r} has no error estimate; pass substeps= for "
            "fixed steps, or use an embedded pair ('dopri5', 'bosh3', 'heun_euler')."
        )
    num_times = jnp.shape(times_array)[0]
    if not adaptive:
        check_integer("substeps", substeps, 1, INT32_MAX // max(num_times, 1), where=name, static_args=False)
    if initial_step is not None:
        check_positive("initial_step", initial_step, where=name)
    max_steps = check_integer("max_steps", max_steps, 1, INT32_MAX, where=name, static_args=False)

    real_dtype = jnp.finfo(jnp.result_type(*jax.tree.leaves(params0))).dtype  # complex64 -> float32
    args = (as_partial(value_fn), as_partial(grad_fn), params0, jnp.asarray(times_array, real_dtype))
    if adaptive:
        default_rtol, default_atol = _DEFAULT_TOLERANCES[real_dtype.itemsize >= 8]
        tolerances = {}
        for key, value, default in (("rtol", rtol, default_rtol), ("atol", atol, default_atol)):
            value = default if value is None else check_positive(key, value, where=name, traced=False)
            assert value is not None  # traced=False: a number or a ValueError
            if value > float(jnp.finfo(real_dtype).max) / 4:
                raise ValueError(f"gradient_flow: {key} = {value!r} is beyond the range of the parameters' {real_dtype}.")
            tolerances[key] = value
        first = jnp.asarray(-1.0 if initial_step is None else initial_step, real_dtype)
        controller = PIController(**tolerances)
        solution, final_time, start_finite = _adaptive_solve(
            *args, first, tableau=tableau, controller=controller, max_steps=max_steps
        )
    else:
        solution, final_time, start_finite = _fixed_solve(*args, jnp.asarray(substeps, jnp.int32), tableau=tableau)
    if not isinstance(solution.successful, jax.core.Tracer) and not bool(solution.successful):
        _report_failure(solution, float(final_time), bool(start_finite), float(times_array[-1]), max_steps, adaptive)
    return solution


def _report_failure(
    solution: FlowSolution, reached: float, start_finite: bool, end: float, max_steps: int, adaptive: bool
) -> None:
    attempts = int(solution.num_steps) + int(solution.num_rejected)
    counts = f"({int(solution.num_steps)} accepted, {int(solution.num_rejected)} rejected steps)"
    if not start_finite:
        raise ValueError(
            "gradient_flow: the gradient at params0 is not finite (value_fn or grad_fn returns NaN or inf there); "
            "nothing was integrated."
        )
    if not adaptive:
        raise RuntimeError(
            f"gradient_flow: the flow became non-finite by t = {reached:.6g} {counts}: the gradient overflows "
            "or is NaN along the way (the flow may blow up in finite time, or the substeps are too long to be stable)."
        )
    if attempts >= max_steps:
        raise RuntimeError(
            f"gradient_flow: did not reach t = {end:.6g} within max_steps = {max_steps}: stopped at "
            f"t = {reached:.6g} {counts}; raise max_steps or loosen rtol/atol."
        )
    raise RuntimeError(
        f"gradient_flow: the step size fell to rounding level at t = {reached:.6g} {counts}: the tolerance cannot "
        "be met (rtol/atol too tight for the dtype, or the loss is not smooth there) or the flow became non-finite; "
        "loosen rtol/atol or use fixed steps (substeps=)."
    )


def _resolve_method(method: ButcherTableau | str) -> ButcherTableau:
    if isinstance(method, ButcherTableau):
        return method
    if isinstance(method, str) and method.lower() in _TABLEAUS:
        return _TABLEAUS[method.lower()]
    raise ValueError(f"gradient_flow: method must be a flowopt.ButcherTableau or one of {sorted(_TABLEAUS)}, got {method!r}.")


def _check_times(times: jax.Array) -> np.ndarray | jax.Array:
    if isinstance(times, jax.core.Tracer):
        if times.ndim != 1 or jnp.issubdtype(times.dtype, jnp.complexfloating):
            raise ValueError(f"gradient_flow: times must be a real 1-D array, got a traced {times.dtype}{list(times.shape)}.")
        return times  # checked inside the solver: a bad traced grid makes the solution unsuccessful
    try:
        raw = np.asarray(times)
    except Exception:  # ragged lists and the like
        raw = np.asarray(times, dtype=object)
    if (
        raw.dtype == object
        or not (np.issubdtype(raw.dtype, np.floating) or np.issubdtype(raw.dtype, np.integer))
        or raw.dtype == np.bool_
    ):
        raise ValueError(f"gradient_flow: times must be a 1-D array of real numbers, got {times!r:.80}.")
    array = raw.astype(np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"gradient_flow: times must be a non-empty 1-D array, got shape {array.shape}.")
    if not np.all(np.isfinite(array)):
        raise ValueError(
            f"gradient_flow: times must be finite, got {array[~np.isfinite(array)][0]} at index "
            f"{int(np.flatnonzero(~np.isfinite(array))[0])}."
        )
    if array[0] < 0:
        raise ValueError(f"gradient_flow: times must be nonnegative (the flow starts at t = 0), got times[0] = {array[0]}.")
    if np.any(np.diff(array) < 0):
        i = int(np.flatnonzero(np.diff(array) < 0)[0])
        raise ValueError(
            f"gradient_flow: times must be nondecreasing, got times[{i}] = {array[i]} > times[{i + 1}] = {array[i + 1]}."
        )
    return array


def _times_valid(times: jax.Array) -> jax.Array:
    """In-graph version of the check above, for traced times."""
    return jnp.all(jnp.isfinite(times)) & (times[0] >= 0) & jnp.all(jnp.diff(times) >= 0)


def _real_oracle(value_fn, grad_fn, params0):
    """The checked oracle on real parameters: complex leaves become (real, imag) pairs.

    The oracle's gradient of a complex leaf follows optax's convention
    ``conj(jax.grad f) = ∂f/∂x + i ∂f/∂y``, so the flow of the pairs is the
    real gradient flow of ``f(x + iy)``.
    """
    oracle = resolve_oracle("gradient_flow", params0, value_fn, grad_fn)
    assert oracle is not None  # required (the default): resolve_oracle raises rather than return None
    real0 = split_complex(params0)
    return (lambda p: split_complex(oracle(merge_complex(params0, p)))), real0


def _initial_step(oracle: GradFn, params: Params, k1: Params, order: int, rtol, atol) -> jax.Array:
    """Hairer, Nørsett & Wanner, *Solving ODEs I*, §II.4: a first step from two gradients."""

    def norm(tree: Params) -> jax.Array:  # RMS of tree / (atol + rtol·|θ|)
        return scaled_error_norm(tree, params, params, rtol, atol)

    d0, d1 = norm(params), norm(k1)
    h0 = jnp.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / d1)
    probe = jax.tree.map(lambda y, k: y - h0 * k, params, k1)
    d2 = norm(jax.tree.map(jnp.subtract, oracle(probe), k1)) / h0
    largest = jnp.maximum(d1, d2)
    h1 = jnp.where(largest <= 1e-15, jnp.maximum(1e-6, 1e-3 * h0), (0.01 / largest) ** (1.0 / (order + 1)))
    return jnp.minimum(100.0 * h0, h1)


class _Carry(NamedTuple):
    params: Params
    k1: Params
    time: jax.Array
    controller: StepSizeState
    num_steps: jax.Array
    num_rejected: jax.Array
    oracle_evals: jax.Array


@functools.partial(jax.jit, static_argnames=("tableau", "controller", "max_steps"))
def _adaptive_solve(value_fn, grad_fn, complex_params0, times, initial_step, *, tableau, controller, max_steps):
    oracle, params0 = _real_oracle(value_fn, grad_fn, complex_params0)
    # With a deterministic oracle the last stage of an FSAL pair is the next k1.
    reuse_last = tableau.fsal
    calls_per_attempt = attempt_oracle_calls(tableau) + (0 if reuse_last else 1)
    k1 = oracle(params0)
    guess = _initial_step(oracle, params0, k1, tableau.order, controller.rtol, controller.atol)
    step = jnp.where(initial_step > 0, initial_step, guess)
    evals = jnp.where(initial_step > 0, 1, 2).astype(jnp.int32)
    # A step this small relative to the horizon means the error cannot be controlled (or θ is not finite).
    smallest_step = 100.0 * jnp.finfo(times.dtype).eps * jnp.maximum(times[-1], 1.0)

    def attempt(carry: _Carry, end: jax.Array) -> _Carry:
        proposed = carry.controller.step_size
        clipped = proposed >= end - carry.time
        state = carry.controller._replace(step_size=jnp.minimum(proposed, end - carry.time))
        result = adaptive_step(tableau, controller, oracle, carry.params, carry.k1, state)
        accept = result.accepted
        new = jax.tree.map(jnp.add, carry.params, result.increment)
        new_k1 = result.last_gradient if reuse_last else oracle(new)
        # Landing on an output time shortens a step; do not let that shorten the next one.
        next_step = jnp.where(accept & clipped, jnp.maximum(proposed, result.state.step_size), result.state.step_size)
        return _Carry(
            params=new,
            k1=optax.tree.where(accept, new_k1, carry.k1),
            time=jnp.where(accept, jnp.where(clipped, end, carry.time + result.step_size), carry.time),
            controller=result.state._replace(step_size=next_step),
            num_steps=carry.num_steps + accept.astype(jnp.int32),
            num_rejected=carry.num_rejected + (~accept).astype(jnp.int32),
            oracle_evals=carry.oracle_evals + calls_per_attempt,
        )

    def interval(carry: _Carry, end: jax.Array):
        def running(c: _Carry) -> jax.Array:
            budget_left = c.num_steps + c.num_rejected < max_steps
            return (c.time < end) & budget_left & (c.controller.step_size > smallest_step)

        carry = jax.lax.while_loop(running, lambda c: attempt(c, end), carry)
        return carry, carry.params

    zero = jnp.zeros((), jnp.int32)
    init = _Carry(params0, k1, jnp.zeros((), times.dtype), controller.init(step, times.dtype), zero, zero, evals)
    final, trajectory = jax.lax.scan(interval, init, times)
    successful = (final.time >= times[-1]) & tree_all_finite(final.params) & _times_valid(times)
    solution = FlowSolution(
        times,
        merge_complex(complex_params0, trajectory),
        final.num_steps,
        final.num_rejected,
        final.oracle_evals,
        successful,
    )
    return solution, final.time, tree_all_finite(k1)


@functools.partial(jax.jit, static_argnames=("tableau",))
def _fixed_solve(value_fn, grad_fn, complex_params0, times, substeps, *, tableau):
    oracle, params0 = _real_oracle(value_fn, grad_fn, complex_params0)
    integrator = explicit_runge_kutta(tableau)

    def step(h: jax.Array, params: Params) -> Params:
        increment, _, _ = integrator.step(oracle, params, oracle(params), h, ())
        return jax.tree.map(jnp.add, params, increment)

    calls_per_step = 1 + oracle_calls(tableau, (tableau.b,))

    def interval(carry, end):
        params, start, num_steps = carry
        steps = jnp.where(end > start, substeps, 0)  # nothing to do between equal times
        h = (end - start) / substeps
        params = jax.lax.fori_loop(0, steps, lambda _, p: step(h, p), params)
        return (params, end, num_steps + steps), params

    zero = jnp.zeros((), jnp.int32)
    (final, _, num_steps), trajectory = jax.lax.scan(interval, (params0, jnp.zeros((), times.dtype), zero), times)
    finite_at = jnp.all(
        jnp.stack([jnp.all(jnp.isfinite(leaf).reshape(times.shape[0], -1), axis=1) for leaf in jax.tree.leaves(trajectory)]),
        axis=0,
    )
    finite = jnp.all(finite_at)
    reached = times[jnp.argmin(finite_at)]  # the first output time with a non-finite value
    solution = FlowSolution(
        times,
        merge_complex(complex_params0, trajectory),
        num_steps,
        zero,
        num_steps * calls_per_step,
        finite & _times_valid(times),
    )
    return solution, reached, tree_all_finite(oracle(params0))
