"""flowopt: numerical integrators of the gradient flow ``θ' = -∇f(θ)`` as optax optimizers."""

import importlib as _importlib

from flowopt import alias, analysis, registry
from flowopt.alias import *  # noqa: F403  (every public constructor: alias.__all__)
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

_LAZY_SUBMODULES = ("training",)  # imported on first access: it loads orbax, tqdm and the data pipeline

__all__ = [
    *alias.__all__,
    "accumulated_oracle", "AccumulatedOracle", "adam_coefficient", "adam_flow_converges", "adaptive_step",
    "AdaptiveFlowState", "AdaptiveState", "analysis", "as_optimizer", "ButcherTableau", "check_oracle",
    "CheckOracleState", "guard_counts", "guard_nonfinite", "GuardState", "Integrator", "IntegratorState",
    "lookahead", "nnx_step_oracle", "NNXObjective", "oracle_evaluations", "PIController", "registry",
    "skipped_steps", "step_diagnostics", "step_oracle", "StepOracle", "tableaus", "TrainState",
    *_LAZY_SUBMODULES,
]  # fmt: skip

__version__ = "0.1.0"


def __getattr__(name: str):
    """``flowopt.training`` without ``import flowopt.training``, imported when first used (PEP 562)."""
    if name in _LAZY_SUBMODULES:
        return _importlib.import_module(f"flowopt.{name}")
    raise AttributeError(f"module 'flowopt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(__all__) | set(_LAZY_SUBMODULES) | {"__version__"})
