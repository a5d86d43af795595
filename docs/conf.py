"""Sphinx configuration: API reference from docstrings, notebooks executed by myst-nb.

Build (from the repository root)::

    python -m sphinx -W --keep-going -n -b html docs docs/_build/html

``-n`` makes every unresolved reference to a flowopt object a warning and
``-W`` turns warnings into a failed build; the ``check_public_api`` extension
below adds a warning for every public name without a docstring or missing from
the API pages. The notebooks under ``notebooks/`` (jupytext percent scripts)
are converted into ``docs/notebooks/*.ipynb`` and executed during the build;
set ``FLOWOPT_DOCS_EXECUTE=off`` to render them without outputs (fast), or
``force`` to re-run them even when cached.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import jupytext

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS))  # for the local extensions below

import flowopt  # noqa: E402

project = "flowopt"
author = "the flowopt authors"
copyright = "the flowopt authors"
release = version = flowopt.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_nb",
    "check_public_api",
    "reexports",
    "results_gallery",
    "registry_table",
]

exclude_patterns = ["_build", "jupyter_execute", "**.ipynb_checkpoints"]
html_theme = "furo"
html_title = f"flowopt {version}"

# Docstrings: Google style, signatures with type hints, members in source order.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
add_module_names = False
# Keep optax's aliases as written instead of expanding them into long unions.
autodoc_type_aliases = {
    name: name for name in ("optax.ScalarOrSchedule", "optax.Schedule", "optax.Params", "optax.Updates", "optax.OptState")
}

# Every reference to a flowopt object must resolve (-n). References into other
# projects' APIs (jax, optax, flax, numpy, ...) are not checked: the build runs
# offline, without their inventories.
nitpicky = True
# Type aliases that only appear in annotations (``Params = Any`` and the
# like) are not link targets either.
nitpick_ignore_regex = [
    ("py:.*", r"(jax|jaxlib|optax|flax|nnx|numpy|np|chex|matplotlib|scipy|collections|typing|os|pathlib|fractions)\..*"),
    ("py:.*", r"(Array|ArrayLike|PRNGKey|Any|Callable|Sequence|Mapping|Iterator|NamedTuple)"),
    ("py:class", r"(flowopt\.[\w.]+\.)?(Params|GradFn|ValueFn|StageFn|ArrayTree|Preprocess|StepMetrics|Method)"),
    ("py:class", r"(flowopt\.[\w.]+\.)?(Preconditioner|Measure)"),
]

myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

# Notebooks: executed on build (cached under docs/_build/.jupyter_cache), a
# failing cell fails the build.
nb_execution_mode = os.environ.get("FLOWOPT_DOCS_EXECUTE", "cache")
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_execution_cache_path = str(DOCS / "_build" / ".jupyter_cache")
nb_merge_streams = True


def _convert_notebooks() -> None:
    """Write ``docs/notebooks/NN_NAME.ipynb`` (no outputs) for every ``notebooks/NN_NAME.py``.

    A file is rewritten only when its source changed, so Sphinx rebuilds only
    the notebooks that changed.
    """
    target = DOCS / "notebooks"
    target.mkdir(exist_ok=True)
    sources = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
    for source in sources:
        text = jupytext.writes(jupytext.read(source), fmt="ipynb")
        destination = target / f"{source.stem}.ipynb"
        if not destination.exists() or destination.read_text() != text:
            destination.write_text(text)
    for stale in set(target.glob("*.ipynb")) - {target / f"{s.stem}.ipynb" for s in sources}:
        stale.unlink()


_convert_notebooks()


def _skip_namedtuple_fields(app, what, name, obj, skip, options):
    """NamedTuple fields are documented by their class's ``Attributes:`` section, not again as members."""
    if (getattr(obj, "__doc__", None) or "").startswith("Alias for field number"):
        return True
    return None


def setup(app):
    app.connect("autodoc-skip-member", _skip_namedtuple_fields)
