"""flowopt: numerical integrators of the gradient flow ``θ' = -∇f(θ)`` as optax optimizers."""

import importlib as _importlib

from flowopt import (
    analysis,
    registry,  # noqa: E402  (last: it names every constructor above)
)
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
from flowopt.core.integrator import Integrator, IntegratorState, as_optimizer, oracle_evaluations, skipped_steps
from flowopt.flax.oracle import NNXObjective, StepOracle, nnx_step_oracle, step_oracle
from flowopt.flax.train_state import TrainState
from flowopt.flows.family import AdaptiveFlowState, adam_coefficient, adam_flow_converges
from flowopt.guard import GuardState, guard_counts, guard_nonfinite
from flowopt.rk import tableaus
from flowopt.rk.adaptive import AdaptiveState, adaptive_step, step_diagnostics
from flowopt.rk.step_size import PIController
from flowopt.rk.tableau import ButcherTableau
from flowopt.wrappers import AccumulatedOracle, CheckOracleState, accumulated_oracle, check_oracle, lookahead

__all__ = [
    "accumulated_oracle", "AccumulatedOracle", "adagrad_flow", "adam_coefficient", "adam_flow",
    "adam_flow_converges", "adams_bashforth", "adaptive_flow", "adaptive_runge_kutta", "adaptive_step",
    "AdaptiveFlowState", "AdaptiveState", "analysis", "as_optimizer", "backward_euler", "bdf", "ButcherTableau",
    "check_oracle", "CheckOracleState", "euler", "guard_counts", "guard_nonfinite", "GuardState", "heavy_ball_flow",
    "heun", "Integrator", "IntegratorState", "lookahead", "midpoint", "minibatch_adaptive_runge_kutta",
    "nesterov_flow", "nnx_step_oracle", "NNXObjective", "oracle_evaluations", "PIController", "ralston", "registry",
    "rk3", "rk38", "rk4", "rmsprop_flow", "runge_kutta", "skipped_steps", "ssprk3", "step_diagnostics",
    "step_oracle", "StepOracle", "tableaus", "training", "TrainState",
]

__version__ = "0.1.0"

_LAZY_SUBMODULES = ("training",)  # imported on first access: it loads orbax, tqdm and the data pipeline


def __getattr__(name: str):
    """``flowopt.training`` without ``import flowopt.training``, imported when first used (PEP 562)."""
    if name in _LAZY_SUBMODULES:
        return _importlib.import_module(f"flowopt.{name}")
    raise AttributeError(f"module 'flowopt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(__all__) | set(_LAZY_SUBMODULES) | {"__version__"})
