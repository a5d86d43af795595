"""Execute the notebook sources (jupytext percent scripts) into ``.ipynb`` files with outputs.

    python notebooks/execute.py                       # all notebooks -> notebooks/_executed/
    python notebooks/execute.py 01_quickstart --output-dir /tmp/nb

Each notebook runs top to bottom in a fresh Python kernel, with the
notebook's folder as working directory; a cell that raises stops it and the
command exits 1 after the others have run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jupytext
import nbclient
import nbformat

NOTEBOOKS = Path(__file__).resolve().parent


def sources() -> list[Path]:
    """The notebook sources ``NN_name.py``, in reading order."""
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))


def execute(source: Path, timeout: int = 600) -> nbformat.NotebookNode:
    """Run ``source`` in a fresh kernel and return the notebook with its outputs."""
    notebook = jupytext.read(source)
    client = nbclient.NotebookClient(
        notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(source.parent)}}
    )
    client.execute()
    return notebook


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="notebook names (file stems); default: all")
    parser.add_argument("--output-dir", type=Path, default=NOTEBOOKS / "_executed")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args(argv)
    chosen = [s for s in sources() if not args.names or s.stem in args.names]
    unknown = set(args.names) - {s.stem for s in chosen}
    if unknown:
        parser.error(f"no notebook named {', '.join(sorted(unknown))}; have {', '.join(s.stem for s in sources())}")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    failed = []
    for source in chosen:
        start = time.perf_counter()
        try:
            notebook = execute(source, args.timeout)
        except nbclient.exceptions.CellExecutionError as error:
            failed.append(source.stem)
            print(f"FAILED {source.name}:\n{error}", file=sys.stderr)
            continue
        target = args.output_dir / f"{source.stem}.ipynb"
        nbformat.write(notebook, target)
        print(f"{source.name} -> {target} ({time.perf_counter() - start:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
