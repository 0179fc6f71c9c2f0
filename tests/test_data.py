"""Data for the federation: data sources (IDX files, folders of images, plugins), the
held-out test set, partitions and splits."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from fedxai.data import Dataset, fit_to, load_pool, partition, train_validation_split
from fedxai.datasets import FASHION_MNIST, data_sources
from fedxai.mnist import load_split, read_idx
from fedxai.models import MNIST_CNN, architectures
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
    pool = load_pool("mnist", str(MNIST_DIR), MNIST_CNN, test_fraction=0.2, seed=1)
    assert (len(pool.federated), len(pool.test)) == (8000, 2000)
    # Disjoint and together the whole split: compare the images' bytes.
    seen = {image.tobytes() for image in pool.federated.images} | {image.tobytes() for image in pool.test.images}
    assert len(seen) == len({image.tobytes() for image in mnist[0]})
    assert np.array_equal(load_pool("mnist", str(MNIST_DIR), MNIST_CNN, 0.2, seed=1).test.labels, pool.test.labels)


def test_both_splits_train_and_test(tmp_path):
    for name in ("images-idx3-ubyte.gz", "labels-idx1-ubyte.gz"):
        shutil.copy(MNIST_DIR / f"t10k-{name}", tmp_path / f"t10k-{name}")
        shutil.copy(MNIST_DIR / f"t10k-{name}", tmp_path / f"train-{name}")
    pool = load_pool("mnist", str(tmp_path), MNIST_CNN, test_fraction=0.2, seed=1, max_samples=500)
    assert (len(pool.federated), len(pool.test)) == (500, 500)
    assert np.array_equal(pool.federated.labels, pool.test.labels)  # the same file twice, taken whole


def test_missing_data_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"data-dir {tmp_path}: no MNIST IDX files"):
        load_pool("mnist", str(tmp_path), MNIST_CNN, 0.2, 1)


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
    first_row = data.images[:, 0, 0].astype(np.int64)  # (N, C, H, W): channel 0's first row
    return (first_row[:, 0] + 256 * first_row[:, 1]).tolist()


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


# Data sources (fedxai.datasets): built in, from folders of images, and from plugins.

TINY_RGB = "tiny_rgb_net"  # the example plugin's 3-channel net (installed with the project)
FASHION_MNIST_INSTALLED = Path(FASHION_MNIST.installed_dirs[0])


def test_the_sources_are_listed_with_the_package_of_each_plugin():
    sources = data_sources()
    assert list(sources)[:3] == ["mnist", "fashion-mnist", "image-folder"]
    assert sources["npz-arrays"].provided_by == "fedxai-example-plugin 0.1.0"


def test_fashion_mnist_idx_files_in_a_folder_name_their_classes(tmp_path):
    for name in ("images-idx3-ubyte.gz", "labels-idx1-ubyte.gz"):
        shutil.copy(MNIST_DIR / f"t10k-{name}", tmp_path / f"t10k-{name}")
    pool = load_pool("fashion-mnist", str(tmp_path), MNIST_CNN, 0.2, seed=1, max_samples=100)
    assert pool.class_names[:2] == ("T-shirt/top", "Trouser") and len(pool.class_names) == 10
    with pytest.raises(FileNotFoundError, match=f"data-dir {tmp_path / 'x'}: no Fashion-MNIST IDX files"):
        load_pool("fashion-mnist", str(tmp_path / "x"), MNIST_CNN, 0.2, seed=1)


@pytest.mark.skipif(
    not FASHION_MNIST_INSTALLED.is_dir(), reason="Debian's dataset-fashion-mnist is installed by .ci/run"
)
def test_fashion_mnist_from_debians_package_as_three_channels():
    pool = load_pool("fashion-mnist", "", architectures()[TINY_RGB], 0.2, seed=1)
    assert pool.federated.images.shape == (60000, 3, 28, 28) and pool.test.images.shape == (10000, 3, 28, 28)
    # The grey image copied into each channel.
    assert np.array_equal(pool.test.images[:, 0], pool.test.images[:, 2])
    assert np.bincount(pool.test.labels).tolist() == [1000] * 10


def write_class_folders(root: Path, images: np.ndarray, labels: np.ndarray, names: list[str]) -> None:
    """Each image as a PNG in the folder of its class's name; every third one in colour at twice the size."""
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        if index % 3 == 0:
            image = cv2.resize(np.stack([image, image // 2, image], axis=-1), (56, 56), interpolation=cv2.INTER_AREA)
        assert cv2.imwrite(str(folder / f"{index}.png"), image)


def test_a_folder_of_class_folders_is_a_dataset(tmp_path, mnist):
    images, labels = mnist
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    write_class_folders(tmp_path / "pool", images[:300], labels[:300], names)
    pool = load_pool("image-folder", str(tmp_path / "pool"), MNIST_CNN, 0.2, seed=1)
    # Classes in the sorted order of their names, as torchvision's ImageFolder has them.
    assert pool.class_names == tuple(sorted(names))
    assert (len(pool.federated), len(pool.test)) == (240, 60)
    assert pool.federated.images.shape[1:] == (1, 28, 28) and pool.federated.images.dtype == np.uint8
    eight = sorted(names).index("eight")
    assert np.bincount(np.concatenate([pool.federated.labels, pool.test.labels]))[eight] == (labels[:300] == 8).sum()

    rgb = load_pool("image-folder", str(tmp_path / "pool"), architectures()[TINY_RGB], 0.2, seed=1)
    assert rgb.federated.images.shape[1:] == (3, 28, 28)
    assert not np.array_equal(rgb.federated.images[:, 0], rgb.federated.images[:, 1]), "colour kept"

    for split, part in (("train", images[:200]), ("test", images[200:260])):
        write_class_folders(tmp_path / "splits" / split, part, labels[: len(part)], names)
    splits = load_pool("image-folder", str(tmp_path / "splits"), MNIST_CNN, 0.2, seed=1)
    assert (len(splits.federated), len(splits.test)) == (200, 60)

    write_class_folders(tmp_path / "eleven", images[:100], labels[:100], names)
    shutil.copytree(tmp_path / "eleven" / "zero", tmp_path / "eleven" / "ten")
    with pytest.raises(ValueError, match="dataset image-folder has 11 classes; architecture mnist_cnn has 10"):
        load_pool("image-folder", str(tmp_path / "eleven"), MNIST_CNN, 0.2, seed=1)
    with pytest.raises(FileNotFoundError, match="dataset image-folder needs a data-dir"):
        load_pool("image-folder", "", MNIST_CNN, 0.2, seed=1)


def test_images_are_fitted_to_the_architectures_channels_and_size():
    rng = np.random.default_rng(0)
    colour = Dataset(rng.integers(0, 256, (4, 3, 28, 28), dtype=np.uint8), np.arange(4))
    grey = fit_to(colour, (1, 28, 28))
    expected = np.rint(np.tensordot([0.299, 0.587, 0.114], colour.images.astype(np.float32), axes=([0], [1])))
    assert grey.images.shape == (4, 1, 28, 28)
    assert np.abs(grey.images[:, 0].astype(int) - expected).max() <= 1  # rounding of float32 against float64
    flat = Dataset(np.full((2, 28, 28), 200, np.uint8), np.arange(2))
    bigger = fit_to(flat, (3, 32, 32))
    assert bigger.images.shape == (2, 3, 32, 32) and (bigger.images == 200).all()
    assert fit_to(flat, (1, 28, 28)) is flat, "nothing to do, nothing copied"
    with pytest.raises(ValueError, match="images with 3 channels cannot be given to a 4-channel model"):
        fit_to(colour, (4, 28, 28))


def test_a_dataset_plugin_reads_its_own_format(tmp_path, mnist):
    """The example plugin's `npz-arrays`: colour images in a NumPy file, with their class names."""
    images, labels = mnist
    colour = np.stack([images[:500], np.zeros_like(images[:500]), images[:500]], axis=-1)  # NHWC, magenta
    names = np.array(["nought", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    np.savez(tmp_path / "data.npz", images=colour, labels=labels[:500], class_names=names)
    pool = load_pool("npz-arrays", str(tmp_path), architectures()[TINY_RGB], 0.2, seed=1)
    assert pool.class_names[0] == "nought" and (len(pool.federated), len(pool.test)) == (400, 100)
    assert pool.federated.images.shape[1:] == (3, 28, 28)
    assert (pool.federated.images[:, 1] == 0).all() and pool.federated.images[:, 0].any()
