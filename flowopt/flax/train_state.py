"""A Linen-style train state whose ``apply_gradients`` forwards the gradient oracle.

``flax.training.train_state.TrainState.apply_gradients`` calls ``tx.update``
without extra arguments, so multi-stage integrators never see an oracle. This
subclass passes ``value_fn``/``grad_fn`` (and any other keyword meant for the
optimizer, such as a line search's ``value``/``grad``) through ``extra_args``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from flowopt.core.checks import check_float_tree
from flowopt.core.oracle import check_updates_match

_CREATE = "flowopt.TrainState.create"
_APPLY = "flowopt.TrainState.apply_gradients"


class TrainState(train_state.TrainState):
    """``flax.training.train_state.TrainState`` that forwards the oracle to ``tx.update``.

    Example:

        >>> import flax.linen as nn, jax, jax.numpy as jnp, flowopt
        >>> model = nn.Dense(1)
        >>> x, y = jnp.ones((4, 3)), jnp.zeros((4, 1))
        >>> params = model.init(jax.random.key(0), x)
        >>> state = flowopt.TrainState.create(apply_fn=model.apply, params=params, tx=flowopt.rk4(0.1))
        >>> loss_of = lambda p: jnp.mean((state.apply_fn(p, x) - y) ** 2)
        >>> before = loss_of(state.params)
        >>> state = state.apply_gradients(grads=jax.grad(loss_of)(state.params), value_fn=loss_of)
        >>> int(state.step), bool(loss_of(state.params) < before)
        (1, True)
    """

    @classmethod
    def create(cls, *, apply_fn: Callable, params: Any, tx: optax.GradientTransformation, **kwargs: Any) -> TrainState:
        """As Flax's ``create``, with ``step`` an int32 array so a jitted step compiles once.

        Raises:
          ValueError: if ``tx`` is not an optax transformation or ``params`` is
            not a pytree of floating-point (or complex) arrays.
        """
        if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
            hint = " (call it with a learning rate, e.g. flowopt.rk4(0.1))" if callable(tx) else ""
            raise ValueError(f"flowopt.TrainState.create: tx must be an optax.GradientTransformation{hint}, got {tx!r:.80}.")
        if params is None:
            raise ValueError("flowopt.TrainState.create: params is None; pass the model's parameters.")
        check_float_tree("params", params, where=_CREATE)
        state = super().create(apply_fn=apply_fn, params=params, tx=tx, **kwargs)
        return state.replace(step=jnp.zeros([], jnp.int32))

    def apply_gradients(
        self,
        *,
        grads: Any,
        value_fn: Callable[[Any], jax.Array] | None = None,
        grad_fn: Callable[[Any], Any] | None = None,
        extra_args: dict[str, Any] | None = None,
        **replacements: Any,
    ) -> TrainState:
        """Take one optimizer step; ``replacements`` replace other dataclass fields as in Flax.

        ``grads`` must match ``params`` in structure and leaf shapes (a
        ``ValueError`` otherwise, instead of a silent broadcast or integer
        truncation by ``optax.apply_updates``). Complex parameters follow
        optax's convention: pass ``conj(jax.grad(loss))`` as ``grads``.
        ``tx.update`` also receives ``full_params=self.params`` (unless
        ``extra_args`` gives it), so an integrator inside ``optax.masked`` or
        ``optax.multi_transform`` has the parameters its oracle needs.
        """
        extra_args = {} if extra_args is None else extra_args
        if not isinstance(extra_args, dict):
            raise ValueError(
                f"{_APPLY}: extra_args must be a dict of keyword arguments for tx.update, got {type(extra_args).__name__}."
            )
        oracle = {k: v for k, v in (("value_fn", value_fn), ("grad_fn", grad_fn)) if v is not None}
        clashes = sorted(set(oracle) & set(extra_args))
        if clashes:
            raise ValueError(f"{_APPLY}: {', '.join(clashes)} given both directly and in extra_args; pass it once.")
        reserved = sorted(set(replacements) & {"step", "params", "opt_state"})
        if reserved:
            raise ValueError(
                f"{_APPLY}: {', '.join(reserved)} cannot be replaced here (apply_gradients computes it); "
                "use state.replace(...) separately."
            )
        check_updates_match(_APPLY, grads, self.params)
        tx = optax.with_extra_args_support(self.tx)  # a plain GradientTransformation ignores the oracle
        try:
            updates, opt_state = tx.update(
                grads, self.opt_state, self.params, **oracle, **({"full_params": self.params} | extra_args)
            )
        except ValueError as error:
            if oracle or "value_fn" in extra_args or "grad_fn" in extra_args or "needs an oracle" not in str(error):
                raise
            raise ValueError(
                f"{error} With flowopt.TrainState, pass the oracle to apply_gradients: "
                "state.apply_gradients(grads=grads, value_fn=lambda p: loss(p, batch))."
            ) from None
        return self.replace(
            step=self.step + 1,
            params=optax.apply_updates(self.params, updates),
            opt_state=opt_state,
            **replacements,
        )
