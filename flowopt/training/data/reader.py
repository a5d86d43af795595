"""Reading datasets through ``tfds.data_source``, and tfds's stock builders where TensorFlow and the network are there."""

from __future__ import annotations

import importlib.util
import socket
import threading
from pathlib import Path
from typing import Any

import numpy as np

from flowopt.training.data import decoded
from flowopt.training.data.dataset import Dataset, DatasetSpec, checked

_CHUNK = 4096
_NETWORK_PROBE = ("storage.googleapis.com", 443)


def read_prepared(name: str, spec: DatasetSpec, data_dir: Path) -> Dataset:
    """The train and test splits of ``spec.tfds_name`` prepared in ``data_dir``, read by index through ``tfds.data_source``.

    The decoded arrays are cached beside the dataset, keyed by the sha256 of
    its files (:mod:`~flowopt.training.data.decoded`): a later load of the same
    prepared files reads them back verified instead of decoding again.
    """
    import tensorflow_datasets as tfds

    version_dir = Path(tfds.builder(spec.tfds_name, data_dir=str(data_dir)).data_dir)
    cache, fingerprint = decoded.cache_file(data_dir, version_dir), decoded.prepared_fingerprint(version_dir)
    source = f"tfds:{data_dir / spec.tfds_name}"
    cached = decoded.read_cache(cache, fingerprint) if fingerprint else None
    if cached is not None:
        return checked(name, spec, source, spec.label, **cached)
    arrays: list[np.ndarray] = []
    for split in ("train", "test"):
        arrays += read_split(tfds.data_source(spec.tfds_name, split=split, data_dir=str(data_dir)), spec.image_shape)
    dataset = checked(name, spec, source, spec.label, *arrays)
    if fingerprint:
        decoded.write_cache(cache, fingerprint, {key: getattr(dataset, key) for key in decoded.ARRAYS})
    return dataset


def read_split(source: Any, image_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of a tfds data source of ``{"image", "label"}`` records, read in chunks of indices."""
    n = len(source)
    images, labels = np.empty((n, *image_shape), np.uint8), np.empty(n, np.int64)
    for start in range(0, n, _CHUNK):
        for i, record in enumerate(source.__getitems__(range(start, min(n, start + _CHUNK))), start):
            images[i], labels[i] = record["image"], record["label"]
    return images, labels


def tensorflow_installed() -> bool:
    """Whether TensorFlow can be imported (tfds's stock builders need it); looks, never imports."""
    return importlib.util.find_spec("tensorflow") is not None


def network_available(timeout: float = 3.0) -> bool:
    """Whether tfds's download host answers within ``timeout`` seconds (DNS included).

    The probe runs in a daemon thread, so a resolver that hangs past the
    timeout delays neither this call nor the interpreter's exit.
    """
    answered = threading.Event()

    def probe() -> None:
        try:
            with socket.create_connection(_NETWORK_PROBE, timeout=timeout):
                answered.set()
        except OSError:
            pass

    thread = threading.Thread(target=probe, name="flowopt-network-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return answered.is_set()


def download_stock(tfds_name: str, data_dir: Path) -> None:
    """Prepare ``tfds_name`` in ``data_dir`` with tfds's own builder (downloads; needs TensorFlow), as ``array_record``."""
    import tensorflow_datasets as tfds

    tfds.builder(tfds_name, data_dir=str(data_dir), file_format="array_record").download_and_prepare()
