"""Observed orders of convergence."""

import numpy as np


def loglog_slope(x, y) -> float:
    """The least-squares slope of ``log y`` against ``log x``: the observed order when ``x`` are step sizes and ``y`` errors."""
    return np.polyfit(np.log(x), np.log(y), 1)[0]
