"""Decoded arrays of a prepared tfds dataset, cached beside it and keyed by its files.

Reading a split through ``tfds.data_source`` decodes every image (MNIST's
70,000 PNGs take seconds). The decoded arrays are kept in one ``.npz`` per
dataset version under ``<data_dir>/.flowopt-decoded/``, with a record of

- the sha256 of every file of the prepared dataset they were decoded from, and
- the sha256 of each array's bytes.

A cache is used only when the prepared files hash to its record (a dataset
prepared again, or changed in any byte, is decoded afresh) and its arrays hash
to theirs. A damaged cache is reported by a warning and replaced by a verified
one; it is never read. A cache is written under a temporary name, read back and
compared with the arrays it holds, and only then renamed into place, so an
interrupted or failed write leaves the previous cache as it was; a data dir
that cannot be written is reported by a warning, and the load goes on.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from flowopt.training.rundir import fsync_dir

ARRAYS = ("x_train", "y_train", "x_test", "y_test")
CACHE_FOLDER = ".flowopt-decoded"
_RECORD = "record"


def cache_file(data_dir: Path, version_dir: Path) -> Path:
    """The cache of the dataset prepared in ``version_dir`` (``<data_dir>/<name>/<version>``)."""
    return data_dir / CACHE_FOLDER / f"{version_dir.parent.name}-{version_dir.name}.npz"


def prepared_fingerprint(version_dir: Path) -> dict[str, str]:
    """The sha256 of every file of a prepared dataset, by name; empty where there is no such folder (nothing to key by)."""
    if not version_dir.is_dir():
        return {}
    return {file.name: _sha256(file.read_bytes()) for file in sorted(version_dir.iterdir()) if file.is_file()}


def read_cache(file: Path, fingerprint: Mapping[str, str]) -> dict[str, np.ndarray] | None:
    """The cached arrays when they were decoded from files of ``fingerprint`` and pass their checks, else None.

    A cache that fails its checks is reported by a warning (it is replaced by
    the next :func:`write_cache`).
    """
    if not file.exists():
        return None
    try:
        with np.load(file, allow_pickle=False) as archive:
            record = json.loads(str(archive[_RECORD]))
            if record.get("prepared") != dict(fingerprint):
                return None
            arrays = {key: archive[key] for key in ARRAYS}
        damaged = [key for key in ARRAYS if _sha256(arrays[key].tobytes()) != record["arrays"][key]]
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as error:
        damaged = [f"unreadable ({error})"]
    if damaged:
        warnings.warn(
            f"The decoded cache {file} is damaged ({', '.join(damaged)}); decoding through tfds again and replacing it.",
            stacklevel=3,
        )
        return None
    return arrays


def write_cache(file: Path, fingerprint: Mapping[str, str], arrays: Mapping[str, np.ndarray]) -> None:
    """Replace the cache by ``arrays`` decoded from files of ``fingerprint``, only once the new file reads back equal.

    A failure leaves the previous cache as it was and is reported by a warning.
    """
    record = {
        "prepared": dict(fingerprint),
        "arrays": {key: _sha256(np.ascontiguousarray(arrays[key]).tobytes()) for key in ARRAYS},
    }
    temporary: Path | None = None
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=file.parent, prefix=f".{file.stem}.", suffix=".npz.tmp", delete=False) as f:
            temporary = Path(f.name)
            members: dict[str, Any] = {key: arrays[key] for key in ARRAYS} | {_RECORD: np.asarray(json.dumps(record))}
            np.savez(f, **members)
            f.flush()
            os.fsync(f.fileno())
        if read_cache(temporary, fingerprint) is None:
            raise OSError(f"{temporary} did not read back as written")
        os.chmod(temporary, 0o644)
        os.replace(temporary, file)
        temporary = None
        fsync_dir(file.parent)
    except OSError as error:
        warnings.warn(f"Could not cache the decoded arrays in {file}: {error}; every load decodes through tfds.", stacklevel=3)
    finally:
        if temporary is not None:
            temporary.unlink(missing_ok=True)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
