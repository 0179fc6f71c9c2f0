"""Reads MNIST-format IDX files (plain or gzip) with numpy.

Works for MNIST and Fashion-MNIST alike: ``<split>-images-idx3-ubyte`` and
``<split>-labels-idx1-ubyte``, with or without ``.gz``.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

SPLITS = {"train": "train", "test": "t10k"}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes as an array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = bytearray(handle.read())  # writable, so torch.from_numpy can share it
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {body.size} bytes of data for shape {dims}")
    return body.reshape(dims)


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem, f"{stem}.gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def available_splits(directory: Path) -> list[str]:
    return [
        split
        for split, prefix in SPLITS.items()
        if _find(directory, f"{prefix}-images-idx3-ubyte") and _find(directory, f"{prefix}-labels-idx1-ubyte")
    ]


def load_split(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of one split."""
    prefix = SPLITS[split]
    images_path = _find(directory, f"{prefix}-images-idx3-ubyte")
    labels_path = _find(directory, f"{prefix}-labels-idx1-ubyte")
    if images_path is None or labels_path is None:
        raise FileNotFoundError(f"{directory}: no {prefix}-images/labels IDX files (.gz or not)")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{directory}: {split} images {images.shape} and labels {labels.shape} do not match")
    return images, labels.astype(np.int64)
