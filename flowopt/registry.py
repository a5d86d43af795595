"""Every flowopt optimizer constructor by name, with its cost per step and hyperparameters that train.

:data:`OPTIMIZERS` maps the name of each public constructor (``"rk4"``,
``"bdf"``, ``"guard_nonfinite"``, ...) to an :class:`OptimizerEntry`: the
constructor, a one-line description, the gradient evaluations one ``update``
costs and whether it calls the oracle (both as functions of the constructor's
arguments), and a set of arguments that converges on small test problems.
The contract tests run over every entry, and a public constructor without
one fails them.

:data:`BASELINES` holds the optax optimizers flowopt is compared with
(``"sgd"``, ``"momentum"``, ``"adam"``, ...) as entries of the same type,
apart from :data:`OPTIMIZERS`. :data:`ORDERS` gives the orders of the
constructors whose first argument is one, and :func:`resolve` turns any of
these names, or an order-suffixed one such as ``"bdf2"``, into its entry and
the arguments the name fixes.

Example:

    >>> from flowopt.registry import BASELINES, OPTIMIZERS, resolve
    >>> OPTIMIZERS["rk4"].gradients_per_step()
    4
    >>> OPTIMIZERS["bdf"].gradients_per_step(order=2, inner_steps=3)
    4
    >>> tx = OPTIMIZERS["heun"].build(learning_rate=0.1)
    >>> entry, fixed = resolve("bdf2")
    >>> entry.name, fixed
    ('bdf', {'order': 2})
    >>> BASELINES["adam"].gradients_per_step()
    1

**Cost.** A step's gradient evaluations are the incoming gradient plus the
oracle calls, as counted by :func:`flowopt.oracle_evaluations`. For
:func:`~flowopt.adaptive_runge_kutta` the figure is per attempt: an update
that retries makes ``s - 1`` further calls per extra attempt. The multistep
methods' figures are for the steps after their start-up (BDF's start-up and
Adams–Bashforth's Runge–Kutta start-up steps cost more), and BDF with an
``inner_tolerance`` may stop its inner solve early, so its figure is a bound.
Wrappers (:func:`~flowopt.guard_nonfinite`, :func:`~flowopt.as_optimizer`,
:func:`~flowopt.check_oracle`, :func:`~flowopt.lookahead`) cost what the
wrapped optimizer or integrator does (:func:`~flowopt.check_oracle` one
gradient more): their figure is ``None``.
"""

from __future__ import annotations

import dataclasses
import inspect
import operator
import re
import types
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from flowopt.alias import (
    adagrad_flow,
    adam_flow,
    adams_bashforth,
    adaptive_flow,
    adaptive_runge_kutta,
    backward_euler,
    bdf,
    euler,
    heavy_ball_flow,
    heun,
    midpoint,
    minibatch_adaptive_runge_kutta,
    nesterov_flow,
    ralston,
    rk3,
    rk4,
    rk38,
    rkc,
    rkc_auto,
    rmsprop_flow,
    runge_kutta,
    ssprk3,
)
from flowopt.core.integrator import as_optimizer
from flowopt.guard import guard_nonfinite
from flowopt.multistep.coefficients import MAX_ADAMS_BASHFORTH_ORDER, MAX_BDF_ORDER
from flowopt.rk import tableaus
from flowopt.rk.adaptive import attempt_oracle_calls
from flowopt.rk.stages import explicit_runge_kutta, oracle_calls
from flowopt.rk.tableau import ButcherTableau
from flowopt.wrappers import check_oracle, lookahead

Arguments = Mapping[str, Any]
"""A constructor's arguments by name, defaults included."""


class ParamsLayout(NamedTuple):
    """How an optimizer holds the model's parameters in the ``params`` of ``init`` and ``update``.

    Attributes:
      wrap: the optimizer's parameters from the model's.
      gradient_point: the model parameters at which the gradient passed to
        ``update`` and the oracle are evaluated.
      result: the model parameters the optimizer has reached (to evaluate).
    """

    wrap: Callable[[Any], Any]
    gradient_point: Callable[[Any], Any]
    result: Callable[[Any], Any]


def _same(params: Any) -> Any:
    return params


def _synced(params: Any) -> optax.LookaheadParams:
    # optax.LookaheadParams.init_synced puts one buffer in both fields: a step that donates them would fail.
    return optax.LookaheadParams(fast=params, slow=jax.tree.map(jnp.copy, params))


MODEL_PARAMS = ParamsLayout(wrap=_same, gradient_point=_same, result=_same)
"""The layout of every optimizer but lookahead, whose ``params`` are the model's parameters as they are."""

LOOKAHEAD_PARAMS = ParamsLayout(wrap=_synced, gradient_point=operator.attrgetter("fast"), result=operator.attrgetter("slow"))
"""``optax.LookaheadParams``, synced, the slow parameters in buffers of their own; gradients at the fast ones."""


FAMILIES: Mapping[str, str] = types.MappingProxyType(
    {
        "runge_kutta": "Explicit Runge–Kutta",
        "step_size_control": "Adaptive step sizes",
        "multistep": "Implicit and multistep",
        "flows": "The adaptive-algorithm flows",
        "wrappers": "Wrappers and the route from an integrator",
        "optax": "optax baselines",
    }
)
"""The kinds of optimizer by key, each with the title of its API section (:attr:`OptimizerEntry.family` names one)."""


@dataclasses.dataclass(frozen=True, eq=False)
class OptimizerEntry:
    """One optimizer constructor and what a caller needs to know to use and compare it.

    Attributes:
      name: the constructor's public name (``flowopt.<name>``).
      family: its kind, a key of :data:`FAMILIES` (the section of the API
        pages that documents it).
      constructor: returns an ``optax.GradientTransformationExtraArgs``.
      description: one line: the method and its equation or source.
      cost: ``arguments -> gradient evaluations per update`` (``None`` when
        the arguments do not determine it); see the module docstring.
      cost_formula: the same in words, as the API pages show it.
      oracle: ``arguments -> whether update() needs value_fn or grad_fn``
        (``None`` when the arguments do not determine it).
      test_arguments: arguments with which the optimizer converges on the
        contract tests' problems (a parabola, Rosenbrock's function, a matrix
        parabola, mixed-shape tensors, a complex parabola) in float32.
      static_args: the arguments ``optax.inject_hyperparams`` must treat as
        static (integers that fix the structure of the update).
      params_layout: how ``params`` holds the model's parameters.
    """

    name: str
    family: str
    constructor: Callable[..., optax.GradientTransformation]
    description: str
    cost: Callable[[Arguments], int | None]
    cost_formula: str
    oracle: Callable[[Arguments], bool | None]
    test_arguments: Arguments
    static_args: tuple[str, ...] = ()
    params_layout: ParamsLayout = MODEL_PARAMS

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"{self.name}: family must be one of {tuple(FAMILIES)}, got {self.family!r}.")
        object.__setattr__(self, "test_arguments", types.MappingProxyType(dict(self.test_arguments)))

    def arguments(self, **arguments: Any) -> dict[str, Any]:
        """``arguments`` bound to the constructor's signature with its defaults filled in.

        Raises:
          ValueError: if the constructor takes no argument of one of the given names.
        """
        try:
            bound = inspect.signature(self.constructor).bind_partial(**arguments)
        except TypeError as error:
            raise ValueError(f"{self.name}: {error}") from None
        bound.apply_defaults()
        return dict(bound.arguments)

    def gradients_per_step(self, **arguments: Any) -> int | None:
        """Gradient evaluations of one update built with ``arguments`` (the incoming gradient included).

        Raises:
          ValueError: if an argument the cost depends on (``order`` does not,
            ``inner_steps`` does) is missing, or the constructor does not take one given.
        """
        return self._evaluate(self.cost, arguments)

    def needs_oracle(self, **arguments: Any) -> bool | None:
        """Whether ``update`` of the optimizer built with ``arguments`` needs ``value_fn`` or ``grad_fn``."""
        return self._evaluate(self.oracle, arguments)

    def build(self, **overrides: Any) -> optax.GradientTransformation:
        """The optimizer with :attr:`test_arguments`, updated by ``overrides``."""
        return self.constructor(**{**self.test_arguments, **overrides})

    def _evaluate(self, rule: Callable[[Arguments], Any], arguments: dict[str, Any]) -> Any:
        bound = self.arguments(**arguments)
        try:
            return rule(bound)
        except KeyError as error:
            raise ValueError(f"{self.name}: this depends on the argument {error.args[0]}; pass it.") from None


def _stages(tableau: ButcherTableau, *, embedded: bool = False) -> int:
    """Gradient evaluations of one step of ``tableau``: its stages that a weight uses.

    With ``embedded`` the error weights count too (an adaptive attempt).
    """
    return 1 + (attempt_oracle_calls(tableau) if embedded else oracle_calls(tableau, (tableau.b,)))


class _Cost(NamedTuple):
    """What a kind of method costs: :attr:`OptimizerEntry.cost`, ``cost_formula`` and ``oracle``."""

    per_step: Callable[[Arguments], int | None]
    formula: str
    oracle: Callable[[Arguments], bool | None]


def _entry(
    constructor: Callable[..., optax.GradientTransformation],
    family: str,
    description: str,
    cost: _Cost,
    test_arguments: Arguments,
    **fields: Any,
) -> OptimizerEntry:
    """The entry of ``constructor``, named after it."""
    name = constructor.__name__
    return OptimizerEntry(name, family, constructor, description, *cost, test_arguments, **fields)


def _tableau_cost(tableau: ButcherTableau) -> _Cost:
    """A fixed-step method of ``tableau``: its stages that a weight uses."""
    count = _stages(tableau)
    return _Cost(lambda arguments: count, str(count), lambda arguments: count > 1)


def _flow_stages(arguments: Arguments) -> int:
    integrator = arguments["integrator"]
    return 1 if integrator is None else _stages(integrator)


def _wrapped(name: str, extra: str = "", oracle: Callable[[Arguments], bool | None] = lambda arguments: None) -> _Cost:
    """A constructor that wraps the optimizer or integrator ``name``: it costs what that one does."""
    return _Cost(lambda arguments: None, f"that of {name}{extra}", oracle)


def _proximal(start_up: str = "") -> _Cost:
    """An implicit method solved by ``inner_steps`` gradient steps on its proximal subproblem."""
    return _Cost(lambda arguments: 1 + arguments["inner_steps"], f"1 + inner_steps{start_up}", lambda arguments: True)


_ANY_TABLEAU = _Cost(
    lambda arguments: _stages(arguments["tableau"]),
    "stages of tableau that its weights use",
    lambda arguments: _stages(arguments["tableau"]) > 1,
)
_ATTEMPTS = _Cost(
    lambda arguments: _stages(arguments["tableau"], embedded=True),
    "stages s of tableau per attempt: 1 + (s - 1) × attempts",
    lambda arguments: True,
)
_FLOW = _Cost(_flow_stages, "1 (Euler), else the stages of integrator", lambda arguments: _flow_stages(arguments) > 1)
_HISTORY = _Cost(
    lambda arguments: 1,
    "1 (start-up steps: those of a Runge–Kutta method of that order)",
    lambda arguments: arguments["startup"] == "high_order" and arguments["order"] > 1,
)
_ONE_GRADIENT = _Cost(lambda arguments: 1, "1", lambda arguments: False)

_EXPLICIT_RATE = 2e-3  # below 2/L on Rosenbrock's function (L ≈ 1002 at its minimum)
_RATE = {"learning_rate": _EXPLICIT_RATE}
_RK, _ADAPTIVE, _MULTISTEP, _FLOWS, _WRAPPERS = "runge_kutta", "step_size_control", "multistep", "flows", "wrappers"

_ENTRIES = (
    _entry(euler, _RK, "Forward Euler: gradient descent, identical to optax.sgd.", _tableau_cost(tableaus.EULER), _RATE),
    _entry(heun, _RK, "Heun's two-stage method, order 2.", _tableau_cost(tableaus.HEUN), _RATE),
    _entry(ralston, _RK, "Ralston's two-stage method, order 2.", _tableau_cost(tableaus.RALSTON), _RATE),
    _entry(midpoint, _RK, "Explicit midpoint, order 2.", _tableau_cost(tableaus.MIDPOINT), _RATE),
    _entry(rk3, _RK, "Kutta's third-order method.", _tableau_cost(tableaus.RK3), _RATE),
    _entry(ssprk3, _RK, "Strong-stability-preserving RK3 (Shu & Osher).", _tableau_cost(tableaus.SSPRK3), _RATE),
    _entry(rk4, _RK, "Classical fourth-order Runge–Kutta.", _tableau_cost(tableaus.RK4), _RATE),
    _entry(rk38, _RK, "Kutta's 3/8 rule, order 4.", _tableau_cost(tableaus.RK38), _RATE),
    _entry(
        rkc,
        _RK,
        "Runge–Kutta–Chebyshev of order 1 or 2: s gradients, stable for h·L up to ≈ 1.94 s² (order 1).",
        _Cost(lambda arguments: arguments["stages"], "stages", lambda arguments: arguments["stages"] > 1),
        {"stages": 5, **_RATE},
        static_args=("stages", "order"),
    ),
    _entry(
        rkc_auto,
        _RK,
        "Runge–Kutta–Chebyshev with the fewest stages s that keep h·λ̂_max ≤ safety·ℓ_s, λ̂_max by Lanczos every N steps.",
        _Cost(
            lambda arguments: None,
            "s (chosen each step, order..max_stages) + 2 per Hessian-vector product (lanczos_iterations per estimate)",
            lambda arguments: True,
        ),
        {"learning_rate": 0.05, "estimate_every": 5, "lanczos_iterations": 4, "max_stages": 20},
        static_args=("order", "damping", "max_stages", "lanczos_iterations", "seed"),
    ),
    _entry(
        runge_kutta,
        _RK,
        "Fixed-step explicit Runge–Kutta of any ButcherTableau.",
        _ANY_TABLEAU,
        {"tableau": tableaus.DOPRI5, **_RATE},
    ),
    _entry(
        adaptive_runge_kutta,
        _ADAPTIVE,
        "Embedded Runge–Kutta pair with a PI step-size controller and step rejection.",
        _ATTEMPTS,
        {"tableau": tableaus.BOSH3, "learning_rate": 1e-3, "rtol": 1e-3, "atol": 1e-6},
        static_args=("max_attempts",),
    ),
    _entry(
        minibatch_adaptive_runge_kutta,
        _ADAPTIVE,
        "adaptive_runge_kutta for minibatch oracles: step bounds required, growth smoothed.",
        _ATTEMPTS,
        {"tableau": tableaus.HEUN_EULER, "learning_rate": 1e-3, "rtol": 1e-3, "atol": 1e-6, "dtmin": 1e-4, "dtmax": 1e-2},
        static_args=("max_attempts",),
    ),
    _entry(
        adams_bashforth,
        _MULTISTEP,
        "Explicit Adams–Bashforth of order 1–4 on stored gradients.",
        _HISTORY,
        {"order": 2, "learning_rate": 8e-4},
        static_args=("order",),
    ),
    _entry(
        backward_euler,
        _MULTISTEP,
        "Approximate backward Euler: a proximal-point step solved by inner gradient steps.",
        _proximal(),
        {"learning_rate": 0.05, "inner_steps": 3},
        static_args=("inner_steps",),
    ),
    _entry(
        bdf,
        _MULTISTEP,
        "Approximate BDF of order 1–6 (Huang et al.), solved by inner gradient steps.",
        _proximal(" (start-up steps: more)"),
        {"order": 2, "learning_rate": 0.05, "inner_steps": 3},
        static_args=("order", "inner_steps"),
    ),
    _entry(
        adaptive_flow,
        _FLOWS,
        "The adaptive-algorithm ODE θ' = -m/(√(v+ε_root)+ε), m' = h∇f - rm, v' = p∇f² - qv.",
        _FLOW,
        {"h": 1.0, "r": 1.0, "p": 1.0, "q": 1.0, "learning_rate": 1e-2, "integrator": tableaus.HEUN},
    ),
    _entry(
        adam_flow, _FLOWS, "Adam's flow; its Euler scheme is optax.adam with the same arguments.", _FLOW, {"learning_rate": 1e-2}
    ),
    _entry(
        rmsprop_flow,
        _FLOWS,
        "RMSProp's flow; its Euler scheme is optax.rmsprop with the same arguments.",
        _FLOW,
        {"learning_rate": 3e-3},
    ),
    _entry(
        adagrad_flow,
        _FLOWS,
        "AdaGrad's flow; its Euler scheme is optax.adagrad with the same arguments.",
        _FLOW,
        {"learning_rate": 0.5},
    ),
    _entry(
        heavy_ball_flow,
        _FLOWS,
        "Polyak's heavy ball θ'' + γθ' + ∇f = 0; its Euler scheme is optax.sgd with momentum.",
        _FLOW,
        {"learning_rate": 1e-3},
    ),
    _entry(
        nesterov_flow,
        _FLOWS,
        "Su–Boyd–Candès's Nesterov ODE θ'' + (r₀/t)θ' + ∇f = 0; Euler: optax.sgd with momentum 1 - r₀/(k+1).",
        _FLOW,
        {"learning_rate": 1e-3},
    ),
    _entry(
        guard_nonfinite,
        _WRAPPERS,
        "Wraps an optimizer: a step with a non-finite stage or result is rejected and counted.",
        _wrapped("inner"),
        {"inner": rk4(_EXPLICIT_RATE)},
    ),
    _entry(
        as_optimizer,
        _WRAPPERS,
        "Wraps a pure Integrator step as an optax transformation.",
        _wrapped("integrator", oracle=lambda arguments: arguments["integrator"].needs_oracle),
        {"integrator": explicit_runge_kutta(tableaus.RALSTON), **_RATE},
    ),
    _entry(
        check_oracle,
        _WRAPPERS,
        "Wraps an integrator: its first stage against the oracle at params, a mismatch raised or counted.",
        _wrapped("inner", ", plus 1", oracle=lambda arguments: True),
        {"inner": rk4(_EXPLICIT_RATE)},
    ),
    _entry(
        lookahead,
        _WRAPPERS,
        "optax.lookahead (Zhang et al.) with the oracle forwarded to the fast optimizer.",
        _wrapped("fast_optimizer"),
        {"fast_optimizer": rk4(_EXPLICIT_RATE), "sync_period": 2, "slow_step_size": 0.5},
        static_args=("sync_period",),
        params_layout=LOOKAHEAD_PARAMS,
    ),
)

OPTIMIZERS: Mapping[str, OptimizerEntry] = types.MappingProxyType({entry.name: entry for entry in _ENTRIES})
"""Every public optimizer constructor of flowopt by name (read-only)."""


def _optax_baseline(
    target: Callable[..., optax.GradientTransformation],
    name: str,
    description: str,
    learning_rate: float,
    defaults: Arguments | None = None,
    fixed: Arguments | None = None,
) -> OptimizerEntry:
    """``target`` as the baseline ``name``: ``target(learning_rate, **defaults, **options, **fixed)``.

    ``defaults`` replace ``target``'s defaults (an option overrides them);
    ``fixed`` are set by the name and are no options. The constructor's
    signature is ``target``'s with those changes, its options keyword-only.
    """
    defaults, fixed = dict(defaults or {}), dict(fixed or {})

    def constructor(learning_rate, **options):
        return target(learning_rate, **{**defaults, **options}, **fixed)

    signature = inspect.signature(target)
    parameters = list(signature.parameters.values())
    constructor.__signature__ = signature.replace(
        parameters=parameters[:1]
        + [p.replace(kind=p.KEYWORD_ONLY, default=defaults.get(p.name, p.default)) for p in parameters[1:] if p.name not in fixed]
    )
    constructor.__name__ = constructor.__qualname__ = name
    constructor.__doc__ = description
    return OptimizerEntry(name, "optax", constructor, description, *_ONE_GRADIENT, {"learning_rate": learning_rate})


BASELINES: Mapping[str, OptimizerEntry] = types.MappingProxyType(
    {
        entry.name: entry
        for entry in (
            _optax_baseline(
                optax.sgd, "sgd", "optax.sgd: gradient descent (the Euler scheme of the gradient flow).", _EXPLICIT_RATE
            ),
            _optax_baseline(optax.sgd, "momentum", "optax.sgd with momentum 0.9 (heavy ball).", 1e-3, defaults={"momentum": 0.9}),
            _optax_baseline(
                optax.sgd,
                "nesterov",
                "optax.sgd with Nesterov momentum 0.9.",
                1e-3,
                defaults={"momentum": 0.9},
                fixed={"nesterov": True},
            ),
            _optax_baseline(optax.adam, "adam", "optax.adam (the Euler scheme of adam_flow).", 1e-2),
            _optax_baseline(optax.rmsprop, "rmsprop", "optax.rmsprop (the Euler scheme of rmsprop_flow).", 3e-3),
            _optax_baseline(optax.adagrad, "adagrad", "optax.adagrad (the Euler scheme of adagrad_flow).", 0.5),
        )
    }
)
"""The optax optimizers flowopt is compared with, by name and read-only. Each is built as
``BASELINES[name].constructor(learning_rate, **options)``, one gradient a step, no oracle.
Not flowopt constructors, so not in :data:`OPTIMIZERS` or its contract tests."""

ORDERS: Mapping[str, range] = types.MappingProxyType(
    {
        "bdf": range(1, MAX_BDF_ORDER + 1),
        "adams_bashforth": range(1, MAX_ADAMS_BASHFORTH_ORDER + 1),
    }
)
"""The orders of the constructors of :data:`OPTIMIZERS` whose first argument is ``order``:
``bdf2`` names ``bdf`` with ``order=2`` (see :func:`resolve`)."""

_ORDERED_NAME = re.compile("(" + "|".join(map(re.escape, ORDERS)) + r")(\d+)")


def resolve(name: str) -> tuple[OptimizerEntry, dict[str, Any]]:
    """The entry ``name`` stands for and the arguments the name fixes.

    ``name`` is a key of :data:`BASELINES` or :data:`OPTIMIZERS` (no fixed
    arguments), or a constructor of :data:`ORDERS` followed by one of its
    orders: ``resolve("bdf2")`` is ``(OPTIMIZERS["bdf"], {"order": 2})``, and
    ``entry.constructor(**fixed, **arguments)`` builds it.

    Raises:
      KeyError: for any other name (``"bdf7"`` included: BDF has orders 1–6).
    """
    for table in (BASELINES, OPTIMIZERS):
        if name in table:
            return table[name], {}
    match = _ORDERED_NAME.fullmatch(name) if isinstance(name, str) else None
    if match is not None and int(match[2]) in ORDERS[match[1]]:
        return OPTIMIZERS[match[1]], {"order": int(match[2])}
    raise KeyError(name)
