"""Shared fixtures."""

import jax
import pytest


@pytest.fixture
def x64():
    """Run the test with 64-bit types enabled (float64 parameters, exact comparisons).

    Request it with ``@pytest.mark.usefixtures("x64")``, or with
    ``request.getfixturevalue("x64")`` for the float64 case of a dtype parameter.
    """
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def tiny_data():
    """:func:`tests.training.runs.tiny_dataset`, made once per module."""
    from tests.training.runs import tiny_dataset

    return tiny_dataset()
