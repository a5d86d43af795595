"""Analysis tools: reference gradient flows, GF–GD distances, Hessian spectra, stability, modified and central flows.

Everything works on any pytree of parameters and uses only gradients and
Hessian-vector products of a ``value_fn``.
"""

from flowopt.analysis.central import CentralFlowSolution, central_flow
from flowopt.analysis.distance import optimizer_trajectory, step_times, trajectory_distance
from flowopt.analysis.flows import FlowSolution, gradient_flow
from flowopt.analysis.hessian import (
    ErrorBound,
    ExtremeEigenvalues,
    TraceEstimate,
    extreme_eigenvalues,
    gd_error_bound,
    hessian_vector_product,
    hutchinson_trace,
    sharpness,
    spectrum_along,
)
from flowopt.analysis.modified import modified_value_fn
from flowopt.analysis.stability import (
    NAMED_METHODS,
    LinearMultistep,
    adams_bashforth_method,
    amplification,
    bdf_method,
    characteristic_roots,
    is_stable,
    plot_stability_regions,
    stability_function,
    stability_interval,
    stability_polynomial,
)
from flowopt.core.lanczos import LanczosResult, lanczos

__all__ = [
    "CentralFlowSolution",
    "central_flow",
    "adams_bashforth_method",
    "amplification",
    "bdf_method",
    "characteristic_roots",
    "ErrorBound",
    "extreme_eigenvalues",
    "ExtremeEigenvalues",
    "FlowSolution",
    "gd_error_bound",
    "gradient_flow",
    "hessian_vector_product",
    "hutchinson_trace",
    "is_stable",
    "lanczos",
    "LanczosResult",
    "LinearMultistep",
    "modified_value_fn",
    "NAMED_METHODS",
    "optimizer_trajectory",
    "plot_stability_regions",
    "sharpness",
    "spectrum_along",
    "stability_function",
    "stability_interval",
    "stability_polynomial",
    "step_times",
    "TraceEstimate",
    "trajectory_distance",
]
