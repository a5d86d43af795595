"""Fault injection on the data layer: no network wait offline, and a failed or interrupted preparation loses nothing."""

from __future__ import annotations

import shutil
import socket
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from flowopt.training import data
from flowopt.training.data import builders, decoded, prepare, reader


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def prepared(mnist_data_dir, tmp_path):
    """A tfds data dir holding a copy of the prepared MNIST, and a snapshot of every file's bytes."""
    root = tmp_path / "tfds"
    shutil.copytree(mnist_data_dir / "mnist", root / "mnist")
    return root, _snapshot(root)


def _truncated_examples(limit: int):
    original = builders._idx_examples

    def examples(images_file, labels_file):
        for index, example in original(images_file, labels_file):
            if index == limit:
                return
            yield index, example

    return examples


def test_the_offline_path_never_touches_the_network(mnist_data_dir, monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError("the offline path resolved a host name or opened a connection")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr("flowopt.training.data.loading.tensorflow_installed", lambda: False)
    monkeypatch.delenv("FLOWOPT_CIFAR10_ARCHIVE", raising=False)
    start = time.perf_counter()
    with pytest.raises(data.DataUnavailableError, match="TensorFlow installed and the network up"):
        data.load_dataset("cifar10", data_dir=tmp_path)
    assert time.perf_counter() - start < 1
    assert data.load_dataset("mnist", data_dir=mnist_data_dir).x_test.shape == (10_000, 28, 28, 1)


def test_with_tensorflow_a_hanging_resolver_delays_the_offline_path_by_the_probe_timeout_only(monkeypatch, tmp_path):
    def hang(*args, **kwargs):
        time.sleep(30)  # a resolver that ignores every timeout
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(reader.socket, "create_connection", hang)
    monkeypatch.setattr("flowopt.training.data.loading.tensorflow_installed", lambda: True)
    monkeypatch.setattr("flowopt.training.data.loading.network_available", lambda: reader.network_available(timeout=0.3))
    monkeypatch.delenv("FLOWOPT_CIFAR10_ARCHIVE", raising=False)
    start = time.perf_counter()
    with pytest.raises(data.DataUnavailableError, match="CIFAR-10 is not prepared"):
        data.load_dataset("cifar10", data_dir=tmp_path)
    assert time.perf_counter() - start < 2


def test_network_probe_returns_within_its_timeout():
    start = time.perf_counter()
    reader.network_available(timeout=0.5)
    assert time.perf_counter() - start < 2


def test_an_interrupted_prepare_leaves_the_prepared_dataset_as_it_was(prepared, mnist_originals, monkeypatch):
    root, before = prepared
    first_50 = _truncated_examples(50)

    def interrupted(images_file, labels_file):
        yield from first_50(images_file, labels_file)
        raise KeyboardInterrupt

    monkeypatch.setattr(builders, "_idx_examples", interrupted)
    with pytest.raises(KeyboardInterrupt):
        data.prepare_tfds("mnist", root, source=mnist_originals, refresh=True)
    assert _snapshot(root) == before
    assert sorted(p.name for p in root.iterdir()) == ["mnist"], "a staging folder was left behind"


def test_a_build_failing_its_checks_never_replaces_the_prepared_dataset(prepared, mnist_originals, monkeypatch):
    root, before = prepared
    monkeypatch.setattr(builders, "_idx_examples", _truncated_examples(100))
    with pytest.raises(data.DataIntegrityError, match="the built train split holds 100 records, expected 60000"):
        data.prepare_tfds("mnist", root, source=mnist_originals, refresh=True)
    assert _snapshot(root) == before and sorted(p.name for p in root.iterdir()) == ["mnist"]


def test_a_failed_rename_puts_the_prepared_dataset_back_and_a_good_refresh_replaces_it(prepared, mnist_originals, monkeypatch):
    root, before = prepared
    monkeypatch.setattr(builders, "_idx_examples", _truncated_examples(100))
    monkeypatch.setitem(data.SPECS, "mnist", data.SPECS["mnist"]._replace(num_train=100, num_test=100))
    replace = prepare.os.replace
    calls = []

    def crash_on_the_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("killed")
        replace(src, dst)

    monkeypatch.setattr(prepare.os, "replace", crash_on_the_second)
    with pytest.raises(OSError, match="killed"):
        data.prepare_tfds("mnist", root, source=mnist_originals, refresh=True)
    assert _snapshot(root) == before and sorted(p.name for p in (root / "mnist").parent.iterdir()) == ["mnist"]
    monkeypatch.setattr(prepare.os, "replace", replace)
    data.prepare_tfds("mnist", root, source=mnist_originals, refresh=True)
    assert len(data.load_dataset("mnist", data_dir=root).x_train) == 100
    assert sorted(p.name for p in root.iterdir()) == [decoded.CACHE_FOLDER, "mnist"], "the replaced dataset was left behind"


@pytest.fixture(scope="module")
def tiny_prepared(mnist_originals, tmp_path_factory):
    """A tfds data dir holding MNIST cut to its first 100 records a split, with its decoded cache, and the dataset."""
    root = tmp_path_factory.mktemp("tiny") / "tfds"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(builders, "_idx_examples", _truncated_examples(100))
        patch.setitem(data.SPECS, "mnist", data.SPECS["mnist"]._replace(num_train=100, num_test=100))
        data.prepare_tfds("mnist", root, source=mnist_originals)
        return root, data.load_dataset("mnist", data_dir=root)


@pytest.fixture
def cached(tiny_prepared, tmp_path, monkeypatch):
    """A copy of :func:`tiny_prepared`'s data dir, its cache file, and the dataset loaded from it."""
    source, dataset = tiny_prepared
    monkeypatch.setitem(data.SPECS, "mnist", data.SPECS["mnist"]._replace(num_train=100, num_test=100))
    root = tmp_path / "tfds"
    shutil.copytree(source, root)
    (cache,) = (root / decoded.CACHE_FOLDER).iterdir()
    return root, cache, dataset


def _decodes(monkeypatch) -> list[int]:
    """Count the splits read through tfds.data_source from now on."""
    calls: list[int] = []
    read_split = reader.read_split

    def counted(source, image_shape):
        calls.append(len(source))
        return read_split(source, image_shape)

    monkeypatch.setattr(reader, "read_split", counted)
    return calls


def _assert_same(a: data.Dataset, b: data.Dataset) -> None:
    assert (a.name, a.label) == (b.name, b.label)
    for key in decoded.ARRAYS:
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), strict=True)


def test_a_load_reads_the_decoded_cache_of_the_same_prepared_files_without_decoding(cached, monkeypatch):
    root, _, dataset = cached
    calls = _decodes(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _assert_same(data.load_dataset("mnist", data_dir=root), dataset)
    assert calls == []


def test_prepared_files_changed_in_one_byte_are_decoded_afresh_and_the_cache_follows(cached, monkeypatch):
    root, cache, dataset = cached
    (info,) = root.glob("mnist/*/dataset_info.json")
    info.write_text(info.read_text() + "\n")
    calls = _decodes(monkeypatch)
    _assert_same(data.load_dataset("mnist", data_dir=root), dataset)
    assert calls == [100, 100]
    assert decoded.read_cache(cache, decoded.prepared_fingerprint(info.parent)) is not None


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "swapped record"])
def test_a_damaged_cache_is_reported_never_read_and_replaced_by_a_verified_one(cached, monkeypatch, damage):
    root, cache, dataset = cached
    raw = bytearray(cache.read_bytes())
    if damage == "flipped byte":
        raw[len(raw) // 2] ^= 0xFF
    elif damage == "truncated":
        del raw[len(raw) // 3 :]
    cache.write_bytes(bytes(raw))
    if damage == "swapped record":  # a valid archive whose arrays are not the ones its record hashed
        with np.load(cache) as archive:
            arrays = {key: archive[key] for key in archive.files}
        arrays["y_test"] = np.roll(arrays["y_test"], 1)
        np.savez(cache, **arrays)
    calls = _decodes(monkeypatch)
    with pytest.warns(UserWarning, match=f"decoded cache {cache} is damaged"):
        _assert_same(data.load_dataset("mnist", data_dir=root), dataset)
    assert calls == [100, 100]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _assert_same(data.load_dataset("mnist", data_dir=root), dataset)
    assert calls == [100, 100], "the replaced cache was not used"


@pytest.mark.parametrize("fault", ["failed rename", "interrupted write"])
def test_a_failed_cache_write_keeps_the_previous_cache_and_leaves_no_temporary_file(cached, monkeypatch, fault):
    root, cache, dataset = cached
    (info,) = root.glob("mnist/*/dataset_info.json")
    info.write_text(info.read_text() + "\n")  # the cache is stale: the load writes a new one
    before = cache.read_bytes()
    if fault == "failed rename":
        monkeypatch.setattr(decoded.os, "replace", lambda src, dst: (_ for _ in ()).throw(OSError("disk full")))
        with pytest.warns(UserWarning, match=f"Could not cache the decoded arrays in {cache}: disk full"):
            _assert_same(data.load_dataset("mnist", data_dir=root), dataset)
    else:

        def interrupted(file, **arrays):
            file.write(b"PK partial")
            raise KeyboardInterrupt

        monkeypatch.setattr(decoded.np, "savez", interrupted)
        with pytest.raises(KeyboardInterrupt):
            data.load_dataset("mnist", data_dir=root)
    assert cache.read_bytes() == before
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda d: data.load_dataset("mnist", data_dir=d, refresh="yes"), "refresh must be True or False, got 'yes'"),
        (lambda d: data.load_dataset("mnist", path=""), "path must be a non-empty path, got ''"),
        (lambda d: data.load_dataset("mnist", data_dir=""), "data_dir must be a non-empty path, got ''"),
        (lambda d: data.prepare_tfds("mnist", d, source=""), "source must be a non-empty path, got ''"),
        (lambda d: data.prepare_tfds("imagenet", d), "Unknown dataset 'imagenet' to prepare"),
        (lambda d: data.prepare_tfds("mnist", d, source=d / "archive.tar.gz"), "does not exist"),
    ],
)
def test_bad_arguments_are_named(call, message, tmp_path):
    with pytest.raises((ValueError, data.DataUnavailableError)) as error:
        call(tmp_path)
    assert message in str(error.value)
    assert not (tmp_path / "mnist").exists()
