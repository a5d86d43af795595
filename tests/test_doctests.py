"""The examples in flowopt's docstrings run, and show what they print."""

import doctest
import importlib
import pkgutil

import pytest

import flowopt

MODULES = sorted(info.name for info in pkgutil.walk_packages(flowopt.__path__, "flowopt."))
WITH_EXAMPLES = {"flowopt.alias", "flowopt.guard", "flowopt.registry", "flowopt.flax.train_state"}


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples in {name} failed"
    if name in WITH_EXAMPLES:
        assert result.attempted > 0, f"{name} lost its docstring examples"
