"""Every notebook under notebooks/ runs top to bottom in a fresh kernel and uses the public API only."""

import re

import pytest

from tests import REPO_ROOT

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = REPO_ROOT / "notebooks"
SOURCES = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))
PUBLIC_MODULES = {"flowopt", "flowopt.analysis", "flowopt.training"}


def test_there_are_notebooks():
    assert len(SOURCES) >= 2, SOURCES


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_notebook_uses_only_the_public_api(source):
    text = source.read_text()
    imported = set(re.findall(r"^\s*(?:from|import)\s+(flowopt[\w.]*)", text, flags=re.M))
    imported |= {f"flowopt.{name}" for name in re.findall(r"^\s*from\s+flowopt\s+import\s+(\w+)", text, flags=re.M)}
    imported -= {"flowopt.tableaus"}  # a public module of flowopt
    assert imported <= PUBLIC_MODULES, f"{source.name} imports {sorted(imported - PUBLIC_MODULES)}"
    private = re.findall(r"flowopt(?:\.\w+)*\._\w+", text)
    assert not private, f"{source.name} uses private names {private}"


@pytest.mark.slow
@pytest.mark.notebooks
@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_notebook_runs(source):
    notebook = jupytext.read(source)
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as error:
        pytest.fail(f"{source.name}: a cell raised\n{error}", pytrace=False)
    figures = sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )
    assert figures >= 1, f"{source.name} shows no figure"
