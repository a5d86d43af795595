"""The edge-of-stability threshold of an optimizer, and the preconditioner its sharpness is measured through.

On a quadratic of curvature ``λ`` a method with step size ``η`` is stable
while ``λ`` stays below a threshold; trained networks drive their sharpness up
to it ("edge of stability"):

==============================  =============================================  ==========================
method                          sharpness                                      threshold
==============================  =============================================  ==========================
gradient descent (``sgd``)      ``λ_max(H)``                                   ``2/η``
heavy ball (``momentum`` β)     ``λ_max(H)``                                   ``(2 + 2β)/η``
Nesterov (``nesterov`` β)       ``λ_max(H)``                                   ``(2 + 2β)/((1 + 2β)η)``
``adam``, ``adam_flow``         ``λ_max(D^{-1/2} H D^{-1/2})``                 ``(2 + 2β₁)/((1 - β₁)η)``
``rmsprop``, ``rmsprop_flow``   ``λ_max(D^{-1/2} H D^{-1/2})``                 ``2/η``
any other method                ``λ_max(H)``                                   ``2/η`` (a reference only)
==============================  =============================================  ==========================

Cohen, Kaur, Li, Kolter & Talwalkar (ICLR 2021) for gradient descent and heavy
ball; Cohen et al., *Adaptive gradient methods at the edge of stability*
(2022) for the preconditioned sharpness of Adam and RMSProp, whose step is
``θ ← θ - η D⁻¹ m`` with ``D`` the diagonal preconditioner of the optimizer
state at the measurement: for Adam ``D = (1 - β₁ᵗ)(sqrt(v̂ + ε_root) + ε)``
with ``v̂`` the bias-corrected second moment and ``t`` the steps taken (the
factor is the first moment's bias correction, so ``m`` is the plain moving
average; ``adam_flow``, whose Euler steps are Adam's, gets the same ``D``
from its bias-corrected ``v``), for RMSProp ``sqrt(v + ε)`` or
``sqrt(v) + ε`` as ``eps_in_sqrt`` says. Both thresholds scale as ``1/η``, so
sharpness and threshold are in the same units for every method.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from flowopt.flows.family import AdaptiveFlowState
from flowopt.training.optimizers import resolve_optimizer

Preconditioner = Callable[[optax.OptState], Any]
# Options that change an adaptive method's dynamics from the one its threshold is derived for.
_OTHER_DYNAMICS = ("momentum", "nesterov", "centered", "bias_correction", "integrator")


@dataclasses.dataclass(frozen=True)
class StabilityRule:
    """How a run's sharpness is measured and the threshold it is compared with.

    Attributes:
      name: ``gradient_descent``, ``heavy_ball``, ``nesterov``, ``adam``,
        ``rmsprop``, or ``reference`` (no threshold is known for the method:
        ``2/η`` is drawn for orientation).
      factor: the threshold is ``factor / η``.
      preconditioner: ``opt_state -> D``, the diagonal preconditioner as a
        pytree like the parameters; ``None`` for the plain Hessian.
    """

    name: str
    factor: float
    preconditioner: Preconditioner | None = None

    def threshold(self, learning_rate: float) -> float:
        """The threshold at step size ``learning_rate``."""
        return self.factor / learning_rate


def stability_rule(optimizer: str, options: Mapping[str, Any], opt_state: optax.OptState) -> StabilityRule:
    """The rule of optimizer ``optimizer`` built with ``options``, whose initial state is ``opt_state``.

    A preconditioned rule needs its moment state (``ScaleByAdamState``,
    ``ScaleByRmsState``, :class:`~flowopt.flows.family.AdaptiveFlowState`)
    exactly once in ``opt_state``; otherwise, and for options that change the
    dynamics (momentum, Nesterov, a centred or bias-corrected RMSProp, a
    Runge–Kutta ``integrator`` of a flow), the rule is ``reference``.
    """
    hyper = _hyperparameters(optimizer, options)
    if optimizer in ("sgd", "momentum", "nesterov"):
        beta = hyper.get("momentum") or 0.0
        if not beta:
            return StabilityRule("gradient_descent", 2.0)
        if optimizer == "nesterov" or hyper.get("nesterov"):  # the name fixes nesterov=True
            return StabilityRule("nesterov", (2.0 + 2.0 * beta) / (1.0 + 2.0 * beta))
        return StabilityRule("heavy_ball", 2.0 + 2.0 * beta)
    preconditioner = _PRECONDITIONERS.get(optimizer)
    if preconditioner is None or any(hyper.get(k) for k in _OTHER_DYNAMICS):
        return StabilityRule("reference", 2.0)
    state_type, diagonal = preconditioner
    if len(_states(opt_state, state_type)) != 1:
        return StabilityRule("reference", 2.0)
    b1 = hyper.get("b1", 0.0)
    name = "adam" if "b1" in hyper else "rmsprop"
    return StabilityRule(name, (2.0 + 2.0 * b1) / (1.0 - b1), lambda state: diagonal(_states(state, state_type)[0], hyper))


def _hyperparameters(optimizer: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor's keyword arguments with their defaults, overridden by ``options``."""
    _, signature = resolve_optimizer(optimizer)
    defaults = {} if signature is None else {k: p.default for k, p in signature.parameters.items() if p.default is not p.empty}
    return {**defaults, **options}


def _states(opt_state: optax.OptState, state_type: type) -> list[Any]:
    """The instances of ``state_type`` inside ``opt_state``."""
    found = jax.tree.leaves(opt_state, is_leaf=lambda node: isinstance(node, state_type))
    return [node for node in found if isinstance(node, state_type)]


def _adam(state: optax.ScaleByAdamState, hyper: Mapping[str, Any]) -> Any:
    count = jnp.asarray(state.count, jnp.float32)
    corrected = jax.tree.map(lambda nu: nu / (1 - hyper["b2"] ** count), state.nu)
    return _adam_diagonal(count, corrected, hyper)


def _adam_flow(state: AdaptiveFlowState, hyper: Mapping[str, Any]) -> Any:
    return _adam_diagonal(jnp.asarray(state.taken, jnp.float32), state.v, hyper)


def _adam_diagonal(count: jax.Array, corrected_v: Any, hyper: Mapping[str, Any]) -> Any:
    """``(1 - β₁ᵗ)(sqrt(v̂ + ε_root) + ε)`` after ``t = count`` steps, from the bias-corrected ``v̂``."""
    correction = 1 - hyper["b1"] ** count
    return jax.tree.map(lambda v: correction * (jnp.sqrt(v + hyper["eps_root"]) + hyper["eps"]), corrected_v)


def _rms(second_moment: Any, hyper: Mapping[str, Any]) -> Any:
    eps = hyper["eps"]
    scale = (lambda v: jnp.sqrt(v + eps)) if hyper["eps_in_sqrt"] else (lambda v: jnp.sqrt(v) + eps)
    return jax.tree.map(scale, second_moment)


_PRECONDITIONERS: Mapping[str, tuple[type, Callable[[Any, Mapping[str, Any]], Any]]] = {
    "adam": (optax.ScaleByAdamState, _adam),
    "adam_flow": (AdaptiveFlowState, _adam_flow),
    "rmsprop": (optax.ScaleByRmsState, lambda state, hyper: _rms(state.nu, hyper)),
    "rmsprop_flow": (AdaptiveFlowState, lambda state, hyper: _rms(state.v, hyper)),
}
