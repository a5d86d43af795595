"""Linear stability regions and real stability intervals of every named flowopt method.

Writes ``stability_intervals.csv`` (method, real interval ``hL``, whether the
method is A(0)-stable on the whole negative axis) and ``stability_regions.png``
(the complex regions, one panel per family)::

    python experiments/stability_regions.py --output-dir results/analysis
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from experiments.tables import write_csv
from flowopt.analysis import stability  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", type=Path, default=Path("results/analysis"))
    parser.add_argument("--resolution", type=int, default=500, help="grid points per axis of each panel")
    args = parser.parse_args(argv)

    args.output_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in stability.NAMED_METHODS:
        interval = stability.stability_interval(name)
        rows.append({"method": name, "stability_interval_hL": interval, "unbounded": math.isinf(interval)})
        print(f"{name:16s} h·L < {interval:.6g}")
    write_csv(args.output_dir / "stability_intervals.csv", rows)
    figure = stability.plot_stability_regions(resolution=args.resolution)
    figure.savefig(args.output_dir / "stability_regions.png", dpi=110)
    print(f"wrote {args.output_dir}")


if __name__ == "__main__":
    main()
