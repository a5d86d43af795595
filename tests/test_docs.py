"""The public API is documented: every public name of flowopt has a docstring.

That every name is also on an API page is checked by the documentation build
(``docs/check_public_api.py`` runs as a Sphinx extension; see ``.ci/run``).
"""

import importlib.util

from tests import REPO_ROOT

DOCS = REPO_ROOT / "docs"


def _checker():
    spec = importlib.util.spec_from_file_location("check_public_api", DOCS / "check_public_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_public_name_has_a_docstring():
    checker = _checker()
    objects = checker.public_objects()
    assert len(objects) > 20
    assert checker.missing_docstrings(objects) == []


def test_the_checker_catches_a_missing_docstring_and_a_missing_page():
    checker = _checker()

    def undocumented_function():
        pass

    class Documented:
        """A class with its own docstring."""

    from typing import NamedTuple

    class Generated(NamedTuple):
        field: int

    objects = [
        checker.PublicObject("pkg.undocumented_function", undocumented_function),
        checker.PublicObject("pkg.Documented", Documented),
        checker.PublicObject("pkg.Generated", Generated),
    ]
    assert checker.missing_docstrings(objects) == ["pkg.undocumented_function", "pkg.Generated"]
    assert checker.undocumented(objects, {"pkg.Documented"}) == ["pkg.undocumented_function", "pkg.Generated"]
