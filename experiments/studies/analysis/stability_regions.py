"""Linear stability regions and real stability intervals of every named flowopt method.

:func:`intervals` gives the rows of ``stability_intervals.csv`` (method, real
interval ``hL``, whether the method is stable on the whole negative axis) and
:func:`plot` draws ``stability_regions.png`` (the complex regions, one panel
per family).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from flowopt.analysis import stability


def intervals() -> list[dict[str, Any]]:
    """One row per named method: its real stability interval ``h·L`` and whether it is unbounded."""
    rows = []
    for name in stability.NAMED_METHODS:
        interval = stability.stability_interval(name)
        rows.append({"method": name, "stability_interval_hL": interval, "unbounded": math.isinf(interval)})
    return rows


def plot(path: Path, resolution: int) -> None:
    """The stability regions on a ``resolution``² grid per panel."""
    figure = stability.plot_stability_regions(resolution=resolution)
    figure.savefig(path, dpi=110)
