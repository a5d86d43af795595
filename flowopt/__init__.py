"""flowopt: numerical integrators of the gradient flow ``θ' = -∇f(θ)`` as optax optimizers."""

from flowopt import analysis
from flowopt import tableaus
from flowopt.adaptive import (
    AdaptiveState,
    PIController,
    adaptive_runge_kutta,
    adaptive_step,
    minibatch_adaptive_runge_kutta,
    step_diagnostics,
)
from flowopt.adaptive_flow import (
    AdaptiveFlowState,
    adagrad_flow,
    adam_coefficient,
    adam_flow,
    adam_flow_converges,
    adaptive_flow,
    heavy_ball_flow,
    nesterov_flow,
    rmsprop_flow,
)
from flowopt.alias_multistep import adams_bashforth, backward_euler, bdf
from flowopt.alias import euler, heun, midpoint, ralston, rk3, rk4, rk38, runge_kutta, ssprk3
from flowopt.guard import GuardState, guard_counts, guard_nonfinite
from flowopt.integrator import Integrator, IntegratorState, as_optimizer, oracle_evaluations
from flowopt.tableau import ButcherTableau
from flowopt.train_state import TrainState

__version__ = "0.1.0"
