"""Loading a dataset by name: :func:`load_dataset`."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from flowopt.training.data.catalog import CIFAR10_CLASSES, DATASET_NAMES, SPECS, SYNTHETIC, synthetic_dataset, tfds_data_dir
from flowopt.training.data.dataset import Dataset, DatasetSpec, DataUnavailableError, checked
from flowopt.training.data.formats import read_image_folder
from flowopt.training.data.prepare import OWN_DATASETS, PREPARABLE, cifar10_archive, is_prepared, prepare_tfds
from flowopt.training.data.reader import download_stock, network_available, read_prepared, tensorflow_installed


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    path: str | os.PathLike | None = None,
    refresh: bool = False,
) -> Dataset:
    """Load a dataset by name through tensorflow-datasets, preparing it first where it is not prepared.

    The dataset is read with ``tfds.data_source`` from the tfds data dir. Where
    it is not prepared there: with TensorFlow installed and tfds's download host
    answering, tfds's own builder downloads and prepares it; otherwise
    :func:`~flowopt.training.prepare_tfds` prepares it offline (MNIST,
    Fashion-MNIST, the CIFAR-10 JPEG copy). Without TensorFlow the network is
    never probed. CIFAR-10 that cannot be had is replaced by its JPEG copy
    where that is prepared or ``$FLOWOPT_CIFAR10_ARCHIVE`` names it; the
    dataset's label then says so. The decoded arrays are cached beside the
    prepared dataset and read back, verified, while its files are unchanged
    (``flowopt.training.data.decoded``).

    Args:
      name: one of :data:`DATASET_NAMES`.
      data_dir: the tfds data dir (default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      path: read this image folder or tar archive laid out as
        ``{train,test}/<class>/<image>`` instead (decoded with Pillow, not
        through tfds; class folders sorted by name, or CIFAR-10's class order).
      refresh: prepare the dataset again offline; the prepared one is replaced
        only once the new one has passed its checks.

    Raises:
      ValueError: unknown name, bad argument.
      DataIntegrityError: original files or the data failed their checks.
      DataUnavailableError: the data cannot be had here.
    """
    if name in SYNTHETIC:
        return synthetic_dataset(name)
    if name not in SPECS:
        raise ValueError(f"Unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}.")
    if not isinstance(refresh, bool):
        raise ValueError(f"refresh must be True or False, got {refresh!r}.")
    for option, value in (("data_dir", data_dir), ("path", path)):
        if value is not None and (not isinstance(value, (str, os.PathLike)) or not os.fspath(value)):
            raise ValueError(f"{option} must be a non-empty path, got {value!r}.")
    spec = SPECS[name]
    if path is not None:
        return _load_folder(name, spec, Path(path).expanduser())
    root = tfds_data_dir(data_dir)
    if refresh and spec.tfds_name in PREPARABLE:
        prepare_tfds(spec.tfds_name, root, refresh=True)
    elif not is_prepared(root, spec.tfds_name):
        if spec.tfds_name not in OWN_DATASETS and tensorflow_installed() and network_available():
            download_stock(spec.tfds_name, root)
        elif spec.stand_in is not None and (is_prepared(root, spec.stand_in) or cifar10_archive() is not None):
            stand_in = load_dataset(spec.stand_in, data_dir=root, refresh=refresh)
            return dataclasses.replace(stand_in, name=name)
        elif spec.tfds_name in PREPARABLE:
            prepare_tfds(spec.tfds_name, root)
        else:
            raise DataUnavailableError(
                f"{spec.label} is not prepared in {root / spec.tfds_name}, and tfds can download it only with "
                f"TensorFlow installed and the network up. Offline: {spec.offline_source}."
            )
    return read_prepared(name, spec, root)


def _load_folder(name: str, spec: DatasetSpec, path: Path) -> Dataset:
    if not path.exists():
        raise DataUnavailableError(f"{spec.label}: the local source {path} does not exist.")
    classes = CIFAR10_CLASSES if name.startswith("cifar10") else None
    mode = "L" if spec.image_shape[-1] == 1 else "RGB"
    label = f"{spec.label} (image folder {path.name})"
    return checked(name, spec, f"folder:{path}", label, *read_image_folder(path, classes, mode))
