"""Datasets through tensorflow-datasets: offline preparation, reading, batching, normalisation, augmentation."""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from flowopt.training import data
from flowopt.training.data import originals
from flowopt.training.data.builders import CIFAR10_JPEG_COPY_SHA256

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def mnist(mnist_data_dir):
    """MNIST as load_dataset returns it from the prepared tfds data dir, loaded once."""
    return data.load_dataset("mnist", data_dir=mnist_data_dir)


def test_rebuilt_originals_carry_tfds_registered_checksums(mnist_originals):
    registered = {
        line.split("\t")[3]: line.split("\t")[2]
        for line in (Path(tfds.__file__).parent / "url_checksums" / "mnist.txt").read_text().splitlines()
    }
    assert {name: originals.file_sha256(mnist_originals / name) for name in data.IDX_FILES} == registered


@pytest.mark.parametrize("split, counts", [("train", MNIST_TRAIN_COUNTS), ("test", MNIST_TEST_COUNTS)])
def test_prepared_mnist_holds_mnist_published_label_counts(mnist_data_dir, split, counts):
    source = tfds.data_source("mnist", split=split, data_dir=str(mnist_data_dir), decoders={"image": tfds.decode.SkipDecoding()})
    labels = [record["label"] for record in source.__getitems__(range(len(source)))]
    assert np.bincount(labels, minlength=10).tolist() == counts


def test_load_dataset_returns_what_tfds_data_source_reads(mnist, mnist_data_dir):
    assert mnist.source == f"tfds:{mnist_data_dir / 'mnist'}" and mnist.label == "MNIST"
    assert mnist.x_train.shape == (60_000, 28, 28, 1) and mnist.x_train.dtype == np.uint8 and mnist.y_train.dtype == np.int32
    for split, x, y in (("train", mnist.x_train, mnist.y_train), ("test", mnist.x_test, mnist.y_test)):
        source = tfds.data_source("mnist", split=split, data_dir=str(mnist_data_dir))
        for index in (0, 1234, len(source) - 1):
            np.testing.assert_array_equal(x[index], source[index]["image"])
            assert y[index] == source[index]["label"]


def test_prepare_verifies_against_tfds_checksums_and_rejects_a_modified_file(mnist_originals, tmp_path):
    modified = tmp_path / "originals"
    modified.mkdir()
    for name in data.IDX_FILES:
        (modified / name).write_bytes((mnist_originals / name).read_bytes())
    labels = bytearray((modified / "t10k-labels-idx1-ubyte.gz").read_bytes())
    labels[-9] ^= 1
    (modified / "t10k-labels-idx1-ubyte.gz").write_bytes(bytes(labels))
    with pytest.raises(data.DataIntegrityError, match="registered checksum.*t10k-labels-idx1-ubyte"):
        data.prepare_tfds("mnist", tmp_path / "tfds", source=modified)
    assert not (tmp_path / "tfds" / "mnist").exists() and not list((tmp_path / "tfds").glob(".prepare-*"))


def test_online_path_reads_tfds_mock_data_through_the_stock_builder(monkeypatch, tmp_path):
    """With TensorFlow and the network there, an unprepared dataset comes from tfds's own builder."""
    monkeypatch.setitem(data.SPECS, "fashion_mnist", data.SPECS["fashion_mnist"]._replace(num_train=6, num_test=6))
    monkeypatch.setattr("flowopt.training.data.loading.tensorflow_installed", lambda: True)
    monkeypatch.setattr("flowopt.training.data.loading.network_available", lambda: True)
    monkeypatch.setattr("flowopt.training.data.loading.prepare_tfds", lambda *a, **k: pytest.fail("prepared offline"))
    rng = np.random.default_rng(0)
    records = [{"image": rng.integers(0, 256, (28, 28, 1), dtype=np.uint8), "label": i % 10} for i in range(6)]

    class Records(list):
        def __getitems__(self, indices):
            return [self[i] for i in indices]

    with tfds.testing.mock_data(num_examples=6, as_data_source_fn=lambda *a, **k: Records(records)):
        dataset = data.load_dataset("fashion_mnist", data_dir=tmp_path)
    assert dataset.source == f"tfds:{tmp_path / 'fashion_mnist'}" and dataset.label == "Fashion-MNIST"
    np.testing.assert_array_equal(dataset.x_test, np.stack([r["image"] for r in records]))
    np.testing.assert_array_equal(dataset.y_train, np.arange(6))


def test_the_pipeline_reads_batches_by_index_from_a_data_source(mnist_data_dir, mnist):
    """iterate_batches reads any source indexed by an integer array: here tfds's data source, decoded per batch."""
    source = tfds.data_source("mnist", split="test", data_dir=str(mnist_data_dir))

    class Column:
        def __init__(self, key):
            self.key = key

        def __len__(self):
            return len(source)

        def __getitem__(self, indices):
            return np.stack([record[self.key] for record in source.__getitems__(indices.tolist())])

    lazy = data.iterate_batches(Column("image"), Column("label"), 500, seed=4, epoch=2, start=18)
    eager = data.iterate_batches(mnist.x_test, mnist.y_test, 500, seed=4, epoch=2, start=18)
    for (x, y), (x_ref, y_ref) in zip(lazy, eager, strict=True):
        np.testing.assert_array_equal(x, x_ref)
        np.testing.assert_array_equal(y, y_ref)


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
    from_archive = data.load_dataset("cifar10", path=archive)
    from_folder = data.load_dataset("cifar10", path=tmp_path / "src")
    np.testing.assert_array_equal(from_archive.x_train, from_folder.x_train)
    np.testing.assert_array_equal(from_archive.y_train, np.repeat(np.arange(10), 2))
    assert from_archive.label == "CIFAR-10 (image folder cifar.tar.gz)"


def test_cifar10_jpeg_copy_builder_refuses_another_archive(monkeypatch, tmp_path):
    _image_folder(tmp_path / "src", {"train": 1, "test": 1})
    archive = tmp_path / "cifar10-jpeg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "copy", arcname="copy")
    monkeypatch.setenv("FLOWOPT_CIFAR10_ARCHIVE", str(archive))
    with pytest.raises(data.DataIntegrityError, match="differs from the JPEG copy's"):
        data.load_dataset("cifar10", data_dir=tmp_path / "tfds")
    assert not (tmp_path / "tfds" / "cifar10_jpeg_copy").exists()


def test_cifar10_without_any_source_says_where_it_comes_from(monkeypatch, tmp_path):
    monkeypatch.delenv("FLOWOPT_CIFAR10_ARCHIVE", raising=False)
    with pytest.raises(data.DataUnavailableError, match="CIFAR-10 is not prepared.*FLOWOPT_CIFAR10_ARCHIVE"):
        data.load_dataset("cifar10", data_dir=tmp_path)
    with pytest.raises(data.DataUnavailableError, match="No package registry ships CIFAR-10.*FLOWOPT_CIFAR10_ARCHIVE"):
        data.load_dataset("cifar10_jpeg_copy", data_dir=tmp_path)
    with pytest.raises(data.DataUnavailableError, match="does not exist"):
        data.load_dataset("cifar10", path=tmp_path / "missing.tar.gz")


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="valid names: mnist, fashion_mnist, cifar10, cifar10_jpeg_copy"):
        data.load_dataset("imagenet")
    with pytest.raises(ValueError, match="Unknown dataset 'cifar10' to prepare; valid: mnist, fashion_mnist, cifar10_jpeg_copy"):
        data.prepare_tfds("cifar10")


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
def test_real_cifar10_jpeg_copy_is_its_own_tfds_dataset(request):
    archive = os.environ.get("FLOWOPT_CIFAR10_ARCHIVE")
    if not archive or not Path(archive).exists():
        pytest.skip("set FLOWOPT_CIFAR10_ARCHIVE to the CIFAR-10 JPEG archive to run this test")
    if hashlib.sha256(Path(archive).read_bytes()).hexdigest() != CIFAR10_JPEG_COPY_SHA256:
        pytest.skip("FLOWOPT_CIFAR10_ARCHIVE is not the known JPEG copy")
    data_dir = request.config.cache.mkdir("tfds")
    dataset = data.load_dataset("cifar10", data_dir=data_dir)  # CIFAR-10 is not prepared: its JPEG copy stands in
    assert dataset.name == "cifar10" and dataset.label == "CIFAR-10 (JPEG q75 copy)"
    assert dataset.source == f"tfds:{data_dir / 'cifar10_jpeg_copy'}" and not (data_dir / "cifar10").exists()
    assert dataset.x_train.shape == (50_000, 32, 32, 3) and np.bincount(dataset.y_test).tolist() == [1000] * 10
    np.testing.assert_allclose(dataset.channel_stats()[0], [0.4914, 0.4822, 0.4465], atol=2e-3)
