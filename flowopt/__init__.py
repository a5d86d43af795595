"""flowopt: numerical integrators of the gradient flow ``θ' = -∇f(θ)`` as optax optimizers."""

import importlib as _importlib
from types import ModuleType as _ModuleType
from typing import Any as _Any

from flowopt import alias, analysis, registry
from flowopt.alias import *  # noqa: F403  (every public constructor: alias.__all__)
from flowopt.core.integrator import Integrator, IntegratorState, as_optimizer, oracle_evaluations, skipped_steps
from flowopt.diagnostics import step_diagnostics
from flowopt.flows.family import AdaptiveFlowState, adam_coefficient, adam_flow_converges
from flowopt.guard import GuardState, guard_counts, guard_nonfinite
from flowopt.rk import tableaus
from flowopt.rk.adaptive import AdaptiveState, adaptive_step
from flowopt.rk.chebyshev_auto import ChebyshevAutoState
from flowopt.rk.step_size import PIController
from flowopt.rk.tableau import ButcherTableau
from flowopt.wrappers import AccumulatedOracle, CheckOracleState, accumulated_oracle, check_oracle, lookahead

_LAZY_SUBMODULES = ("training",)  # imported on first access: it loads orbax, tqdm and the data pipeline
_FLAX_NAMES = {  # need flax (pip install 'flowopt[flax]'): imported on first access
    "NNXObjective": "flowopt.flax.oracle",
    "StepOracle": "flowopt.flax.oracle",
    "nnx_step_oracle": "flowopt.flax.oracle",
    "step_oracle": "flowopt.flax.oracle",
    "TrainState": "flowopt.flax.train_state",
}

__all__ = [
    *alias.__all__,
    "accumulated_oracle",
    "AccumulatedOracle",
    "adam_coefficient",
    "adam_flow_converges",
    "adaptive_step",
    "AdaptiveFlowState",
    "AdaptiveState",
    "analysis",
    "as_optimizer",
    "ButcherTableau",
    "ChebyshevAutoState",
    "check_oracle",
    "CheckOracleState",
    "guard_counts",
    "guard_nonfinite",
    "GuardState",
    "Integrator",
    "IntegratorState",
    "lookahead",
    "oracle_evaluations",
    "PIController",
    "registry",
    "skipped_steps",
    "step_diagnostics",
    "tableaus",
    *_FLAX_NAMES,
    *_LAZY_SUBMODULES,
]

__version__ = "0.1.0"


def __getattr__(name: str) -> _Any:
    """Names imported when first used (PEP 562): ``flowopt.training``, and the Flax tools, which need flax.

    The core (``import flowopt``, every optimizer) needs only jax, optax,
    chex, numpy and scipy; ``flowopt.TrainState`` and the step oracles need
    the ``flax`` extra, ``flowopt.training`` the ``training`` extra.
    """
    if name in _LAZY_SUBMODULES:
        return _import(f"flowopt.{name}", "training")
    if name in _FLAX_NAMES:
        return getattr(_import(_FLAX_NAMES[name], "flax"), name)
    raise AttributeError(f"module 'flowopt' has no attribute {name!r}")


def _import(module: str, extra: str) -> _ModuleType:
    try:
        return _importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name is None or error.name.split(".")[0] == "flowopt":
            raise
        raise ModuleNotFoundError(
            f"{module} needs {error.name}, which is not installed: pip install 'flowopt[{extra}]'.", name=error.name
        ) from error


def __dir__() -> list[str]:
    return sorted(set(__all__) | {"__version__"})
