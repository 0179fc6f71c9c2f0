"""Data for the federation: IDX files, the held-out test set, partitions and splits."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest

from fedxai.data import Dataset, load_pool, partition, train_validation_split
from fedxai.mnist import load_split, read_idx
from tests.conftest import MNIST_DIR


def test_idx_files_read_plain_or_gzipped(tmp_path, mnist):
    images, labels = mnist
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    with gzip.open(MNIST_DIR / "t10k-labels-idx1-ubyte.gz") as source:
        (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(source.read())
    np.testing.assert_array_equal(read_idx(tmp_path / "t10k-labels-idx1-ubyte"), labels)


def test_non_idx_file_is_refused(tmp_path):
    (tmp_path / "bad").write_bytes(b"not an idx file")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")


def test_only_the_test_split_becomes_the_pool(mnist):
    pool = load_pool(str(MNIST_DIR), test_fraction=0.2, seed=1)
    assert (len(pool.federated), len(pool.test)) == (8000, 2000)
    # Disjoint and together the whole split: compare the images' bytes.
    seen = {image.tobytes() for image in pool.federated.images} | {image.tobytes() for image in pool.test.images}
    assert len(seen) == len({image.tobytes() for image in mnist[0]})
    assert np.array_equal(load_pool(str(MNIST_DIR), 0.2, seed=1).test.labels, pool.test.labels)


def test_both_splits_train_and_test(tmp_path):
    for name in ("images-idx3-ubyte.gz", "labels-idx1-ubyte.gz"):
        shutil.copy(MNIST_DIR / f"t10k-{name}", tmp_path / f"t10k-{name}")
        shutil.copy(MNIST_DIR / f"t10k-{name}", tmp_path / f"train-{name}")
    pool = load_pool(str(tmp_path), test_fraction=0.2, seed=1, max_samples=500)
    assert (len(pool.federated), len(pool.test)) == (500, 500)
    assert np.array_equal(pool.federated.labels, pool.test.labels)  # the same file twice, taken whole


def test_missing_data_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"data-dir {tmp_path}: no MNIST IDX files"):
        load_pool(str(tmp_path), 0.2, 1)


def labelled(count: int) -> Dataset:
    labels = np.arange(count) % 10
    return Dataset(np.zeros((count, 28, 28), np.uint8), labels.astype(np.int64))


def traced(count: int) -> Dataset:
    """Each sample's index written into its first two pixels, to follow it through a partition."""
    images = np.zeros((count, 28, 28), np.uint8)
    images[:, 0, 0] = np.arange(count) % 256
    images[:, 0, 1] = np.arange(count) // 256
    return Dataset(images, labelled(count).labels)


def trace(data: Dataset) -> list[int]:
    return (data.images[:, 0, 0].astype(np.int64) + 256 * data.images[:, 0, 1].astype(np.int64)).tolist()


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_partitions_are_disjoint_cover_everything_and_repeat(scheme):
    data = traced(1000)
    shares = [partition(data, i, 4, scheme, alpha=0.5, seed=3) for i in range(4)]
    assert sorted(index for share in shares for index in trace(share)) == list(range(1000))
    assert trace(partition(data, 2, 4, scheme, alpha=0.5, seed=3)) == trace(shares[2])


def test_dirichlet_skews_labels_and_iid_does_not():
    data = labelled(5000)
    iid = partition(data, 0, 5, "iid", alpha=0.1, seed=0)
    skewed = partition(data, 0, 5, "dirichlet", alpha=0.1, seed=0)
    iid_share = np.bincount(iid.labels, minlength=10) / len(iid)
    skewed_share = np.bincount(skewed.labels, minlength=10) / len(skewed)
    assert iid_share.max() < 0.15
    assert skewed_share.max() > 0.3


def test_too_few_samples_for_the_partitions():
    with pytest.raises(ValueError, match="3 samples are too few for 2 partitions"):
        partition(labelled(3), 0, 2, "iid", 0.5, 0)


def test_partition_id_out_of_range():
    with pytest.raises(ValueError, match="partition-id 3 is outside"):
        partition(labelled(10), 3, 3, "iid", 0.5, 0)


def test_train_validation_split_is_fixed_by_the_seed():
    train, validation = train_validation_split(labelled(100), 0.2, seed=7)
    assert (len(train), len(validation)) == (80, 20)
    again, _ = train_validation_split(labelled(100), 0.2, seed=7)
    assert np.array_equal(train.labels, again.labels)


def test_load_split_names_a_missing_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="no train-images"):
        load_split(tmp_path, "train")
