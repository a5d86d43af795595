"""The gradient oracle: how an integrator evaluates ``∇f`` away from ``params``.

flowopt follows optax's convention for extra arguments to ``update``: the
caller passes ``value_fn`` (params -> scalar loss, differentiated here) or
``grad_fn`` (params -> gradient pytree, for custom gradients), never both.

**Masked parameters.** ``optax.masked`` and ``optax.multi_transform``
(``optax.partition``) give the transformation they wrap only its part of the
parameters: the other leaves of ``params`` are ``optax.MaskedNode``
placeholders, while the oracle is a function of all of them. The caller then
passes the full parameters too, ``update(grads, state, params, value_fn=...,
full_params=params)``, and the oracle evaluates ``f`` at the point whose
masked-out leaves are held at their values in ``full_params``: the
integrator follows the flow of its own leaves, ``θ_a' = -∇_a f(θ_a, θ_b)``
with ``θ_b`` fixed during the step, and the gradient it sees has the masked
layout of ``params``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from flowopt.core.checks import check_float_tree
from flowopt.core.types import GradFn, Params


def resolve_oracle(
    method: str,
    params: Params | None,
    value_fn: Callable[[Params], jax.Array] | None,
    grad_fn: GradFn | None,
    *,
    required: bool = True,
    full_params: Params | None = None,
    flag_nonfinite: bool = False,
) -> GradFn | None:
    """Turn the ``value_fn``/``grad_fn`` keyword arguments into a checked gradient oracle.

    With ``required=False`` (a method that makes no oracle calls) the result
    is ``None``, after the same check that not both oracles are given.

    When ``params`` holds ``optax.MaskedNode`` leaves, the oracle takes and
    returns pytrees of that masked layout; ``full_params`` (the whole
    parameter pytree) supplies the masked-out leaves, see the module
    docstring. Otherwise ``full_params`` is ignored. With ``flag_nonfinite``
    a ``value_fn`` is wrapped by :func:`flag_nonfinite_loss`.

    A method that needs the oracle is refused inside ``optax.MultiSteps``
    (found on the call stack while ``update`` is traced): MultiSteps averages
    the first stage over micro-batches but cannot average the oracle, see
    :func:`flowopt.accumulated_oracle`.

    Raises:
      ValueError: if both or (when required) neither oracle is given, if it runs inside
        ``optax.MultiSteps``, if ``params`` is missing,
        if ``params`` is masked and ``full_params`` is missing or does not fit it,
        or (when the oracle is first called) if ``value_fn`` is not scalar or
        the oracle's output does not match the structure of ``params``.
    """
    if value_fn is not None and grad_fn is not None:
        raise ValueError(f"{method}: pass either value_fn or grad_fn to update(), not both.")
    if not required:
        return None
    if _inside_multisteps():
        raise ValueError(
            f"{method} runs inside optax.MultiSteps, which hands it the gradient averaged over the micro-batches "
            "while the oracle passed with the last micro-batch sees that batch alone: its later stages would "
            "integrate another objective than its first (silently wrong). Accumulate in the oracle instead: "
            "oracle = flowopt.accumulated_oracle(loss_fn, microbatches); loss, grads = oracle.value_and_grad(params); "
            "tx.update(grads, state, params, grad_fn=oracle), one update per accumulated batch, every stage on "
            "the mean loss."
        )
    if value_fn is None and grad_fn is None:
        raise ValueError(
            f"{method} evaluates the gradient at intermediate points and needs an "
            "oracle: call update(grads, state, params, value_fn=lambda p: loss(p, batch)) "
            "or pass grad_fn=. Flax's flax.training.train_state.TrainState.apply_gradients does not "
            "forward an oracle: use flowopt.TrainState and apply_gradients(grads=grads, value_fn=...) (Linen), "
            "or nnx.Optimizer.update(model, grads, value_fn=...) (NNX; see flowopt.nnx_step_oracle)."
        )
    if params is None:
        raise ValueError(f"{method}: update() needs params to evaluate the oracle.")
    embedding = _masked_embedding(method, params, full_params) if has_masked_leaves(params) else None
    if value_fn is not None:
        if not callable(value_fn):
            raise ValueError(f"{method}: value_fn must be a callable params -> scalar loss, got {type(value_fn).__name__}.")
        loss = flag_nonfinite_loss(value_fn) if flag_nonfinite else value_fn
        if embedding is not None:
            loss = lambda p, loss=loss: loss(embedding.embed(p))  # noqa: E731
        differentiate = jax.grad(_scalar_checked(method, loss))
        gradient = lambda p: jax.tree.map(conjugate_if_complex, differentiate(p))
    else:
        if not callable(grad_fn):
            raise ValueError(f"{method}: grad_fn must be a callable params -> gradient pytree, got {type(grad_fn).__name__}.")
        gradient = grad_fn
        if embedding is not None:
            full_gradient = _structure_checked(method, grad_fn, full_params)
            gradient = lambda p: embedding.restrict(full_gradient(embedding.embed(p)))
    return _structure_checked(method, gradient, params)


def _inside_multisteps() -> bool:
    """Whether ``optax.MultiSteps.update`` is on the call stack: the transformation runs inside MultiSteps.

    MultiSteps calls its inner ``update`` with the accumulated gradient and
    the caller's keyword arguments and leaves no other trace of itself, so
    the stack (walked while ``update`` runs or is traced, never inside the
    compiled step) is where it shows.
    """
    target = optax.MultiSteps.update.__code__
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is target:
            return True
        frame = frame.f_back
    return False


def flag_nonfinite_loss(value_fn: Callable[[Params], jax.Array]) -> Callable[[Params], jax.Array]:
    """The same loss, whose gradient is NaN wherever the loss itself is non-finite.

    A loss written as ``jnp.where(ok, f, jnp.nan)`` has a finite (zero)
    gradient where it is NaN; an integrator that sees only gradients would
    take that point for a flat region. With this wrapper the gradient carries
    the failure, so the finiteness checks on gradients also catch it. (The
    derivative gains the term ``c · Σ tangent``, ``c = 0`` where the loss is
    finite and NaN elsewhere: linear in the tangent, so reverse mode puts
    the NaN into every gradient entry, past any masking.)

    Raises:
      ValueError: if ``value_fn`` is not callable.
    """
    if not callable(value_fn):
        raise ValueError(f"value_fn must be a function params -> scalar loss, got {value_fn!r}.")

    @jax.custom_jvp
    def flagged(params: Params) -> jax.Array:
        return value_fn(params)

    @flagged.defjvp
    def flagged_jvp(primals, tangents):
        (params,), (tangent,) = primals, tangents
        value, value_tangent = jax.jvp(value_fn, (params,), (tangent,))
        poison = jnp.where(jnp.isfinite(value), 0.0, jnp.nan).astype(value_tangent.dtype)
        leaves = [leaf for leaf in jax.tree.leaves(tangent) if jnp.issubdtype(leaf.dtype, jnp.inexact)]
        # Real and imaginary parts of a complex tangent both count (an R-linear term), so that the
        # NaN reaches both parts of a complex parameter's gradient.
        total = sum(
            (jnp.sum(jnp.real(leaf) + jnp.imag(leaf)).astype(value_tangent.dtype) for leaf in leaves),
            jnp.zeros([], value_tangent.dtype),
        )
        return value, value_tangent + poison * total

    return flagged


def _is_masked(node: Any) -> bool:
    return isinstance(node, optax.MaskedNode)


def has_masked_leaves(params: Params) -> bool:
    """Whether ``params`` holds ``optax.MaskedNode`` placeholders (it came through ``optax.masked``)."""
    return any(_is_masked(node) for node in jax.tree.leaves(params, is_leaf=_is_masked))


class _Embedding(NamedTuple):
    """``embed`` fills the masked-out places of a masked pytree from the full parameters; ``restrict`` masks them again."""

    embed: Callable[[Params], Params]
    restrict: Callable[[Params], Params]


def _masked_embedding(method: str, params: Params, full_params: Params | None) -> _Embedding:
    """The maps between the masked layout of ``params`` and the full layout of ``full_params``, after checking the latter."""
    if full_params is None:
        raise ValueError(
            f"{method}: params hold optax.MaskedNode placeholders: this optimizer runs inside optax.masked or "
            "optax.multi_transform (optax.partition), which give it only its own part of the parameters, but the "
            "oracle evaluates the loss on all of them. Pass the full parameters too: "
            "update(grads, state, params, value_fn=..., full_params=params)."
        )
    if has_masked_leaves(full_params):
        raise ValueError(
            f"{method}: full_params hold optax.MaskedNode placeholders too: it was masked on its way in "
            "(optax.masked or optax.multi_transform with mask_compatible_extra_args=True masks every extra "
            "argument shaped like params). Leave mask_compatible_extra_args at False to pass full_params whole."
        )
    layout = jax.tree.structure(params, is_leaf=_is_masked)
    try:
        parts = layout.flatten_up_to(full_params)
    except (ValueError, TypeError):
        raise ValueError(
            f"{method}: full_params has structure {jax.tree.structure(full_params)}, which does not contain the "
            f"masked params' structure {layout}; pass the whole parameter pytree the mask was built for."
        ) from None
    for (path, leaf), part in zip(jax.tree_util.tree_leaves_with_path(params, is_leaf=_is_masked), parts):
        if not _is_masked(leaf) and jnp.shape(part) != jnp.shape(leaf):
            raise ValueError(
                f"{method}: full_params{jax.tree_util.keystr(path)} has shape {jnp.shape(part)}, the parameter it "
                f"holds has shape {jnp.shape(leaf)}; pass the parameters of this step."
            )

    def embed(sub: Params) -> Params:
        return jax.tree.map(lambda s, f: f if _is_masked(s) else s, sub, full_params, is_leaf=_is_masked)

    def restrict(full: Params) -> Params:
        return jax.tree.map(lambda s, f: s if _is_masked(s) else f, params, full, is_leaf=_is_masked)

    return _Embedding(embed, restrict)


def conjugate_if_complex(gradient: jax.Array) -> jax.Array:
    """optax's convention for complex parameters: the update direction is ``conj(jax.grad(f))``.

    ``jax.grad`` of a real loss ``f(z)`` returns ``∂f/∂x - i ∂f/∂y``; descent
    moves along its conjugate ``∂f/∂x + i ∂f/∂y``, which is what optax expects
    as the incoming gradient of complex parameters. The oracle follows the same
    convention so that every stage integrates the same vector field as ``k1``.
    """
    return jnp.conj(gradient) if jnp.iscomplexobj(gradient) else gradient


def check_scalar_loss(where: str, what: str, value: Any) -> jax.Array:
    """``value``, which ``what`` returned, as an array; ``ValueError`` unless it is a real floating-point scalar.

    Every message names ``where`` (the function checking) and ``what`` (the
    loss function it was given), and what was returned instead.
    """
    if value is None:
        raise ValueError(f"{where}: {what} returned None; it must return the scalar loss.")
    if isinstance(value, (tuple, list, dict)):
        raise ValueError(
            f"{where}: {what} returned a {type(value).__name__}; it must return the scalar loss alone "
            f"(for a loss_fn returning (loss, aux), pass {what}=lambda p: loss_fn(p)[0])."
        )
    try:
        array = jnp.asarray(value)
    except TypeError:
        raise ValueError(f"{where}: {what} must return a scalar loss, got a {type(value).__name__}.") from None
    if array.ndim != 0:
        raise ValueError(f"{where}: {what} must return a scalar loss, got shape {array.shape} (reduce it, e.g. with .mean()).")
    if not jnp.issubdtype(array.dtype, jnp.floating):
        kind = "complex" if jnp.issubdtype(array.dtype, jnp.complexfloating) else "non-floating"
        raise ValueError(
            f"{where}: {what} must return a real floating-point loss, got the {kind} dtype {array.dtype} "
            "(it cannot be differentiated as a loss)."
        )
    return array


def _scalar_checked(method: str, value_fn: Callable[[Params], jax.Array]) -> Callable:
    """``value_fn`` whose output is checked by :func:`check_scalar_loss` (at trace time)."""
    return lambda p: check_scalar_loss(method, "value_fn", value_fn(p))


def _structure_checked(method: str, gradient: GradFn, params: Params) -> GradFn:
    """Check once per trace that the oracle's output has the layout of ``params``."""
    expected = jax.tree.structure(params)
    expected_shapes = [jnp.shape(x) for x in jax.tree.leaves(params)]

    def oracle(p: Params) -> Params:
        grads = gradient(p)
        if grads is None and expected.num_leaves:
            raise ValueError(f"{method}: the oracle returned None, expected a gradient pytree like params.")
        if jax.tree.structure(grads) != expected:
            raise ValueError(
                f"{method}: the oracle returned a pytree with structure "
                f"{jax.tree.structure(grads)}, expected the structure of params {expected}."
            )
        shapes = [jnp.shape(x) for x in jax.tree.leaves(grads)]
        if shapes != expected_shapes:
            raise ValueError(
                f"{method}: the oracle returned leaves of shapes {shapes}, expected the shapes of params {expected_shapes}."
            )
        check_float_tree("the oracle's gradient", grads, where=method)
        return grads

    return oracle


def check_updates_match(method: str, updates: optax.Updates, params: Params | None) -> None:
    """Check the incoming gradient ``updates`` and ``params`` before a step.

    Both must be pytrees of floating-point (or complex) arrays with the same
    structure and leaf shapes: an integer parameter would be truncated by
    ``optax.apply_updates`` and a scalar gradient leaf would be broadcast over
    a vector parameter, both silently.
    """
    if params is not None:
        check_float_tree("params", params, where=method)
    check_float_tree("the gradient passed to update()", updates, where=method)
    if params is None:
        return
    if jax.tree.structure(updates) != jax.tree.structure(params):
        raise ValueError(
            f"{method}: the gradient passed to update() has structure "
            f"{jax.tree.structure(updates)}, params have {jax.tree.structure(params)}."
        )
    for (path, leaf), grad in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(updates)):
        if jnp.shape(grad) != jnp.shape(leaf):
            raise ValueError(
                f"{method}: the gradient leaf at {jax.tree_util.keystr(path) or 'the root'} has shape "
                f"{jnp.shape(grad)}, its parameter has shape {jnp.shape(leaf)}."
            )
