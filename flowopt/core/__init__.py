"""The route from a pure integrator step to an optax optimizer, and what every method shares.

* :mod:`flowopt.core.integrator`: :class:`~flowopt.Integrator` and
  :func:`~flowopt.as_optimizer`, the one way a method becomes an optimizer.
* :mod:`flowopt.core.oracle`: the ``value_fn``/``grad_fn`` keyword arguments
  turned into a checked gradient oracle.
* :mod:`flowopt.core.checks`: argument validation, one message style.
* :mod:`flowopt.core.trees`: pytree arithmetic.
* :mod:`flowopt.core.types`: the type aliases.
"""
