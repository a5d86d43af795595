"""Flax integration: oracles that share a step's dropout key and batch statistics, and a Linen ``TrainState``.

* :mod:`~flowopt.flax.oracle`: :func:`~flowopt.step_oracle` (Linen),
  :func:`~flowopt.nnx_step_oracle` and :class:`~flowopt.NNXObjective` (NNX).
* :mod:`~flowopt.flax.train_state`: :class:`~flowopt.TrainState`, which forwards the oracle.
"""
