"""Type aliases shared by every module."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

Params = Any
"""A pytree of floating-point (or complex) arrays."""

GradFn = Callable[[Params], Params]
"""A gradient oracle: parameters to the gradient pytree of the loss there."""

ValueFn = Callable[[Params], jax.Array]
"""A loss: parameters to a real scalar."""
