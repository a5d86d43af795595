"""tensorflow-datasets builders that run without TensorFlow and write ``array_record``.

- :class:`MNIST` and :class:`FashionMNIST` are tfds's own builders (same
  name, version, features and checksums) that read the original gz files with
  gzip and numpy and hand the images to tfds as PIL images, which tfds encodes
  with Pillow; the stock builders need TensorFlow for both. The files come
  from the manual directory, where tfds checks them against its registered
  checksums (``NonMatchingChecksumError`` on a modified file).
- :class:`Cifar10JpegCopy` is the dataset ``cifar10_jpeg_copy``: a lossy copy
  of CIFAR-10 whose images are JPEGs (quality 75), kept as they are in the
  archive ``cifar10-jpeg.tar.gz`` (sha256 :data:`CIFAR10_JPEG_COPY_SHA256`).
  It is its own dataset, never ``cifar10``.

Importing this module imports tensorflow-datasets and registers
``cifar10_jpeg_copy`` with it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.core import utils as tfds_utils
from tensorflow_datasets.image_classification import mnist

from flowopt.training.data.catalog import CIFAR10_CLASSES
from flowopt.training.data.dataset import DataIntegrityError
from flowopt.training.data.formats import image_entries, parse_idx
from flowopt.training.data.originals import IDX_FILES, file_sha256

CIFAR10_JPEG_COPY_SHA256 = "efac85c8ed52f4ead1e1f1b670d8dcf435d551fccebdd8b6365e0a01a504f3a4"
CIFAR10_JPEG_ARCHIVE = "cifar10-jpeg.tar.gz"


class _FromIdxFiles:
    """The split generators of an MNIST-layout builder, reading the four gz files without TensorFlow."""

    URL: str

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator[tuple[int, dict]]]:
        files = dl_manager.download({name: self.URL + name for name in IDX_FILES})  # checked against tfds's checksums
        train_images, train_labels, test_images, test_labels = (Path(files[name]) for name in IDX_FILES)
        return {"train": _idx_examples(train_images, train_labels), "test": _idx_examples(test_images, test_labels)}


def _idx_examples(images_file: Path, labels_file: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    images, labels = parse_idx(images_file), parse_idx(labels_file)
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise DataIntegrityError(f"{images_file} and {labels_file} hold images {images.shape} and labels {labels.shape}.")
    for index, (image, label) in enumerate(zip(images, labels)):
        yield index, {"image": Image.fromarray(image), "label": int(label)}


class _TfdsChecksums:
    """Read the registered checksums (and code path) of the tfds builder this one stands for."""

    @tfds_utils.classproperty
    @classmethod
    def code_path(cls) -> Any:
        stock = next(base for base in cls.__mro__ if base.__module__ == mnist.__name__)
        return stock.code_path


class MNIST(_TfdsChecksums, _FromIdxFiles, mnist.MNIST, skip_registration=True):
    """tfds's ``mnist`` (3.0.1), built from the original files without TensorFlow."""

    name = "mnist"


class FashionMNIST(_TfdsChecksums, _FromIdxFiles, mnist.FashionMNIST, skip_registration=True):
    """tfds's ``fashion_mnist`` (3.0.1), built from the original files without TensorFlow."""

    name = "fashion_mnist"


class Cifar10JpegCopy(tfds.core.GeneratorBasedBuilder):
    """``cifar10_jpeg_copy``: CIFAR-10's 60,000 images as JPEGs (quality 75, 4:2:0), a lossy copy."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"Place {CIFAR10_JPEG_ARCHIVE} (sha256 {CIFAR10_JPEG_COPY_SHA256}) in the manual directory."

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=(
                "A lossy copy of CIFAR-10: each image stored as a JPEG (quality 75, 4:2:0 chroma subsampling) under "
                "{train,test}/<class>/NNNN.jpg. Results on it are results on this copy, not on CIFAR-10."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(32, 32, 3), encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(names=CIFAR10_CLASSES),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator[tuple[str, dict]]]:
        archive = Path(dl_manager.manual_dir) / CIFAR10_JPEG_ARCHIVE
        if not archive.exists():
            raise DataIntegrityError(f"{archive.parent} holds no {CIFAR10_JPEG_ARCHIVE}.")
        actual = file_sha256(archive)
        if actual != CIFAR10_JPEG_COPY_SHA256:
            raise DataIntegrityError(f"{archive}: sha256 {actual} differs from the JPEG copy's {CIFAR10_JPEG_COPY_SHA256}.")
        entries = dict(image_entries(archive))
        found = sorted({label for _, label, _ in entries})
        if found != sorted(CIFAR10_CLASSES):
            raise DataIntegrityError(f"{archive}: class folders {found} differ from CIFAR-10's {list(CIFAR10_CLASSES)}.")
        return {split: self._generate_examples(entries, split) for split in ("train", "test")}

    def _generate_examples(self, entries: dict[tuple[str, str, str], bytes], split: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """The split's images as they are stored (JPEG bytes, never re-encoded), keyed by their path."""
        for (where, label, file), jpeg in entries.items():
            if where == split:
                yield f"{label}/{file}", {"image": jpeg, "label": CIFAR10_CLASSES.index(label)}


BUILDERS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {
    "mnist": MNIST,
    "fashion_mnist": FashionMNIST,
    "cifar10_jpeg_copy": Cifar10JpegCopy,
}
"""The builders :func:`~flowopt.training.prepare_tfds` runs offline, by tfds name."""
