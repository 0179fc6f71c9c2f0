"""The federation's data: the pool, the server's held-out test set, and each
node's partition with its train/validation split.

Every split is a pure function of the data and a seed, so the aggregator and the
trainers agree on who holds what, and a node gets the same data every round.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedxai.datasets import Dataset, get_data_source, read_class_folders
from fedxai.mnist import available_splits, load_split

if TYPE_CHECKING:  # torch only where a model is built: the light commands import this module
    from fedxai.models import Architecture

MIN_PARTITION_SIZE = 2
# ITU-R BT.601 luma, for colour images given to a greyscale model.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class Pool:
    """What the trainers partition, and what the aggregator keeps for itself,
    in the architecture's input shape (see ``load_pool``)."""

    federated: Dataset
    test: Dataset
    class_names: tuple[str, ...]


def load_pool(
    dataset: str,
    data_dir: str,
    arch: Architecture,
    test_fraction: float,
    seed: int,
    max_samples: int = 0,
    *,
    fit_federated: bool = True,
) -> Pool:
    """The images of data source ``dataset`` from ``data_dir`` (empty: its default place).

    With a train and a test split, the trainers share the train split and the
    aggregator tests on the test split. With one split, it is the pool:
    ``test_fraction`` of it is held out for the aggregator. ``max_samples`` (0: all)
    caps each part, for quick runs. Images are converted to ``arch``'s channels and
    size; the source's classes must be the architecture's outputs. A trainer, which
    uses one share of the federated part, passes ``fit_federated=False`` and fits
    only its share (``fit_to``): converting the whole part costs seconds a message.
    """
    loaded = get_data_source(dataset).load(data_dir, arch.input_shape)
    classes = len(loaded.class_names)
    if classes != arch.num_classes:
        raise ValueError(
            f"dataset {dataset} has {classes} classes; architecture {arch.name} has {arch.num_classes} outputs"
        )
    for split, data in loaded.splits.items():
        if len(data) and not 0 <= int(data.labels.min()) <= int(data.labels.max()) < classes:
            raise ValueError(f"dataset {dataset}: {split} labels lie outside [0, {classes})")
    if "train" in loaded.splits and "test" in loaded.splits:
        federated, test = loaded.splits["train"], loaded.splits["test"]
    else:
        (pool,) = loaded.splits.values()
        order = np.random.default_rng(seed).permutation(len(pool))
        held_out = max(1, round(len(pool) * test_fraction))
        federated, test = pool.subset(np.sort(order[held_out:])), pool.subset(np.sort(order[:held_out]))
    if max_samples:
        federated = federated.subset(np.arange(min(max_samples, len(federated))))
        test = test.subset(np.arange(min(max_samples, len(test))))
    if fit_federated:
        federated = fit_to(federated, arch.input_shape)
    return Pool(federated, fit_to(test, arch.input_shape), loaded.class_names)


def fit_to(data: Dataset, input_shape: tuple[int, int, int]) -> Dataset:
    """``data`` with ``input_shape``'s channels (grey copied into RGB, RGB to its
    luma) and size (resized bilinearly)."""
    channels, height, width = input_shape
    images = data.images
    if images.shape[1] != channels:
        if (images.shape[1], channels) == (1, 3):
            images = np.repeat(images, 3, axis=1)
        elif (images.shape[1], channels) == (3, 1):
            luma = np.tensordot(LUMA, images.astype(np.float32), axes=([0], [1]))
            images = np.rint(luma)[:, None].astype(np.uint8)
        else:
            raise ValueError(f"images with {images.shape[1]} channels cannot be given to a {channels}-channel model")
    if images.shape[2:] != (height, width):
        import torch  # only when sizes differ
        import torch.nn.functional as F

        resized = F.interpolate(torch.from_numpy(images).float(), size=(height, width), mode="bilinear", antialias=True)
        images = resized.round_().clamp_(0, 255).to(torch.uint8).numpy()
    return data if images is data.images else Dataset(images, data.labels)


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


def probe_set(pool: Pool, probe_dir: str, per_class: int, seed: int) -> Dataset:
    """The public images on which the aggregator compares models: ``per_class``
    images of every class, drawn with ``seed`` from ``probe_dir`` or, when it is
    empty, from the aggregator's held-out split. The same images every round."""
    source = _read_probe_dir(Path(probe_dir), pool) if probe_dir else pool.test
    rng = np.random.default_rng(seed)
    chosen = [
        np.sort(rng.choice(members, size=min(per_class, len(members)), replace=False))
        for members in (np.flatnonzero(source.labels == label) for label in np.unique(source.labels))
    ]
    return source.subset(np.concatenate(chosen))


def _read_probe_dir(directory: Path, pool: Pool) -> Dataset:
    """IDX files (the test split when there are both), or images in one subfolder
    per class, named by its label or its class name (``3/``, ``Trouser/``)."""
    if not directory.is_dir():
        raise FileNotFoundError(f"probe-dir {directory} is not a folder")
    shape = pool.test.images.shape[1:]
    input_shape = (int(shape[0]), int(shape[1]), int(shape[2]))
    splits = available_splits(directory)
    if splits:
        return fit_to(Dataset(*load_split(directory, "test" if "test" in splits else splits[0])), input_shape)
    labels = {name: label for label, name in enumerate(pool.class_names)}
    labels.update({str(label): label for label in range(len(pool.class_names))})
    try:
        return read_class_folders(directory, input_shape, labels.get)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"probe-dir {directory}: no IDX files and no images in class folders (0/, 1/, ... or by class name)"
        ) from None
