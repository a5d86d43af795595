"""The contract of every public optimizer constructor, run over ``flowopt.registry.OPTIMIZERS``.

In the style of optax's tests of its contributed optimizers
(``optax/contrib/_common_test.py``, ``optax/_src/alias_test.py``): one table
of constructors with hyperparameters that train (the registry), and one test
per column. Compilation dominates the cost, so each entry compiles three
programs and every column reads one of them: a scan per problem for the
convergence columns, a jitted step that advances the optimizer and its
wrapped forms side by side for a few steps (extra arguments, recompilation,
cost, ``inject_hyperparams``, schedules, ``MultiSteps``, gradient
accumulation, masking), and the same step with donated buffers. dtype and
state-layout columns are settled by abstract evaluation, where JAX decides them.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import flowopt
from flowopt.registry import MODEL_PARAMS, OPTIMIZERS, OptimizerEntry, ParamsLayout
from tests.problems import PROBLEMS, Problem, microbatches, mixed_tensors, parabola, squared_distance

NAMES = tuple(OPTIMIZERS)
CONVERGENCE_STEPS = 20_000
TOLERANCE = {"rtol": 3e-2, "atol": 3e-2}  # optax's convergence tolerance
SHORT_RUN = 3  # steps of the jitted-step runs: the last is past every test entry's start-up


def _annotations(function: Callable) -> dict[str, Any]:
    return inspect.get_annotations(function, eval_str=True)


def _public_functions() -> dict[str, Callable]:
    return {name: obj for name in flowopt.__all__ if inspect.isfunction(obj := getattr(flowopt, name))}


def _public_constructors() -> set[str]:
    """The names in ``flowopt.__all__`` of functions annotated to return an optax transformation."""
    return {
        name
        for name, function in _public_functions().items()
        if inspect.isclass(returns := _annotations(function).get("return")) and issubclass(returns, optax.GradientTransformation)
    }


def test_every_public_function_declares_what_it_returns():
    # Constructors are found by their return annotation: a function without one could hide a constructor.
    assert [name for name, function in _public_functions().items() if "return" not in _annotations(function)] == []


def test_the_registry_has_an_entry_for_every_public_constructor():
    public = _public_constructors()
    missing, stale = sorted(public - set(OPTIMIZERS)), sorted(set(OPTIMIZERS) - public)
    assert not missing, f"public constructors without an entry in flowopt/registry.py: {missing}"
    assert not stale, f"registry entries that are not public constructors of flowopt: {stale}"


def test_a_constructor_without_an_entry_is_found(monkeypatch):
    def new_method(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformationExtraArgs:
        """A constructor added to flowopt without a registry entry."""
        return flowopt.euler(learning_rate)

    monkeypatch.setattr(flowopt, "new_method", new_method, raising=False)
    monkeypatch.setattr(flowopt, "__all__", [*flowopt.__all__, "new_method"])
    assert _public_constructors() - set(OPTIMIZERS) == {"new_method"}


@pytest.mark.parametrize("name", NAMES)
def test_entry_describes_its_constructor(name):
    entry = OPTIMIZERS[name]
    assert entry.name == name == entry.constructor.__name__
    assert getattr(flowopt, name) is entry.constructor
    assert entry.description and "\n" not in entry.description and entry.cost_formula
    assert set(entry.static_args) <= set(inspect.signature(entry.constructor).parameters)
    entry.arguments(**entry.test_arguments)  # they bind to the signature
    assert isinstance(entry.build(), optax.GradientTransformationExtraArgs)


def _takes_a_schedule(entry: OptimizerEntry) -> bool:
    """optax's criterion: ``learning_rate`` is annotated ``ScalarOrSchedule``."""
    return _annotations(entry.constructor).get("learning_rate") == optax.ScalarOrSchedule


class Run(NamedTuple):
    """An optimizer stepping a problem.

    ``full_params`` passes the whole model parameters to ``update`` too; with
    ``targets`` the gradient and the oracle are ``flowopt.accumulated_oracle``
    of :func:`problems.squared_distance` over those stacked targets.
    """

    tx: optax.GradientTransformation
    problem: Problem
    layout: ParamsLayout = MODEL_PARAMS
    full_params: bool = False
    targets: Any = None

    def initial(self) -> Any:
        """The optimizer's parameters at the problem's start, in buffers of their own (donation deletes them)."""
        return self.layout.wrap(jax.tree.map(jnp.array, self.problem.initial))


def _update(run: Run, params: Any, state: Any, **extra_args: Any) -> tuple[Any, Any]:
    """``tx.update`` with optax's convention for complex parameters: the incoming gradient is ``conj(∇f)``."""
    point = run.layout.gradient_point(params)
    if run.full_params:
        extra_args["full_params"] = point
    if run.targets is not None:
        oracle = flowopt.accumulated_oracle(squared_distance, run.targets)
        return run.tx.update(oracle(point), state, params, grad_fn=oracle, **extra_args)
    grads = jax.tree.map(jnp.conj, jax.grad(run.problem.loss)(point))
    return run.tx.update(grads, state, params, value_fn=run.problem.loss, **extra_args)


def _step(run: Run, params: Any, state: Any, **extra_args: Any) -> tuple[Any, Any]:
    updates, state = _update(run, params, state, **extra_args)
    return optax.apply_updates(params, updates), state


def _each_or_its_error(compute: Callable[[dict], dict], items: dict) -> dict:
    """``compute(items)`` in one program or, if that fails, each item alone, its error as its result.

    One program per entry keeps the compile count down; the fallback keeps one
    failing item from failing the columns that read the others.
    """
    try:
        return compute(items)
    except Exception:  # isolated below: each column re-raises its own item's error
        results = {}
        for key, item in items.items():
            try:
                results[key] = compute({key: item})[key]
            except Exception as error:
                results[key] = error
        return results


def _result(results: dict, key: str) -> Any:
    if isinstance(results[key], Exception):
        raise results[key]
    return results[key]


def _descend(runs: dict[str, Run]) -> dict[str, Any]:
    """The model parameters reached in ``CONVERGENCE_STEPS`` steps of each run, one compiled program."""

    def descend(initial: dict[str, Any]) -> dict[str, Any]:
        final = {}
        for key, run in runs.items():
            body = lambda carry, _, run=run: (_step(run, *carry), None)
            (params, _), _ = jax.lax.scan(body, (initial[key], run.tx.init(initial[key])), length=CONVERGENCE_STEPS)
            final[key] = run.layout.result(params)
        return final

    return jax.jit(descend)({key: run.initial() for key, run in runs.items()})


@functools.cache
def _converged(name: str) -> dict[str, Any]:
    entry = OPTIMIZERS[name]
    tx = entry.build()
    problems = {key: make(jnp.float32) for key, make in PROBLEMS.items()} | {"complex": parabola(jnp.complex64)}
    return _each_or_its_error(_descend, {key: Run(tx, problem, entry.params_layout) for key, problem in problems.items()})


@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("name", NAMES)
def test_converges(name, problem):
    found = _result(_converged(name), problem)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **TOLERANCE), found, PROBLEMS[problem](jnp.float32).optimum)


@pytest.mark.parametrize("name", NAMES)
def test_converges_on_complex_parameters(name):
    problem = parabola(jnp.complex64)
    found = _result(_converged(name), "complex")
    assert found.dtype == jnp.complex64
    np.testing.assert_allclose(found, problem.optimum, **TOLERANCE)


MASK = {"scalar": True, "vector": True, "matrix": False}  # on the mixed-tensor problem


def _short_runs_of(entry: OptimizerEntry) -> dict[str, Run]:
    """The optimizer and its wrapped forms on the mixed-tensor problem, and its restriction to the unmasked leaves."""
    problem, layout = mixed_tensors(jnp.float32), entry.params_layout
    runs = {
        "plain": entry.build(),
        "injected": optax.inject_hyperparams(entry.constructor, entry.static_args)(**entry.test_arguments),
    }
    if _takes_a_schedule(entry):
        runs["schedule"] = entry.build(learning_rate=optax.constant_schedule(entry.test_arguments["learning_rate"]))
    if _wrappable(entry):
        labels = {key: "flow" if MASK[key] else "held" for key in MASK}
        runs |= {
            "multisteps": optax.MultiSteps(entry.build(), every_k_schedule=SHORT_RUN),
            "masked": optax.masked(entry.build(), MASK),
            "multi_transform": optax.multi_transform({"flow": entry.build(), "held": optax.set_to_zero()}, labels),
        }
    runs = {key: Run(tx, problem, layout, full_params=key in ("masked", "multi_transform")) for key, tx in runs.items()}
    runs["accumulated"] = Run(entry.build(), problem, layout, targets=microbatches(problem.optimum))
    if _wrappable(entry):
        free = {key: value for key, value in problem.initial.items() if MASK[key]}
        held = {key: value for key, value in problem.initial.items() if not MASK[key]}
        runs["restricted"] = Run(entry.build(), Problem(free, None, lambda p: problem.loss(p | held)))
    return runs


def _wrappable(entry: OptimizerEntry) -> bool:
    """Whether optax.MultiSteps, masked and multi_transform can wrap it: its updates and params share a layout.

    Not so for lookahead, whose updates are shaped like the fast parameters and its params are
    ``optax.LookaheadParams`` (``optax.lookahead`` alike): wrap its fast optimizer instead.
    """
    return entry.params_layout is MODEL_PARAMS


def _calls_the_oracle(name: str) -> bool:
    """Whether the optimizer with its test arguments calls the oracle (asked of the plain run's state)."""
    return _short_run(name).oracle_evals[-1] > 0


def _skip_unless_wrappable(name: str, wrapper: str) -> None:
    if not _wrappable(OPTIMIZERS[name]):
        pytest.skip(f"{wrapper} cannot wrap {name}: its params are not shaped like its updates; wrap its inner optimizer")


class ShortRun(NamedTuple):
    """``SHORT_RUN`` calls of a jitted step, each with an unexpected keyword argument for ``update``."""

    params: list[Any]  # after each call, on the host
    state: Any  # after the last call, on the host
    traces: list[int]  # times the step had been traced after each call
    oracle_evals: list[int]  # oracle calls counted in the state after each call


def _step_together(runs: dict[str, Run], donate: bool) -> dict[str, ShortRun]:
    traces = 0

    def step(carry: dict[str, tuple[Any, Any]]) -> dict[str, tuple[Any, Any]]:
        nonlocal traces
        traces += 1
        return {key: _step(run, *carry[key], unexpected_extra_argument=1) for key, run in runs.items()}

    step = jax.jit(step, donate_argnums=0 if donate else ())
    carry = {key: (params := run.initial(), run.tx.init(params)) for key, run in runs.items()}
    copy = functools.partial(jax.tree.map, np.array)  # host copies: the next step may reuse donated buffers
    history = {key: ShortRun([], None, [], []) for key in runs}
    for _ in range(SHORT_RUN):
        carry = step(carry)
        for key, (params, state) in carry.items():
            history[key].params.append(copy(params))
            history[key].traces.append(traces)
            history[key].oracle_evals.append(int(flowopt.oracle_evaluations(state)))
    return {key: run._replace(state=copy(carry[key][1])) for key, run in history.items()}


@functools.cache
def _short_runs(name: str, donate: bool = False) -> dict[str, ShortRun]:
    runs = _short_runs_of(OPTIMIZERS[name])
    if donate:
        runs = {"plain": runs["plain"]}
    return _each_or_its_error(functools.partial(_step_together, donate=donate), runs)


def _short_run(name: str, key: str = "plain", donate: bool = False) -> ShortRun:
    return _result(_short_runs(name, donate), key)


@pytest.mark.parametrize("name", NAMES)
def test_accepts_extra_args(name):
    run = _short_run(name)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(run.params))


@pytest.mark.parametrize("name", NAMES)
def test_no_recompile_on_the_second_call(name):
    assert _short_run(name).traces == [1] * SHORT_RUN


@pytest.mark.parametrize("name", NAMES)
def test_gradients_per_step_is_what_the_state_counts(name):
    entry = OPTIMIZERS[name]
    cost = entry.gradients_per_step(**entry.test_arguments)
    if cost is None:
        pytest.skip(f"{name}: its arguments do not fix its cost per step ({entry.cost_formula})")
    calls = _short_run(name).oracle_evals
    assert 1 + calls[-1] - calls[-2] == cost


@pytest.mark.parametrize("name", NAMES)
def test_tree_map_params_finds_the_state(name):
    # As optax's tests: a no-op map over the parameter-shaped leaves of the state (init on placeholders).
    entry = OPTIMIZERS[name]
    tx, params = entry.build(), entry.params_layout.wrap(mixed_tensors(jnp.float32).initial)
    state = tx.init(params)
    mapped = optax.tree_utils.tree_map_params(tx, lambda leaf: leaf, state)
    assert jax.tree.structure(mapped) == jax.tree.structure(state)


@pytest.mark.parametrize("name", NAMES)
def test_needs_an_oracle_exactly_when_the_registry_says(name):
    entry = OPTIMIZERS[name]
    needs = entry.needs_oracle(**entry.test_arguments)
    if needs is None:
        pytest.skip(f"{name} needs an oracle when the optimizer it wraps does")
    tx, layout = entry.build(), entry.params_layout
    update = lambda p: tx.update(layout.gradient_point(p), tx.init(p), p)
    params = layout.wrap(jnp.ones(2))
    if needs:
        with pytest.raises(ValueError, match="oracle"):
            jax.eval_shape(update, params)
    else:
        jax.eval_shape(update, params)


def _assert_equal(actual: Any, expected: Any) -> None:
    jax.tree.map(np.testing.assert_array_equal, actual, expected)


def _assert_close(actual: Any, expected: Any) -> None:
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-7), actual, expected)


@pytest.mark.parametrize("name", NAMES)
def test_donated_buffers_give_the_same_steps(name):
    donated, kept = _short_run(name, donate=True), _short_run(name)
    _assert_equal((donated.params, donated.state), (kept.params, kept.state))


@pytest.mark.parametrize("name", NAMES)
def test_inject_hyperparams_gives_the_same_steps(name):
    injected, plain = _short_run(name, "injected"), _short_run(name)
    _assert_close(injected.params, plain.params)
    _assert_close(injected.state.inner_state, plain.state)


@pytest.mark.parametrize("name", NAMES)
def test_constant_schedule_equals_the_float_rate(name):
    if not _takes_a_schedule(OPTIMIZERS[name]):
        pytest.skip(f"{name} takes no learning-rate schedule")
    scheduled, constant = _short_run(name, "schedule"), _short_run(name)
    _assert_equal((scheduled.params, scheduled.state), (constant.params, constant.state))


@pytest.mark.parametrize("name", NAMES)
def test_accumulated_oracle_steps_on_the_mean_loss(name):
    # Gradient accumulation for integrators: grad_fn=flowopt.accumulated_oracle over two micro-batches
    # whose mean gradient is the problem's, so the steps are the plain ones (value_fn). Equal micro-batches
    # keep it exact: an adaptive controller whose error estimate is at rounding level amplifies any difference.
    accumulated, plain = _short_run(name, "accumulated"), _short_run(name)
    _assert_close(accumulated.params, plain.params)


@pytest.mark.parametrize("name", NAMES)
def test_multisteps_takes_one_step_per_accumulated_gradient_or_refuses(name):
    # A method that calls the oracle is refused: its later stages would see the last micro-batch only
    # (accumulated_oracle, above, is the supported form). One that does not is MultiSteps' usual
    # accumulation: every mini-step sees the same parameters (the updates in between are zero), so it
    # takes the plain first step once.
    _skip_unless_wrappable(name, "optax.MultiSteps")
    if _calls_the_oracle(name):
        with pytest.raises(ValueError, match="inside optax.MultiSteps.*flowopt.accumulated_oracle"):
            _short_run(name, "multisteps")
        return
    accumulated, plain = _short_run(name, "multisteps"), _short_run(name)
    initial = mixed_tensors(jnp.float32).initial
    for params in accumulated.params[:-1]:
        _assert_equal(params, initial)
    _assert_close(accumulated.params[-1], plain.params[0])


@pytest.mark.parametrize("wrapper", ["masked", "multi_transform"])
@pytest.mark.parametrize("name", NAMES)
def test_masked_leaves_follow_the_flow_of_the_others_held(name, wrapper):
    _skip_unless_wrappable(name, f"optax.{wrapper}")
    wrapped, restricted = _short_run(name, wrapper).params[-1], _short_run(name, "restricted").params[-1]
    _assert_close({key: wrapped[key] for key in restricted}, restricted)
    if wrapper == "multi_transform":
        _assert_equal(wrapped["matrix"], mixed_tensors(jnp.float32).initial["matrix"])


def _abstract_run(name: str, dtype: str) -> Run:
    entry = OPTIMIZERS[name]
    return Run(entry.build(), parabola(jnp.dtype(dtype)), entry.params_layout)


@functools.cache
def _abstract_updates(name: str, dtype: str) -> tuple[Any, Any, Any]:
    """Shapes and dtypes of the state before, and of the updates and state after, two updates."""
    run = _abstract_run(name, dtype)

    def two_updates(params):
        before = run.tx.init(params)
        updates, after = _update(run, params, before)
        updates, after = _update(run, optax.apply_updates(params, updates), after)
        return before, updates, after

    return jax.eval_shape(two_updates, run.initial())


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("name", NAMES)
def test_updates_keep_the_parameters_dtype(name, dtype):
    _, updates, _ = _abstract_updates(name, dtype)
    assert {leaf.dtype for leaf in jax.tree.leaves(updates)} == {jnp.dtype(dtype)}


def _layout(tree: Any) -> Any:
    return jax.tree.map(lambda x: (x.shape, x.dtype), tree)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("name", NAMES)
def test_state_shape_and_dtype_are_stable(name, dtype, request):
    if dtype == "float64":
        request.getfixturevalue("x64")
    before, _, after = _abstract_updates(name, dtype)
    assert _layout(after) == _layout(before)
    # As optax's test_state_shape_dtype_shard_stability: the update and the identity as branches of lax.cond.
    run = _abstract_run(name, dtype)

    def step(params, state, take):
        zeros = jax.tree.map(jnp.zeros_like, params)
        updates, new_state = jax.lax.cond(take, lambda: _update(run, params, state), lambda: (zeros, state))
        return optax.apply_updates(params, updates), jax.lax.cond(take, lambda: state, lambda: new_state)

    params, _ = jax.eval_shape(step, run.initial(), run.tx.init(run.initial()), True)
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(dtype)}
