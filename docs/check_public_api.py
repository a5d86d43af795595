"""Check that every public name of flowopt has a docstring and a place in the API pages.

The public names of a package are its ``__all__`` when it defines one, and
otherwise every name its ``__init__.py`` binds without a leading underscore
(imports included: ``from flowopt.alias import rk4`` makes ``flowopt.rk4``
public). Public methods and properties that a flowopt class defines itself
count too.

Two ways to run it:

- as a Sphinx extension (``docs/conf.py`` loads it): at the end of the build
  every problem is a warning, so ``sphinx -W`` fails;
- from the command line, ``python docs/check_public_api.py [objects.inv]``:
  checks the docstrings, and with the inventory of a finished HTML build
  (``docs/_build/html/objects.inv``) also that every name is documented.
  Exits 1 on any problem.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import sys
import zlib
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

PACKAGES = ("flowopt", "flowopt.analysis", "flowopt.training")


class PublicObject(NamedTuple):
    """One public name: where users reach it, and the object."""

    qualified_name: str
    obj: Any


def _bound_names(module: ModuleType) -> list[str]:
    """Names bound at the top level of a package's ``__init__.py`` (imports, defs, assignments)."""
    source = inspect.getsource(module)
    names: list[str] = []
    for node in ast.parse(source).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names += [alias.asname or alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names += [t.id for t in targets if isinstance(t, ast.Name)]
    return [n for n in dict.fromkeys(names) if not n.startswith("_") and n != "annotations"]


def public_objects(packages: Iterable[str] = PACKAGES) -> list[PublicObject]:
    """Every public name of ``packages`` and the public members of flowopt's public classes."""
    found: list[PublicObject] = []
    for package in packages:
        module = importlib.import_module(package)
        names = list(getattr(module, "__all__", None) or _bound_names(module))
        for name in names:
            obj = getattr(module, name)
            qualified = obj.__name__ if inspect.ismodule(obj) else f"{package}.{name}"
            found.append(PublicObject(qualified, obj))
            if inspect.isclass(obj) and _is_flowopt(obj):
                found += [PublicObject(f"{qualified}.{m}", member) for m, member in _own_members(obj)]
    return found


def _is_flowopt(obj: Any) -> bool:
    return (getattr(obj, "__module__", None) or "").split(".")[0] == "flowopt"


def _own_members(cls: type) -> list[tuple[str, Any]]:
    """Public methods and properties defined by ``cls`` itself (not NamedTuple/dataclass fields)."""
    fields = set(getattr(cls, "_fields", ())) | set(getattr(cls, "__dataclass_fields__", {}))
    members = []
    for name, member in vars(cls).items():
        if name.startswith("_") or name in fields:
            continue
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        function = member.fget if isinstance(member, property) else member
        if inspect.isfunction(function) and _is_flowopt(function):
            members.append((name, member))
    return members


def has_docstring(obj: Any) -> bool:
    """Whether ``obj`` carries a docstring of its own (not one Python generated)."""
    if inspect.isclass(obj):
        doc = vars(obj).get("__doc__")
        if not doc or not doc.strip():
            return False
        generated = re.fullmatch(rf"{re.escape(obj.__name__)}\(.*\)", doc.strip(), flags=re.S)
        return generated is None
    if inspect.ismodule(obj) or callable(obj) or isinstance(obj, property):
        return bool((obj.__doc__ or "").strip())
    return True  # data: documented in the API pages, no docstring of its own


def missing_docstrings(objects: Iterable[PublicObject]) -> list[str]:
    return [o.qualified_name for o in objects if not has_docstring(o.obj)]


def undocumented(objects: Iterable[PublicObject], documented: set[str]) -> list[str]:
    """Public names that no API page documents (``documented``: fully qualified object names)."""
    return [o.qualified_name for o in objects if o.qualified_name not in documented]


def read_inventory(path: str | Path) -> set[str]:
    """The Python object names in a Sphinx ``objects.inv``."""
    raw = Path(path).read_bytes()
    body = zlib.decompress(raw.split(b"\n", 4)[4]).decode()
    return {line.split(" ", 1)[0] for line in body.splitlines() if re.match(r"\S+ py:", line)}


def problems(documented: set[str] | None, objects: list[PublicObject] | None = None) -> list[str]:
    objects = public_objects() if objects is None else objects
    report = [f"{name}: public but has no docstring" for name in missing_docstrings(objects)]
    if documented is not None:
        report += [
            f"{name}: public but missing from the API pages (add it to docs/api/*.md)"
            for name in undocumented(objects, documented)
        ]
    return report


def setup(app):  # Sphinx extension entry point
    from sphinx.util import logging

    logger = logging.getLogger(__name__)

    def check(app, exception):
        if exception is not None or app.builder.format != "html":
            return
        domain = app.env.get_domain("py")
        documented = set(domain.objects) | set(domain.modules)
        for problem in problems(documented):
            logger.warning(problem, type="flowopt", subtype="public-api")

    app.connect("build-finished", check)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


def main(argv: list[str]) -> int:
    documented = read_inventory(argv[0]) if argv else None
    objects = public_objects()
    report = problems(documented, objects)
    for line in report:
        print(line)
    checked = "docstrings and API pages" if argv else "docstrings"
    print(f"{len(objects)} public names, {len(report)} problems ({checked})")
    return 1 if report else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
