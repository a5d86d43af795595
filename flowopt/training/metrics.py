"""``metrics.jsonl``: one JSON object per evaluation, safe to resume."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import jax


def _clean(value: Any) -> Any:
    """Non-finite floats become ``null`` (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
    """Rows of a run, mirrored to ``path`` (by process 0) when a path is given.

    On resume, rows written after the restored checkpoint's step (work that
    is about to be redone) are dropped, so the file never holds a step twice.
    """

    def __init__(self, path: str | os.PathLike | None, resume_step: int | None = None):
        self.path = Path(path) if path is not None else None
        self.rows: list[dict[str, Any]] = []
        if self.path is not None and resume_step is not None and self.path.exists():
            lines = self.path.read_text().splitlines()
            self.rows = [r for r in map(json.loads, filter(None, lines)) if r["step"] <= resume_step]
        self._rewrite()

    def write(self, row: dict[str, Any]) -> None:
        """Append one row."""
        row = {k: _clean(v) for k, v in row.items()}
        self.rows.append(row)
        if self._writes():
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")

    def _writes(self) -> bool:
        return self.path is not None and jax.process_index() == 0

    def _rewrite(self) -> None:
        if self._writes():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
