"""Writing result tables: one CSV writer for every study and script."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def write_csv(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write ``rows`` to ``path``; the columns are every key seen, in order of first appearance."""
    rows = list(rows)
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with Path(path).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
