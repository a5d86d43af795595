"""What a dataset is: its arrays (:class:`Dataset`), what a named one must hold (:class:`DatasetSpec`), the data errors."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np


class DataIntegrityError(ValueError):
    """Original files or a prepared dataset failed a checksum, shape or format check."""


class DataUnavailableError(RuntimeError):
    """No source could provide the dataset (offline, missing tool, missing path)."""


class DatasetSpec(NamedTuple):
    """What a named dataset must look like, and where it comes from.

    Attributes:
      label: how results on it are labelled.
      image_shape, num_train, num_test, num_classes: what it must hold.
      tfds_name: its tensorflow-datasets name.
      offline_source: where its original files come from offline.
      stand_in: the dataset loaded instead where this one cannot be had (its label says so).
    """

    label: str
    image_shape: tuple[int, int, int]
    num_train: int
    num_test: int
    num_classes: int
    tfds_name: str
    offline_source: str
    stand_in: str | None = None


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A classification dataset held in host memory.

    Attributes:
      name: registry name, e.g. ``"mnist"``.
      label: how results on it must be labelled, e.g. ``"CIFAR-10 (JPEG q75 copy)"``.
      source: where the arrays came from.
      x_train, x_test: ``uint8`` images ``[N, H, W, C]``.
      y_train, y_test: ``int32`` labels ``[N]``.
      num_classes: number of classes.
    """

    name: str
    label: str
    source: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape ``(H, W, C)`` of one image."""
        return tuple(self.x_train.shape[1:])

    def channel_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and std of the training images, on the ``[0, 1]`` scale."""
        levels = np.arange(256) / 255.0
        counts = (
            np.stack([np.bincount(self.x_train[..., c].ravel(), minlength=256) for c in range(self.x_train.shape[-1])])
            / self.x_train[..., 0].size
        )
        mean = counts @ levels
        std = np.sqrt(counts @ levels**2 - mean**2)
        return mean.astype(np.float32), std.astype(np.float32)


def checked(
    name: str,
    spec: DatasetSpec,
    source: str,
    label: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
) -> Dataset:
    """Validate shapes, dtypes and labels against ``spec``; raise DataIntegrityError otherwise."""
    x_train, x_test = (x if x.ndim == 4 else x[..., None] for x in (np.asarray(x_train), np.asarray(x_test)))
    expected = {
        "x_train": (spec.num_train, *spec.image_shape),
        "y_train": (spec.num_train,),
        "x_test": (spec.num_test, *spec.image_shape),
        "y_test": (spec.num_test,),
    }
    arrays = {"x_train": x_train, "y_train": np.asarray(y_train), "x_test": x_test, "y_test": np.asarray(y_test)}
    for key, shape in expected.items():
        if arrays[key].shape != shape:
            raise DataIntegrityError(f"{spec.label} from {source}: {key} has shape {arrays[key].shape}, expected {shape}.")
    for key in ("x_train", "x_test"):
        if arrays[key].dtype != np.uint8:
            raise DataIntegrityError(f"{spec.label} from {source}: {key} is {arrays[key].dtype}, expected uint8.")
    for key in ("y_train", "y_test"):
        labels = arrays[key]
        if labels.min() < 0 or labels.max() >= spec.num_classes:
            raise DataIntegrityError(f"{spec.label} from {source}: {key} outside [0, {spec.num_classes}).")
        arrays[key] = labels.astype(np.int32)
    return Dataset(name, label, source, num_classes=spec.num_classes, **arrays)
