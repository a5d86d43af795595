"""Step-size control for embedded Runge–Kutta pairs: the scaled error norm and a PI controller.

The controller is apart from the stages: :mod:`flowopt.rk.adaptive`
computes an attempt's error estimate and stiffness indicator, and
:meth:`PIController.adapt` accepts or rejects it and proposes the next step.
The equations, the stability check and the defaults are in
:mod:`flowopt.rk.adaptive`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from flowopt.core.checks import check_positive, check_range, is_zero
from flowopt.core.types import Params
from flowopt.rk.tableau import ButcherTableau


class StepSizeState(NamedTuple):
    """What the PI controller carries from one attempt to the next.

    Attributes:
      step_size: the step ``h`` the next attempt uses.
      prev_inv_error: ``1/ε`` of the last accepted step (1 before any).
      at_dtmin: whether ``step_size`` was clipped up to ``dtmin`` (then the
        next finite attempt is accepted whatever its error).
    """

    step_size: jax.Array
    prev_inv_error: jax.Array
    at_dtmin: jax.Array


@dataclasses.dataclass(frozen=True)
class PIController:
    """Proportional–integral step-size control from an embedded error estimate.

    Attributes:
      rtol, atol: relative and absolute tolerances of the scaled error (> 0).
      pcoeff, icoeff: proportional and integral coefficients. The default
        ``(0.4, 0.3)`` is a PI controller that damps the step-size oscillation
        at the stability limit, where gradient flows of training losses
        usually run (on a stiff quadratic it rejects ~3% of attempts where
        the classical I controller ``(0, 1)``, diffrax's default, rejects ~25%).
      safety: factor below one applied to every proposal.
      factormin, factormax: bounds on the ratio of successive steps.
      dtmin, dtmax: optional bounds on the step itself.
      smoothing: in ``[0, 1)``; accepted steps change by ``factor^(1 -
        smoothing)`` instead of ``factor`` (for noisy, minibatch errors).
      stability_limit: the largest accepted ``σ = hρ̂/β`` (see the module
        docstring), a positive number; ``None`` turns the check off (the
        classical control).
    """

    rtol: float
    atol: float
    pcoeff: float = 0.4
    icoeff: float = 0.3
    safety: float = 0.9
    factormin: float = 0.2
    factormax: float = 10.0
    dtmin: float | None = None
    dtmax: float | None = None
    smoothing: float = 0.0
    stability_limit: float | None = 1.2

    def __post_init__(self) -> None:
        # Every field is a real number (not a bool or a string) or, under jit or
        # optax.inject_hyperparams, a tracer that is checked only once concrete.
        check_positive("rtol", self.rtol)
        check_positive("atol", self.atol)
        check_range("pcoeff", self.pcoeff, 0.0, math.inf, low_open=False)
        check_positive("icoeff", self.icoeff)
        safety = check_range("safety", self.safety, 0.0, 1.0, high_open=False)
        factormin = check_range("factormin", self.factormin, 0.0, 1.0)
        check_range("factormax", self.factormax, 1.0, math.inf)
        dtmin = check_positive("dtmin", self.dtmin, allow_none=True)
        dtmax = check_positive("dtmax", self.dtmax, allow_none=True)
        if dtmin is not None and dtmax is not None and dtmin > dtmax:
            raise ValueError(f"dtmin ({self.dtmin!r}) must not exceed dtmax ({self.dtmax!r}).")
        check_range("smoothing", self.smoothing, 0.0, 1.0, low_open=False)
        check_positive("stability_limit", self.stability_limit, allow_none=True)
        if safety is not None and factormin is not None and factormin > safety:
            raise ValueError(
                f"factormin ({self.factormin!r}) must not exceed safety ({self.safety!r}): after a rejection "
                "the step shrinks by a factor in [factormin, safety]."
            )

    def init(self, step_size: float | jax.Array, dtype: Any = jnp.float32) -> StepSizeState:
        """The state before the first attempt, with ``step_size`` clipped to ``[dtmin, dtmax]``."""
        check_positive("step_size", step_size)
        try:
            floating = jnp.issubdtype(dtype, jnp.floating)
        except TypeError:
            floating = False
        if not floating:
            raise ValueError(f"dtype must be a real floating-point dtype for the step size, got {dtype!r}.")
        h = jnp.asarray(step_size, dtype)
        if self.dtmax is not None:
            h = jnp.minimum(h, self.dtmax)
        if self.dtmin is not None:
            h = jnp.maximum(h, self.dtmin)
        return StepSizeState(step_size=h, prev_inv_error=jnp.ones([], dtype), at_dtmin=jnp.array(False))

    def adapt(
        self,
        state: StepSizeState,
        scaled_error: jax.Array,
        finite: jax.Array,
        error_order: int,
        stiffness: jax.Array | None = None,
    ) -> tuple[jax.Array, StepSizeState]:
        """Accept or reject the attempt at ``state.step_size``; propose the next step.

        ``scaled_error`` is ``ε`` (``inf`` for a non-finite attempt), ``finite``
        whether the attempt was finite, ``error_order`` is ``q``, and
        ``stiffness`` is ``σ = hρ̂/β`` (``None``: not measured, no check).
        A finite attempt at ``dtmin`` is accepted whatever ``ε`` and ``σ``.
        """
        if not isinstance(state, StepSizeState):
            raise ValueError(f"state must be a StepSizeState (from PIController.init), got {type(state).__name__}.")
        if isinstance(error_order, (bool, np.bool_)) or not isinstance(error_order, (int, np.integer)) or error_order < 1:
            raise ValueError(f"error_order must be a positive integer (q = embedded order + 1), got {error_order!r}.")
        h = state.step_size
        limit = self.stability_limit  # the stability check runs when it is set and the stiffness is measured
        within = scaled_error < 1
        if stiffness is not None and limit is not None:
            within = within & (stiffness <= limit)
        accepted = finite & (within | state.at_dtmin)
        inv_error = (1 / scaled_error).astype(h.dtype)
        factor = self.safety * inv_error ** ((self.pcoeff + self.icoeff) / error_order)
        if not is_zero(self.pcoeff):
            factor = factor * state.prev_inv_error ** (-self.pcoeff / error_order)
        factor = jnp.clip(
            factor,
            jnp.where(accepted, 1.0, self.factormin).astype(h.dtype),
            jnp.where(accepted, self.factormax, self.safety).astype(h.dtype),
        )
        if stiffness is not None and limit is not None:
            # σ scales with h: h·limit/σ is where the estimate puts the limit (none for a non-finite attempt).
            sigma = jnp.where(finite, stiffness, 0).astype(h.dtype)
            factor = jnp.maximum(jnp.minimum(factor, self.safety * limit / sigma), self.factormin)
        if not is_zero(self.smoothing):
            factor = jnp.where(accepted, factor ** (1 - self.smoothing), factor)
        h_next = h * factor
        if self.dtmax is not None:
            h_next = jnp.minimum(h_next, self.dtmax)
        at_dtmin = jnp.array(False)
        if self.dtmin is not None:
            at_dtmin = h_next <= self.dtmin
            h_next = jnp.maximum(h_next, self.dtmin)
        # A zero or infinite error says nothing about the next one: remember 1.
        remembered = jnp.where((inv_error == 0) | jnp.isinf(inv_error), 1.0, inv_error).astype(h.dtype)
        return accepted, StepSizeState(
            step_size=h_next.astype(h.dtype),
            prev_inv_error=jnp.where(accepted, remembered, state.prev_inv_error),
            at_dtmin=at_dtmin,
        )


def error_order(tableau: ButcherTableau) -> int:
    """``q = p̂ + 1``: the local order of the error estimate of the pair."""
    assert tableau.embedded_order is not None  # an embedded pair: its callers check_embedded first
    return int(tableau.embedded_order) + 1


def scaled_error_norm(error: Params, params: Params, candidate: Params, rtol: float, atol: float) -> jax.Array:
    """``RMS(|e| / (atol + rtol · max(|θ_n|, |θ_{n+1}|)))`` over all elements of all leaves.

    ``|·|`` is the modulus, so a complex parameter's error is measured as the
    Euclidean norm of its real and imaginary parts (as for the equivalent real
    pair). The three pytrees must have the same structure and shapes.
    """
    check_positive("rtol", rtol)
    check_positive("atol", atol)
    trees = {"error": error, "params": params, "candidate": candidate}
    structures = {name: jax.tree.structure(tree) for name, tree in trees.items()}
    shapes = {name: [jnp.shape(leaf) for leaf in jax.tree.leaves(tree)] for name, tree in trees.items()}
    if len(set(structures.values())) > 1 or shapes["error"] != shapes["params"] or shapes["error"] != shapes["candidate"]:
        raise ValueError(
            "scaled_error_norm: error, params and candidate must have the same structure and shapes, got "
            + ", ".join(f"{name} {structures[name]} with shapes {shapes[name]}" for name in trees)
            + "."
        )
    total = jnp.zeros([], jnp.float32)
    size = 0
    for e, y0, y1 in zip(jax.tree.leaves(error), jax.tree.leaves(params), jax.tree.leaves(candidate)):
        magnitude = jnp.abs(e)  # real, also for complex errors
        dtype = jnp.promote_types(magnitude.dtype, jnp.float32)
        scale = atol + rtol * jnp.maximum(jnp.abs(y0), jnp.abs(y1)).astype(dtype)
        total = total + jnp.sum(jnp.square(magnitude.astype(dtype) / scale))
        size += jnp.size(e)
    return jnp.sqrt(total / max(size, 1))
