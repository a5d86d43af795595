"""What every study writes: CSV and JSON tables, markdown tables, numbers in text, figures.

A study's ``summarize`` builds rows (dicts) and figures and hands them to
these functions, so every table and figure of ``results/<study>/<config>/``
is written the same way.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
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


def pack(rows: Iterable[dict[str, Any]]) -> dict[str, list]:
    """``rows`` as ``{"columns": [...], "rows": [[...], ...]}``: a table that keeps its column order in a result file.

    (A run's result is stored with sorted keys, so rows stored as dicts come back with their columns sorted.)
    """
    rows = list(rows)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return {"columns": columns, "rows": [[row.get(column) for column in columns] for row in rows]}


def unpack(table: dict[str, list]) -> list[dict[str, Any]]:
    """The rows of a :func:`pack`-ed table, as dicts with the columns in their order."""
    return [dict(zip(table["columns"], values)) for values in table["rows"]]


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` to ``path`` as indented JSON."""
    Path(path).write_text(json.dumps(data, indent=2))


def fmt(value: Any, digits: int = 4) -> str:
    """A number to ``digits`` significant digits; ``–`` for a missing or non-finite one."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}g}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """The lines of a markdown table: the header, its rule, one line per row (cells as given)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (figures are only saved to files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: Path, dpi: int = 100, tight: bool = True) -> None:
    """Lay out (``tight``), save ``figure`` to ``path`` and close it."""
    if tight:
        figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    pyplot().close(figure)
