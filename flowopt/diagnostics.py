"""Per-step numbers to log from an optimizer state: :func:`step_diagnostics`."""

from __future__ import annotations

from typing import Any

import jax
import optax

from flowopt.core.integrator import IntegratorState, oracle_evaluations
from flowopt.guard import GuardState, guard_counts


def _reports(node: Any) -> bool:
    """Whether ``node`` is a guard's state or an integrator state whose method has diagnostics."""
    return isinstance(node, GuardState) or (isinstance(node, IntegratorState) and hasattr(node.stage_state, "diagnostics"))


def _found(opt_state: optax.OptState) -> tuple[list[IntegratorState], bool]:
    """The integrator states in ``opt_state`` whose methods report, and whether it holds a guard."""
    nodes = jax.tree.leaves(opt_state, is_leaf=_reports)
    methods = [x for x in nodes if isinstance(x, IntegratorState) and _reports(x)]
    return methods, any(isinstance(x, GuardState) for x in nodes)


def reports_diagnostics(opt_state: optax.OptState) -> bool:
    """Whether :func:`step_diagnostics` has numbers for ``opt_state``: a guard, or exactly one method that reports."""
    methods, guarded = _found(opt_state)
    return len(methods) == 1 or (guarded and not methods)


def step_diagnostics(opt_state: optax.OptState) -> dict[str, jax.Array]:
    """Per-step numbers to log from a state holding one method that reports them and/or guards.

    Keys: ``oracle_evals`` (all oracle calls in the state) always; with a
    method that reports, ``gradient_evals`` (incoming gradients plus oracle
    calls) and the method's own:

    - adaptive Runge–Kutta (:func:`~flowopt.adaptive_runge_kutta`,
      :func:`~flowopt.minibatch_adaptive_runge_kutta`): ``step_size`` (next), ``last_step_size``, ``error``,
      ``stiffness``, ``accepted``, ``rejected``, ``nonfinite``, ``time``
      (flow time covered);
    - :func:`~flowopt.rkc_auto`: ``sharpness`` (the estimate of
      ``λ_max``), ``stages`` and ``step_size`` of the last step,
      ``estimates``, ``hvp_evals`` (each counted as two gradients in
      ``oracle_evals``), ``capped`` (steps shortened for want of stages);

    with a guard ``nonfinite_gradients`` and ``nonfinite_steps``. Values are
    arrays (usable under ``jit``); ``{k: float(v) for k, v in d.items()}`` to log.

    Raises:
      ValueError: if the state holds no such method or guard, or several such methods.
    """
    methods, guarded = _found(opt_state)
    if not methods and not guarded:
        raise ValueError("step_diagnostics: opt_state holds no flowopt adaptive, rkc_auto or guard state.")
    if len(methods) > 1:
        raise ValueError(f"step_diagnostics: opt_state holds {len(methods)} states that report diagnostics; pass each sub-state.")
    diagnostics = {"oracle_evals": oracle_evaluations(opt_state)}
    if methods:
        (outer,) = methods
        diagnostics.update(outer.stage_state.diagnostics(), gradient_evals=outer.count + diagnostics["oracle_evals"])
    if guarded:
        diagnostics.update(guard_counts(opt_state))
    return diagnostics
