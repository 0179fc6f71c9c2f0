"""MNIST for the federation: the pool, the server's held-out test set, and each
node's partition with its train/validation split.

Every split is a pure function of the data and a seed, so the aggregator and the
trainers agree on who holds what, and a node gets the same data every round.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedxai.mnist import SPLITS, available_splits, load_split

MIN_PARTITION_SIZE = 2
# Where MNIST is downloaded when no data-dir is given.
DEFAULT_CACHE_DIR = Path("~/.cache/fedxai/mnist")


@dataclass(frozen=True)
class Dataset:
    images: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> Dataset:
        return Dataset(self.images[indices], self.labels[indices])


@dataclass(frozen=True)
class Pool:
    """What the trainers partition, and what the aggregator keeps for itself."""

    federated: Dataset
    test: Dataset


def load_pool(data_dir: str, test_fraction: float, seed: int, max_samples: int = 0) -> Pool:
    """MNIST from IDX files in ``data_dir``, or downloaded once into a cache when empty.

    With both splits, the trainers share the train split and the aggregator tests
    on the test split. With one split, it is the pool: ``test_fraction`` of it is
    held out for the aggregator. ``max_samples`` (0: all) caps each part, for
    quick runs.
    """
    directory = Path(data_dir) if data_dir else ensure_downloaded(DEFAULT_CACHE_DIR.expanduser())
    splits = available_splits(directory) if directory.is_dir() else []
    if not splits:
        raise FileNotFoundError(
            f"data-dir {directory}: no MNIST IDX files (t10k-/train-images-idx3-ubyte[.gz] and the matching labels)"
        )
    loaded = {split: Dataset(*load_split(directory, split)) for split in splits}
    if "train" in loaded and "test" in loaded:
        federated, test = loaded["train"], loaded["test"]
    else:
        (pool,) = loaded.values()
        order = np.random.default_rng(seed).permutation(len(pool))
        held_out = max(1, round(len(pool) * test_fraction))
        federated, test = pool.subset(np.sort(order[held_out:])), pool.subset(np.sort(order[:held_out]))
    if max_samples:
        federated = federated.subset(np.arange(min(max_samples, len(federated))))
        test = test.subset(np.arange(min(max_samples, len(test))))
    return Pool(federated, test)


def ensure_downloaded(directory: Path) -> Path:
    """``directory`` holding MNIST's IDX files, downloaded by torchvision unless already there."""
    if len(available_splits(directory)) == len(SPLITS):
        return directory
    from torchvision.datasets import MNIST  # only for the download: keeps node start-up light

    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        for train in (True, False):
            try:
                MNIST(root=tmp, train=train, download=True)
            except RuntimeError as error:  # torchvision's "Error downloading ..."
                raise FileNotFoundError(
                    f"MNIST is not in {directory} and could not be downloaded ({error}); "
                    "pass a data-dir holding the IDX files"
                ) from None
        # Labels last: a split counts as present once its labels are, so a reader
        # never sees a split whose images are still missing.
        for path in sorted((Path(tmp) / "MNIST" / "raw").glob("*-ubyte.gz"), key=lambda p: "labels" in p.name):
            shutil.move(path, directory / path.name)
    return directory


def partition(data: Dataset, partition_id: int, num_partitions: int, scheme: str, alpha: float, seed: int) -> Dataset:
    """One node's share: IID (a shuffled equal split) or Dirichlet(alpha) label skew."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} is outside [0, {num_partitions})")
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        if len(data) < MIN_PARTITION_SIZE * num_partitions:
            raise ValueError(f"{len(data)} samples are too few for {num_partitions} partitions")
        shares = np.array_split(rng.permutation(len(data)), num_partitions)
    elif scheme == "dirichlet":
        shares = _dirichlet_shares(data.labels, num_partitions, alpha, rng)
    else:
        raise ValueError(f"unknown partitioning {scheme!r}")
    return data.subset(np.sort(shares[partition_id]))


def _dirichlet_shares(
    labels: np.ndarray, num_partitions: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Per class, proportions drawn from Dir(alpha); redrawn until every node has data."""
    for _ in range(100):
        shares: list[list[int]] = [[] for _ in range(num_partitions)]
        for label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == label))
            cuts = (np.cumsum(rng.dirichlet([alpha] * num_partitions))[:-1] * len(members)).astype(int)
            for share, part in zip(shares, np.split(members, cuts), strict=True):
                share.extend(part.tolist())
        if min(len(share) for share in shares) >= MIN_PARTITION_SIZE:
            return [np.array(share, dtype=np.int64) for share in shares]
    raise ValueError(
        f"Dirichlet(alpha={alpha}) left a node with fewer than {MIN_PARTITION_SIZE} samples "
        "in 100 draws; use a larger alpha or fewer nodes"
    )


def train_validation_split(data: Dataset, validation_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    order = np.random.default_rng(seed).permutation(len(data))
    held_out = max(1, round(len(data) * validation_fraction))
    return data.subset(np.sort(order[held_out:])), data.subset(np.sort(order[:held_out]))


def probe_set(held_out: Dataset, probe_dir: str, per_class: int, seed: int) -> Dataset:
    """The public images on which the aggregator compares models: ``per_class``
    images of every class, drawn with ``seed`` from ``probe_dir`` or, when it is
    empty, from the aggregator's held-out split. The same images every round."""
    source = _read_probe_dir(Path(probe_dir)) if probe_dir else held_out
    rng = np.random.default_rng(seed)
    chosen = [
        np.sort(rng.choice(members, size=min(per_class, len(members)), replace=False))
        for members in (np.flatnonzero(source.labels == label) for label in np.unique(source.labels))
    ]
    return source.subset(np.concatenate(chosen))


def _read_probe_dir(directory: Path) -> Dataset:
    """IDX files (the test split when there are both), or 28x28 greyscale PNG/JPEG
    images in one subfolder per class named by its label (``3/any-name.png``)."""
    if not directory.is_dir():
        raise FileNotFoundError(f"probe-dir {directory} is not a folder")
    splits = available_splits(directory)
    if splits:
        return Dataset(*load_split(directory, "test" if "test" in splits else splits[0]))
    from PIL import Image  # only for a folder of images

    images, labels = [], []
    for folder in sorted(p for p in directory.iterdir() if p.is_dir() and p.name.isdigit()):
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in (".png", ".jpg", ".jpeg"):
                continue
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("L"))
            if pixels.shape != (28, 28):
                raise ValueError(f"probe-dir image {path} is {pixels.shape[1]}x{pixels.shape[0]}, not 28x28")
            images.append(pixels)
            labels.append(int(folder.name))
    if not images:
        raise FileNotFoundError(
            f"probe-dir {directory}: no MNIST IDX files and no PNG/JPEG images in class folders (0/, 1/, ...)"
        )
    return Dataset(np.stack(images), np.array(labels, dtype=np.int64))
