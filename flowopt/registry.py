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

Example::

    from flowopt.registry import OPTIMIZERS

    OPTIMIZERS["rk4"].gradients_per_step()                           # 4
    OPTIMIZERS["bdf"].gradients_per_step(order=2, inner_steps=3)     # 4
    tx = OPTIMIZERS["heun"].build(learning_rate=0.1)
    entry, fixed = resolve("bdf2")                                   # OPTIMIZERS["bdf"], {"order": 2}
    BASELINES["adam"].gradients_per_step()                           # 1

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


FAMILIES: Mapping[str, str] = types.MappingProxyType({
    "runge_kutta": "Explicit Runge–Kutta",
    "step_size_control": "Adaptive step sizes",
    "multistep": "Implicit and multistep",
    "flows": "The adaptive-algorithm flows",
    "wrappers": "Wrappers and the route from an integrator",
    "optax": "optax baselines",
})
"""The kinds of optimizer, by key: each entry names one (:attr:`OptimizerEntry.family`)."""


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


def _flow_stages(arguments: Arguments) -> int:
    integrator = arguments["integrator"]
    return 1 if integrator is None else _stages(integrator)


def _flow_oracle(arguments: Arguments) -> bool:
    return _flow_stages(arguments) > 1


def _named_runge_kutta(constructor: Callable[..., optax.GradientTransformation], tableau: ButcherTableau,
                       description: str, learning_rate: float) -> OptimizerEntry:
    count = _stages(tableau)
    return OptimizerEntry(
        name=constructor.__name__, family="runge_kutta", constructor=constructor, description=description,
        cost=lambda arguments: count, cost_formula=str(count), oracle=lambda arguments: count > 1,
        test_arguments={"learning_rate": learning_rate},
    )  # fmt: skip


_FLOW_COST = "1 (Euler), else the stages of integrator"


def _flow_member(constructor: Callable[..., optax.GradientTransformation], description: str,
                 learning_rate: float) -> OptimizerEntry:
    """A named member of the adaptive-algorithm family (its cost set by ``integrator``)."""
    return OptimizerEntry(
        name=constructor.__name__, family="flows", constructor=constructor, description=description,
        cost=_flow_stages, cost_formula=_FLOW_COST, oracle=_flow_oracle,
        test_arguments={"learning_rate": learning_rate},
    )

def _adaptive_pair(constructor: Callable[..., optax.GradientTransformation], description: str,
                   test_arguments: Arguments) -> OptimizerEntry:
    """An embedded pair under step-size control: every attempt evaluates all its stages."""
    return OptimizerEntry(
        name=constructor.__name__, family="step_size_control", constructor=constructor, description=description,
        cost=lambda arguments: _stages(arguments["tableau"], embedded=True),
        cost_formula="stages s of tableau per attempt: 1 + (s - 1) × attempts", oracle=lambda arguments: True,
        test_arguments=test_arguments, static_args=("max_attempts",),
    )


def _proximal(constructor: Callable[..., optax.GradientTransformation], description: str, test_arguments: Arguments,
              *, start_up: str = "", static_args: tuple[str, ...] = ()) -> OptimizerEntry:
    """An implicit method solved by ``inner_steps`` gradient steps on its proximal subproblem."""
    return OptimizerEntry(
        name=constructor.__name__, family="multistep", constructor=constructor, description=description,
        cost=lambda arguments: 1 + arguments["inner_steps"], cost_formula=f"1 + inner_steps{start_up}",
        oracle=lambda arguments: True, test_arguments=test_arguments, static_args=(*static_args, "inner_steps"),
    )


def _wrapper(constructor: Callable[..., optax.GradientTransformation], description: str, *, wraps: str,
             test_arguments: Arguments, oracle: Callable[[Arguments], bool | None] = lambda arguments: None,
             extra_cost: str = "", **fields: Any) -> OptimizerEntry:
    """A constructor that wraps the optimizer or integrator ``wraps`` names: it costs what that one does."""
    return OptimizerEntry(
        name=constructor.__name__, family="wrappers", constructor=constructor, description=description,
        cost=lambda arguments: None, cost_formula=f"that of {wraps}{extra_cost}", oracle=oracle,
        test_arguments=test_arguments, **fields,
    )


_EXPLICIT_RATE = 2e-3  # below 2/L on Rosenbrock's function (L ≈ 1002 at its minimum)

_ENTRIES = (
    _named_runge_kutta(euler, tableaus.EULER, "Forward Euler: gradient descent, identical to optax.sgd.", _EXPLICIT_RATE),
    _named_runge_kutta(heun, tableaus.HEUN, "Heun's two-stage method, order 2.", _EXPLICIT_RATE),
    _named_runge_kutta(ralston, tableaus.RALSTON, "Ralston's two-stage method, order 2.", _EXPLICIT_RATE),
    _named_runge_kutta(midpoint, tableaus.MIDPOINT, "Explicit midpoint, order 2.", _EXPLICIT_RATE),
    _named_runge_kutta(rk3, tableaus.RK3, "Kutta's third-order method.", _EXPLICIT_RATE),
    _named_runge_kutta(ssprk3, tableaus.SSPRK3, "Strong-stability-preserving RK3 (Shu & Osher).", _EXPLICIT_RATE),
    _named_runge_kutta(rk4, tableaus.RK4, "Classical fourth-order Runge–Kutta.", _EXPLICIT_RATE),
    _named_runge_kutta(rk38, tableaus.RK38, "Kutta's 3/8 rule, order 4.", _EXPLICIT_RATE),
    OptimizerEntry(
        name="runge_kutta", family="runge_kutta", constructor=runge_kutta,
        description="Fixed-step explicit Runge–Kutta of any ButcherTableau.",
        cost=lambda arguments: _stages(arguments["tableau"]), cost_formula="stages of tableau that its weights use",
        oracle=lambda arguments: _stages(arguments["tableau"]) > 1,
        test_arguments={"tableau": tableaus.DOPRI5, "learning_rate": _EXPLICIT_RATE},
    ),
    _adaptive_pair(adaptive_runge_kutta,
                   "Embedded Runge–Kutta pair with a PI step-size controller and step rejection.",
                   {"tableau": tableaus.BOSH3, "learning_rate": 1e-3, "rtol": 1e-3, "atol": 1e-6}),
    _adaptive_pair(minibatch_adaptive_runge_kutta,
                   "adaptive_runge_kutta for minibatch oracles: step bounds required, growth smoothed.",
                   {"tableau": tableaus.HEUN_EULER, "learning_rate": 1e-3, "rtol": 1e-3, "atol": 1e-6,
                    "dtmin": 1e-4, "dtmax": 1e-2}),
    OptimizerEntry(
        name="adams_bashforth", family="multistep", constructor=adams_bashforth,
        description="Explicit Adams–Bashforth of order 1–4 on stored gradients.",
        cost=lambda arguments: 1, cost_formula="1 (start-up steps: those of a Runge–Kutta method of that order)",
        oracle=lambda arguments: arguments["startup"] == "high_order" and arguments["order"] > 1,
        test_arguments={"order": 2, "learning_rate": 8e-4},
        static_args=("order",),
    ),
    _proximal(backward_euler, "Approximate backward Euler: a proximal-point step solved by inner gradient steps.",
              {"learning_rate": 0.05, "inner_steps": 3}),
    _proximal(bdf, "Approximate BDF of order 1–6 (Huang et al.), solved by inner gradient steps.",
              {"order": 2, "learning_rate": 0.05, "inner_steps": 3}, start_up=" (start-up steps: more)",
              static_args=("order",)),
    OptimizerEntry(
        name="adaptive_flow", family="flows", constructor=adaptive_flow,
        description="The adaptive-algorithm ODE θ' = -m/(√(v+ε_root)+ε), m' = h∇f - rm, v' = p∇f² - qv.",
        cost=_flow_stages, cost_formula=_FLOW_COST, oracle=_flow_oracle,
        test_arguments={"h": 1.0, "r": 1.0, "p": 1.0, "q": 1.0, "learning_rate": 1e-2, "integrator": tableaus.HEUN},
    ),
    _flow_member(adam_flow, "Adam's flow; its Euler scheme is optax.adam with the same arguments.", learning_rate=1e-2),
    _flow_member(rmsprop_flow, "RMSProp's flow; its Euler scheme is optax.rmsprop with the same arguments.", learning_rate=3e-3),
    _flow_member(adagrad_flow, "AdaGrad's flow; its Euler scheme is optax.adagrad with the same arguments.", learning_rate=0.5),
    _flow_member(heavy_ball_flow, "Polyak's heavy ball θ'' + γθ' + ∇f = 0; its Euler scheme is optax.sgd with momentum.",
                 learning_rate=1e-3),
    _flow_member(nesterov_flow,
                 "Su–Boyd–Candès's Nesterov ODE θ'' + (r₀/t)θ' + ∇f = 0; Euler: optax.sgd with momentum 1 - r₀/(k+1).",
                 learning_rate=1e-3),
    _wrapper(guard_nonfinite, "Wraps an optimizer: a step with a non-finite stage or result is rejected and counted.",
             wraps="inner", test_arguments={"inner": rk4(_EXPLICIT_RATE)}),
    _wrapper(as_optimizer, "Wraps a pure Integrator step as an optax transformation.", wraps="integrator",
             test_arguments={"integrator": explicit_runge_kutta(tableaus.RALSTON), "learning_rate": _EXPLICIT_RATE},
             oracle=lambda arguments: arguments["integrator"].needs_oracle),
    _wrapper(check_oracle,
             "Wraps an integrator: its first stage against the oracle at params, a mismatch raised or counted.",
             wraps="inner", extra_cost=", plus 1", test_arguments={"inner": rk4(_EXPLICIT_RATE)},
             oracle=lambda arguments: True),
    _wrapper(lookahead, "optax.lookahead (Zhang et al.) with the oracle forwarded to the fast optimizer.",
             wraps="fast_optimizer",
             test_arguments={"fast_optimizer": rk4(_EXPLICIT_RATE), "sync_period": 2, "slow_step_size": 0.5},
             static_args=("sync_period",), params_layout=LOOKAHEAD_PARAMS),
)

OPTIMIZERS: Mapping[str, OptimizerEntry] = types.MappingProxyType({entry.name: entry for entry in _ENTRIES})
"""Every public optimizer constructor of flowopt by name (read-only)."""


def _optax_baseline(target: Callable[..., optax.GradientTransformation], name: str, description: str,
                    learning_rate: float, defaults: Arguments | None = None,
                    fixed: Arguments | None = None) -> OptimizerEntry:
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
    constructor.__signature__ = signature.replace(parameters=parameters[:1] + [
        p.replace(kind=p.KEYWORD_ONLY, default=defaults.get(p.name, p.default))
        for p in parameters[1:] if p.name not in fixed
    ])
    constructor.__name__ = constructor.__qualname__ = name
    constructor.__doc__ = description
    return OptimizerEntry(
        name=name, family="optax", constructor=constructor, description=description,
        cost=lambda arguments: 1, cost_formula="1", oracle=lambda arguments: False,
        test_arguments={"learning_rate": learning_rate},
    )


BASELINES: Mapping[str, OptimizerEntry] = types.MappingProxyType({entry.name: entry for entry in (
    _optax_baseline(optax.sgd, "sgd", "optax.sgd: gradient descent (the Euler scheme of the gradient flow).",
                    _EXPLICIT_RATE),
    _optax_baseline(optax.sgd, "momentum", "optax.sgd with momentum 0.9 (heavy ball).", 1e-3,
                    defaults={"momentum": 0.9}),
    _optax_baseline(optax.sgd, "nesterov", "optax.sgd with Nesterov momentum 0.9.", 1e-3,
                    defaults={"momentum": 0.9}, fixed={"nesterov": True}),
    _optax_baseline(optax.adam, "adam", "optax.adam (the Euler scheme of adam_flow).", 1e-2),
    _optax_baseline(optax.rmsprop, "rmsprop", "optax.rmsprop (the Euler scheme of rmsprop_flow).", 3e-3),
    _optax_baseline(optax.adagrad, "adagrad", "optax.adagrad (the Euler scheme of adagrad_flow).", 0.5),
)})
"""The optax optimizers flowopt is compared with, by name (read-only): built as
``BASELINES[name].constructor(learning_rate, **options)``, one gradient a step, no oracle.
Not flowopt constructors, so not in :data:`OPTIMIZERS` or its contract tests."""

ORDERS: Mapping[str, range] = types.MappingProxyType({
    "bdf": range(1, MAX_BDF_ORDER + 1),
    "adams_bashforth": range(1, MAX_ADAMS_BASHFORTH_ORDER + 1),
})
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
