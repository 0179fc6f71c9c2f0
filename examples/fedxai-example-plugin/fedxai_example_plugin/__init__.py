"""A FedXAI plugin: a small network for 3x28x28 colour images, and a dataset read
from a NumPy file.

The network's layers are not named ``conv*`` and sit inside ``nn.Sequential``
blocks, and its activations are modules, so Grad-CAM can be hooked after them:
the automatic target layer is the last convolution's output after its ReLU
(``features.4``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedxai.datasets import Dataset, DataSource, SourceData
from fedxai.models import Architecture

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


class TinyRgbNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 14x14
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Sequential(
            nn.MaxPool2d(2),  # 7x7
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, 64),
            nn.ReLU(),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


TINY_RGB_NET = Architecture(
    name="tiny_rgb_net",
    factory=TinyRgbNet,
    input_shape=(3, 28, 28),
    num_classes=10,
    mean=(0.286, 0.286, 0.286),
    std=(0.353, 0.353, 0.353),
    class_names=FASHION_MNIST_CLASSES,
)


def load_arrays(data_dir: str, input_shape: tuple[int, int, int]) -> SourceData:
    """``data.npz`` in data-dir: ``images`` (N, H, W) or (N, H, W, 3) uint8, ``labels``
    (N,) and ``class_names``, one per label. FedXAI holds out the test split itself."""
    with np.load(Path(data_dir) / "data.npz", allow_pickle=False) as arrays:
        images, labels = arrays["images"], arrays["labels"].astype(np.int64)
        class_names = tuple(str(name) for name in arrays["class_names"])
    if images.ndim == 4:  # NHWC, as images usually come, to NCHW
        images = images.transpose(0, 3, 1, 2)
    return SourceData({"pool": Dataset(np.ascontiguousarray(images), labels)}, class_names)


NPZ_ARRAYS = DataSource("npz-arrays", load_arrays, "images, labels and class names in data-dir/data.npz")
