"""Sphinx extension: resolve references to flowopt objects by the module that defines them.

flowopt documents each object once, under the name users import it by
(``flowopt.adaptive_step``), while docstrings inside a module refer to their
neighbours by short name (``:func:`adaptive_step``` in ``flowopt.rk.adaptive``).
When such a reference does not resolve, this handler imports the object it
names (relative to the current module, or to the module of the docstring it
appears in) and, if the very same object is documented under another name,
links there. A reference to an object that does not exist, or that no page
documents, stays broken (and fails a ``-n -W`` build).
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from sphinx.util import logging

logger = logging.getLogger(__name__)
_MISSING = object()


def _lookup(path: str) -> Any:
    """The object at a dotted ``path`` (a module, then attributes), or ``_MISSING``."""
    parts = path.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            obj = getattr(obj, attribute, _MISSING)
            if obj is _MISSING:
                return _MISSING
        return obj
    return _MISSING


def _documented_by_identity(app) -> dict[int, str]:
    cache = getattr(app.env, "_flowopt_documented", None)
    if cache is None:
        cache = {}
        for name in app.env.get_domain("py").objects:
            if name.startswith("flowopt"):
                obj = _lookup(name)
                if obj is not _MISSING and not isinstance(obj, (str, bytes, int, float, bool, type(None))):
                    cache.setdefault(id(obj), name)
        app.env._flowopt_documented = cache
    return cache


def _resolve(app, env, node, contnode):
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].lstrip(".~")
    module, cls = node.get("py:module") or "", node.get("py:class") or ""
    candidates = [f"{module}.{cls}.{target}" if module and cls else None, f"{module}.{target}" if module else None]
    # A docstring rendered by autodoc names its object ("docstring of flowopt.x.y.f"):
    # a short reference inside it may name a neighbour in that object's module.
    source = re.search(r"docstring of ([\w.]+)", node.source or "")
    if source:
        defining_module = source.group(1).rsplit(".", 1)[0]
        candidates += [f"{defining_module}.{target}", f"{defining_module.rsplit('.', 1)[0]}.{target}"]
    candidates.append(target)
    for candidate in filter(None, candidates):
        if not candidate.startswith("flowopt"):
            continue
        obj = _lookup(candidate)
        if obj is _MISSING:
            continue
        documented = _documented_by_identity(app).get(id(obj))
        if documented is None:
            continue
        domain = env.get_domain("py")
        return domain.resolve_xref(env, node["refdoc"], app.builder, "obj", documented, node, contnode)
    return None


def setup(app):
    app.connect("missing-reference", _resolve)
    app.connect("env-purge-doc", lambda app, env, docname: env.__dict__.pop("_flowopt_documented", None))
    return {"parallel_read_safe": True, "parallel_write_safe": True}
