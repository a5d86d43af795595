"""Butcher tableaus of explicit Runge–Kutta methods, validated on construction.

A tableau ``(a, b, c)`` defines the s-stage method for ``θ' = g(θ)``::

    k_i     = g(θ_n + h Σ_j a_ij k_j),     i = 1..s
    θ_{n+1} = θ_n + h Σ_i b_i k_i

For the gradient flow ``g = -∇f``. Order ``p`` holds when the elementary
weights of every rooted tree ``t`` with at most ``p`` vertices satisfy
``b·Φ(t) = 1/γ(t)`` (Butcher 1963; Hairer, Nørsett & Wanner, *Solving
Ordinary Differential Equations I*, §II.2).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

_TOLERANCE = 1e-10

# A rooted tree is the sorted tuple of its children's subtrees; () is the single vertex.
Tree = tuple


@functools.cache
def rooted_trees(order: int) -> tuple[Tree, ...]:
    """All rooted trees with ``order`` vertices, each exactly once (canonical form)."""
    if order == 1:
        return ((),)
    return tuple(sorted(set(_forests(order - 1))))


@functools.cache
def _forests(vertices: int) -> frozenset[tuple[Tree, ...]]:
    """All multisets of rooted trees with ``vertices`` vertices in all, as sorted tuples."""
    if vertices == 0:
        return frozenset({()})
    return frozenset(
        tuple(sorted((first,) + rest))
        for first_size in range(1, vertices + 1)
        for first in rooted_trees(first_size)
        for rest in _forests(vertices - first_size)
    )


def _size(tree: Tree) -> int:
    return 1 + sum(_size(child) for child in tree)


def _density(tree: Tree) -> int:
    """γ(t): the tree's size times the densities of its subtrees."""
    return _size(tree) * int(np.prod([_density(child) for child in tree], dtype=np.int64))


def _stage_weights(a: np.ndarray, tree: Tree) -> np.ndarray:
    """Φ(t) as a vector over stages: the product over children of ``a @ Φ(child)``."""
    weights = np.ones(a.shape[0])
    for child in tree:
        weights = weights * (a @ _stage_weights(a, child))
    return weights


def _describe(tree: Tree) -> str:
    """A readable formula for ``b·Φ(t)``, e.g. ``b·c²`` or ``b·(c∘Ac)``."""

    def vector(t: Tree) -> str:
        leaves = sum(1 for child in t if not child)
        factors = ["c" if leaves == 1 else f"c^{leaves}"] if leaves else []
        for child in t:
            if child:
                inner = vector(child)
                factors.append("Ac" if inner == "c" else f"A({inner})")
        return "∘".join(factors)

    return f"b·{vector(tree)}" if tree else "Σb"


def order_conditions(order: int) -> list[tuple[str, Tree, float]]:
    """The conditions ``b·Φ(t) = 1/γ(t)`` for every tree with at most ``order`` vertices."""
    return [
        (_describe(tree), tree, 1.0 / _density(tree))
        for size in range(1, order + 1)
        for tree in rooted_trees(size)
    ]


def check_order(a: np.ndarray, b: np.ndarray, order: int, label: str = "b") -> None:
    """Raise ``ValueError`` naming the first order condition that ``(a, b)`` violates."""
    for formula, tree, target in order_conditions(order):
        value = float(b @ _stage_weights(a, tree))
        if abs(value - target) > _TOLERANCE:
            raise ValueError(
                f"order condition {formula.replace('b', label, 1)} = 1/{_density(tree)} "
                f"(tree of order {_size(tree)}) fails: got {value:.12g}, expected "
                f"{target:.12g}; the weights {label} do not give order {order}."
            )


@dataclasses.dataclass(frozen=True, eq=False)
class ButcherTableau:
    """An explicit Runge–Kutta tableau, optionally with embedded error weights.

    Attributes:
      a: ``(s, s)`` strictly lower-triangular stage coefficients.
      b: ``(s,)`` weights of the propagated solution (order ``order``).
      c: ``(s,)`` nodes, equal to the row sums of ``a``.
      order: the classical order, checked against all order conditions.
      b_error: optional ``(s,)`` error weights ``b - b̂`` of an embedded method
        ``b̂`` of order ``embedded_order``; they sum to zero.
      embedded_order: the order of ``b̂`` (required with ``b_error``).
      name: a label used in messages and tables.
    """

    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    order: int
    b_error: np.ndarray | None = None
    embedded_order: int | None = None
    name: str = "custom"

    def __post_init__(self) -> None:
        a = _as_float_array(self.a, "a")
        b = _as_float_array(self.b, "b")
        c = _as_float_array(self.c, "c")
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "b", b)
        object.__setattr__(self, "c", c)
        if a.ndim != 2 or a.shape[0] != a.shape[1]:
            raise ValueError(f"tableau {self.name}: a must be a square matrix, got shape {a.shape}.")
        stages = a.shape[0]
        if b.shape != (stages,) or c.shape != (stages,):
            raise ValueError(
                f"tableau {self.name}: b and c must have {stages} entries, "
                f"got shapes {b.shape} and {c.shape}."
            )
        if np.any(np.triu(a) != 0):
            raise ValueError(
                f"tableau {self.name}: a must be strictly lower triangular for an explicit method."
            )
        if not np.allclose(a.sum(axis=1), c, atol=_TOLERANCE, rtol=0):
            raise ValueError(
                f"tableau {self.name}: row sums of a {a.sum(axis=1)} must equal c {c}."
            )
        if abs(b.sum() - 1.0) > _TOLERANCE:
            raise ValueError(f"tableau {self.name}: weights b must sum to 1, got {b.sum():.12g}.")
        if not isinstance(self.order, (int, np.integer)) or self.order < 1:
            raise ValueError(f"tableau {self.name}: order must be a positive integer, got {self.order!r}.")
        check_order(a, b, int(self.order))
        self._check_embedded(a, b)

    def _check_embedded(self, a: np.ndarray, b: np.ndarray) -> None:
        if self.b_error is None:
            if self.embedded_order is not None:
                raise ValueError(f"tableau {self.name}: embedded_order given without b_error.")
            return
        b_error = _as_float_array(self.b_error, "b_error")
        object.__setattr__(self, "b_error", b_error)
        if b_error.shape != b.shape:
            raise ValueError(
                f"tableau {self.name}: b_error must have shape {b.shape}, got {b_error.shape}."
            )
        if abs(b_error.sum()) > _TOLERANCE:
            raise ValueError(
                f"tableau {self.name}: error weights b_error must sum to 0, got {b_error.sum():.12g}."
            )
        if not isinstance(self.embedded_order, (int, np.integer)) or not 1 <= self.embedded_order < self.order + 1:
            raise ValueError(
                f"tableau {self.name}: embedded_order must be an integer in 1..{self.order}, "
                f"got {self.embedded_order!r}."
            )
        check_order(a, b - b_error, int(self.embedded_order), label="b̂")

    @property
    def num_stages(self) -> int:
        """The number of stages ``s`` (rows of ``a``)."""
        return self.a.shape[0]

    @property
    def is_embedded(self) -> bool:
        """Whether the tableau carries error weights ``b_error`` for step-size control."""
        return self.b_error is not None

    @property
    def fsal(self) -> bool:
        """Whether the method is first-same-as-last (its last stage is evaluated at ``θ_{n+1}``)."""
        return bool(self.c[-1] == 1.0 and np.array_equal(self.a[-1], self.b) and self.b[-1] == 0)

    def __repr__(self) -> str:
        pair = f", embedded_order={self.embedded_order}" if self.is_embedded else ""
        return f"ButcherTableau(name={self.name!r}, stages={self.num_stages}, order={self.order}{pair})"


def check_tableau(tableau: object) -> None:
    """Raise ``ValueError`` unless ``tableau`` is a :class:`ButcherTableau`."""
    if not isinstance(tableau, ButcherTableau):
        raise ValueError(f"tableau must be a flowopt.ButcherTableau, got {type(tableau).__name__}.")


def _as_float_array(values: Sequence | np.ndarray, label: str) -> np.ndarray:
    array = np.array(values, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"tableau entry {label} contains non-finite values.")
    array.setflags(write=False)
    return array


def lower_triangular(rows: Sequence[Sequence[float]]) -> np.ndarray:
    """Build a strictly lower-triangular ``a`` from its ragged rows below the diagonal."""
    stages = len(rows) + 1
    a = np.zeros((stages, stages))
    for i, row in enumerate(rows, start=1):
        if len(row) != i:
            raise ValueError(f"row {i} of a must have {i} entries below the diagonal, got {len(row)}.")
        a[i, :i] = row
    return a
