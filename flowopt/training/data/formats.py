"""The file formats tfds does not read for flowopt: IDX files (optionally gzipped), image folders and tar archives."""

from __future__ import annotations

import concurrent.futures
import gzip
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from flowopt.training.data.dataset import DataIntegrityError

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


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
    entries = dict(image_entries(path))
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


def image_entries(path: Path) -> Iterator[tuple[tuple[str, str, str], bytes]]:
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
                # extractfile gives None only for members that are not regular files.
                if k is not None and member.isfile() and (file := archive.extractfile(member)) is not None:
                    yield k, file.read()
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DataIntegrityError(f"{path} is not a readable tar archive: {error}") from error
