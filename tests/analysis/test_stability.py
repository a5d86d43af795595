"""Stability functions, real stability intervals and the region plot."""

import math

import numpy as np
import pytest

from flowopt import tableaus
from flowopt.analysis import stability
from flowopt.rk.tableau import ButcherTableau, lower_triangular

# Known real stability intervals: Hairer & Wanner II §IV.2; AB from the boundary locus.
KNOWN_INTERVALS = {
    "euler": 2.0,
    "heun": 2.0,
    "midpoint": 2.0,
    "ab1": 2.0,
    "ab2": 1.0,
    "ab3": 6 / 11,
    "ab4": 3 / 10,
}


@pytest.mark.parametrize("name, expected", KNOWN_INTERVALS.items())
def test_exact_intervals(name, expected):
    assert stability.stability_interval(name) == pytest.approx(expected, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize(
    "tableau, polynomial",
    [(tableaus.RK3, [1, 1, 1 / 2, 1 / 6]), (tableaus.RK4, [1, 1, 1 / 2, 1 / 6, 1 / 24])],
    ids=["rk3", "rk4"],
)
def test_rk3_rk4_intervals_are_the_first_root_of_r_equals_plus_or_minus_one(tableau, polynomial):
    # R is the truncated exponential; |R(-x)| first reaches 1 at the smallest x > 0 with R(-x) = ±1.
    roots = []
    for target in (1.0, -1.0):
        shifted = np.array(polynomial) * (-1.0) ** np.arange(len(polynomial))
        shifted[0] -= target
        roots.extend(np.polynomial.polynomial.polyroots(shifted))
    expected = min(r.real for r in roots if abs(r.imag) < 1e-12 and r.real > 1e-9)
    interval = stability.stability_interval(tableau)
    assert interval == pytest.approx(expected, rel=1e-12)
    assert interval == pytest.approx({3: 2.5127453266, 4: 2.7852935634}[tableau.order], abs=1e-9)
    # Stable just inside, unstable just outside.
    r = stability.stability_function(tableau)
    assert abs(r(-interval * (1 - 1e-6))) <= 1 and abs(r(-interval * (1 + 1e-6))) > 1


@pytest.mark.parametrize("name", ["backward_euler", "bdf1", "bdf2", "bdf3", "bdf4", "bdf5", "bdf6"])
def test_bdf_is_unbounded_on_the_negative_axis(name):
    assert stability.stability_interval(name) == math.inf
    # ...but BDF3+ is not A-stable: some z in the left half-plane near the imaginary axis is unstable.
    order = 1 if name == "backward_euler" else int(name[-1])
    unstable_left = any(not stability.is_stable(name, complex(-0.05, y)) for y in np.linspace(0.1, 20, 400))
    assert unstable_left == (order >= 3)


def test_bdf_root_condition():
    # z = 0: ρ(ζ) has the simple root 1; BDF is zero-stable. Right half-plane near 0: unstable.
    for order in range(1, 7):
        roots = stability.characteristic_roots(f"bdf{order}", 0.0)
        assert np.isclose(np.abs(roots).max(), 1.0)
        assert stability.is_stable(f"bdf{order}", 0.0)
        assert not stability.is_stable(f"bdf{order}", 0.1)
    # Backward Euler: ζ = 1/(1 - z).
    for z in (-3.0, 0.5 + 2j, 1.5):
        assert stability.characteristic_roots("backward_euler", z) == pytest.approx([1 / (1 - z)])


def test_double_root_on_the_circle_is_unstable():
    # ρ(ζ) = (ζ - 1)²: all roots have modulus one but the double root violates the root condition.
    weak = stability.LinearMultistep("weak", np.array([1.0, -2.0, 1.0]), np.array([0.0, 1.0, 0.0]))
    assert not stability.is_stable(weak, 0.0)


@pytest.mark.parametrize("tableau", tableaus.ALL, ids=lambda t: t.name)
def test_stability_function_matches_the_matrix_formula_and_the_exponential(tableau):
    rng = np.random.default_rng(0)
    zs = rng.normal(size=5) + 1j * rng.normal(size=5)
    ones = np.ones(tableau.num_stages)
    r = stability.stability_function(tableau)
    for z in zs:
        formula = 1 + z * tableau.b @ np.linalg.solve(np.eye(tableau.num_stages) - z * tableau.a, ones)
        assert r(z) == pytest.approx(formula, rel=1e-12)
    # R(z) = e^z + O(z^{p+1}): halving z divides the error by 2^{p+1}.
    errors = [abs(r(z) - np.exp(z)) for z in (0.1, 0.05)]
    assert np.log2(errors[0] / errors[1]) == pytest.approx(tableau.order + 1, abs=0.15)


def test_amplification_matches_is_stable():
    rng = np.random.default_rng(1)
    zs = rng.uniform(-4, 1, 50) + 1j * rng.uniform(-3, 3, 50)
    for name in ("rk4", "ab3", "bdf4"):
        growth = stability.amplification(name, zs)
        for z, g in zip(zs, growth):
            if abs(g - 1) > 1e-6:
                assert stability.is_stable(name, z) == (g < 1)


def test_custom_tableau_and_bad_input():
    # Heun's tableau written out by hand gives Heun's interval.
    custom = ButcherTableau(a=lower_triangular([[1.0]]), b=[0.5, 0.5], c=[0.0, 1.0], order=2, name="mine")
    assert stability.stability_interval(custom) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="method must be"):
        stability.stability_interval("rk5")
    with pytest.raises(ValueError, match="method must be"):
        stability.stability_interval(3)
    with pytest.raises(ValueError, match="BDF order"):
        stability.bdf_method(7)


def test_plot_draws_every_named_method(tmp_path):
    figure = stability.plot_stability_regions(resolution=120)
    axes = figure.get_axes()
    assert [ax.get_title().split(":")[0] for ax in axes] == ["explicit Runge–Kutta", "Adams–Bashforth", "BDF"]
    labels = " ".join(text.get_text() for ax in axes for text in ax.get_legend().get_texts())
    for name in stability.NAMED_METHODS:
        assert name in labels
    assert "2.785" in labels and "inf" in labels
    # Every panel holds one |growth| = 1 contour per distinct stability function.
    assert all(len(ax.collections) >= 4 for ax in axes)
    path = tmp_path / "regions.png"
    figure.savefig(path)
    assert path.stat().st_size > 10_000
