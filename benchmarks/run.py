"""Run flowopt's benchmarks and write ``<output>/<hardware-tag>.csv`` and ``.md``.

    python benchmarks/run.py                 # default size: under 10 minutes on 2 CPU cores
    python benchmarks/run.py --quick         # a tiny run (seconds), as the tests do: <hardware-tag>-quick.csv/.md
    python benchmarks/run.py --gpu-size      # every model at batch 32–1024, up to 10⁸ parameters
    python benchmarks/run.py --only rk4-overhead   # RK4 / (4 × SGD step) on the MLP and CNN
    python benchmarks/run.py --only implicit       # backward Euler, BDF2 / RK4 on the CNN

Sections: 1. step-time overhead of each integrator against one SGD step per
gradient evaluation; 2. anchors against optax (Euler vs SGD, adam_flow vs
Adam) and diffrax (fixed and adaptive Heun/Bosh3/Dopri5); 3. peak memory per
step and compile time; 4. scaling with parameters and with gradient
evaluations per step; 5. data parallelism on 8 host CPU devices, 5b. sharded
(FSDP) against replicated parameters there, and 5c. two processes against one
(gloo, the same global batch); 6. backward
Euler and BDF2 against RK4 at 4 gradients per step. Every figure is a ratio of
times measured in this run; see docs/performance.md.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import diffrax_anchor, implicit, memory, multidevice, multiprocess, overhead, scaling  # noqa: E402
from benchmarks.report import Report, hardware  # noqa: E402

SECTIONS = ("overhead", "diffrax", "memory", "scaling", "multidevice", "multiprocess", "implicit", "rk4-overhead")
DEFAULT_SECTIONS = SECTIONS[:-1]
SOLO_TAGS = {"rk4-overhead": "-rk4", "implicit": "-implicit"}  # a single section's own table
INTEGRATORS = ("euler", "heun", "rk4", "bosh3-adaptive")
STAGE_METHODS = ("euler", "heun", "rk3", "rk4", "dopri5-fixed")
IMPLICIT_METHODS = ("backward_euler", "bdf2")
MEMORY_METHODS = (
    "optax.sgd",
    "euler",
    "heun",
    "rk4",
    "dopri5-fixed",
    "rkc-s5",
    "rkc-s50",
    "rkc2-s5",
    "rkc2-s50",
    "bosh3-adaptive",
    "optax.adam",
    "adam_flow",
)


def configs(size: str) -> dict:
    """The configuration of every section for ``size`` in quick / cpu / gpu."""
    if size == "quick":
        return dict(
            overhead=overhead.Config({"logreg": (32,)}, ("rk4",), (), 3, 0.01),
            diffrax=diffrax_anchor.Config(64, 5.0, 10, 1e-3, 1e-5, (("heun", "Heun", False),), 3, 0.01),
            memory=memory.Config(("elementwise-1000",), ("optax.sgd", "rk4"), donation=False),
            scaling=scaling.Config((10**3, 10**4), 2, "logreg", 32, ("euler", "heun"), (), 3, 0.01),
            multidevice=multidevice.Config(2, "logreg", 32, 2, 2, 0.01),
            multiprocess=multiprocess.Config("logreg", 32, 5, 2),
            rk4_overhead=overhead.Config({"logreg": (32,)}, ("rk4",), (), 3, 0.01),
            implicit=implicit.Config("logreg", 32, IMPLICIT_METHODS, 3, 0.01),
        )
    if size == "cpu":
        return dict(
            overhead=overhead.Config(
                {"logreg": (32, 256, 1024), "mlp": (32, 128, 512), "cnn": (32, 128), "resnet20": (32,)},
                INTEGRATORS,
                ("mlp", "cnn"),
                9,
                0.06,
            ),
            diffrax=diffrax_anchor.Config(256, 10.0, 50, 1e-4, 1e-6, diffrax_anchor.CASES, 5, 0.03),
            memory=memory.Config(("elementwise-1000000", "mlp-32"), MEMORY_METHODS),
            scaling=scaling.Config(tuple(10**k for k in range(3, 8)), 3, "mlp", 128, STAGE_METHODS, (1, 2, 4, 8), 9, 0.06),
            multidevice=multidevice.Config(8, "mlp", 256, 3, 3, 0.03),
            multiprocess=multiprocess.Config("mlp", 256, 50, 7),
            rk4_overhead=overhead.Config({"mlp": (128,), "cnn": (128,)}, ("rk4",), (), 7, 0.05),
            implicit=implicit.Config("cnn", 128, IMPLICIT_METHODS, 7, 0.5),
        )
    batches = (32, 128, 512, 1024)
    return dict(
        overhead=overhead.Config(
            {"logreg": batches, "mlp": batches, "cnn": batches, "resnet20": (32, 256, 1024)},
            INTEGRATORS,
            ("logreg", "mlp", "cnn", "resnet20"),
            10,
            0.02,
        ),
        diffrax=diffrax_anchor.Config(1024, 10.0, 50, 1e-4, 1e-6, diffrax_anchor.CASES, 10, 0.02),
        memory=memory.Config(("elementwise-10000000", "mlp-32"), MEMORY_METHODS),
        scaling=scaling.Config(tuple(10**k for k in range(3, 9)), 3, "mlp", 1024, STAGE_METHODS, (1, 2, 4, 8), 10, 0.02),
        multidevice=multidevice.Config(8, "mlp", 256, 3, 3, 0.02),
        multiprocess=multiprocess.Config("mlp", 1024, 50, 10),
        rk4_overhead=overhead.Config({"mlp": (128,), "cnn": (128,)}, ("rk4",), (), 10, 0.02),
        implicit=implicit.Config("cnn", 128, IMPLICIT_METHODS, 10, 0.02),
    )


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="tiny configuration (used by the tests)")
    size.add_argument("--gpu-size", action="store_true", help="full configuration for an accelerator")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help=f"sections to run (default: {' '.join(DEFAULT_SECTIONS)})")
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent.parent / "results" / "benchmarks")
    parser.add_argument(
        "--append", action="store_true", help="keep the rows already in the output table (run sections separately)"
    )
    args = parser.parse_args(argv)
    size_name = "quick" if args.quick else "gpu" if args.gpu_size else "cpu"
    config = configs(size_name)
    header = hardware() | {"size": size_name, "date": datetime.date.today().isoformat()}
    if args.only and len(args.only) == 1 and args.only[0] in SOLO_TAGS:
        header["tag"] += SOLO_TAGS[args.only[0]]
    if args.quick:  # its own table: a tiny run never replaces the full-size one
        header["tag"] += "-quick"
    report = Report(args.output, header, append=args.append)
    print(f"# {header['name']}, jax {header['jax']}, size {size_name}", flush=True)
    compile_seconds: dict = {}
    for section in args.only or DEFAULT_SECTIONS:
        start = time.perf_counter()
        if section == "overhead":
            compile_seconds = overhead.run(config["overhead"], report)
        elif section == "rk4-overhead":
            overhead.run(config["rk4_overhead"], report)
        elif section == "diffrax":
            diffrax_anchor.run(config["diffrax"], report)
        elif section == "memory":
            memory.run(config["memory"], report, compile_seconds)
        elif section == "scaling":
            scaling.run(config["scaling"], report)
        elif section == "multidevice":
            multidevice.run(config["multidevice"], report)
        elif section == "multiprocess":
            multiprocess.run(config["multiprocess"], report)
        elif section == "implicit":
            implicit.run(config["implicit"], report)
        print(f"# {section}: {time.perf_counter() - start:.0f} s", flush=True)
    report.write()
    print(f"\nwrote {report.csv_path} and {report.md_path}\n")
    print(report.markdown())
    return report


if __name__ == "__main__":
    main()
