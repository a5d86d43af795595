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


class TrainState(train_state.TrainState):
    """``flax.training.train_state.TrainState`` that forwards the oracle to ``tx.update``.

    Example::

        state = flowopt.TrainState.create(apply_fn=model.apply, params=params, tx=flowopt.rk4(0.1))
        loss_of = lambda p: loss_fn(p, batch)
        grads = jax.grad(loss_of)(state.params)
        state = state.apply_gradients(grads=grads, value_fn=loss_of)
    """

    @classmethod
    def create(cls, *, apply_fn: Callable, params: Any, tx: optax.GradientTransformation, **kwargs: Any) -> TrainState:
        """As Flax's ``create``, with ``step`` an int32 array so a jitted step compiles once."""
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
        """Take one optimizer step; ``replacements`` replace other dataclass fields as in Flax."""
        oracle = {k: v for k, v in (("value_fn", value_fn), ("grad_fn", grad_fn)) if v is not None}
        updates, opt_state = self.tx.update(
            grads, self.opt_state, self.params, **oracle, **(extra_args or {})
        )
        return self.replace(
            step=self.step + 1,
            params=optax.apply_updates(self.params, updates),
            opt_state=opt_state,
            **replacements,
        )
