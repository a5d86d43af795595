"""``metrics.jsonl``: one JSON object per evaluation or sharpness measurement, safe to resume.

Each row is appended, flushed and fsynced before the run goes on, and a
checkpoint records how many rows the file held when it was saved and their
SHA-256. On resume the file is cut back to exactly those rows (rows written
after the checkpoint, including a line half-written by a killed process, are
work about to be redone), so a resumed run writes the same file as an
uninterrupted one. Rows the checkpoint vouches for that are missing or differ
are an error naming the file, never silently replaced.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import jax

from flowopt.training.rundir import RunDirectoryError, kill_point, write_atomic

logger = logging.getLogger(__name__)


class MetricsError(RunDirectoryError):
    """``metrics.jsonl`` is damaged, or does not hold the rows a checkpoint recorded."""


def _clean(value: Any) -> Any:
    """Non-finite floats become ``null`` (JSON has no NaN), inside nested dicts too."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _append_bytes(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (a seam for disk-full tests)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _parse(path: Path, number: int, line: bytes) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise MetricsError(f"{path}, line {number}: not a JSON row ({error}).") from None
    if not isinstance(row, dict) or not isinstance(row.get("step"), int):
        raise MetricsError(f"{path}, line {number}: not a metrics row (a JSON object with an integer step).")
    return row


class MetricsLog:
    """Rows of a run, mirrored to ``path`` (by process 0) when a path is given.

    Args:
      path: the ``metrics.jsonl`` file, or None to keep rows in memory only.
      resume_step: for a checkpoint that did not record its rows (an older
        format): keep the rows up to this step. A half-written last line is
        dropped; any other damaged line is an error.
      rows, sha256: the row count and digest a checkpoint recorded: the file
        is cut back to its first ``rows`` lines, which must match ``sha256``.

    With neither, the run starts afresh and an existing file is replaced (the
    caller decides whether that is allowed).

    Raises:
      MetricsError: the file lacks or alters the rows the checkpoint recorded,
        or a line other than a half-written last one is not a JSON row.
    """

    def __init__(
        self,
        path: str | os.PathLike | None,
        resume_step: int | None = None,
        *,
        rows: int | None = None,
        sha256: str | None = None,
    ):
        self.path = Path(path) if path is not None else None
        self.rows: list[dict[str, Any]] = []
        self._hash = hashlib.sha256()
        if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 0):
            raise ValueError(f"rows must be a non-negative integer, got {rows!r}.")
        if self.path is None:
            return
        keep = b""
        if rows is not None or resume_step is not None:
            keep = self._kept(self.path, rows, sha256, resume_step)
        if self._output() is not None:
            try:
                old = self.path.read_bytes() if self.path.exists() else None
            except OSError as error:
                raise MetricsError(f"Cannot read {self.path}: {error.strerror or error}.") from error
            if old != keep:
                if old:
                    dropped = old.count(b"\n") + (not old.endswith(b"\n")) - len(self.rows)
                    if dropped:
                        logger.info("Dropped %d metrics row(s) of %s written after the checkpoint.", dropped, self.path)
                self.path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(self.path, keep)

    def _kept(self, path: Path, rows: int | None, sha256: str | None, resume_step: int | None) -> bytes:
        """The bytes of the rows to keep; fills ``self.rows`` and the running digest."""
        try:
            data = path.read_bytes() if path.exists() else b""
        except OSError as error:
            raise MetricsError(f"Cannot read {path}: {error.strerror or error}.") from error
        lines = data.split(b"\n")
        complete, tail = lines[:-1], lines[-1]  # tail: a line without its newline (a killed write)
        if rows is not None:
            if len(complete) < rows:
                raise MetricsError(
                    f"{path} holds {len(complete)} complete row(s) but the checkpoint recorded {rows}; "
                    "restore the file, or start the run afresh (overwrite)."
                )
            kept = b"".join(line + b"\n" for line in complete[:rows])
            if sha256 is not None and hashlib.sha256(kept).hexdigest() != sha256:
                raise MetricsError(
                    f"The first {rows} row(s) of {path} differ from those recorded with the checkpoint; "
                    "restore the file, or start the run afresh (overwrite)."
                )
            self.rows = [_parse(path, i + 1, line) for i, line in enumerate(complete[:rows])]
        else:
            parsed = [_parse(path, i + 1, line) for i, line in enumerate(complete)]
            if tail:
                try:
                    _parse(path, len(complete) + 1, tail)
                except MetricsError:
                    logger.warning("Dropped the half-written last line of %s.", path)
            kept_lines = [line for line, row in zip(complete, parsed) if row["step"] <= resume_step]
            self.rows = [row for row in parsed if row["step"] <= resume_step]
            kept = b"".join(line + b"\n" for line in kept_lines)
        self._hash.update(kept)
        return kept

    def sha256(self) -> str:
        """SHA-256 of the rows so far, as written to the file."""
        return self._hash.hexdigest()

    def write(self, row: dict[str, Any]) -> None:
        """Append one row; it is on disk (fsynced) when this returns.

        Raises:
          ValueError: the row has no integer ``step`` or is not JSON-serialisable.
          MetricsError: the write failed (e.g. the disk is full); the file is
            cut back to its previous rows.
        """
        if not isinstance(row.get("step"), int):
            raise ValueError(f"A metrics row needs an integer 'step', got {row.get('step')!r}.")
        row = {k: _clean(v) for k, v in row.items()}
        try:
            line = (json.dumps(row, allow_nan=False) + "\n").encode()
        except (TypeError, ValueError) as error:
            raise ValueError(f"The metrics row is not JSON-serialisable: {error}") from error
        if (output := self._output()) is not None:
            self._append(output, line, row["step"])
        self.rows.append(row)
        self._hash.update(line)

    def _append(self, path: Path, line: bytes, step: int) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as error:
            raise MetricsError(f"Cannot write {path}: {error.strerror or error}.") from error
        try:
            size = os.fstat(fd).st_size
            kill_point("metrics_write", step, lambda: (_append_bytes(fd, line[: len(line) // 2]), os.fsync(fd)))
            try:
                _append_bytes(fd, line)
                os.fsync(fd)
            except OSError as error:
                try:
                    os.ftruncate(fd, size)
                    os.fsync(fd)
                except OSError:
                    pass
                raise MetricsError(
                    f"Could not write a row to {path}: {error.strerror or error}; "
                    "the run stopped, and rerunning it resumes from its last checkpoint."
                ) from error
        finally:
            os.close(fd)

    def _output(self) -> Path | None:
        """The file this process writes: the path, on the first process only; ``None`` otherwise."""
        return self.path if self.path is not None and jax.process_index() == 0 else None
