"""The verified dataset cache and file checksums.

Decoded arrays are cached as ``.npz`` next to a JSON record of their sha256
and shapes; a cache that fails any check raises
:class:`~flowopt.training.data.DataIntegrityError`. Caches are written under
temporary names, verified, and only then renamed over the files they replace.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from flowopt.training.data.dataset import DataIntegrityError, Dataset, DatasetSpec, checked
from flowopt.training.rundir import fsync_dir


def file_sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_digest(folder: Path) -> str:
    """A digest of a directory's file names, sizes and modification times."""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def verify_sha256(file: Path, expected: str, origin: Path | str | None = None) -> None:
    if not file.exists():
        raise DataIntegrityError(f"{file} is missing from {origin or file.parent}; fetch again with refresh=True.")
    actual = file_sha256(file)
    if actual != expected:
        raise DataIntegrityError(
            f"sha256 mismatch for {origin or file}: expected {expected}, got {actual}. "
            "The download is corrupt or not the expected release; fetch again with "
            f"load_dataset(..., refresh=True) or delete {origin or file}."
        )


def cache_files(cache: Path, key: str) -> tuple[Path, Path]:
    return cache / f"{key}.npz", cache / f"{key}.json"


def cached_dataset(cache: Path, key: str, name: str, spec: DatasetSpec, refresh: bool) -> Dataset | None:
    """The verified cached dataset under ``key``, or ``None``.

    With ``refresh`` the cache is not read (it is replaced once a verified
    copy has been built, and kept as it is when that fails).
    """
    if refresh:
        return None
    return _read_cache(cache, key, name, spec)


def fsync_file(file: Path) -> None:
    fd = os.open(file, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_cache(cache: Path, key: str, dataset: Dataset) -> None:
    """Write arrays and their record without ever exposing a partial file.

    Both files are written to temporary names, flushed to disk and read back
    (the arrays must load with the shapes written) before they replace the
    cache files by renames; on any failure the previous cache stays as it was.
    """
    cache.mkdir(parents=True, exist_ok=True)
    npz, record = cache_files(cache, key)
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
            "sha256": hashlib.sha256(raw).hexdigest(),
            "label": dataset.label,
            "source": dataset.source,
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
    npz, record = cache_files(cache, key)
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
        return checked(name, spec, meta.get("source", str(npz)), meta.get("label", spec.label), **arrays)
    except DataIntegrityError as error:
        raise DataIntegrityError(f"{error} (cache {npz}). {repair}") from error
