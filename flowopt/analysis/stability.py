"""Linear stability of flowopt's integrators on the test equation ``θ' = λθ``.

On a quadratic ``f(θ) = ½ θᵀHθ`` the gradient flow is ``θ' = -Hθ``: along an
eigenvector of ``H`` with eigenvalue ``μ ∈ (0, L]`` it is the test equation
with ``λ = -μ``, and a method with step ``h`` sees ``z = hλ ∈ [-hL, 0)``.

- An explicit Runge–Kutta tableau maps ``θ_n`` to ``R(z) θ_n`` with the
  stability function ``R(z) = 1 + z bᵀ(I - zA)⁻¹𝟙 = Σ_k (bᵀA^{k-1}𝟙) z^k``,
  a polynomial of degree at most ``s``; it is stable at ``z`` when ``|R(z)| ≤ 1``.
- A linear multistep method ``Σ_j α_j θ_{n+1-j} = h Σ_j β_j g(θ_{n+1-j})``
  (BDF-τ, ``θ_{n+1} + Σ_j a_j θ_{n+1-j} = βh g(θ_{n+1})``; Adams–Bashforth
  ``θ_{n+1} - θ_n = h Σ_j b_j g(θ_{n-j})``) is stable at ``z`` when every
  root ``ζ`` of ``ρ(ζ) - zσ(ζ)`` has ``|ζ| ≤ 1``, those on the unit circle
  simple: the root condition.

:func:`stability_interval` gives the largest ``x = hL`` for which every
``z ∈ [-x, 0]`` is stable, i.e. the largest step (in units of ``1/L``) that
is stable on every quadratic with curvature at most ``L``. Hairer & Wanner,
*Solving Ordinary Differential Equations II*, §IV.2 and §V.1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from flowopt.multistep.coefficients import ADAMS_BASHFORTH_COEFFICIENTS, BDF_COEFFICIENTS
from flowopt.rk import tableaus
from flowopt.rk.chebyshev import ChebyshevMethod
from flowopt.rk.stability import first_unstable, runge_kutta_crossings, stability_polynomial
from flowopt.rk.tableau import ButcherTableau


class LinearMultistep(NamedTuple):
    """``ρ(ζ) = Σ_j α_j ζ^{τ-j}`` and ``σ(ζ) = Σ_j β_j ζ^{τ-j}``, coefficients highest degree first."""

    name: str
    rho: np.ndarray
    sigma: np.ndarray


def bdf_method(order: int) -> LinearMultistep:
    """BDF-τ: ``ρ(ζ) = ζ^τ + Σ_j a_j ζ^{τ-j}``, ``σ(ζ) = β ζ^τ`` (coefficients from :mod:`flowopt.multistep.coefficients`)."""
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order not in BDF_COEFFICIENTS:
        raise ValueError(f"BDF order must be in {sorted(BDF_COEFFICIENTS)}, got {order!r}.")
    a, beta = BDF_COEFFICIENTS[order]
    sigma = np.zeros(order + 1)
    sigma[0] = float(beta)
    return LinearMultistep(f"bdf{order}", np.array([1.0] + [float(x) for x in a]), sigma)


def adams_bashforth_method(order: int) -> LinearMultistep:
    """AB-τ: ``ρ(ζ) = ζ^τ - ζ^{τ-1}``, ``σ(ζ) = Σ_j b_j ζ^{τ-1-j}`` (from :mod:`flowopt.multistep.coefficients`)."""
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order not in ADAMS_BASHFORTH_COEFFICIENTS:
        raise ValueError(f"Adams–Bashforth order must be in {sorted(ADAMS_BASHFORTH_COEFFICIENTS)}, got {order!r}.")
    rho = np.zeros(order + 1)
    rho[:2] = [1.0, -1.0]
    sigma = np.array([0.0] + [float(b) for b in ADAMS_BASHFORTH_COEFFICIENTS[order]])
    return LinearMultistep(f"ab{order}", rho, sigma)


Method = ButcherTableau | LinearMultistep | ChebyshevMethod | str

_NAMED: dict[str, ButcherTableau | LinearMultistep] = {
    **{tableau.name: tableau for tableau in tableaus.ALL},
    "backward_euler": bdf_method(1)._replace(name="backward_euler"),
    **{f"bdf{order}": bdf_method(order) for order in BDF_COEFFICIENTS},
    **{f"ab{order}": adams_bashforth_method(order) for order in ADAMS_BASHFORTH_COEFFICIENTS},
}
NAMED_METHODS: tuple[str, ...] = tuple(_NAMED)

# Roots of modulus at most 1 + _ROOT_SLACK count as on or inside the unit circle.
_ROOT_SLACK = 1e-9


def _resolve(method: Method) -> ButcherTableau | LinearMultistep | ChebyshevMethod:
    if isinstance(method, (ButcherTableau, ChebyshevMethod)):
        return method
    if isinstance(method, LinearMultistep):
        return _check_multistep(method)
    if isinstance(method, str) and method.lower() in _NAMED:
        return _NAMED[method.lower()]
    raise ValueError(
        "method must be a flowopt.ButcherTableau, a LinearMultistep, a ChebyshevMethod or one of "
        f"{', '.join(NAMED_METHODS)}; got {method!r}."
    )


def _check_multistep(method: LinearMultistep) -> LinearMultistep:
    """Real, finite, equal-length coefficients with ``α_0 ≠ 0`` and ``σ ≠ 0``, as float arrays."""
    arrays = []
    for label in ("rho", "sigma"):
        value = getattr(method, label)
        try:
            array = np.asarray(value)
            ok = array.dtype.kind in "iuf" and array.ndim == 1 and array.size >= 2
        except Exception:
            ok = False
        if not ok:
            raise ValueError(
                f"LinearMultistep {method.name!r}: {label} must be a 1-D array of at least 2 real coefficients "
                f"(highest degree first), got {value!r:.80}."
            )
        array = array.astype(float)
        if not np.all(np.isfinite(array)):
            raise ValueError(f"LinearMultistep {method.name!r}: {label} must be finite, got {array}.")
        arrays.append(array)
    rho, sigma = arrays
    if rho.size != sigma.size:
        raise ValueError(
            f"LinearMultistep {method.name!r}: rho and sigma must have equal lengths (pad sigma with leading zeros "
            f"for an explicit method), got {rho.size} and {sigma.size}."
        )
    if rho[0] == 0:
        raise ValueError(f"LinearMultistep {method.name!r}: the leading coefficient rho[0] must be nonzero, got {rho}.")
    if not np.any(sigma):
        raise ValueError(f"LinearMultistep {method.name!r}: sigma is zero, so the method ignores the gradient.")
    return LinearMultistep(method.name, rho, sigma)


def _check_z(function: str, z, *, scalar: bool) -> np.ndarray:
    """``z = hλ`` as a finite complex array (a scalar where ``scalar``)."""
    try:
        array = np.asarray(z)
        ok = array.dtype.kind in "iufc"
    except Exception:
        ok = False
    if not ok:
        raise ValueError(
            f"{function}: z must be a {'complex number' if scalar else 'number or array of numbers'}, got {z!r:.80}."
        )
    if scalar and array.ndim != 0:
        raise ValueError(
            f"{function}: z must be a single complex number, got an array of shape {array.shape} (use amplification for arrays)."
        )
    array = array.astype(complex)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{function}: z must be finite, got {z!r:.80}.")
    return array


def _name(method: Method) -> str:
    return method if isinstance(method, str) else method.name


def stability_function(tableau: ButcherTableau) -> Callable[[np.ndarray | complex], np.ndarray]:
    """``R(z) = 1 + z bᵀ(I - zA)⁻¹𝟙`` of an explicit tableau, vectorised over complex ``z``."""
    coefficients = stability_polynomial(tableau)
    return lambda z: np.polynomial.polynomial.polyval(_check_z("stability_function", z, scalar=False), coefficients)


def characteristic_roots(method: Method, z: complex) -> np.ndarray:
    """The roots ``ζ`` of ``ρ(ζ) - zσ(ζ)`` (a multistep method) or ``[R(z)]`` (a Runge–Kutta tableau).

    Where the leading coefficient ``α_0 - zβ_0`` of an implicit method vanishes
    (``z = α_0/β_0``), one root has gone to infinity and is returned as ``inf``.
    """
    resolved = _resolve(method)
    z = complex(_check_z("characteristic_roots", z, scalar=True))
    if isinstance(resolved, ChebyshevMethod):
        return np.atleast_1d(resolved.stability_function(z))
    if isinstance(resolved, ButcherTableau):
        return np.atleast_1d(stability_function(resolved)(z))
    coefficients = resolved.rho - z * resolved.sigma
    degree = resolved.rho.size - 1
    roots = np.roots(coefficients)  # drops leading zeros: those roots are at infinity
    return np.concatenate([np.full(degree - roots.size, complex(np.inf)), roots.astype(complex)])


def amplification(method: Method, z: np.ndarray | complex) -> np.ndarray:
    """The growth per step at ``z = hλ``: ``|R(z)|``, or the largest root modulus of a multistep method.

    The method is stable at ``z`` when this is at most 1 (and, for multistep
    methods, roots of modulus one are simple).
    """
    resolved = _resolve(method)
    z = _check_z("amplification", z, scalar=False)
    if isinstance(resolved, ChebyshevMethod):
        return np.abs(resolved.stability_function(z))
    if isinstance(resolved, ButcherTableau):
        return np.abs(stability_function(resolved)(z))
    return _spectral_radius(resolved, z)


def is_stable(method: Method, z: complex) -> bool:
    """Whether ``method`` is stable at ``z = hλ`` (the root condition for multistep methods)."""
    roots = characteristic_roots(method, z)
    moduli = np.abs(roots)
    if np.any(moduli > 1.0 + _ROOT_SLACK):
        return False
    on_circle = roots[moduli > 1.0 - _ROOT_SLACK]
    distinct = np.abs(on_circle[:, None] - on_circle[None, :]) > 1e-6
    return bool(np.all(distinct | np.eye(len(on_circle), dtype=bool)))


def stability_interval(method: Method) -> float:
    """The largest ``x = hL`` such that ``method`` is stable at every ``z ∈ [-x, 0]``.

    The step-size limit on a quadratic with largest curvature ``L`` is
    ``x / L``; ``inf`` when the whole negative real axis is stable (backward
    Euler and every BDF up to order 6). Examples: Euler and Heun 2, RK3
    2.5127, RK4 2.7853, DOPRI5 3.3066; Adams–Bashforth 2, 1, 6/11, 3/10.

    Stability can change only where a root crosses the unit circle; these
    points are found exactly (roots of ``R(-x) = ±1`` for Runge–Kutta, real
    crossings of the boundary locus ``z = ρ(e^{iφ})/σ(e^{iφ})`` for multistep
    methods), then each interval between them is tested once.

    A Runge–Kutta–Chebyshev method gives its closed form
    (:attr:`flowopt.rk.chebyshev.ChebyshevMethod.stability_interval`): its
    polynomial has degree ``s``, in the hundreds, where monomial roots are
    not accurate.

    Args:
      method: a :class:`~flowopt.ButcherTableau`, a :class:`LinearMultistep`,
        a :class:`~flowopt.rk.chebyshev.ChebyshevMethod` or a name from
        :data:`NAMED_METHODS`.
    """
    resolved = _resolve(method)
    if isinstance(resolved, ChebyshevMethod):
        return resolved.stability_interval
    if isinstance(resolved, ButcherTableau):
        crossings = runge_kutta_crossings(resolved)
    else:
        crossings = _multistep_crossings(resolved)
    return first_unstable(lambda x: is_stable(resolved, -x), crossings)


def _boundary_locus(method: LinearMultistep, phi: np.ndarray) -> np.ndarray:
    """``z(φ) = ρ(e^{iφ}) / σ(e^{iφ})``: where ``ζ = e^{iφ}`` is a root."""
    zeta = np.exp(1j * phi)
    return np.polyval(method.rho, zeta) / np.polyval(method.sigma, zeta)


def _multistep_crossings(method: LinearMultistep) -> np.ndarray:
    """Real ``x > 0`` such that ``z = -x`` has a root on the unit circle."""
    import scipy.optimize

    phi = np.linspace(0.0, np.pi, 4097)[1:]  # φ = 0 gives z = 0 by consistency
    imaginary = np.imag(_boundary_locus(method, phi))
    crossings = []
    for i in np.flatnonzero(np.sign(imaginary[:-1]) * np.sign(imaginary[1:]) <= 0):
        root = (
            phi[i]
            if imaginary[i] == 0
            else scipy.optimize.brentq(lambda t: np.imag(_boundary_locus(method, np.array(t))), phi[i], phi[i + 1], xtol=1e-15)
        )
        crossings.append(-np.real(_boundary_locus(method, np.array(root))))
    crossings.append(-np.real(_boundary_locus(method, np.array(np.pi))))  # ζ = -1, always real
    crossings = np.array(crossings)
    return crossings[np.isfinite(crossings)]


def _spectral_radius(method: LinearMultistep, z: np.ndarray) -> np.ndarray:
    """The largest root modulus of ``ρ - zσ`` at every ``z``, by batched companion-matrix eigenvalues."""
    coefficients = method.rho[None, :] - z.ravel()[:, None] * method.sigma[None, :]
    order = method.rho.size - 1
    degenerate = coefficients[:, 0] == 0  # a root at infinity
    leading = np.where(degenerate, 1.0, coefficients[:, 0])
    companion = np.zeros((z.size, order, order), dtype=complex)
    companion[:, 0, :] = -coefficients[:, 1:] / leading[:, None]
    companion[:, np.arange(1, order), np.arange(order - 1)] = 1.0
    radius = np.abs(np.linalg.eigvals(companion)).max(axis=-1) if z.size else np.zeros(0)
    return np.where(degenerate, np.inf, radius).reshape(z.shape)


_PANELS = {
    # title: (extent (left, right, bottom, top), where the stable side is)
    "explicit Runge–Kutta": ((-5.0, 1.5, -4.0, 4.0), "inside each curve"),
    "Adams–Bashforth": ((-2.5, 0.5, -1.5, 1.5), "inside each curve"),
    "BDF": ((-12.0, 36.0, -24.0, 24.0), "outside each curve"),
}


def _panel(method: ButcherTableau | LinearMultistep) -> str:
    if isinstance(method, ButcherTableau):
        return "explicit Runge–Kutta"
    return "BDF" if method.sigma[0] != 0 else "Adams–Bashforth"


def plot_stability_regions(
    methods: Sequence[Method] | None = None,
    *,
    resolution: int = 400,
    figure=None,
):
    """Draw the stability regions ``{z : amplification(z) ≤ 1}`` of ``methods`` with matplotlib.

    Explicit Runge–Kutta, Adams–Bashforth (bounded regions, filled) and BDF
    methods (stable outside each curve) get a panel each; methods with the
    same stability function share one curve. The gradient flow of a quadratic
    lives on the negative real axis ``z = -hμ``, drawn in bold; the legend
    gives each method's :func:`stability_interval`.

    Args:
      methods: tableaus, multistep methods or names; all of :data:`NAMED_METHODS` by default.
      resolution: grid points per axis.
      figure: an existing ``matplotlib.figure.Figure`` to draw into.

    Returns:
      The figure.
    """
    import matplotlib
    import matplotlib.figure
    from matplotlib.lines import Line2D

    if methods is None:
        methods = list(NAMED_METHODS)
    elif isinstance(methods, (str, ButcherTableau, LinearMultistep)):
        methods = [methods]
    else:
        try:
            methods = list(methods)
        except TypeError:
            raise ValueError(
                f"plot_stability_regions: methods must be a method or a sequence of methods, got {methods!r:.80}."
            ) from None
    if not methods:
        raise ValueError("plot_stability_regions: methods is empty; pass at least one method (or None for all).")
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or not 2 <= resolution <= 4000:
        raise ValueError(f"plot_stability_regions: resolution must be an integer in [2, 4000], got {resolution!r}.")
    if figure is not None and not isinstance(figure, matplotlib.figure.Figure):
        raise ValueError(
            f"plot_stability_regions: figure must be a matplotlib.figure.Figure or None, got {type(figure).__name__}."
        )
    panels: dict[str, dict[tuple, list[Method]]] = {title: {} for title in _PANELS}
    for method in methods:
        resolved = _resolve(method)
        if isinstance(resolved, ChebyshevMethod):
            raise ValueError(
                f"plot_stability_regions: {resolved.name} is stable out to -{resolved.stability_interval:.4g}, beyond "
                "these panels; plot amplification(method, -x) along the real axis instead."
            )
        if isinstance(resolved, ButcherTableau):
            key = tuple(np.round(stability_polynomial(resolved), 12))
        else:
            key = tuple(np.round(np.concatenate([resolved.rho, resolved.sigma]), 12))
        panels[_panel(resolved)].setdefault(key, []).append(method)
    panels = {title: groups for title, groups in panels.items() if groups}
    figure = figure or matplotlib.figure.Figure(figsize=(6.0 * len(panels), 6.0), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    colors = matplotlib.colormaps["tab10"]
    for ax, (title, groups) in zip(axes, panels.items()):
        (left, right, bottom, top), stable_side = _PANELS[title]
        real, imaginary = np.meshgrid(np.linspace(left, right, resolution), np.linspace(bottom, top, resolution))
        handles = []
        for index, members in enumerate(groups.values()):
            growth = amplification(members[0], real + 1j * imaginary)
            color = colors(index % 10)
            if stable_side.startswith("inside"):
                ax.contourf(real, imaginary, growth, levels=[0.0, 1.0], colors=[color], alpha=0.08)
            ax.contour(real, imaginary, growth, levels=[1.0], colors=[color], linewidths=1.4)
            label = f"{', '.join(_name(m) for m in members)}: {stability_interval(members[0]):.4g}"
            handles.append(Line2D([], [], color=color, label=label))
        ax.axhline(0.0, color="0.6", linewidth=0.6)
        ax.axvline(0.0, color="0.6", linewidth=0.6)
        ax.plot([left, 0.0], [0.0, 0.0], color="black", linewidth=2.5)
        ax.set(xlim=(left, right), ylim=(bottom, top), aspect="equal", xlabel="Re z", ylabel="Im z")
        ax.set_title(f"{title}: stable {stable_side}")
        ax.legend(handles=handles, title="method: real interval hL", fontsize="small", loc="upper left")
    figure.suptitle("Linear stability regions, z = hλ (gradient flow of a quadratic: z = -hμ, bold)")
    return figure
