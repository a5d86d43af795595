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
import math
import numbers
from collections.abc import Sequence
from typing import Any

import jax
import jax.core
import numpy as np

from flowopt.core.checks import check_integer

_TOLERANCE = 1e-10

MAX_ORDER = 14
"""The highest order whose conditions are checked: 53,272 trees, a few seconds.

The number of rooted trees grows about 2.96 times per order (order 20 alone
has 12,826,228), so higher orders are refused before any tree is enumerated.
The highest order of a published explicit Runge–Kutta method is 14 (Feagin).
"""

Vector = Sequence[float] | np.ndarray
"""What a tableau accepts for ``b``, ``c`` and ``b_error``: a sequence of real numbers or an array."""

Matrix = Sequence[Sequence[float]] | np.ndarray
"""What a tableau accepts for ``a``: rows of real numbers or an ``(s, s)`` array."""

# A rooted tree is the sorted tuple of its children's subtrees; () is the single vertex.
Tree = tuple


def rooted_trees(order: int) -> tuple[Tree, ...]:
    """All rooted trees with ``order`` vertices, each exactly once (canonical form).

    Raises:
      ValueError: unless ``order`` is an integer in ``1..MAX_ORDER``.
    """
    return _rooted_trees(_check_tree_order("order", order))


@functools.cache
def _rooted_trees(order: int) -> tuple[Tree, ...]:
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
        for first in _rooted_trees(first_size)
        for rest in _forests(vertices - first_size)
    )


@functools.cache
def _size(tree: Tree) -> int:
    return 1 + sum(_size(child) for child in tree)


@functools.cache
def _density(tree: Tree) -> int:
    """γ(t): the tree's size times the densities of its subtrees."""
    return _size(tree) * int(np.prod([_density(child) for child in tree], dtype=np.int64))


def _stage_weights(a: np.ndarray, tree: Tree, cache: dict[Tree, np.ndarray] | None = None) -> np.ndarray:
    """Φ(t) as a vector over stages: the product over children of ``a @ Φ(child)``."""
    if cache is not None and tree in cache:
        return cache[tree]
    weights = np.ones(a.shape[0])
    for child in tree:
        weights = weights * (a @ _stage_weights(a, child, cache))
    if cache is not None:
        cache[tree] = weights
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


def min_stages(order: int) -> int:
    """The fewest stages an explicit Runge–Kutta method of ``order`` can have (Butcher's barriers).

    ``s ≥ p`` for ``p ≤ 4``; ``s ≥ p + 1`` for ``p = 5, 6``; ``s ≥ p + 2`` for
    ``p = 7``; ``s ≥ p + 3`` for ``p ≥ 8`` (Butcher 1964, 1965, 1985; Hairer,
    Nørsett & Wanner, *Solving ODEs I*, §II.5; tight up to ``p = 8``).
    """
    order = check_integer("order", order, 1)
    if order <= 4:
        return order
    if order <= 6:
        return order + 1
    if order == 7:
        return order + 2
    return order + 3


def order_conditions(order: int) -> list[tuple[str, Tree, float]]:
    """The conditions ``b·Φ(t) = 1/γ(t)`` for every tree with at most ``order`` vertices.

    Raises:
      ValueError: unless ``order`` is an integer in ``1..MAX_ORDER``.
    """
    order = _check_tree_order("order", order)
    return [(_describe(tree), tree, 1.0 / _density(tree)) for size in range(1, order + 1) for tree in rooted_trees(size)]


def check_order(a: np.ndarray, b: np.ndarray, order: int, label: str = "b") -> None:
    """Raise ``ValueError`` naming the first order condition that ``(a, b)`` violates.

    ``a`` is an ``(s, s)`` matrix and ``b`` has ``s`` entries (real numbers);
    ``order`` an integer in ``1..MAX_ORDER``.
    """
    if not isinstance(label, str):
        raise ValueError(f"check_order: label must be a string, got {label!r}.")
    a = _real_array(a, "a", 2, "check_order: ")
    b = _real_array(b, label, 1, "check_order: ")
    if a.shape[0] != a.shape[1] or b.shape != (a.shape[0],):
        raise ValueError(
            f"check_order: a must be an (s, s) matrix and {label} a vector of its s entries, got shapes {a.shape} and {b.shape}."
        )
    failure = _first_failure(a, b, _check_tree_order("order", order), label)
    if failure is not None:
        raise ValueError(failure)


def _first_failure(a: np.ndarray, b: np.ndarray, order: int, label: str = "b") -> str | None:
    """The first violated condition of order at most ``order``, described; ``None`` if all hold.

    Trees are enumerated one order at a time, so a low-order failure costs
    nothing of the higher orders.
    """
    cache: dict[Tree, np.ndarray] = {}
    for size in range(1, order + 1):
        for tree in rooted_trees(size):
            value = float(b @ _stage_weights(a, tree, cache))
            target = 1.0 / _density(tree)
            if abs(value - target) > _TOLERANCE:
                return (
                    f"order condition {_describe(tree).replace('b', label, 1)} = 1/{_density(tree)} "
                    f"(tree of order {size}) fails: got {value:.12g}, expected "
                    f"{target:.12g}; the weights {label} do not give order {order}."
                )
    return None


@dataclasses.dataclass(frozen=True, eq=False, init=False)
class ButcherTableau:
    """An explicit Runge–Kutta tableau, optionally with embedded error weights.

    Attributes:
      a: ``(s, s)`` strictly lower-triangular stage coefficients.
      b: ``(s,)`` weights of the propagated solution (order ``order``).
      c: ``(s,)`` nodes, equal to the row sums of ``a``.
      order: the classical order, checked against all order conditions; at
        most ``MAX_ORDER`` (14) and within Butcher's barriers for ``s`` stages
        (see ``flowopt.rk.tableau.min_stages``).
      b_error: optional ``(s,)`` error weights ``b - b̂`` of an embedded method
        ``b̂`` of order ``embedded_order``; they sum to zero and must give an
        error estimate that is not identically zero.
      embedded_order: the order of ``b̂`` (required with ``b_error``).
      name: a label used in messages and tables.

    Every entry is a real number (not a bool, a complex number, a string or
    ``None``); anything else is a ``ValueError`` naming the entry. The cheap
    checks (types, shapes, the order against the stage count) come before the
    order conditions, so an impossible order is refused at once.
    """

    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    order: int
    b_error: np.ndarray | None = None
    embedded_order: int | None = None
    name: str = "custom"

    def __init__(
        self,
        a: Matrix,
        b: Vector,
        c: Vector,
        order: int,
        b_error: Vector | None = None,
        embedded_order: int | None = None,
        name: str = "custom",
    ):
        # The entries are taken as given and converted to read-only float64 arrays by the checks below.
        for field, value in zip(
            ("a", "b", "c", "order", "b_error", "embedded_order", "name"), (a, b, c, order, b_error, embedded_order, name)
        ):
            object.__setattr__(self, field, value)
        self._validate()

    def _validate(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"tableau name must be a non-empty string, got {self.name!r}.")
        where = f"tableau {self.name}: "
        a = _real_array(self.a, "a", 2, where)
        b = _real_array(self.b, "b", 1, where)
        c = _real_array(self.c, "c", 1, where)
        b_error = None if self.b_error is None else _real_array(self.b_error, "b_error", 1, where)
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "b", b)
        object.__setattr__(self, "c", c)
        object.__setattr__(self, "b_error", b_error)
        if a.shape[0] != a.shape[1]:
            raise ValueError(f"{where}a must be a square matrix, got shape {a.shape}.")
        stages = a.shape[0]
        if stages == 0:
            raise ValueError(f"{where}a method needs at least one stage, got an empty tableau (a of shape {a.shape}).")
        if b.shape != (stages,) or c.shape != (stages,):
            raise ValueError(f"{where}b and c must have {stages} entries, got shapes {b.shape} and {c.shape}.")
        order = check_integer(f"{where}order", self.order, 1)
        if order > MAX_ORDER:
            raise ValueError(
                f"{where}order {order} exceeds MAX_ORDER = {MAX_ORDER}: its order conditions run over "
                f"{_tree_count_estimate(order)} rooted trees of order {order} alone, too many to check."
            )
        embedded_order = None
        if b_error is None:
            if self.embedded_order is not None:
                raise ValueError(f"{where}embedded_order given without b_error.")
        else:
            if b_error.shape != b.shape:
                raise ValueError(f"{where}b_error must have shape {b.shape}, got {b_error.shape}.")
            embedded_order = check_integer(f"{where}embedded_order", self.embedded_order, 1)
            if embedded_order > order:
                raise ValueError(
                    f"{where}embedded_order must be an integer in 1..{order} (at most order), got {self.embedded_order!r}."
                )
        if np.any(np.triu(a) != 0):
            raise ValueError(f"{where}a must be strictly lower triangular for an explicit method.")
        if not np.allclose(a.sum(axis=1), c, atol=_TOLERANCE, rtol=0):
            raise ValueError(f"{where}row sums of a {a.sum(axis=1)} must equal c {c}.")
        if abs(b.sum() - 1.0) > _TOLERANCE:
            raise ValueError(f"{where}weights b must sum to 1, got {b.sum():.12g}.")
        if b_error is not None:
            _check_error_weights(a, b_error, where)
        _check_reachable(a, b, order, where)
        check_order(a, b, order)
        if b_error is not None and embedded_order is not None:  # embedded_order is checked above whenever b_error is given
            check_order(a, b - b_error, embedded_order, label="b̂")

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


def _check_error_weights(a: np.ndarray, b_error: np.ndarray, where: str) -> None:
    """``b_error`` sums to 0 and gives an error estimate that is not identically zero."""
    if abs(b_error.sum()) > _TOLERANCE:
        raise ValueError(f"{where}error weights b_error must sum to 0, got {b_error.sum():.12g}.")
    if np.all(np.abs(b_error) <= _TOLERANCE):
        raise ValueError(
            f"{where}error weights b_error are all zero (b̂ = b): the error estimate would always be 0 "
            "and the step-size controller would grow the step without bound. Give b_error = b - b̂ "
            "for embedded weights b̂ of a different order."
        )
    # On a linear flow θ' = Lθ the estimate is Σ_m h^{m+1} (b_error·A^m 1) L^{m+1} θ (A is nilpotent).
    moments, vector = [], np.ones(a.shape[0])
    for _ in range(a.shape[0]):
        moments.append(float(b_error @ vector))
        vector = a @ vector
    if max(abs(m) for m in moments) <= _TOLERANCE:
        raise ValueError(
            f"{where}error weights b_error give an error estimate of 0 on every linear flow "
            "(b_error·A^m·1 = 0 for every m), so on every quadratic loss the step-size controller "
            "would grow the step without bound; the weights cancel between stages that coincide."
        )


def _check_tree_order(name: str, value: Any) -> int:
    order = check_integer(name, value, 1)
    if order > MAX_ORDER:
        raise ValueError(
            f"{name} {order} exceeds MAX_ORDER = {MAX_ORDER}: there are {_tree_count_estimate(order)} "
            f"rooted trees of order {order}, too many to enumerate."
        )
    return order


def _tree_count_estimate(order: int) -> str:
    # Otter's asymptotics of OEIS A000081: about 0.4399 · 2.9558^n / n^1.5 trees with n vertices.
    exponent = math.log10(0.4399) + order * math.log10(2.9558) - 1.5 * math.log10(order)
    return f"about {10 ** (exponent % 1):.3g}e+{int(exponent):02d}"


def _check_reachable(a: np.ndarray, b: np.ndarray, order: int, where: str) -> None:
    """Refuse an order that ``s`` stages cannot reach (Butcher's barriers), naming a failing condition.

    The failing condition is found among trees of order at most ``s + 1``
    (an ``s``-stage method never has order above ``s``).
    """
    stages = a.shape[0]
    needed = min_stages(order)
    if stages < needed:
        barrier = (
            "an explicit s-stage method has order at most s"
            if order <= 4
            else "Butcher's barriers: order p needs s ≥ p+1 for p = 5, 6, s ≥ p+2 for p = 7 and s ≥ p+3 for p ≥ 8"
        )
        failure = _first_failure(a, b, min(order, stages + 1))
        raise ValueError(
            f"{where}order {order} is impossible with {stages} stage{'' if stages == 1 else 's'}: the order conditions of order "
            f"{order} need at least {needed} stages ({barrier})" + (f"; here the {failure}" if failure else ".")
        )


def _first_non_real(values: Any, index: str) -> tuple[str, Any, str] | None:
    """The first entry of nested ``values`` that is not a real number: ``(index, entry, why)``."""
    if isinstance(values, jax.core.Tracer):
        return index, values, "a traced value (a tableau holds concrete numbers: build it outside jit)"
    if isinstance(values, (str, bytes)):
        return index, values, "a string"
    if values is None:
        return index, values, "None"
    if isinstance(values, (bool, np.bool_)):
        return index, values, "a bool"
    if isinstance(values, (list, tuple)):
        for i, item in enumerate(values):
            found = _first_non_real(item, f"{index}[{i}]")
            if found is not None:
                return found
        return None
    if hasattr(values, "dtype") and hasattr(values, "shape") and getattr(values, "ndim", 0) > 0:
        dtype = np.dtype(values.dtype)
        if dtype == np.bool_:
            return index, values, "an array of bools"
        if np.issubdtype(dtype, np.complexfloating):
            return index, values, "an array of complex numbers"
        if np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer):
            return None
        return _first_non_real(list(np.asarray(values)), index)
    if isinstance(values, numbers.Complex) and not isinstance(values, numbers.Real):
        return index, values, "a complex number"
    if isinstance(values, np.generic) and np.issubdtype(values.dtype, np.complexfloating):
        return index, values, "a complex number"
    try:
        float(values)
    except (TypeError, ValueError, OverflowError):
        return index, values, f"a {type(values).__name__}"
    return None


def _real_array(values: Any, label: str, ndim: int, where: str, expected: str | None = None) -> np.ndarray:
    """``values`` as a read-only float64 array of ``ndim`` dimensions, or a ``ValueError`` naming ``label``."""
    if expected is None:
        expected = "a vector of s real numbers" if ndim == 1 else "an (s, s) matrix of real numbers"
    found = _first_non_real(values, label)
    if found is not None:
        index, entry, why = found
        shown = "" if entry is None else " " + (repr(entry) if len(repr(entry)) <= 60 else repr(entry)[:57] + "...")
        if index == label:
            raise ValueError(f"{where}{label} must be {expected}, got {why}{shown}.")
        raise ValueError(f"{where}{label} must be {expected}: entry {index} is {why}{shown}, not a real number.")
    try:
        array = np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"{where}{label} is ragged (its rows have different lengths or nesting); {label} must be {expected}."
        ) from None
    if array.ndim != ndim:
        raise ValueError(f"{where}{label} must be {expected} ({ndim}-dimensional), got shape {array.shape}.")
    bad = np.argwhere(~np.isfinite(array))
    if bad.size:
        position = "".join(f"[{i}]" for i in bad[0])
        raise ValueError(f"{where}entry {label}{position} = {array[tuple(bad[0])]} is non-finite; {label} must be {expected}.")
    array.setflags(write=False)
    return array


def lower_triangular(rows: Sequence[Sequence[float]]) -> np.ndarray:
    """Build a strictly lower-triangular ``a`` from its ragged rows below the diagonal.

    ``rows[i - 1]`` holds the ``i`` real numbers ``a[i, :i]``; ``[]`` gives the
    ``1×1`` zero matrix (Euler).
    """
    if not isinstance(rows, (list, tuple, np.ndarray)):
        raise ValueError(f"lower_triangular: rows must be a list of rows (row i with i real numbers), got {rows!r}.")
    stages = len(rows) + 1
    a = np.zeros((stages, stages))
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, (list, tuple, np.ndarray)) or np.ndim(row) != 1:
            raise ValueError(f"lower_triangular: row {i} of a must be a list of {i} real numbers, got {row!r}.")
        if len(row) != i:
            raise ValueError(f"lower_triangular: row {i} of a must have {i} entries below the diagonal, got {len(row)}.")
        a[i, :i] = _real_array(row, f"a[{i}]", 1, "lower_triangular: ", f"a list of {i} real numbers")
    return a
