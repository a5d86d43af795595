"""Step-time overhead of RK4: one jitted RK4 step / (4 × one jitted value-and-grad + SGD step).

An s-stage step costs s gradient evaluations, so the ratio's floor is 1.00;
anything above is flowopt's overhead. Both sides are measured in the same run
on the same model and batch (MLP 784-256-256-10 and the small CNN, batch 128).
Equivalent to ``python benchmarks/run.py --only rk4-overhead``; extra
arguments (``--quick``, ``--output DIR``) are passed on.

    python benchmarks/rk4_overhead.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import run  # noqa: E402

if __name__ == "__main__":
    run.main(["--only", "rk4-overhead", *sys.argv[1:]])
