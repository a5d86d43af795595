"""Shared fixtures."""

import jax
import pytest


@pytest.fixture
def x64():
    """Run the test with 64-bit types enabled (float64 parameters, exact comparisons)."""
    with jax.enable_x64(True):
        yield
