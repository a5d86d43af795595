"""Rows of results, the hardware they were measured on, and the CSV/markdown writers."""

from __future__ import annotations

import csv
import dataclasses
import datetime
import math
import os
import platform
import re
from pathlib import Path

import jax

FIELDS = (
    "section",
    "model",
    "batch_size",
    "method",
    "metric",
    "value",
    "value_median",
    "target",
    "status",
    "method_ms",
    "baseline_ms",
    "note",
)


@dataclasses.dataclass
class Row:
    """One figure: ``value`` is a ratio (or a slope, or a multiple of the parameter size).

    ``value_median`` is the same ratio computed from median instead of
    minimum times (its distance from ``value`` shows the timing noise);
    ``method_ms``/``baseline_ms`` are the absolute times, for context only.
    """

    section: str
    model: str
    method: str
    metric: str
    value: float
    batch_size: int | str = ""
    value_median: float | str = ""
    target: str = ""
    status: str = ""
    method_ms: float | str = ""
    baseline_ms: float | str = ""
    note: str = ""


def at_most(limit: float) -> tuple[str, callable]:
    return f"≤ {limit:g}", lambda v: v <= limit


def within(centre: float, tolerance: float) -> tuple[str, callable]:
    return f"{centre:.2f} ± {tolerance:.2f}", lambda v: abs(v - centre) <= tolerance


def judged(row: Row, target: tuple[str, callable] | None) -> Row:
    """Fill in ``row.target`` and ``row.status`` ('meets'/'misses') from ``target``."""
    if target is not None:
        row.target = target[0]
        row.status = "meets" if math.isfinite(row.value) and target[1](row.value) else "misses"
    return row


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict[str, str]:
    """The backend, device and host the numbers were measured on, and a short tag naming them."""
    device = jax.devices()[0]
    backend = jax.default_backend()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if backend == "cpu":
        tag = f"cpu-{cores}core"
        name = f"{_cpu_model()}, {cores} cores"
    else:
        kind = device.device_kind
        tag = f"{backend}-" + re.sub(r"[^a-z0-9]+", "-", kind.lower()).strip("-")
        name = f"{jax.device_count()} × {kind} ({backend}); host {_cpu_model()}, {cores} cores"
    return {"tag": tag, "name": name, "backend": backend, "jax": jax.__version__}


def _format(value) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.3g}" if abs(value) >= 100 or abs(value) < 0.01 else f"{value:.3f}"
    return str(value)


class Report:
    """Collects rows, rewriting the CSV after each so a cut-off run keeps what it measured."""

    def __init__(self, output: Path, header: dict[str, str], append: bool = False):
        self.header = header
        self.rows: list[Row] = []
        self.notes: list[str] = []
        output.mkdir(parents=True, exist_ok=True)
        self.csv_path = output / f"{header['tag']}.csv"
        self.md_path = output / f"{header['tag']}.md"
        if append and self.csv_path.exists():
            self._load()

    def _load(self) -> None:
        """Keep the rows (and notes) of an earlier run with the same tag, e.g. other sections."""
        with open(self.csv_path) as f:
            for record in csv.DictReader(f):
                if record["section"] == "notes":
                    self.notes.append(record["note"])
                    continue
                for key in ("value", "value_median", "method_ms", "baseline_ms"):
                    if record[key] != "":
                        record[key] = float(record[key])
                self.rows.append(Row(**record))

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(" | ".join(_format(getattr(row, f)) for f in FIELDS if getattr(row, f) != ""), flush=True)
        self.write()

    def note(self, text: str) -> None:
        print(f"note: {text}", flush=True)
        self.notes.append(text)
        self.write()

    def write(self) -> None:
        with open(self.csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, FIELDS)
            writer.writeheader()
            for row in self.rows:
                writer.writerow({k: _format(v) if isinstance(v, float) else v for k, v in dataclasses.asdict(row).items()})
            for note in self.notes:
                writer.writerow({"section": "notes", "note": note})
        self.md_path.write_text(self.markdown())

    def markdown(self) -> str:
        h = self.header
        lines = [
            f"# flowopt benchmarks: {h['name']}",
            "",
            f"jax {h['jax']}, backend {h['backend']}, run {h.get('date', datetime.date.today().isoformat())}"
            f", size {h.get('size', '')}. Every figure is a ratio of two times measured in this run "
            "(minimum over interleaved repeats; the median-based ratio beside it shows the noise); "
            "absolute times are context.",
            "",
        ]
        sections = list(dict.fromkeys(row.section for row in self.rows))
        for section in sections:
            rows = [row for row in self.rows if row.section == section]
            columns = [f for f in FIELDS if f != "section" and any(getattr(r, f) != "" for r in rows)]
            lines += [f"## {section}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(_format(getattr(r, c)) for c in columns) + " |" for r in rows]
            lines.append("")
        if self.notes:
            lines += ["## Notes", ""] + [f"- {n}" for n in self.notes] + [""]
        return "\n".join(lines)
